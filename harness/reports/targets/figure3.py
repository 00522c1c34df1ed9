"""Figure 3: average accuracy against the budget reached, one line per method of the sweep."""
from __future__ import annotations

import pandas as pd

from harness import config as hc

from harness.reports.cells import PRIOR_ROW, Ctx, est_row, interval_caption, prior_level
from harness.reports.runs import method_label
from harness.reports.targets._sweep import sweep_runs
from harness.reports.write import plt as _plt

KIND = "figure"
TITLE = "Figure 3: average accuracy against trainable-parameter budget reached"
SECTION = ("Table 3: budget sweep", "figure 3: accuracy against budget")  # the report's category and subcategory
CAPTION = """\
Figure 3: average accuracy against the budget reached (% of all parameters), one line per method.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Bars:** 95 % intervals: a bootstrap over test examples stratified by task (hierarchical over seeds when there are several); the dashed line is the label prior (always the most frequent label of each task). The caption drawn under the figure gives the measured n and seeds; the numbers drawn are in ``{{ snakemake.params.target }}.data.csv`` next to the PNG.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = {"description": "Accuracy against budget, one line per method.", "type": "object",
          "additionalProperties": False, "required": ["from_sweep"], "properties": {"from_sweep": {"const": "table3"}}}


def check(config, exp) -> None:
    if "table3" not in config["experiments"]:
        raise hc.ConfigError("experiments.table3 (the sweep) is needed by figure3; define it")


def runs(config, exp) -> list[str]:
    return sweep_runs(config)


def frame(ctx: Ctx) -> pd.DataFrame:
    """One row per (model, method, budget) of the sweep with results: reached budget, accuracy, interval."""
    sweep = ctx.config["experiments"]["table3"]
    rows = []
    for model in sweep["models"]:
        mruns = ctx.select(model=model, dataset=sweep["dataset"])
        for method in sweep["methods"]:
            for g in ctx.groups([r for r in mruns if r.method == method], sweep["dataset"]):
                if g.ok:
                    rows.append({"model": model, "method": method, "label": method_label(ctx.config, method),
                                 "budget": g.runs[0].budget, "reached": g.reached, **est_row(g)})
    return pd.DataFrame(rows, columns=["model", "method", "label", "budget", "reached", "acc", "lo", "hi",
                                       "spread", "seeds", "n"])


def draw(ctx: Ctx):
    plt = _plt()
    data = frame(ctx)
    sweep = ctx.config["experiments"]["table3"]
    models = list(sweep["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        sub = data[data.model == model]
        for method in sweep["methods"]:
            pts = sub[sub.method == method].sort_values("reached")
            if len(pts):
                ax.errorbar(pts.reached, pts.acc, yerr=[pts.acc - pts.lo, pts.hi - pts.acc], marker="o",
                            capsize=3, label=pts.label.iloc[0])
        level = prior_level(ctx, sweep["dataset"], model=model)
        if level is not None:
            ax.axhline(level, color="grey", ls="--", label=PRIOR_ROW)
        ax.set_xlabel("trainable parameters reached (% of all model parameters)")
        ax.set_ylabel("average accuracy over tasks (%)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(title="method")
    return fig, data, interval_caption(data)
