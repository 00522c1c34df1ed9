"""The tiny config's `all`, run for real through Snakemake: every table and figure, then a partial rerun.

This is the CI run of the DAG (a few minutes on 2 cores). Outputs go to a temporary directory:
the test rewrites config/test.yaml's `paths` and nothing else.
"""
import json
import os
import pathlib
import re

import pytest
import yaml

from harness import config as hc
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
    return out, cfg_file, hc.load_config(cfg)


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
    run_ids = {rid for target in reports.TARGETS for rid in reports.expand_runs(cfg, target)}
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
