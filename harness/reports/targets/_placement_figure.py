"""The figure of Tables 4 and 6: accuracy with its interval per placement, the label prior drawn."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.reports.cells import PRIOR_ROW, Ctx, accuracy_axis, est_row, interval_caption, prior_level
from harness.reports.runs import method_label
from harness.reports.targets import _placements
from harness.reports.write import plt as _plt


def frame(ctx: Ctx, exp: dict) -> pd.DataFrame:
    """Accuracy with interval per placement (the proposed method at the table's budget)."""
    rows = []
    for place, g in _placements.groups(ctx, exp):
        base = {"placement": place, "label": ctx.config["placements"][place].get("label", place)}
        rows.append({**base, **est_row(g)} if g is not None and g.ok else
                    {**base, "acc": np.nan, "lo": np.nan, "hi": np.nan, "spread": np.nan, "seeds": 0, "n": 0})
    return pd.DataFrame(rows)


def draw(ctx: Ctx, exp: dict):
    plt = _plt()
    data = frame(ctx, exp)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.4 * len(data)), 4))
    ok = data.dropna(subset=["acc"])
    ax.bar(ok.label, ok.acc, yerr=[ok.acc - ok.lo, ok.hi - ok.acc], capsize=4, color="#4c72b0")
    for label in data[data.acc.isna()].label:
        ax.bar(label, 0, color="white")
        ax.annotate("no result", (label, 1), ha="center", fontsize=8)
    level = prior_level(ctx, exp["dataset"], model=exp["model"])
    if level is not None:
        ax.axhline(level, color="grey", ls="--", label=PRIOR_ROW)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize=8)
    ax.set_ylabel(accuracy_axis(ctx.config, exp["dataset"]), fontsize=8)
    method = method_label(ctx.config, _placements.method_of(ctx.config, exp))
    ax.set_xlabel(f"placement ({method}, budget {exp['budget']}%)")
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    return fig, data, interval_caption(ok).replace("points: mean accuracy over seeds; bars:", "bars: mean accuracy over seeds; whiskers:") + (f"; dashed: the {PRIOR_ROW}" if level is not None else "")
