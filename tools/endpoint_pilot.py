"""Pilot for issue 19's primary endpoint: seed-to-seed spread of each cloze metric.

Reads the cloze runs under RUNS_ROOT (results/.../runs/<model>/<dataset>), groups them by
method, and for each per-example metric the cloze scorer records (acc, acc_norm: 0/1;
choice_nll: nats, lower is better) prints, per method: the mean over seeds of the macro
average, the standard deviation over seeds, the paired bootstrap difference from the zero-shot
run (the effect the study must resolve) and its ratio to the seed spread; and the paired
difference between the two trained methods with the width of its interval. The endpoint to
declare is the metric whose effects are largest against both the seed spread and the interval
width. Uses harness.stats (the tables' own bootstrap); prints a Markdown table.

    python tools/endpoint_pilot.py results/pilot/runs/smollm2-135m/commonsense
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from harness import stats  # noqa: E402
from harness.records import read_json  # noqa: E402
from harness.reports.runs import read_predictions  # noqa: E402

METRICS = ("acc", "acc_norm", "choice_nll")


def load(run_dir: pathlib.Path) -> dict:
    """{metric: {task: per-example array}} of one run's cloze evaluation."""
    ev = read_json(run_dir / "eval" / "commonsense.json", "the evaluate job's output")
    if ev.get("protocol_name") != "cloze":
        raise SystemExit(f"{run_dir}: not a cloze evaluation (protocol {ev.get('protocol_name', 'generative')!r}); "
                         "the pilot compares the cloze metrics acc, acc_norm and choice_nll")
    out = {m: {} for m in METRICS}
    for task in ev["tasks"]:
        rows = read_predictions(run_dir / "eval" / f"{task}.predictions.jsonl")
        for m in METRICS:
            out[m][task] = np.array([float(r[m]) for r in rows])
    return out


def main(root: str) -> None:
    root = pathlib.Path(root)
    groups: dict[str, list[dict]] = {}
    for rec in sorted(root.glob("*/*/*/*/record.json")):
        method = rec.relative_to(root).parts[0]
        groups.setdefault(method, []).append(load(rec.parent))
    if "zero_shot" not in groups:
        raise SystemExit(f"{root}: no zero_shot run (the reference every effect is measured from); "
                         "add experiments.table2.zero_shot: true and run the pilot's table2")
    zero = groups.pop("zero_shot")[0]
    methods = sorted(groups)
    few = [f"{n} ({len(groups[n])})" for n in methods if len(groups[n]) < 2]
    if not methods or few:
        raise SystemExit(f"{root}: a seed spread needs >= 2 seeds per trained method; got {', '.join(few) or 'none'}")
    print("| metric | method | seeds | mean | SD over seeds | vs zero-shot [95 %] | effect / SD | effect / half-width |")
    print("|---|---|---|---|---|---|---|---|")
    for m in METRICS:
        scale = 1.0 if m == "choice_nll" else 100.0
        for name in methods:
            runs = [r[m] for r in groups[name]]
            per_seed = [stats.macro(r) for r in runs]
            d = stats.paired_difference(runs, [zero[m]], n_boot=2000, seed=0)
            sd = float(np.std(per_seed, ddof=1))
            half = (d["hi"] - d["lo"]) / 2
            print(f"| {m} | {name} | {len(runs)} | {scale * np.mean(per_seed):.3f} | {scale * sd:.3f} | "
                  f"{scale * d['diff']:+.3f} [{scale * d['lo']:+.3f}, {scale * d['hi']:+.3f}] | "
                  f"{abs(d['diff']) / sd:.1f} | {abs(d['diff']) / half:.2f} |")
        if len(methods) == 2:
            a, b = ([r[m] for r in groups[n]] for n in methods)
            d = stats.paired_difference(a, b, n_boot=2000, seed=0)
            print(f"| {m} | {methods[0]} − {methods[1]} | | | | {scale * d['diff']:+.3f} "
                  f"[{scale * d['lo']:+.3f}, {scale * d['hi']:+.3f}] (width {scale * (d['hi'] - d['lo']):.3f}) | | |")


if __name__ == "__main__":
    main(sys.argv[1])
