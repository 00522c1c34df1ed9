"""Table 4 drawn: accuracy with its 95 % interval per placement, the label prior as a line."""
from __future__ import annotations

from harness.reports.cells import Ctx
from harness.reports.targets import _placement_figure, _placements

KIND = "figure"
EXPERIMENT = "table4"
TITLE = "Figure (Table 4): accuracy per MLP/attention split of the SMT budget"
SECTION = ("Table 4: MLP and attention split", "figure")  # the report's category and subcategory
CAPTION = """\
Table 4 drawn: accuracy per MLP/attention split of SMT's budget.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Bars:** 95 % intervals: a bootstrap over test examples stratified by task (hierarchical over seeds when there are several); the dashed line is the label prior (always the most frequent label of each task). The caption drawn under the figure gives the measured n and seeds; the numbers drawn are in ``{{ snakemake.params.target }}.data.csv`` next to the PNG.
"""  # the report's caption (a Jinja template over snakemake.params.facts)


def runs(config, exp) -> list[str]:
    return _placements.runs(config, exp)


def draw(ctx: Ctx):
    return _placement_figure.draw(ctx, ctx.config["experiments"]["table4"])
