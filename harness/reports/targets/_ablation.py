"""What Table 7 and Figure 7 share: the ablation variants at one budget and placement, selected once."""
from __future__ import annotations

from harness import config as hc
from harness.reports.cells import Ctx, Group

ABLATION_SCHEMA = {
    "description": ("SMT ablations at one budget and placement: each method is an entry (usually a variant "
                    "`base: smt`: scoring, warm-up mode, warm-up steps, selection random), with its delta size "
                    "and step time beside accuracy."),
    "type": "object", "additionalProperties": False, "required": ["model", "dataset", "budget", "placement", "methods"],
    "properties": {
        "seeds": {"$ref": "#/$defs/exp_seeds"},
        "model": {"type": "string"},
        "dataset": {"type": "string"},
        "budget": {"$ref": "#/$defs/percent"},
        "placement": {"type": "string"},
        "methods": {"$ref": "#/$defs/name_list"},
    },
}


def runs(config: dict, exp: dict) -> list[str]:
    return [r for method in exp["methods"]
            for r in hc.run_ids(config, exp["model"], exp["dataset"], method, exp["budget"], exp["placement"],
                                seeds=exp.get("seeds"))]


def groups(ctx: Ctx, exp: dict) -> tuple[list[tuple[str, Group | None]], list, str]:
    """([(variant, its seed group or None)], the runs of the ablation's model, its dataset)."""
    dataset = exp["dataset"]
    out = []
    mruns = ctx.select(model=exp["model"], dataset=dataset)
    for variant in exp["methods"]:
        vruns = [r for r in mruns if r.method == variant
                 and hc.budget_label(r.budget) == hc.budget_label(exp["budget"])]
        out.append((variant, ctx.group(vruns, dataset) if vruns else None))
    return out, mruns, dataset
