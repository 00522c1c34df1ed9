"""Figure 7: the ablations of Table 7 drawn: accuracy with interval, delta size and step time."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.reports.cells import Ctx, accuracy_axis, est_row, interval_caption, step_seconds
from harness.reports.runs import method_label
from harness.reports.targets import _ablation
from harness.reports.write import DEVIATIONS_CAPTION
from harness.reports.write import plt as _plt

KIND = "figure"
WARMUP_PREFIX = "warmup_weights"  # baselines/base.py WARMUP_WEIGHTS: the full-FT warm-up's weights in the delta
TITLE = "Figure 7: SMT ablations: accuracy, delta size, step time"
SECTION = ("Table 7: SMT ablations", "figure 7")  # the report's category and subcategory
CAPTION = """\
Figure 7: SMT ablations: accuracy (the config's declared endpoint, macro average over the tasks), delta size and step time. The delta-size panel (log scale) splits each run's saved delta (train_info.adapter_files) into the trained SMT blocks and, for variants whose warm-up is full fine-tuning (warm-up mode full_ft), the weights after that warm-up (warmup_weights.pt: every weight of the model, which the blocks are trained on top of, kept with the delta): SMT's total (train_info.adapter_bytes) counts both; the gradient-only warm-up moves no weight and saves only its blocks.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Bars:** 95 % intervals: a bootstrap over test examples stratified by task (hierarchical over seeds when there are several); the dashed line is the label prior (always the most frequent label of each task). The caption drawn under the figure gives the measured n and seeds; the numbers drawn are in ``{{ snakemake.params.target }}.data.csv`` next to the PNG.
""" + DEVIATIONS_CAPTION  # the report's caption (a Jinja template over snakemake.params.facts)
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
        # the saved delta's files (train_info.adapter_files): the full-FT warm-up's weights apart
        files = [r.record.get("train_info", {}).get("adapter_files") for r in g.runs]
        warm = [sum(v for k, v in f.items() if k.startswith(WARMUP_PREFIX)) for f in files if f is not None]
        sps = [v for v in (step_seconds(r) for r in g.runs) if v is not None]
        rows.append({"variant": variant, "label": method_label(ctx.config, variant), **est_row(g),
                     "delta_mb": np.mean(mb) / 2**20 if mb else np.nan,
                     "warmup_weights_mb": np.mean(warm) / 2**20 if warm else np.nan,
                     "step_seconds": np.mean(sps) if sps else np.nan})
    data = pd.DataFrame(rows, columns=["variant", "label", "acc", "lo", "hi", "spread", "seeds", "n", "delta_mb",
                                       "warmup_weights_mb", "step_seconds"])
    data.insert(9, "blocks_mb", data.delta_mb - data.warmup_weights_mb)  # the trained blocks (the rest)
    return data


def draw(ctx: Ctx):
    plt = _plt()
    data = frame(ctx)
    exp = ctx.config["experiments"][ctx.config["experiments"]["figure7"]["from_table"]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    x = np.arange(len(data))
    axes[0].bar(x, data.acc, yerr=[data.acc - data.lo, data.hi - data.acc], capsize=4, color="#55a868")
    axes[0].set_ylabel(accuracy_axis(ctx.config, exp["dataset"]), fontsize=8)
    w = 0.4
    blocks = axes[1].bar(x - w / 2, data.blocks_mb, w, color="#4c72b0", label="trained SMT blocks")
    warm = axes[1].bar(x + w / 2, data.warmup_weights_mb.where(data.warmup_weights_mb > 0), w, color="#c44e52",
                       label="full-FT warm-up weights (whole model)")
    for bars in (blocks, warm):
        axes[1].bar_label(bars, labels=["" if not v > 0 else f"{v:.1f}" for v in bars.datavalues], fontsize=6)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("saved delta size (MB, log scale)")
    axes[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    axes[2].bar(x, data.step_seconds, color="#dd8452")
    axes[2].set_ylabel("seconds per training step")
    for ax in axes:
        ax.set_xticks(list(x), list(data.label), rotation=20, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    return fig, data, (interval_caption(data).replace("points: mean accuracy over seeds; bars:", "accuracy bars: mean over seeds; whiskers:") + "; delta size: the saved delta split into the trained blocks and "
                       "the full-FT warm-up's weights (kept with the delta by full-FT warm-up variants; "
                       "their sum is train_info.adapter_bytes)")
