"""Table 4: the proposed method's budget split between MLP and attention (attention matters more)."""
from __future__ import annotations

import pandas as pd

from harness import config as hc
from harness.reports.cells import QKV, Ctx
from harness.reports.targets import _placement_table, _placements

KIND = "table"
TITLE = "Table 4: SMT budget split between MLP and attention (commonsense accuracy, %, 95 % intervals)"
SECTION = ("Table 4: MLP and attention split", "table")  # the report's category and subcategory
CAPTION = """\
Table 4: SMT's budget split between the MLP and attention.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Intervals:** 95 %: Wilson for one task; for averages a bootstrap over test examples stratified by task (over seeds and examples when there are several seeds); differences are paired bootstraps over the same examples; "best" only where the difference is significant. Footnotes, the config's and the runs' deviations from the paper and the run ids are printed under the table.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = {**_placements.PLACEMENT_SCHEMA, "description": "SMT budget split between MLP and attention."}


def runs(config, exp) -> list[str]:
    return _placements.runs(config, exp)


def mlp_share(ctx: Ctx, place: str) -> dict:
    spec = ctx.config["placements"][place]
    mods = set(hc.target_modules(spec) or [])
    if spec.get("quotas"):
        mlp = sum(q["share"] for q in spec["quotas"].values() if not set(q["modules"]) & set(QKV))
    else:
        mlp = 0.0 if mods <= set(QKV) else 1.0
    budget = ctx.exp["budget"]
    return {"MLP%": f"{mlp * budget:.2f}", "Attention%": f"{(1 - mlp) * budget:.2f}"}


def build(ctx: Ctx) -> pd.DataFrame:
    return _placement_table.build(ctx, "Placement", lambda p: mlp_share(ctx, p))
