"""Table 6: the proposed method's budget on K, Q or V alone, or on Q, K and V chosen by it (V matters most)."""
from __future__ import annotations

import pandas as pd

from harness.reports.cells import Ctx
from harness.reports.targets import _placement_table, _placements

KIND = "table"
TITLE = "Table 6: SMT budget on K, Q or V alone, or QKV chosen automatically (accuracy, %, 95 % intervals)"
SECTION = ("Table 6: K, Q, V placement", "table")  # the report's category and subcategory
CAPTION = """\
Table 6: SMT's budget on K, Q or V alone, or on Q, K and V chosen by SMT.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Intervals:** 95 %: Wilson for one task; for averages a bootstrap over test examples stratified by task (over seeds and examples when there are several seeds); differences are paired bootstraps over the same examples; "best" only where the difference is significant. Footnotes, the config's and the runs' deviations from the paper and the run ids are printed under the table.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = {**_placements.PLACEMENT_SCHEMA, "description": "SMT budget on K, Q, V alone or QKV chosen automatically."}


def runs(config, exp) -> list[str]:
    return _placements.runs(config, exp)


def build(ctx: Ctx) -> pd.DataFrame:
    return _placement_table.build(ctx, "Param location")
