"""Table 4 drawn: accuracy with its 95 % interval per placement, the label prior as a line."""
from __future__ import annotations

from harness.reports.cells import Ctx
from harness.reports.targets import _placement_figure, _placements

KIND = "figure"
EXPERIMENT = "table4"
TITLE = "Figure (Table 4): accuracy per MLP/attention split of the SMT budget"


def runs(config, exp) -> list[str]:
    return _placements.runs(config, exp)


def draw(ctx: Ctx):
    return _placement_figure.draw(ctx, ctx.config["experiments"]["table4"])
