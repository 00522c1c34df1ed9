"""Figure 3: average accuracy against the budget reached, one line per method of the sweep."""
from __future__ import annotations

import pandas as pd

from harness import config as hc

from harness.reports.cells import PRIOR_ROW, Ctx, accuracy_axis, est_row, interval_caption, prior_level
from harness.reports.runs import method_label
from harness.reports.targets._sweep import sweep_runs
from harness.reports.write import DEVIATIONS_CAPTION
from harness.reports.write import plt as _plt

KIND = "figure"
TITLE = "Figure 3: accuracy against trainable-parameter budget"
SECTION = ("Table 3: budget sweep", "figure 3: accuracy against budget")  # the report's category and subcategory
CAPTION = """\
Figure 3: accuracy (the config's declared endpoint: cloze acc_norm under the cloze protocol, exact-label accuracy under the generative one; macro average over the tasks) against the budget reached (% of all parameters), one line per method. Each point is the mean over the seeds its budget has: the sweep's seeds (experiments.table3.seeds), and at Table 2's budgets Table 2's seeds too, so a point at a Table 2 budget equals Table 2's cell; the seeds of each point are written beside it.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Bars:** 95 % intervals: a bootstrap over test examples stratified by task (hierarchical over seeds when there are several); the dashed line is the label prior (always the most frequent label of each task). The caption drawn under the figure gives the measured n and seeds; the numbers drawn are in ``{{ snakemake.params.target }}.data.csv`` next to the PNG.
""" + DEVIATIONS_CAPTION  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = {"description": "Accuracy against budget, one line per method.", "type": "object",
          "additionalProperties": False, "required": ["from_sweep"], "properties": {"from_sweep": {"const": "table3"}}}


def check(config, exp) -> None:
    if "table3" not in config["experiments"]:
        raise hc.ConfigError("experiments.table3 (the sweep) is needed by figure3; define it")


def runs(config, exp) -> list[str]:
    """The sweep's runs, and at Table 2's budgets Table 2's seeds too (its cells are seed means):
    each point is then the mean of every seed its (method, budget) has, Table 2's number."""
    out = sweep_runs(config)
    if "table2" in config["experiments"]:
        t2 = config["experiments"]["table2"]
        out += sweep_runs(config, budgets=t2.get("budgets"), seeds=t2.get("seeds") or config["seeds"])
    return list(dict.fromkeys(out))


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
        if len(sub):  # the seeds behind the points at each budget, on a top axis (off the data)
            at = sub.groupby("budget").agg(reached=("reached", "mean"), seeds=("seeds", lambda v: sorted(set(v))))
            top = ax.secondary_xaxis("top")
            top.set_xticks(list(at.reached), [f"{'/'.join(str(int(v)) for v in s)} seed{'s' if s != [1] else ''}"
                                              for s in at.seeds], fontsize=7)
            top.set_xlabel("seeds per point (each point: the mean over them)", fontsize=7)
        ax.set_xlabel("trainable parameters reached (% of all model parameters)")
        ax.set_ylabel(accuracy_axis(ctx.config, sweep["dataset"]), fontsize=8)
        ax.set_title(model, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(title="method", loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize=8)
    per_budget = "; ".join(f"{b:g} %: {'/'.join(str(int(s)) for s in sorted(set(g.seeds)))}"
                           for b, g in data.groupby("budget")) if len(data) else "none"
    return fig, data, (interval_caption(data) + f" (seeds per point by budget: {per_budget}); dashed: the "
                       f"{PRIOR_ROW} (always the most frequent label of each task)")
