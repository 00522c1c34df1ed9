"""Table 1 on a GPU: the JSON of `python -m benchmarks.gpu_check` as a table beside the CPU one.

`write(json_path, out_prefix)` writes `<out_prefix>.md` and `<out_prefix>.csv`; `snakemake table1`
calls `write_beside(out_prefix)` (harness.reports, targets/table1.after_write), which reads `<results>/gpu/gpu_check.json` and
writes `<results>/tables/table1_gpu.{md,csv}`. A missing JSON, or one from a CPU (the check's
tiny smoke run), renders as "no GPU measurement yet", never as an error and never as GPU
figures. Plain Python (no pandas): the check renders its own table on a bare GPU machine.

    python -m harness.gpu_table [--json results/gpu/gpu_check.json] [--out results/tables/table1_gpu]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import pathlib

FORMAT = "smt-bench/gpu-check/v1"
NO_GPU = "no GPU measurement yet"
TITLE = "Table 1 on GPU: training step time and memory, LLaMA-7B shape"
COMMAND = "python -m benchmarks.gpu_check --out results/gpu"
COLUMNS = ["Method", "Params%", "Time/step (s)", "IQR (s)", "x Floor", "x Floor IQR", "SMT / this",
           "Speed-up vs Full FT", "CUDA max allocated (MB)", "Peak of this method (MB)", "Saved act. (MB)",
           "Grads + optimizer (MB)"]


def gpu_json_path(out_prefix) -> pathlib.Path:
    """results/gpu/gpu_check.json for an out_prefix results/tables/table1 (any results root)."""
    return pathlib.Path(out_prefix).parent.parent / "gpu" / "gpu_check.json"


def load(path, allow_cpu: bool = False) -> tuple[dict | None, str | None]:
    """(document, None) for a GPU measurement; (None, why not) when there is none to show.
    allow_cpu: also return a CPU smoke run (the check's own table of its own run, marked as such)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None, f"{path} does not exist"
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a GPU check JSON (format {doc.get('format')!r}, expected {FORMAT!r}); "
                         f"rebuild it with `{COMMAND}`")
    if (doc.get("device") or {}).get("type") != "cuda" and not allow_cpu:
        return None, (f"{path} is a {doc.get('mode', '?')} smoke run on {doc.get('device', {}).get('type', '?')} "
                      "(the check's CI mode), not a GPU measurement")
    return doc, None


def _mb(n):
    return "n/a" if n is None else f"{n / 2**20:,.0f}"


def _q(q, fmt="{:.3f}"):
    return "n/a" if not q else fmt.format(q["median"])


def _iqr(q, fmt="{:.2f}"):
    return "n/a" if not q else f"{fmt.format(q['q1'])}-{fmt.format(q['q3'])}"


def _paired(num, den):
    import statistics

    if not num or not den:
        return None
    r = sorted(a / b for a, b in zip(num, den))
    if len(r) == 1:
        return {"median": r[0], "q1": r[0], "q3": r[0]}
    q1, med, q3 = statistics.quantiles(r, n=4, method="inclusive")
    return {"median": med, "q1": q1, "q3": q3}


def table1_rows(t1: dict) -> list[dict]:
    """One row per arm of the check's Table 1 (floor first), then one per method that did not fit."""
    arms, rows = t1["arms"], []
    smt = arms.get("smt", {}).get("step_seconds")
    for name in t1["order"]:
        a = arms[name]
        mem, cuda = a.get("memory") or {}, a.get("cuda") or {}
        vs = _paired(smt, a["step_seconds"]) if smt and name != "smt" else None
        full = a.get("speedup_vs_full_ft")
        rows.append({
            "Method": a["label"], "Params%": f"{100 * a['budget_reached']:.2f}" if a.get("budget_reached") is not None
            else "n/a",
            "Time/step (s)": _q(a["step"]), "IQR (s)": _iqr(a["step"], "{:.3f}"),
            "x Floor": f"{a['ratio_to_floor']:.2f}", "x Floor IQR": _iqr(a["ratio_to_floor_paired"]),
            "SMT / this": "-" if vs is None else f"{vs['median']:.2f} [{vs['q1']:.2f}-{vs['q3']:.2f}]",
            "Speed-up vs Full FT": "n/a" if full is None else f"{full:.2f}x",
            "CUDA max allocated (MB)": _mb(cuda.get("max_allocated_bytes")),
            "Peak of this method (MB)": _mb(cuda.get("arm_peak_bytes")),
            "Saved act. (MB)": _mb(mem.get("saved_activation_bytes")),
            "Grads + optimizer (MB)": _mb((mem.get("grad_bytes") or 0) + (mem.get("optimizer_bytes") or 0)),
        })
    for name, why in (t1.get("not_fitting") or {}).items():
        if name in arms:
            continue
        rows.append({c: "" for c in COLUMNS} | {"Method": f"{name}: not measured", "Time/step (s)": why})
    return rows


