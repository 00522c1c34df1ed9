"""Figure 4: where the selection put its trainable blocks (layer x Q/K/V) in one run."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.reports.cells import QKV, Ctx
from harness.reports.targets import _plan
from harness.reports.write import plt as _plt

KIND = "figure"
TITLE = "Figure 4: where SMT placed trainable blocks (layer x Q/K/V)"
SECTION = ("Table 6: K, Q, V placement", "figure 4: layer x Q/K/V map of SMT's blocks")  # the report's category and subcategory
CAPTION = """\
Figure 4: where SMT's selected blocks are: layer x Q/K/V map of the blocks' share.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Bars:** none: counts of selected blocks from the runs' selection plans.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = _plan.SMT_RUN_SCHEMA


def runs(config, exp) -> list[str]:
    return _plan.runs(config, exp)


def draw(ctx: Ctx):
    plt = _plt()
    run = _plan.plan_run(ctx)
    lmap = _plan.plan(run).layer_map()
    cols = [i for i, t in enumerate(lmap["types"]) if t in QKV]
    counts = np.array([[row[i] for i in cols] for row in lmap["counts"]], dtype=float).T
    names = [lmap["types"][i].split("_")[0].upper() for i in cols]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * counts.shape[1] + 2), 3.2))
    im = ax.imshow(np.ma.masked_equal(counts, 0), cmap="Greens", aspect="auto", vmin=0)
    ax.set_facecolor("white")
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(counts.shape[1]), [str(x) for x in lmap["layers"]], fontsize=7)
    ax.set_xlabel("layer (white: frozen, no trainable block)")
    ax.set_ylabel("projection")
    frozen = ", ".join(f"{n}: {int((counts[i] == 0).sum())}/{counts.shape[1]} frozen" for i, n in enumerate(names))
    ax.text(0, -0.9, frozen, fontsize=8)
    fig.colorbar(im, ax=ax, label="trainable blocks")
    frame = pd.DataFrame([{"projection": n, "layer": lay, "blocks": counts[i, j]}
                          for i, n in enumerate(names) for j, lay in enumerate(lmap["layers"])])
    return fig, frame, f"run {run.run_id}"
