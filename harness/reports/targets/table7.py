"""Table 7: ablations of the proposed method (scoring, warm-up, random blocks) at one budget."""
from __future__ import annotations

import pandas as pd

from harness.reports.cells import (PRIOR_ROW, Ctx, fmt_diff, mark_best, method_row, paired, prior_group, prior_row,
                                   train_costs, finish)
from harness.reports.runs import Run, method_label
from harness.reports.targets import _ablation

KIND = "table"
TITLE = ("Table 7: SMT ablations (scoring, warm-up, selection) at one budget: accuracy (%, 95 % "
         "intervals), delta size and step time; variant − SMT: paired difference")
SECTION = ("Table 7: SMT ablations", "table")  # the report's category and subcategory
CAPTION = """\
Table 7: SMT ablations (scoring, warm-up, random blocks) at one budget.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Intervals:** 95 %: Wilson for one task; for averages a bootstrap over test examples stratified by task (over seeds and examples when there are several seeds); differences are paired bootstraps over the same examples; "best" only where the difference is significant. Footnotes, the config's and the runs' deviations from the paper and the run ids are printed under the table.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = _ablation.ABLATION_SCHEMA


def runs(config, exp) -> list[str]:
    return _ablation.runs(config, exp)


def variant_settings(run: Run) -> dict:
    m = run.info.get("config", {}).get("method", {})
    return {"scoring": m.get("scoring", "n/a"),
            "warm-up": f"{m.get('warmup_mode', 'n/a')}, {m.get('warmup_steps', 'n/a')} steps",
            "selection": m.get("selection", "gradient")}


def build(ctx: Ctx) -> pd.DataFrame:
    groups, mruns, dataset = _ablation.groups(ctx, ctx.exp)
    tasks, suite = ctx.tasks(dataset), ctx.suite(dataset)
    prior = prior_group(mruns, suite, tasks)
    proposed = ctx.proposed
    base = dict(groups).get(proposed)
    col = f"variant − {method_label(ctx.config, proposed)}"
    rows = []
    for variant, g in groups:
        label = {"Variant": method_label(ctx.config, variant)}
        label.update(variant_settings(g.runs[0]) if g else {"scoring": "n/a", "warm-up": "n/a", "selection": "n/a"})
        label.update(train_costs(g.runs) if g else {"delta MB": "n/a", "s/step": "n/a"})
        row = method_row(ctx, label, g, tasks, prior)
        row[col] = "-" if variant == proposed else fmt_diff(paired(g, base, ctx.notes))
        rows.append(row)
    mark_best(rows)
    rows.append(prior_row(ctx, {"Variant": PRIOR_ROW}, prior, tasks))
    return finish(rows)
