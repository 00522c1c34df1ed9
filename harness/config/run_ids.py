"""Run ids: the one grammar, written once; `make_run_id` writes an id and `parse_run_id` is the
one place that reads one.

A run id is "<model>/<dataset>/<method>/b<budget%>/<placement>/s<seed>", e.g.
"smollm2-135m/commonsense/smt/b0.84/qkv/s0"; full fine-tuning is
"<model>/<dataset>/full_ft/b100/<placement>/s<seed>". <method> is a key of `methods:`: a
registered method (baselines.available()) or a variant of one (`base: smt` plus overrides),
optionally with the tuned rate it trains at (`lora@lr0.0003`, experiments.lr_sweep).
"""
from __future__ import annotations

import re

from harness.config.errors import ConfigError

FULL_FT = "full_ft"


FULL_FT_BUDGET = "100"
# the zero-shot reference (experiments.table2.zero_shot): the base model, nothing trained; not a
# config entry (it has no lr, placement or settings), one run per model at budget 0, placement none
ZERO_SHOT, ZERO_SHOT_PLACEMENT = "zero_shot", "none"
# The run-id grammar, written once: the template (also the Snakemake wildcard pattern of a run's
# directory) and what each field may hold; make_run_id / parse_run_id are its only readers and writers.
RUN_ID_TEMPLATE = "{model}/{dataset}/{method}/b{budget}/{placement}/s{seed}"
RUN_ID_PATTERNS = {
    "model": r"[A-Za-z0-9._-]+",
    "dataset": r"[A-Za-z0-9_-]+",
    # a method, optionally with a tuned learning rate: `lora@lr0.0003` (experiments.lr_sweep;
    # LR_SUFFIX): the rate is then part of the run's name, so every rate of a sweep is its own run
    "method": r"[a-z0-9_]+(@lr[0-9][0-9.e+-]*)?",
    "budget": r"[0-9]+(\.[0-9]+)?",
    "placement": r"[A-Za-z0-9_]+",
    "seed": r"[0-9]+",
}
LR_SUFFIX = "@lr"
VAL_SUFFIX = "_val"  # <suite>_val: the validation split experiments.lr_sweep chooses rates on


def budget_label(percent) -> str:
    """0.84 -> '0.84', 2.5 -> '2.50': the budget as it appears in run ids."""
    return f"{float(percent):.2f}"


def lr_label(lr) -> str:
    """3e-4 -> '0.0003', 1e-5 -> '1e-05': a learning rate as it appears in run ids (Python's g format)."""
    return f"{float(lr):g}"


def make_run_id(model, dataset, method, budget, placement, seed, lr=None) -> str:
    """Build a run id; budget is a percent (ignored for full FT, which is 'b100'); lr: a tuned
    learning rate, written into the method field (`lora@lr0.001`), else the method entry's."""
    label = FULL_FT_BUDGET if method == FULL_FT else budget_label(budget)
    name = method if lr is None else f"{method}{LR_SUFFIX}{lr_label(lr)}"
    return RUN_ID_TEMPLATE.format(model=model, dataset=dataset, method=name, budget=label, placement=placement,
                                  seed=seed)


def _run_id_regex():
    pattern = re.escape(RUN_ID_TEMPLATE)
    for key, rx in RUN_ID_PATTERNS.items():
        pattern = pattern.replace(re.escape("{" + key + "}"), f"(?P<{key}>{rx})")
    return re.compile(pattern)


def parse_run_id(run_id: str) -> dict:
    """Split a run id into model, dataset, method, budget (percent, None for full FT), placement, seed."""
    m = _run_id_regex().fullmatch(run_id.strip("/"))
    if m is None:
        raise ConfigError(f"bad run id {run_id!r}; expected {RUN_ID_TEMPLATE} "
                          f"({', '.join(f'{k}: {v}' for k, v in RUN_ID_PATTERNS.items())})")
    parts = m.groupdict()
    method, _, written = parts["method"].partition(LR_SUFFIX)
    try:
        lr = float(written) if written else None
    except ValueError:
        raise ConfigError(f"bad run id {run_id!r}: {written!r} after {LR_SUFFIX} is not a learning rate") from None
    if lr is not None and (lr <= 0 or lr_label(lr) != written):
        raise ConfigError(f"bad run id {run_id!r}: write the learning rate as {lr_label(lr)!r} (Python's g format), "
                          "one spelling per rate")
    return {"model": parts["model"], "dataset": parts["dataset"], "method": method, "lr": lr,
            "budget": None if method == FULL_FT else float(parts["budget"]),
            "placement": parts["placement"], "seed": int(parts["seed"])}


def val_suite(suite: str) -> str:
    """The name of a suite's validation split (its evaluation file: val/<suite>_val.json)."""
    return suite + VAL_SUFFIX
