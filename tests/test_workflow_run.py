"""The tiny config's `all`, run for real through Snakemake: every table and figure, then a partial rerun.

This is the CI run of the DAG (a few minutes on 2 cores). Outputs go to a temporary directory:
the test rewrites config/test.yaml's `paths` and nothing else.
"""
import html.parser
import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

from harness import config as hc
from harness import forgetting as fg
from harness import reports
from harness.config import REPO_ROOT
from test_workflow_dag import job_counts, snakemake

TABLES = [f"table{i}" for i in range(1, 7)]
FIGURES = ["figure3", "figure4", "figure5"]
MIRROR = pathlib.Path(os.environ.get("SMT_DATA_ROOT") or REPO_ROOT / "../shared/data")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not MIRROR.is_dir(), reason=f"offline data mirror not found at {MIRROR} "
                                                              "(set SMT_DATA_ROOT); no network here")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-all")
    cfg = yaml.safe_load((REPO_ROOT / "config/test.yaml").read_text())
    cfg["paths"] = {k: str(out / k) for k in cfg["paths"]}
    cfg_file = out / "test.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    res = snakemake("--cores", "2", f"--configfile={cfg_file}", "all", timeout=1800)  # ~5 min; a hang guard
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    return out, cfg_file, reports.load_config(cfg)


def test_every_table_and_figure_is_written(tiny_run):
    out, _, cfg = tiny_run
    for name in TABLES:
        for ext in ("csv", "md", "tex"):
            assert (out / "results" / "tables" / f"{name}.{ext}").stat().st_size > 0
        md = (out / "results" / "tables" / f"{name}.md").read_text()
        assert "config: test (" in md and "Runs:" in md and "deviations:" in md  # names config, deviations, runs
    for name in FIGURES:
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000
    t1 = (out / "results" / "tables" / "table1.md").read_text()
    assert "n/a |" not in t1.split("Runs:")[0].split("|:")[-1]  # step times were measured


def test_every_run_has_an_ok_record_with_evaluation(tiny_run):
    out, _, cfg = tiny_run
    run_ids = {rid for target in reports.configured(cfg) for rid in reports.expand_runs(cfg, target)}
    assert run_ids
    for rid in run_ids:
        rec = json.loads((out / "results" / "runs" / rid / "record.json").read_text())
        assert rec["run_info"]["status"] == "ok", rid
        zero_shot = hc.parse_run_id(rid)["method"] == hc.ZERO_SHOT  # the base model: no step
        assert rec["train_info"]["steps"] == (0 if zero_shot else cfg["train"]["max_steps"]), rid
        assert rec["meta_info"]["data_checksums"]["train_sha256"]
        suite = hc.suite_of(cfg, rid)
        tasks = cfg["eval"][suite]["tasks"]
        ev = json.loads((out / "results" / "runs" / rid / "eval" / f"{suite}.json").read_text())
        assert ev, rid
        for task in tasks:
            preds = out / "results" / "runs" / rid / "eval" / f"{task}.predictions.jsonl"
            assert len(preds.read_text().splitlines()) == cfg["eval"][suite]["limit"], preds


def test_forgetting_is_measured_for_every_run_and_shown(tiny_run):
    out, _, cfg = tiny_run
    base = json.loads(fg.base_path(out / "results", "tiny", "gsm8k_test").read_text())
    assert base["n_texts"] == fg.N_TEXTS and base["n_tokens"] > 0
    for rid in reports.expand_runs(cfg, "table2"):
        after = json.loads((out / "results" / "runs" / rid / "eval" / fg.FILE).read_text())
        assert after["texts_sha256"] == base["texts_sha256"], rid
        if hc.parse_run_id(rid)["method"] == hc.ZERO_SHOT:  # nothing trained: exactly the base value
            assert after["mean_token_loss"] == pytest.approx(base["mean_token_loss"], abs=1e-6)
    md = (out / "results" / "tables" / "table2.md").read_text()
    assert "forgetting" in md.splitlines()[2]  # the header row of Table 2
    assert fg.NOT_MEASURED not in md.split("Runs:")[0]  # every run evaluated from now on is measured
    data = (out / "figures" / "figure_pareto.data.csv").read_text()
    header = next(line for line in data.splitlines() if not line.startswith("#"))  # after title, caption, commits
    assert "forgetting" in header and "not measured" not in data


