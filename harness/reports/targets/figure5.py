"""Figure 5: the share of the selection's trainable parameters in Q, K and V in one run."""
from __future__ import annotations

import pandas as pd

from harness.reports.cells import QKV, Ctx
from harness.reports.targets import _plan
from harness.reports.write import plt as _plt

KIND = "figure"
TITLE = "Figure 5: share of SMT trainable parameters in Q, K and V"
SECTION = ("Table 6: K, Q, V placement", "figure 5: trainable parameters per Q/K/V")  # the report's category and subcategory
CAPTION = """\
Figure 5: share of SMT's trainable parameters in Q, K and V.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Bars:** none: shares computed from the runs' selection plans.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = _plan.SMT_RUN_SCHEMA


def runs(config, exp) -> list[str]:
    return _plan.runs(config, exp)


def draw(ctx: Ctx):
    plt = _plt()
    run = _plan.plan_run(ctx)
    per_type = _plan.plan(run).summary()["per_type"]
    names = [t for t in QKV if t in per_type]
    shares = [100 * per_type[t]["share"] for t in names]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    bars = ax.bar([t.split("_")[0].upper() for t in names], shares, color=["#4c72b0", "#dd8452", "#55a868"])
    ax.bar_label(bars, fmt="%.1f%%")
    ax.set_ylim(0, 110)
    ax.set_xlabel("projection")
    ax.set_ylabel("share of SMT trainable parameters (%)")
    return fig, pd.DataFrame({"projection": names, "share": shares}), f"run {run.run_id}"
