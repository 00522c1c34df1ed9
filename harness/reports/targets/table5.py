"""Table 5: arithmetic reasoning: each method at its best budget, the proposed method minus each."""
from __future__ import annotations

import pandas as pd

from harness import config as hc
from harness.reports.cells import (PRIOR_ROW, Ctx, best_group, finish, fmt_diff, mark_best, method_row, paired,
                                   prior_group, prior_row)
from harness.reports.runs import method_label

KIND = "table"
TITLE = ("Table 5: arithmetic reasoning accuracy (%): best of each method over the budgets; "
         "SMT − X: paired difference")
SECTION = ("Table 5: arithmetic", "table")  # the report's category and subcategory
CAPTION = """\
Table 5: arithmetic reasoning accuracy (%), best budget of each method.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Intervals:** 95 %: Wilson for one task; for averages a bootstrap over test examples stratified by task (over seeds and examples when there are several seeds); differences are paired bootstraps over the same examples; "best" only where the difference is significant. Footnotes, the config's and the runs' deviations from the paper and the run ids are printed under the table.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = {
    "description": "Arithmetic reasoning.",
    "type": "object", "additionalProperties": False,
    "required": ["model", "dataset", "methods", "budgets", "smt_best_budgets"],
    "properties": {
        "seeds": {"$ref": "#/$defs/exp_seeds"},
        "model": {"type": "string"},
        "dataset": {"type": "string"},
        "methods": {"$ref": "#/$defs/name_list"},
        "budgets": {"type": "array", "items": {"$ref": "#/$defs/percent"}, "minItems": 1},
        "smt_best_budgets": {"type": "array", "items": {"$ref": "#/$defs/percent"},
                             "description": "Further budgets of the proposed method only, for its (Best) row."},
    },
}


def check(config, exp) -> None:
    if exp["smt_best_budgets"] and config["proposed"] not in config["methods"]:
        hc._need(config, "methods", config["proposed"], "experiments.table5.smt_best_budgets (runs the proposed method)")


def runs(config, exp) -> list[str]:
    out = []
    for method in exp["methods"]:
        for budget in exp["budgets"]:
            out += hc.run_ids(config, exp["model"], exp["dataset"], method, budget, seeds=exp.get("seeds"))
    for budget in exp["smt_best_budgets"]:
        out += hc.run_ids(config, exp["model"], exp["dataset"], config["proposed"], budget,
                          seeds=exp.get("seeds"))
    return out


def build(ctx: Ctx) -> pd.DataFrame:
    exp, proposed = ctx.exp, ctx.proposed
    plabel = method_label(ctx.config, proposed)
    dataset, model = exp["dataset"], exp["model"]
    tasks, suite = ctx.tasks(dataset), ctx.suite(dataset)
    mruns = ctx.select(model=model, dataset=dataset)
    prior = prior_group(mruns, suite, tasks)
    budgets = {hc.budget_label(b) for b in exp["budgets"]}
    rows, groups = [], {}
    for method in exp["methods"]:
        g = best_group(ctx.groups([r for r in mruns if r.method == method
                                   and hc.budget_label(r.budget) in budgets], dataset))
        groups[method] = g
        name = method_label(ctx.config, method) + ("" if method == proposed else " (Best)")
        rows.append(method_row(ctx, {"Model": model, "Method": name}, g, tasks, prior))
    if exp.get("smt_best_budgets"):
        extra = {hc.budget_label(b) for b in exp["smt_best_budgets"]} | budgets
        g = best_group(ctx.groups([r for r in mruns if r.method == proposed
                                   and hc.budget_label(r.budget) in extra], dataset))
        rows.append(method_row(ctx, {"Model": model, "Method": f"{plabel} (Best)"}, g, tasks, prior))
    if proposed in groups:
        for row, method in zip(rows, exp["methods"]):
            if method != proposed:
                row[f"{plabel} − this"] = fmt_diff(paired(groups[proposed], groups[method], ctx.notes))
    mark_best(rows)
    rows.append(prior_row(ctx, {"Model": model, "Method": PRIOR_ROW}, prior, tasks))
    return finish(rows)
