"""Writing a target: a table as CSV (with '#' header lines), Markdown and LaTeX, a figure as PNG,
PDF and the data it draws (`.data.csv`); under each: footnotes, the runs' deviations, the config."""
from __future__ import annotations

import pathlib
import re
import textwrap

import pandas as pd

from harness import provenance
from harness.reports.cells import note_number, unnumbered
from harness.reports.runs import Run


def latex(df: pd.DataFrame, caption: str, notes: list[str]) -> str:
    esc = lambda s: str(s).replace("\\", "\\textbackslash{}").replace("%", "\\%").replace("_", "\\_") \
        .replace("&", "\\&").replace("#", "\\#").replace("±", "$\\pm$").replace("†", "$^\\dagger$") \
        .replace("−", "$-$").replace("≈", "$\\approx$")  # noqa: E731
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{esc(caption)}}}",
             "\\begin{tabular}{" + "l" * len(df.columns) + "}", "\\hline",
             " & ".join(esc(c) for c in df.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(esc(v) for v in row) + " \\\\" for row in df.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}"]
    lines += [f"\\\\\\footnotesize {esc(n)}" for n in notes]
    lines += ["\\end{table}"]
    return "\n".join(lines) + "\n"


def footer(df: pd.DataFrame, config: dict) -> list[str]:
    notes = df.attrs.get("footnotes", [])
    lines = [n if unnumbered(n) else f"{note_number(notes, n)}. {n}" for n in notes]
    devs = df.attrs.get("deviations", [])
    lines.append("deviations: " + ("; ".join(devs) if devs else "none recorded"))
    if df.attrs.get("provenance"):  # the commits the records ran at (harness.provenance)
        lines.append(df.attrs["provenance"])
    if config.get("protocol") == "cloze":  # the declared endpoint (config primary_metric) every number here is
        metric = config.get("primary_metric") or "acc_norm"
        lines.append(f"primary endpoint: cloze {metric} (config primary_metric, declared before the study ran), the "
                     "macro average over the tasks; every accuracy, interval, difference and best mark here is of it")
    lines.append(f"config: {config['name']} ({config.get('description', '')})")
    return lines


def write_table(df: pd.DataFrame, title: str, config: dict, run_ids: list[str], out_prefix) -> list[pathlib.Path]:
    """Write <out_prefix>.csv (with '#' header lines), .md and .tex: title, footnotes, deviations, config, runs."""
    out = pathlib.Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = footer(df, config)
    csv_path, md_path, tex_path = (out.with_suffix(s) for s in (".csv", ".md", ".tex"))
    header = [title] + lines + ["runs: " + "; ".join(run_ids)]
    csv_path.write_text("".join(f"# {h}\n" for h in header) + df.to_csv(index=False))
    md = [f"**{title}**", "", df.to_markdown(index=False), ""] + [f"{line}  " for line in lines] \
        + ["", "Runs:", ""] + [f"- `{r}`" for r in run_ids]
    md_path.write_text("\n".join(md) + "\n")
    tex_path.write_text(f"% config: {config['name']}\n% runs: {'; '.join(run_ids)}\n"
                        + latex(df, f"{title} (config {config['name']})", lines[:-1]))
    return [csv_path, md_path, tex_path]


def deviations(runs: list[Run]) -> list[str]:
    """The runs' recorded deviations: training's (run_info) and evaluation's (eval/<suite>.json)."""
    return list(dict.fromkeys([d for r in runs for d in (r.info.get("deviations") or [])]
                              + [d for r in runs for e in r.evals.values() for d in (e.get("deviations") or [])]))


# the tail of every figure's report caption (its module's CAPTION): the deviations are kept out of
# the PNG (one provenance line there) and stated here and in the .data.csv header
DEVIATIONS_CAPTION = """
**Deviations from the paper** (the config's; the ones each drawn run recorded, its model's and method's included, head ``{{ snakemake.params.target }}.data.csv``): {{ snakemake.config.get("deviations", []) | join("; ") }}
"""


def plt():
    """matplotlib.pyplot with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def write_figure(fig, frame: pd.DataFrame, caption: str, title: str, config: dict, runs: list[Run],
                 out_prefix) -> list[pathlib.Path]:
    """Write <out_prefix>.png, .pdf and the data drawn as <out_prefix>.data.csv. The image carries
    the short title above the axes and, below them, the drawn caption (what the points and bars
    are, n and seeds) and ONE provenance line (config, commits, how many deviations); the
    deviations themselves are in the .data.csv header and in the report's caption, not drawn."""
    devs = deviations(runs)
    trained = provenance.trained_at([r.record for r in runs])
    out = pathlib.Path(out_prefix)
    width, height = fig.get_figwidth(), fig.get_figheight()
    wrapped = textwrap.fill(f"{title} (config {config['name']})", int(width * 13))
    commits = re.sub(r" runs?\)", ")", trained.split(" (meta_info")[0]).replace("records trained at: ", "trained at ") \
        if trained else ""  # the whole line (run counts, what +dirty means) heads the .data.csv
    prov = " · ".join([f"config {config['name']}",
                       f"{len(devs)} deviation{'s' if len(devs) != 1 else ''} from the paper"
                       + (f" (in {out.name}.data.csv)" if devs else "")] + ([commits] if commits else []))
    note = textwrap.fill(caption, int(width * 16)) + "\n" + textwrap.shorten(prov, int(width * 20), placeholder=" ...")
    title_in, note_in = 0.18 * (wrapped.count("\n") + 1) + 0.1, 0.12 * (note.count("\n") + 1) + 0.1
    fig.set_figheight(height + title_in + note_in)  # room above and below the axes for the text
    total = fig.get_figheight()
    fig.suptitle(wrapped, fontsize=10, y=1 - 0.05 / total, va="top")
    fig.text(0.01, 0.05 / total, note, fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, note_in / total, 1, 1))  # tight_layout keeps clear of the suptitle itself
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, metadata=None if path.suffix == ".png" else {"CreationDate": None})
    plt().close(fig)
    data = out.with_name(out.name + ".data.csv")
    data.write_text(f"# {title} (config {config['name']})\n# {caption}\n"
                    + (f"# {trained}\n" if trained else "")
                    + f"# deviations: {'; '.join(devs) if devs else 'none recorded'}\n" + frame.to_csv(index=False))
    return paths
