"""What Figures 4 and 5 share: one run of the proposed method and its selection plan (plan.json)."""
from __future__ import annotations

import pathlib

from harness import config as hc
from harness.reports.cells import Ctx
from harness.reports.runs import Run

SMT_RUN_SCHEMA = {"$ref": "#/$defs/smt_run"}


def runs(config: dict, exp: dict) -> list[str]:
    return hc.run_ids(config, exp["model"], exp["dataset"], exp.get("method") or config["proposed"],
                      exp["budget"], exp["placement"], seeds=exp.get("seeds"))


def plan(run: Run):
    from smt import SelectionPlan

    return SelectionPlan.from_json(pathlib.Path(run.path).parent / "plan.json")


def plan_run(ctx: Ctx) -> Run:
    ok = [r for r in ctx.runs if r.status == "ok" and (r.path.parent / "plan.json").is_file()]
    if not ok:
        raise FileNotFoundError(f"{ctx.name}: none of the runs {[r.run_id for r in ctx.runs]} has a plan.json "
                                "(the SMT run failed or has not been trained)")
    return ok[0]
