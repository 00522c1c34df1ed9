"""Table 6: the proposed method's budget on K, Q or V alone, or on Q, K and V chosen by it (V matters most)."""
from __future__ import annotations

import pandas as pd

from harness.reports.cells import Ctx
from harness.reports.targets import _placement_table, _placements

KIND = "table"
TITLE = "Table 6: SMT budget on K, Q or V alone, or QKV chosen automatically (accuracy, %, 95 % intervals)"
SCHEMA = {**_placements.PLACEMENT_SCHEMA, "description": "SMT budget on K, Q, V alone or QKV chosen automatically."}


def runs(config, exp) -> list[str]:
    return _placements.runs(config, exp)


def build(ctx: Ctx) -> pd.DataFrame:
    return _placement_table.build(ctx, "Param location")
