"""Snakemake's HTML report (`snakemake --report report.html`): what the report shows of each target.

* `table_page(csv, html)`: a table rendered as a standalone HTML page from its own CSV (the
  `# ` header lines that `harness.reports.write.write_table` writes: title, footnotes, deviations, config,
  runs; then the rows), so the report shows the table with its footnotes and deviations exactly
  as the .md/.tex do. Registered with `report()` in workflow/rules/report.smk.
* `caption_facts(config, target)`: what a caption says about a target that the config decides
  before anything runs (the runs, their seeds, n test examples per run, the suites), handed to
  the target's caption template (its module's CAPTION, written to a file by `write_caption`) as
  `snakemake.params.facts`; the numbers measured (n and seeds per row, intervals) are in the
  rendered table or drawn in the figure.
* A target's section of the report is its module's SECTION (harness.reports.Target.section).
"""
from __future__ import annotations

import html
import io
import pathlib

from harness import config as hc
from harness import reports

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
    """What the config says about a target's runs, for its caption: its module's `caption_facts`
    where it has one (Table 1: methods profiled, no test examples), else `run_facts`."""
    t = reports.target(target)
    if t.has("caption_facts"):
        return dict(t.module.caption_facts(config, t.exp(config)))
    return run_facts(config, reports.expand_runs(config, target), reports.eval_split(target))


def run_facts(config: dict, runs: list[str], split: str = "test", limit: int | None = None) -> dict:
    """Run count, seeds, and n examples per run of each suite (the eval limit per task times the
    tasks, or `limit` per task where given; 'the whole test set' without a limit)."""
    seeds = sorted({hc.parse_run_id(r)["seed"] for r in runs})
    per_suite = []
    for suite in dict.fromkeys(hc.suite_of(config, r) for r in runs):
        ev = config["eval"][suite]
        k, n = len(ev["tasks"]), limit or ev.get("limit")
        per_suite.append(f"{suite}: {n} per task x {k} tasks = {n * k} {split} examples per run" if n
                         else f"{suite}: the whole test set of each of {k} tasks")
    return {"runs": f"{len(runs)} run" + ("s" if len(runs) != 1 else ""), "seeds": ", ".join(map(str, seeds)) + f" ({len(seeds)} seed"
            + ("s" if len(seeds) != 1 else "") + ")", "n": "; ".join(per_suite), "config": config["name"]}


def write_caption(target: str, directory) -> pathlib.Path:
    """The target's caption (its module's CAPTION) as `<directory>/<target>.rst`, the file
    Snakemake's report reads; written only when its text changed."""
    path = pathlib.Path(directory) / f"{target}.rst"
    text = reports.target(target).caption
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path
