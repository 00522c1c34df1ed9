"""Tables (CSV, Markdown, LaTeX) and figures (PNG, PDF) from run records.

`make_table(name, config, record_paths, out_prefix)` and `make_figure(...)` are what the
Snakemake report rules call. Accuracies are percentages; with several seeds a cell is
"mean ± std". Every output names its config and the runs it was built from.
"""
from __future__ import annotations

import json
import pathlib
import statistics
import textwrap

import pandas as pd

from harness import config as hc

QKV = ("q_proj", "k_proj", "v_proj")


def load_record(path) -> dict:
    """A run record, with eval filled from the run's eval/<suite>.json files when missing."""
    path = pathlib.Path(path)
    record = json.loads(path.read_text())
    for result in sorted((path.parent / "eval").glob("*.json")):
        record.setdefault("eval", {}).setdefault(result.stem, json.loads(result.read_text()))
    return record


def _accuracies(record: dict, suite: str) -> dict:
    """Task -> accuracy in percent (empty when the run has no results for the suite)."""
    tasks = record.get("eval", {}).get(suite, {}).get("tasks", {})
    return {task: 100.0 * res["accuracy"] for task, res in tasks.items()}


def runs_frame(records: list[dict], config: dict) -> pd.DataFrame:
    """One row per run: id parts, budget asked/reached (%), status and per-task accuracy (%)."""
    rows = []
    for rec in records:
        info = rec["run_info"]
        parts = hc.parse_run_id(info["run_id"])
        suite = config["datasets"][parts["dataset"]]["suite"]
        acc = _accuracies(rec, suite)
        tasks = config["eval"][suite]["tasks"]
        reached = info.get("budget_reached")
        rows.append({"run_id": info["run_id"], **parts, "suite": suite, "status": info.get("status"),
                     "reached": 100.0 if parts["method"] == hc.FULL_FT else
                     (None if reached is None else 100.0 * reached),
                     **{t: acc.get(t) for t in tasks},
                     "AVG": statistics.fmean(acc[t] for t in tasks) if all(t in acc for t in tasks) else None})
    return pd.DataFrame(rows)