def layer_rows(layer: dict) -> list[dict]:
    rows = []
    for c in layer.get("cases", []):
        if c.get("status") != "measured":
            rows.append({"shape": f"{c['out_features']} x {c['in_features']}", "blocks": f"{c['block_frac']:.0%}",
                         "frozen ms": c.get("status", "")})
            continue
        v = c["variants"]
        rows.append({"shape": f"{c['out_features']} x {c['in_features']}",
                     "blocks": f"{c['block_frac']:.0%} ({c['n_blocks']}, {c['distinct_columns']} columns)",
                     "frozen ms": f"{v['frozen']['median']:.3f} [{v['frozen']['q1']:.3f}-{v['frozen']['q3']:.3f}]",
                     "SMT ms": f"{v['smt']['median']:.3f} [{v['smt']['q1']:.3f}-{v['smt']['q3']:.3f}]",
                     "trainable ms": f"{v['trainable']['median']:.3f} [{v['trainable']['q1']:.3f}-"
                                     f"{v['trainable']['q3']:.3f}]",
                     "SMT / frozen": f"{c['smt_over_frozen']['median']:.3f} [{c['smt_over_frozen']['q1']:.3f}-"
                                     f"{c['smt_over_frozen']['q3']:.3f}]",
                     "SMT / trainable": f"{c['smt_over_trainable']['median']:.3f}",
                     "saved MiB (frozen / SMT / trainable)": " / ".join(
                         f"{c['saved_bytes'][k] / 2**20:.1f}" for k in ("frozen", "smt", "trainable"))})
    return rows


def _md_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(none)"]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |" for r in rows]
    return out


