"""Snakemake's HTML report (`snakemake --report report.html`): what the report shows of each target.

* `table_page(csv, html)`: a table rendered as a standalone HTML page from its own CSV (the
  `# ` header lines that `harness.reports.write.write_table` writes: title, footnotes, deviations, config,
  runs; then the rows), so the report shows the table with its footnotes and deviations exactly
  as the .md/.tex do. Registered with `report()` in workflow/rules/report.smk.
* `caption_facts(config, target)`: what a caption says about a target that the config decides
  before anything runs (the runs, their seeds, n test examples per run, the suites), handed to
  the caption templates workflow/report/<target>.rst as `snakemake.params.facts`; the numbers
  measured (n and seeds per row, intervals) are in the rendered table or drawn in the figure.
* `REPORT_GROUPS`: target -> (category, subcategory): the report's sections follow the paper's tables.
"""
from __future__ import annotations

import html
import io
import pathlib

from harness import config as hc
from harness import reports

# paper table -> the targets that show it; the figures sit with the table whose runs they draw
REPORT_GROUPS = {
    "claims": ("Claims of the paper: verdicts", "table"),
    "table1": ("Table 1: step time and memory", "table"),
    "lr_sweep": ("Learning rates tuned per method", "table: the sweep on the validation split"),
    "table2": ("Table 2: commonsense at equal budget", "table"),
    "figure_pareto": ("Table 2: commonsense at equal budget", "figure: accuracy against cost and forgetting"),
    "table3": ("Table 3: budget sweep", "table"),
    "figure3": ("Table 3: budget sweep", "figure 3: accuracy against budget"),
    "figure_val_loss": ("Table 3: budget sweep", "figure: validation loss against step"),
    "table4": ("Table 4: MLP and attention split", "table"),
    "figure_table4": ("Table 4: MLP and attention split", "figure"),
    "table5": ("Table 5: arithmetic", "table"),
    "table6": ("Table 6: K, Q, V placement", "table"),
    "figure_table6": ("Table 6: K, Q, V placement", "figure"),
    "figure4": ("Table 6: K, Q, V placement", "figure 4: layer x Q/K/V map of SMT's blocks"),
    "figure5": ("Table 6: K, Q, V placement", "figure 5: trainable parameters per Q/K/V"),
    "table7": ("Table 7: SMT ablations", "table"),
    "figure7": ("Table 7: SMT ablations", "figure 7"),
}

_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 2px 6px; text-align: left; white-space: nowrap; }
th { background: #eee; }
.notes li, .meta { font-size: 12px; }
"""


def read_table_csv(csv_path) -> tuple[list[str], "object"]:
    """(the `# ` header lines, the rows as a DataFrame of strings) of a table CSV."""
    import pandas as pd

    text = pathlib.Path(csv_path).read_text()
    lines = text.splitlines(keepends=True)
    header = []
    while lines and lines[0].startswith("# "):
        header.append(lines.pop(0)[2:].rstrip("\n"))
    if not header:
        raise ValueError(f"{csv_path}: no '# ' header lines (title, footnotes, deviations, config, runs); "
                         f"it was not written by harness.reports.write.write_table: rebuild the table")
    frame = pd.read_csv(io.StringIO("".join(lines)), dtype=str, keep_default_na=False)
    return header, frame


def table_page(csv_path, html_path) -> pathlib.Path:
    """Write the table of `csv_path` as a standalone HTML page (title, rows, footnotes, deviations,
    config, runs) to `html_path`."""
    header, frame = read_table_csv(csv_path)
    title, rest = header[0], header[1:]
    runs = next((h[len("runs: "):].split("; ") for h in rest if h.startswith("runs: ")), [])
    devs = [h for h in rest if h.startswith("deviations: ")]
    cfg = [h for h in rest if h.startswith("config: ")]
    notes = [h for h in rest if not h.startswith(("runs: ", "deviations: ", "config: "))]
    esc = html.escape
    body = [f"<h2>{esc(title)}</h2>", frame.to_html(index=False, escape=True, border=0)]
    if notes:
        body.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    body += [f'<p class="meta">{esc(line)}</p>' for line in devs + cfg]
    body.append(f'<details class="meta"><summary>Runs ({len(runs)})</summary><ul>'
                + "".join(f"<li><code>{esc(r)}</code></li>" for r in runs) + "</ul></details>")
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    out = pathlib.Path(html_path)
    out.write_text(page)
    return out


def caption_facts(config: dict, target: str) -> dict:
    """What the config says about a target's runs, for its caption: run count, seeds, and n test
    examples per run of each suite (the eval limit per task times the tasks; 'the whole test set'
    without a limit). Table 1 profiles methods on training batches: no test examples."""
    if target == "table1":
        exp = config["experiments"]["table1"]
        return {"runs": f"{len(exp['methods'])} methods profiled side by side", "seeds": "-", "n": "-",
                "config": config["name"]}
    runs = reports.expand_runs(config, target)
    seeds = sorted({hc.parse_run_id(r)["seed"] for r in runs})
    per_suite = []
    for suite in dict.fromkeys(hc.suite_of(config, r) for r in runs):
        ev = config["eval"][suite]
        k, limit, kind = len(ev["tasks"]), ev.get("limit"), "test"
        if getattr(reports.target(target).module, "EVAL_SPLIT", "test") == "validation":  # the lr sweep
            limit, kind = config["experiments"]["lr_sweep"]["validation"]["limit"], "validation"
        per_suite.append(f"{suite}: {limit} per task x {k} tasks = {limit * k} {kind} examples per run" if limit
                         else f"{suite}: the whole test set of each of {k} tasks")
    return {"runs": f"{len(runs)} run" + ("s" if len(runs) != 1 else ""), "seeds": ", ".join(map(str, seeds)) + f" ({len(seeds)} seed"
            + ("s" if len(seeds) != 1 else "") + ")", "n": "; ".join(per_suite), "config": config["name"]}
