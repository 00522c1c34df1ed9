"""Table 4: the proposed method's budget split between MLP and attention (attention matters more)."""
from __future__ import annotations

import pandas as pd

from harness import config as hc
from harness.reports.cells import QKV, Ctx
from harness.reports.targets import _placement_table, _placements

KIND = "table"
TITLE = "Table 4: SMT budget split between MLP and attention (commonsense accuracy, %, 95 % intervals)"
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