def _cell(values) -> str:
    values = [v for v in values if v is not None and not pd.isna(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def _group(df: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    return [(k if isinstance(k, tuple) else (k,), g) for k, g in df.groupby(keys, sort=False, dropna=False)]


def _mean_avg(group: pd.DataFrame) -> float:
    vals = group["AVG"].dropna()
    return float(vals.mean()) if len(vals) else float("-inf")


def _row(label: dict, group: pd.DataFrame, tasks: list[str]) -> dict:
    """A table row: labels, #Params% reached, each task and AVG as mean ± std over seeds."""
    row = dict(label)
    row["#Params%"] = _cell(group["reached"].tolist())
    for col in tasks + ["AVG"]:
        row[col] = _cell(group[col].tolist())
    row["seeds"] = len(group)
    return row


def _best(df: pd.DataFrame, **where) -> pd.DataFrame:
    """Seed group (one budget) with the best mean AVG among rows matching `where`."""
    sel = df
    for key, value in where.items():
        sel = sel[sel[key] == value]
    if sel.empty:
        return sel
    groups = _group(sel, ["budget", "placement"])
    return max(groups, key=lambda kg: _mean_avg(kg[1]))[1]


def _table2(df, config):
    tasks = config["eval"][config["datasets"][config["experiments"]["table3"]["dataset"]]["suite"]]["tasks"]
    rows = []
    for (model,), mdf in _group(df, ["model"]):
        lora, dora, smt_best = _best(mdf, method="lora"), _best(mdf, method="dora"), _best(mdf, method="smt")
        entries = [("LoRA (Best)", lora), ("DoRA (Best)", dora)]
        if not dora.empty:
            entries.append(("SMT (at DoRA best budget)",
                            mdf[(mdf.method == "smt") & (mdf.budget == dora.budget.iloc[0])]))
        entries += [("SMT (Best)", smt_best), ("Full Fine-tuning", mdf[mdf.method == hc.FULL_FT])]
        rows += [_row({"Model": model, "Method": name}, g, tasks) for name, g in entries if not g.empty]
    return pd.DataFrame(rows)


def _table3(df, config):
    rows = []
    for (model, method), g in _group(df, ["model", "method"]):
        row = {"Model": model, "Method": method}
        cells = {b: _cell(bg["AVG"].tolist()) for (b,), bg in _group(g, ["budget"])}
        best = max(_group(g, ["budget"]), key=lambda kg: _mean_avg(kg[1]))[0][0]
        for budget, cell in cells.items():
            row[hc.budget_label(budget)] = cell + ("*" if budget == best and cell != "n/a" else "")
        rows.append(row)
    return pd.DataFrame(rows)


def _table4(df, config):
    exp = config["experiments"]["table4"]
    tasks = config["eval"][config["datasets"][exp["dataset"]]["suite"]]["tasks"]
    rows = []
    for place in exp["placements"]:
        spec = config["placements"][place]
        mods = set(hc.target_modules(spec))
        if spec.get("quotas"):
            mlp = sum(q["share"] for q in spec["quotas"].values() if not set(q["modules"]) & set(QKV))
        else:
            mlp = 0.0 if mods <= set(QKV) else 1.0
        label = {"Placement": spec.get("label", place), "MLP%": f"{mlp * exp['budget']:.2f}",
                 "Attention%": f"{(1 - mlp) * exp['budget']:.2f}"}
        rows.append(_row(label, df[df.placement == place], tasks))
    return pd.DataFrame(rows)


def _table5(df, config):
    exp = config["experiments"]["table5"]
    tasks = config["eval"][config["datasets"][exp["dataset"]]["suite"]]["tasks"]
    base = df[df.budget.isin(exp["budgets"])]
    rows = []
    for method in exp["methods"]:
        g = _best(base, method=method)
        if not g.empty:
            name = "SMT" if method == "smt" else f"{method.upper().replace('DORA', 'DoRA').replace('LORA', 'LoRA')} (Best)"
            rows.append(_row({"Model": exp["model"], "Method": name}, g, tasks))
    if exp["smt_best_budgets"]:
        g = _best(df, method="smt")
        rows.append(_row({"Model": exp["model"], "Method": "SMT (Best)"}, g, tasks))
    return pd.DataFrame(rows)


def _table6(df, config):
    exp = config["experiments"]["table6"]
    tasks = config["eval"][config["datasets"][exp["dataset"]]["suite"]]["tasks"]
    return pd.DataFrame([_row({"Model": exp["model"], "Param location": config["placements"][p].get("label", p)},
                              df[df.placement == p], tasks) for p in exp["placements"]])


def table1_frame(profiles: list[dict]) -> pd.DataFrame:
    """Table 1 from profile JSONs (harness.profile): #Params%, step time, peak memory, speed-up over full FT."""
    rows = []
    for prof in profiles:
        peak = prof.get("peak_memory_bytes")
        rows.append({"Method": prof["method"], "#Params%": round(100 * prof["budget_reached"], 2),
                     "Time/step (s)": prof.get("step_seconds_mean"),
                     "Peak memory (MB)": None if peak is None else round(peak / 2**20, 1),
                     "Memory measure": prof.get("peak_memory_kind", "n/a")})
    df = pd.DataFrame(rows)
    full = df[df.Method == hc.FULL_FT]["Time/step (s)"]
    df["Speed-up"] = [f"{full.iloc[0] / t:.2f}x" if len(full) and t else "n/a" for t in df["Time/step (s)"]]
    df["Time/step (s)"] = df["Time/step (s)"].map(lambda t: "n/a" if t is None or pd.isna(t) else f"{t:.3f}")
    return df


TABLE_BUILDERS = {"table2": _table2, "table3": _table3, "table4": _table4, "table5": _table5, "table6": _table6}
TITLES = {
    "table1": "Table 1: training step time and peak memory at the same budget",
    "table2": "Table 2: commonsense accuracy (%): best LoRA/DoRA over the sweep, SMT at DoRA's best budget, best SMT, full FT",
    "table3": "Table 3: average commonsense accuracy (%) per budget (% of all parameters); * = best on the line",
    "table4": "Table 4: SMT budget split between MLP and attention (average commonsense accuracy, %)",
    "table5": "Table 5: arithmetic reasoning accuracy (%)",
    "table6": "Table 6: SMT budget on K, Q or V alone, or QKV chosen automatically (accuracy, %)",
    "figure3": "Figure 3: average accuracy against trainable-parameter budget",
    "figure4": "Figure 4: where SMT placed trainable blocks (layer x Q/K/V)",
    "figure5": "Figure 5: share of SMT trainable parameters in Q, K and V",
}


def _latex(df: pd.DataFrame, caption: str) -> str:
    esc = lambda s: str(s).replace("\\", "\\textbackslash{}").replace("%", "\\%").replace("_", "\\_") \
        .replace("&", "\\&").replace("#", "\\#").replace("±", "$\\pm$")  # noqa: E731
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{esc(caption)}}}",
             "\\begin{tabular}{" + "l" * len(df.columns) + "}", "\\hline",
             " & ".join(esc(c) for c in df.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(esc(v) for v in row) + " \\\\" for row in df.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, name: str, config: dict, run_ids: list[str], out_prefix) -> list[pathlib.Path]:
    """Write <out_prefix>.csv (with '#' header lines), .md and .tex naming the config and the runs."""
    out = pathlib.Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = [TITLES[name], f"config: {config['name']} ({config.get('description', '')})",
              "runs: " + "; ".join(run_ids)]
    csv_path, md_path, tex_path = (out.with_suffix(s) for s in (".csv", ".md", ".tex"))
    csv_path.write_text("".join(f"# {h}\n" for h in header) + df.to_csv(index=False))
    md = [f"**{TITLES[name]}**", "", f"Config `{config['name']}`: {config.get('description', '')}", "",
          df.to_markdown(index=False), "", "Runs:", ""] + [f"- `{r}`" for r in run_ids]
    md_path.write_text("\n".join(md) + "\n")
    tex_path.write_text(f"% config: {config['name']}\n% runs: {'; '.join(run_ids)}\n"
                        + _latex(df, f"{TITLES[name]} (config {config['name']})"))
    return [csv_path, md_path, tex_path]


def make_table(name: str, config: dict, record_paths, out_prefix) -> pd.DataFrame:
    """Build table `name` from run records (profile JSONs for table1) and write CSV/MD/TeX."""
    if name == "table1":
        profiles = [json.loads(pathlib.Path(p).read_text()) for p in record_paths]
        df, ids = table1_frame(profiles), [str(p) for p in record_paths]
    elif name in TABLE_BUILDERS:
        records = [load_record(p) for p in record_paths]
        df = TABLE_BUILDERS[name](runs_frame(records, config), config)
        ids = [r["run_info"]["run_id"] for r in records]
    else:
        raise ValueError(f"unknown table {name!r}; use one of table1..table6")
    write_table(df, name, config, ids, out_prefix)
    return df


def _figure3(df):
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(df.model))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for (method,), g in _group(df[df.model == model], ["method"]):
            pts = [(b, bg.AVG.dropna()) for (b,), bg in _group(g, ["budget"])]
            pts = [(b, v.mean(), v.std() if len(v) > 1 else 0.0) for b, v in pts if len(v)]
            if pts:
                xs, ys, es = zip(*sorted(pts))
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method.upper().replace("DORA", "DoRA")
                            .replace("LORA", "LoRA"))
        ax.set_xlabel("trainable parameters (% of all model parameters)")
        ax.set_ylabel("average accuracy over tasks (%)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(title="method")
    return fig


def _plan(record_path):
    from smt import SelectionPlan

    return SelectionPlan.from_json(pathlib.Path(record_path).parent / "plan.json")


def _figure4(record_path):
    import matplotlib.pyplot as plt
    import numpy as np

    lmap = _plan(record_path).layer_map()
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
    return fig


def _figure5(record_path):
    import matplotlib.pyplot as plt

    per_type = _plan(record_path).summary()["per_type"]
    names = [t for t in QKV if t in per_type]
    shares = [100 * per_type[t]["share"] for t in names]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    bars = ax.bar([t.split("_")[0].upper() for t in names], shares, color=["#4c72b0", "#dd8452", "#55a868"])
    ax.bar_label(bars, fmt="%.1f%%")
    ax.set_ylim(0, 110)
    ax.set_xlabel("projection")
    ax.set_ylabel("share of SMT trainable parameters (%)")
    return fig


def make_figure(name: str, config: dict, record_paths, out_prefix) -> list[pathlib.Path]:
    """Draw figure `name` (figure3/4/5) from run records; write <out_prefix>.png and .pdf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [load_record(p) for p in record_paths]
    ids = [r["run_info"]["run_id"] for r in records]
    if name == "figure3":
        fig = _figure3(runs_frame(records, config))
        sweep = config["experiments"]["table3"]
        subtitle = (f"\n{sweep['dataset']} ({config['eval'][config['datasets'][sweep['dataset']]['suite']]['limit']}"
                    f" test examples per task); error bars: std over {len(config['seeds'])} seed(s)")
    elif name in ("figure4", "figure5"):
        fig = (_figure4 if name == "figure4" else _figure5)(record_paths[0])
        exp = config["experiments"][name]
        subtitle = f"\nSMT, {exp['model']}, {exp['dataset']}, budget {exp['budget']}%\nrun {ids[0]}"
    else:
        raise ValueError(f"unknown figure {name!r}; use figure3, figure4 or figure5")
    title = textwrap.fill(f"{TITLES[name]} (config {config['name']})", 70)
    fig.suptitle(title + subtitle, fontsize=10)
    fig.tight_layout()
    out = pathlib.Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, metadata=None if path.suffix == ".png" else {"CreationDate": None})
    plt.close(fig)
    return paths
