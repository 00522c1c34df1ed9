"""What Tables 4 and 6 and their figures share: the proposed method at one budget, one seed group
per placement of experiments.<table>.placements (selected here, once, for table and figure)."""
from __future__ import annotations

from harness import config as hc
from harness.reports.cells import Ctx, Group

PLACEMENT_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["model", "dataset", "budget", "placements"],
    "properties": {
        "seeds": {"$ref": "#/$defs/exp_seeds"},
        "model": {"type": "string"},
        "dataset": {"type": "string"},
        "budget": {"$ref": "#/$defs/percent"},
        "placements": {"$ref": "#/$defs/name_list"},
        "method": {"type": "string", "description": "The method whose placements are compared (default: proposed)."},
    },
}


def method_of(config: dict, exp: dict) -> str:
    return exp.get("method") or config["proposed"]


def runs(config: dict, exp: dict) -> list[str]:
    return [r for place in exp["placements"]
            for r in hc.run_ids(config, exp["model"], exp["dataset"], method_of(config, exp), exp["budget"], place,
                                seeds=exp.get("seeds"))]


def groups(ctx: Ctx, exp: dict) -> list[tuple[str, Group | None]]:
    """(placement, its seed group or None when no run of it was given), in the table's order."""
    method = method_of(ctx.config, exp)
    out = []
    for place in exp["placements"]:
        pruns = [r for r in ctx.select(model=exp["model"], dataset=exp["dataset"], method=method)
                 if r.placement == place and hc.budget_label(r.budget) == hc.budget_label(exp["budget"])]
        out.append((place, ctx.group(pruns, exp["dataset"]) if pruns else None))
    return out


def all_runs(ctx: Ctx, exp: dict) -> list:
    return ctx.select(model=exp["model"], dataset=exp["dataset"], method=method_of(ctx.config, exp))
