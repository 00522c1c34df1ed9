"""Figure 7: the ablations of Table 7 drawn: accuracy with interval, delta size and step time."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.reports.cells import Ctx, est_row, interval_caption, step_seconds
from harness.reports.runs import method_label
from harness.reports.targets import _ablation
from harness.reports.write import plt as _plt

KIND = "figure"
TITLE = "Figure 7: SMT ablations: accuracy with 95 % interval, delta size and step time"
SECTION = ("Table 7: SMT ablations", "figure 7")  # the report's category and subcategory
CAPTION = """\
Figure 7: SMT ablations: accuracy, delta size and step time.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Bars:** 95 % intervals: a bootstrap over test examples stratified by task (hierarchical over seeds when there are several); the dashed line is the label prior (always the most frequent label of each task). The caption drawn under the figure gives the measured n and seeds; the numbers drawn are in ``{{ snakemake.params.target }}.data.csv`` next to the PNG.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = {"description": "The ablation table's runs as a figure.", "type": "object", "additionalProperties": False,
          "required": ["from_table"], "properties": {"from_table": {"const": "table7"}}}


def runs(config, exp) -> list[str]:
    return _ablation.runs(config, config["experiments"][exp["from_table"]])


def frame(ctx: Ctx) -> pd.DataFrame:
    exp = ctx.config["experiments"][ctx.config["experiments"]["figure7"]["from_table"]]
    groups, _, _ = _ablation.groups(ctx, exp)
    rows = []
    for variant, g in groups:
        if g is None or not g.ok:
            continue
        mb = [r.record.get("train_info", {}).get("adapter_bytes") for r in g.runs]
        mb = [v for v in mb if v is not None]
        sps = [v for v in (step_seconds(r) for r in g.runs) if v is not None]
        rows.append({"variant": variant, "label": method_label(ctx.config, variant), **est_row(g),
                     "delta_mb": np.mean(mb) / 2**20 if mb else np.nan, "step_seconds": np.mean(sps) if sps else np.nan})
    return pd.DataFrame(rows, columns=["variant", "label", "acc", "lo", "hi", "spread", "seeds", "n", "delta_mb",
                                       "step_seconds"])


def draw(ctx: Ctx):
    plt = _plt()
    data = frame(ctx)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    x = range(len(data))
    axes[0].bar(x, data.acc, yerr=[data.acc - data.lo, data.hi - data.acc], capsize=4, color="#55a868")
    axes[0].set_ylabel("average accuracy over tasks (%)")
    axes[1].bar(x, data.delta_mb, color="#4c72b0")
    axes[1].set_ylabel("delta size (MB)")
    axes[2].bar(x, data.step_seconds, color="#dd8452")
    axes[2].set_ylabel("seconds per training step")
    for ax in axes:
        ax.set_xticks(list(x), list(data.label), rotation=20, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    return fig, data, interval_caption(data)
