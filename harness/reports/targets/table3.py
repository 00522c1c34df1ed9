"""Table 3: the budget sweep (the plateau claim): average accuracy per method and budget asked,
the proposed method minus each other at the same budget. Its runs feed Table 2, Figure 3 and the
validation-loss figure."""
from __future__ import annotations

import pandas as pd

from harness import config as hc
from harness import stats
from harness.reports.cells import BOOT_SEED, N_BOOT, PRIOR_ROW, Ctx, finish, fmt_diff, fmt_est, paired, prior_group
from harness.reports.runs import method_label
from harness.reports.targets._sweep import sweep_runs

KIND = "table"
TITLE = ("Table 3: average commonsense accuracy (%) per budget asked (% of all parameters; "
         "@ = budget reached where it differs); * = significantly best on the line, ≈ = tied best; "
         "rows 'SMT − X': paired difference at the same budget")
SECTION = ("Table 3: budget sweep", "table")  # the report's category and subcategory
CAPTION = """\
Table 3: average commonsense accuracy (%) per budget of the sweep, with SMT minus each baseline at the same budget.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Intervals:** 95 %: Wilson for one task; for averages a bootstrap over test examples stratified by task (over seeds and examples when there are several seeds); differences are paired bootstraps over the same examples; "best" only where the difference is significant. Footnotes, the config's and the runs' deviations from the paper and the run ids are printed under the table.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = {
    "description": "Budget sweep (the plateau); feeds Table 2 and Figure 3.",
    "type": "object", "additionalProperties": False, "required": ["models", "dataset", "methods", "budgets"],
    "properties": {
        "seeds": {"$ref": "#/$defs/exp_seeds"},
        "models": {"$ref": "#/$defs/name_list"},
        "dataset": {"type": "string"},
        "methods": {"$ref": "#/$defs/name_list"},
        "budgets": {"type": "array", "items": {"$ref": "#/$defs/percent"}, "minItems": 1, "uniqueItems": True},
    },
}


def runs(config, exp) -> list[str]:
    return sweep_runs(config)


def build(ctx: Ctx) -> pd.DataFrame:
    sweep = ctx.config["experiments"]["table3"]
    dataset, proposed = sweep["dataset"], ctx.proposed
    tasks, suite = ctx.tasks(dataset), ctx.suite(dataset)
    cols = [hc.budget_label(b) for b in sweep["budgets"]]
    rows = []
    for model in sweep["models"]:
        mruns = ctx.select(model=model, dataset=dataset)
        by_method = {}
        for method in sweep["methods"]:
            groups = {hc.budget_label(g.runs[0].budget): g
                      for g in ctx.groups([r for r in mruns if r.method == method], dataset)}
            by_method[method] = groups
            row = {"Model": model, "Method": method_label(ctx.config, method)}
            usable = [g for g in groups.values() if g.ok]
            top = max(usable, key=lambda g: g.mean) if len(usable) > 1 else None
            tied = [g for g in usable if g is not top and top is not None
                    and not (paired(top, g) or {"significant": False})["significant"]]
            for col in cols:
                g = groups.get(col)
                if g is None:
                    row[col] = "missing " + ctx.notes.mark(f"{model} {method} at {col}%: no runs")
                    continue
                cell = fmt_est(g.avg) if g.ok else g.status_text
                reached = g.reached
                if reached and abs(reached / float(col) - 1) > 0.05 and method != hc.FULL_FT:
                    cell += f" @{reached:.2f}"
                if g is top:
                    cell += " ≈" if tied else " *"
                elif g in tied:
                    cell += " ≈"
                row[col] = cell + (" " + g.marks if g.marks else "")
            rows.append(row)
        for method in [m for m in sweep["methods"] if m != proposed and proposed in by_method]:
            row = {"Model": model, "Method": f"{method_label(ctx.config, proposed)} − {method_label(ctx.config, method)}"}
            for col in cols:
                row[col] = fmt_diff(paired(by_method[proposed].get(col), by_method[method].get(col), ctx.notes))
            rows.append(row)
        prior = prior_group(mruns, suite, tasks)
        pr = {"Model": model, "Method": PRIOR_ROW}
        avg = fmt_est(stats.estimate(prior, n_boot=N_BOOT, seed=BOOT_SEED)) if prior else "n/a"
        rows.append({**pr, **{c: avg for c in cols}})
    return finish(rows)
