"""Accuracy against trainable parameters, step time and training memory: one point per run of
Table 2, the label prior and the zero-shot model as levels."""
from __future__ import annotations

import pandas as pd

from harness import config as hc
from harness import forgetting
from harness.reports.cells import PRIOR_ROW, Ctx, est_row, interval_caption, prior_level, step_seconds
from harness.reports.runs import method_label
from harness.reports.targets import table2
from harness.reports.write import plt as _plt

KIND = "figure"
EXPERIMENT = "table2"
TITLE = "Accuracy against trainable parameters, step time, training memory and forgetting (one point per run)"
SHOWS_FORGETTING = True  # its inputs include the base model's forgetting values (workflow/rules/forgetting.smk)
SECTION = ("Table 2: commonsense at equal budget", "figure: accuracy against cost and forgetting")  # the report's category and subcategory
CAPTION = """\
Accuracy against trainable parameters, step time, training memory and forgetting (change of the mean token loss on held-out text outside the training domain, after minus before fine-tuning), one point per run of Table 2; runs without a forgetting measurement are not drawn on that axis.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Bars:** 95 % intervals: a bootstrap over test examples stratified by task (hierarchical over seeds when there are several); the dashed line is the label prior (always the most frequent label of each task). The caption drawn under the figure gives the measured n and seeds; the numbers drawn are in ``{{ snakemake.params.target }}.data.csv`` next to the PNG.
"""  # the report's caption (a Jinja template over snakemake.params.facts)


def runs(config, exp) -> list[str]:
    return table2.runs(config, exp)


def frame(ctx: Ctx) -> pd.DataFrame:
    """One point per evaluated run: accuracy with interval, trainable params, step time, training memory."""
    rows = []
    for r in ctx.runs:
        if r.method == hc.ZERO_SHOT:  # nothing trained: drawn as a level (draw), not a point
            continue
        g = ctx.group([r], r.dataset)
        if not g.ok:
            continue
        ti = r.record.get("train_info", {})
        rows.append({"run_id": r.run_id, "method": r.method, "label": method_label(ctx.config, r.method),
                     "reached": r.reached, **est_row(g), "trainable_params": ti.get("trainable_params"),
                     "step_seconds": step_seconds(r), "peak_memory_mb":
                     None if ti.get("peak_memory_bytes") is None else ti["peak_memory_bytes"] / 2**20,
                     **forgetting.pareto_columns(r)})
    return pd.DataFrame(rows, columns=["run_id", "method", "label", "reached", "acc", "lo", "hi", "spread", "seeds",
                                       "n", "trainable_params", "step_seconds", "peak_memory_mb", "forgetting"])


def draw(ctx: Ctx):
    plt = _plt()
    data = frame(ctx)
    axes_spec = [("trainable_params", "trainable parameters", True), ("step_seconds", "seconds per training step", False),
                 ("peak_memory_mb", "training peak memory (MB)", False), forgetting.PARETO_AXIS]
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(5 * len(axes_spec), 4.2), sharey=True)
    for ax, (col, name, log) in zip(axes, axes_spec):
        for method in dict.fromkeys(data.method):
            sub = data[(data.method == method) & data[col].notna()]
            if len(sub):
                ax.errorbar(sub[col].astype(float), sub.acc, yerr=[sub.acc - sub.lo, sub.hi - sub.acc], fmt="o",
                            capsize=3, label=sub.label.iloc[0])
        if log and data[col].notna().any():
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    # the level every run must clear to have learned more than the label shares (a run below it
    # is not a point on any accuracy-cost frontier); one line per dataset drawn
    for dataset in dict.fromkeys(r.dataset for r in ctx.runs):
        level = prior_level(ctx, dataset)
        if level is not None:
            for ax in axes:
                ax.axhline(level, color="grey", ls="--", label=f"{PRIOR_ROW} ({dataset})" if ax is axes[0] else None)
    zero_levels = {}
    for r in [r for r in ctx.runs if r.method == hc.ZERO_SHOT]:
        g = ctx.group([r], r.dataset)
        if g.ok:
            zero_levels[r.dataset] = 100 * g.avg["mean"]
            for ax in axes:
                ax.axhline(zero_levels[r.dataset], color="black", ls=":",
                           label=f"zero-shot ({r.dataset})" if ax is axes[0] else None)
    axes[0].set_ylabel("average accuracy over tasks (%)")
    axes[0].legend(title="method", fontsize=8)
    return fig, data, (interval_caption(data).replace("mean accuracy over seeds", "one run")
                       + f"; dashed: the {PRIOR_ROW} (always the most frequent label of each task)"
                       + ("; dotted: the zero-shot base model" if zero_levels else "") + forgetting.pareto_caption(data))
