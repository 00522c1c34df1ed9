"""The table of Tables 4 and 6: one row per placement, the label prior, "best" where significant."""
from __future__ import annotations

from typing import Callable

import pandas as pd

from harness.reports.cells import PRIOR_ROW, Ctx, finish, mark_best, method_row, prior_group, prior_row
from harness.reports.targets import _placements


def build(ctx: Ctx, first_col: str, extra: Callable[[str], dict] | None = None) -> pd.DataFrame:
    exp = ctx.exp
    dataset = exp["dataset"]
    tasks, suite = ctx.tasks(dataset), ctx.suite(dataset)
    prior = prior_group(_placements.all_runs(ctx, exp), suite, tasks)
    rows = []
    for place, group in _placements.groups(ctx, exp):
        label = {"Model": exp["model"], first_col: ctx.config["placements"][place].get("label", place)}
        label.update(extra(place) if extra else {})
        rows.append(method_row(ctx, label, group, tasks, prior))
    mark_best(rows)
    rows.append(prior_row(ctx, {"Model": exp["model"], first_col: PRIOR_ROW}, prior, tasks))
    return finish(rows)
