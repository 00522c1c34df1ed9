"""Table 2 (per task): the per-task cells of Table 2's rows (the same runs, the same estimates),
so that Table 2 itself reads left to right: method, rate, budget, the primary endpoint's average
and the comparisons. Its settings are Table 2's (experiments.table2)."""
from __future__ import annotations

import pandas as pd

from harness import forgetting
from harness.reports.cells import SEEDS_NOTE, VAL_LOSS_NOTE, Ctx
from harness.reports.targets import table2

KIND = "table"
EXPERIMENT = "table2"  # Table 2's entry: the same runs
TITLE = ("Table 2 (per task): the primary endpoint per commonsense task (%) of Table 2's rows, with 95 % "
         "intervals; the title printed with the table names its metric and its rows")
SECTION = ("Table 2: commonsense at equal budget", "table, per task")  # beside Table 2 in the report
CAPTION = """\
Table 2 (per task): each task's accuracy (the primary endpoint, %) of Table 2's rows, the same runs and seeds; the macro average over these tasks is Table 2's AVG column.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row actually has are in the table's ``n`` and ``seeds`` columns.

**Intervals:** 95 %: Wilson for one task and one seed; over several seeds a bootstrap over seeds and test examples; † marks a task on which one answer dominates the predictions (the footnote under the table). Footnotes, deviations and run ids are printed under the table.
"""
SHOWS_FORGETTING = True  # the same inputs as Table 2 (its rows are built by the same code)


def runs(config, exp) -> list[str]:
    return table2.runs(config, exp)


def build(ctx: Ctx) -> pd.DataFrame:
    ctx = Ctx("table2", ctx.config, ctx.runs, ctx.notes)  # Table 2's rows: its entry (experiments.table2)
    df = table2.rows_frame(ctx)
    sweep = ctx.config["experiments"]["table3"]
    tasks = ctx.tasks(sweep["dataset"])
    avg = table2.avg_column(ctx.config)
    out = df.rename(columns={"AVG": avg})[["Model", "Method", "Params%", *tasks, avg, "n", "seeds"]].copy()
    ctx.notes.mark(SEEDS_NOTE)
    out.attrs["title"] = table2.title(ctx.config, ctx.exp, "per task").replace("Table 2:", "Table 2 (per task):", 1)
    out.attrs["footnotes"] = [n for n in ctx.notes.items if n != VAL_LOSS_NOTE and not _forgetting(n)]
    return out


def _forgetting(note: str) -> bool:
    """The forgetting column's notes (Table 2 shows that column; this table does not)."""
    return note == forgetting.NOTE_NOT_MEASURED or note.startswith("forgetting:")