PROBE = """<script>
async function smtProbe() {
  const out = document.createElement('pre'); out.id = 'smt-probe';
  for (const cat of Object.keys(categories)) {
    for (const sub of Object.keys(categories[cat])) {
      app.setView({navbarMode: 'menu'}); await new Promise(r => setTimeout(r, 300));
      app.setView({navbarMode: 'subcategory', category: cat, subcategory: sub});
      await new Promise(r => setTimeout(r, 500));
      out.textContent += '\\n=== ' + cat + ' / ' + sub + '\\n' + document.querySelector('#app').innerText;
    }
  }
  document.body.appendChild(out);
}
window.addEventListener('load', () => setTimeout(smtProbe, 1000));
</script>"""


class _Visible(html.parser.HTMLParser):
    """The text a reader sees: everything outside <script> and <style>."""

    def __init__(self):
        super().__init__()
        self.skip, self.parts = 0, []

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def test_snakemake_html_report_renders_in_a_headless_browser(tiny_run):
    out, cfg_file, cfg = tiny_run
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
    assert browser, "no chromium: the README's Set up installs it (apt-get install -y chromium)"
    report = out / "report.html"
    res = snakemake(f"--configfile={cfg_file}", "--report", str(report), timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    raw = report.read_text()
    for target in reports.configured(cfg):  # every table and figure of the config is in the report
        exts = ("html", "csv") if target.startswith("table") else ("png",)
        for ext in exts:
            assert f"{target}.{ext}" in raw, f"{target}.{ext} not in {report}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=300)
    assert dom.returncode == 0, dom.stderr[-3000:]
    parser = _Visible()
    parser.feed(dom.stdout)
    visible = " ".join(" ".join(parser.parts).split())
    # drawn by the report's JavaScript: the workflow description and one menu entry per paper table
    assert "Sparse Matrix Tuning" in visible and "System Message" not in visible, visible[:2000]
    for category in dict.fromkeys(reports.target(t).section[0] for t in reports.configured(cfg)):
        assert category in visible, (category, visible[:3000])
    # a copy that, once the report's own JavaScript has drawn it, opens every section in turn and
    # appends what each one shows (the report has no URL per section)
    probe = out / "report-probe.html"
    end = raw.rindex("</body>")  # the page's own end (embedded results may hold other "</body>")
    probe.write_text(raw[:end] + PROBE + raw[end:])
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=300)
    assert dom.returncode == 0, dom.stderr[-3000:]
    assert 'id="smt-probe"' in dom.stdout, "the sections were not drawn (JavaScript did not run)"
    shown = {}
    for block in dom.stdout.split('id="smt-probe"')[1].split("=== ")[1:]:
        section = block.split("\n")[0]
        shown[section] = set(re.findall(r"^(\w+)\t", block, re.M)) | set(re.findall(r"^\n?(\w+)$", block, re.M))
    for target in reports.configured(cfg):  # each table and figure is listed in its paper table's section
        category, subcategory = reports.target(target).section
        assert target in shown.get(f"{category} / {subcategory}", set()), (target, sorted(shown))
    for section in ("Table 2: commonsense at equal budget / table", "Table 6: K, Q, V placement / table"):
        assert "table, rendered" in dom.stdout.split(section)[1].split("=== ")[0]
    shot = out / "report.png"
    res = subprocess.run([browser, *flags, "--window-size=1400,1000", f"--screenshot={shot}", report.as_uri()],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-3000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.std() > 0.02  # not a blank page
    page = (out / "results" / "tables" / "table2.html").read_text()  # the rendered table the report embeds
    assert "<table" in page and "deviations:" in page and "forgetting" in page and "config: test" in page


def test_nothing_left_to_do_and_a_lost_output_is_redone_alone(tiny_run):
    out, cfg_file, cfg = tiny_run
    res = snakemake("-n", f"--configfile={cfg_file}", "all")
    assert res.returncode == 0 and re.search(r"Nothing to be done", res.stdout + res.stderr), res.stdout[-2000:]
    # a lost table and one lost evaluation (Snakemake does not redo a missing intermediate
    # file while everything downstream of it is present): only those two jobs run again
    rid = reports.expand_runs(cfg, "table6")[0]
    (out / "results" / "runs" / rid / "eval" / f"{hc.suite_of(cfg, rid)}.json").unlink()
    (out / "results" / "tables" / "table6.md").unlink()
    res = snakemake("-n", f"--configfile={cfg_file}", "all")
    assert res.returncode == 0, res.stderr[-2000:]
    counts = job_counts(res.stdout)
    assert counts.get("evaluate") == 1 and counts.get("table6") == 1, counts
    assert not {"train", "prepare_model", "prepare_data", "table2"} & set(counts), counts

