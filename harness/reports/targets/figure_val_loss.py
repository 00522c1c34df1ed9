"""Validation loss against step, one line per run of the sweep, the label prior's level dashed."""
from __future__ import annotations

import pandas as pd

from harness import config as hc

from harness.reports.cells import Ctx
from harness.reports.runs import method_label
from harness.reports.targets._sweep import sweep_runs
from harness.reports.write import plt as _plt

KIND = "figure"
EXPERIMENT = "table3"
TITLE = "Validation loss (answer tokens of a held-out part of the training data) against step"
SECTION = ("Table 3: budget sweep", "figure: validation loss against step")  # the report's category and subcategory
CAPTION = """\
Validation loss (answer tokens of a held-out part of the training data) against step, one line per run.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Bars:** none: one line per run; the dashed level is the label prior's loss.
"""  # the report's caption (a Jinja template over snakemake.params.facts)


def check(config, exp) -> None:
    if "table3" not in config["experiments"]:
        raise hc.ConfigError("experiments.table3 (the sweep) is needed by figure_val_loss; define it")


def runs(config, exp) -> list[str]:
    return sweep_runs(config)


def frame(ctx: Ctx) -> pd.DataFrame:
    """Validation loss per step of every run that recorded train_info.val_curve."""
    rows = []
    for r in ctx.runs:
        for point in r.record.get("train_info", {}).get("val_curve") or []:
            rows.append({"run_id": r.run_id, "model": r.model, "method": r.method,
                         "label": method_label(ctx.config, r.method), "budget": r.budget,
                         "seed": r.seed, "step": point["step"], "val_loss": point["val_loss"],
                         "prior_level": r.record.get("train_info", {}).get("val_prior_loss")})
    return pd.DataFrame(rows, columns=["run_id", "model", "method", "label", "budget", "seed", "step", "val_loss",
                                       "prior_level"])


def draw(ctx: Ctx):
    plt = _plt()
    data = frame(ctx)
    methods = list(dict.fromkeys(data.method)) or ["none"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.8), squeeze=False, sharey=True)
    if data.empty:
        axes[0][0].text(0.5, 0.5, "no run recorded a validation curve", ha="center", va="center")
        axes[0][0].set_axis_off()
        return fig, data, "no validation curves in these runs' records"
    for ax, method in zip(axes[0], methods):
        sub = data[data.method == method]
        for run_id, g in sub.groupby("run_id", sort=False):
            ax.plot(g.step, g.val_loss, marker=".", label=f"b{g.budget.iloc[0]} s{g.seed.iloc[0]}")
        for level in sorted(set(sub.prior_level.dropna())):
            ax.axhline(level, color="grey", linestyle="--", linewidth=1, label=f"label prior {level:.3f}")
        ax.set_title(sub.label.iloc[0])
        ax.set_xlabel("step")
        ax.set_yscale("log")  # step 0 (~2.6) would flatten the part that matters, near the prior
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation loss (log scale)")
    return fig, data, (f"one line per run ({data.run_id.nunique()} runs); dashed: the validation loss of a "
                       "label-prior-only model (template exact, label by training frequency)")