def render(doc: dict | None, why: str | None = None) -> tuple[str, list[dict]]:
    """(markdown, Table 1 rows) of a GPU check document; doc None: the "no GPU measurement yet" page."""
    if doc is None:
        md = [f"**{TITLE}**", "", f"{NO_GPU}: {why}.", "",
              f"Run `{COMMAND}` on a machine with one CUDA GPU (its time guard stops it within 8 minutes; it has not run on a GPU yet), commit "
              "`results/gpu/gpu_check.json`, then `snakemake table1` renders it here."]
        return "\n".join(md) + "\n", []
    dev, ver, parts = doc["device"], doc["versions"], doc["parts"]
    md = [f"**{TITLE}**", ""]
    if dev["type"] != "cuda":
        md += [f"**SMOKE RUN ON {dev['type'].upper()} at {doc['mode']} shapes: these are not GPU figures** "
               f"({NO_GPU}).", ""]
    md += [
          f"Device: {dev['name']} ({dev.get('count', 1)} visible, {(dev.get('memory_bytes') or 0) / 2**30:.0f} GiB), "
          f"torch {ver['torch']}, CUDA {ver['cuda']}, Python {ver['python']}, commit {str(ver.get('git_sha'))[:10]}"
          f"{' (dirty)' if ver.get('git_dirty') else ''}; measured {doc['created_at']} in {doc['elapsed_s']:.0f} s "
          f"(limit {doc['limit_s']:.0f} s), mode {doc['mode']}. Check passed: **{doc['passed']}**.", ""]
    ex = parts["exactness"]
    md += [f"Exactness on the device: **{ex['status']}**"]
    for c in ex.get("checks", []):
        err = f" (max error {c['max_error']:.2e}, tolerance {c['tolerance']:.0e})" if "max_error" in c else ""
        md.append(f"- {'ok' if c['passed'] else 'FAILED'}: {c['name']}{err}")
    py = ex.get("pytest") or {}
    if py:
        counts = py.get("counts") or {}
        md.append(f"- pytest -m cuda: {py['status']}" + (f" ({counts.get('passed', 0)} passed, {counts.get('failures', 0)} "
                                                          f"failed, {counts.get('skipped', 0)} skipped)" if counts else ""))
    lay = parts["layer"]
    md += ["", f"One layer, forward + backward ({lay.get('dtype', '?')}, {lay.get('timer', '?')}, median "
           f"[IQR] of {lay.get('samples', '?')} interleaved samples; goal {lay.get('goal', '')}: "
           f"{'met' if lay.get('goal_met') else 'not met'}): **{lay['status']}**", ""]
    md += _md_table(layer_rows(lay))
    t1 = parts["table1"]
    rows = []
    md += ["", f"Table 1 (training loop's TrainStep, side by side): **{t1['status']}**", ""]
    if t1["status"] == "measured":
        s = t1["settings"]
        md += [f"{t1['layers']} decoder layers ({'full depth' if t1['full_depth'] else 'NOT full depth'}), "
               f"{_count(t1['total_params'])} parameters, batch {t1['batch_size']} x {t1['seq_len']} tokens, "
               f"budget {t1['budget_pct']} %, {s['steps']} timed rounds after {s['warmup_steps']} untimed"
               f"{' (stopped early by the time guard)' if s.get('stopped_early') else ''}; CUDA max allocated: "
               "with every arm resident; peak of this method: its parameters + optimizer state + its step's rise.", ""]
        rows = table1_rows(t1)
        md += _md_table(rows)
        g = t1["ratios"]["goals"]
        md += ["", "Goals (issue 20): SMT step <= 0.85 x LoRA's: " + _yn(g.get("smt_step_le_0.85_lora"))
               + "; <= 0.60 x DoRA's: " + _yn(g.get("smt_step_le_0.60_dora"))
               + "; SMT's peak below LoRA's: " + _yn(g.get("smt_peak_below_lora")) + ". Paper (4 x A100): SMT "
               "0.94 x LoRA's and 0.92 x DoRA's step time, 14.6 x faster than full FT with offload."]
        md += ["", "Deviations: " + "; ".join(t1.get("deviations", []))]
    return "\n".join(md) + "\n", rows


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _yn(v):
    return "n/a" if v is None else ("yes" if v else "no")


def write(json_path, out_prefix, allow_cpu: bool = False) -> list[pathlib.Path]:
    """Render json_path (a missing file or a CPU run: "no GPU measurement yet", unless allow_cpu) to
    out_prefix.md and .csv."""
    doc, why = load(json_path, allow_cpu)
    md, rows = render(doc, why)
    out = pathlib.Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out.with_suffix(".md"), out.with_suffix(".csv")
    md_path.write_text(md)
    buf = io.StringIO()
    buf.write(f"# {TITLE}\n# source: {json_path}\n")
    if doc is None:
        buf.write(f"# {NO_GPU}: {why}\nstatus\n{NO_GPU}\n")
    else:
        if doc["device"]["type"] != "cuda":
            buf.write(f"# SMOKE RUN ON {doc['device']['type'].upper()} ({doc['mode']} shapes): not GPU figures\n")
        buf.write(f"# device: {doc['device']['name']}; torch {doc['versions']['torch']}; "
                  f"created {doc['created_at']}\n")
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    csv_path.write_text(buf.getvalue())
    return [md_path, csv_path]


def write_beside(out_prefix) -> list[pathlib.Path]:
    """For `snakemake table1` (out_prefix results/tables/table1): results/tables/table1_gpu.{md,csv}."""
    out_prefix = pathlib.Path(out_prefix)
    return write(gpu_json_path(out_prefix), out_prefix.with_name(out_prefix.name + "_gpu"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="results/gpu/gpu_check.json")
    p.add_argument("--out", default="results/tables/table1_gpu")
    a = p.parse_args(argv)
    for path in write(a.json, a.out):
        print(path)


if __name__ == "__main__":
    main()
