"""tools/adopt_records.py: a committed record is adopted (dated so that Snakemake keeps it) only when
its train job would run exactly the same now, and its outputs are dated in the DAG's order."""
import json
import os
import pathlib
import shutil
import sys

import pytest
import yaml

from harness import config as hc
from harness import reports

sys.path.insert(0, str(hc.REPO_ROOT / "tools"))
import adopt_records  # noqa: E402

RUN = "smollm2-135m/commonsense/lora@lr0.0003/b0.84/qkvud/s0"  # committed, status ok


@pytest.fixture()
def study(tmp_path, monkeypatch):
    """The default config with its results and resources in tmp_path: one committed run (record,
    val/ and eval/ files), the sweep's choice, and stand-in prepared files whose checksums are the
    record's own (monkeypatched: preparing SmolLM2 takes minutes)."""
    cfg = yaml.safe_load((hc.REPO_ROOT / "config/config.yaml").read_text())
    cfg["paths"] = {"resources": str(tmp_path / "resources"), "results": str(tmp_path / "results"),
                    "figures": str(tmp_path / "figures"), "logs": str(tmp_path / "logs"),
                    "benchmarks": str(tmp_path / "results/benchmarks")}
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    src = hc.REPO_ROOT / "results/runs" / RUN
    run_dir = tmp_path / "results/runs" / RUN
    shutil.copytree(src, run_dir)
    (tmp_path / "results/lr_sweep").mkdir(parents=True)
    shutil.copy(hc.REPO_ROOT / "results/lr_sweep/choice.json", tmp_path / "results/lr_sweep/choice.json")
    (tmp_path / "resources/models/smollm2-135m").mkdir(parents=True)
    (tmp_path / "resources/models/smollm2-135m/prepared.json").write_text("{}")
    (tmp_path / "resources/data/commonsense").mkdir(parents=True)
    (tmp_path / "resources/data/commonsense/train.json").write_text("[]")
    meta = json.loads((src / "record.json").read_text())["meta_info"]
    checks = {"model": dict(meta["model_checksums"]), "data": dict(meta["data_checksums"])}
    monkeypatch.setattr(adopt_records, "model_checksums", lambda path: checks["model"])
    monkeypatch.setattr(adopt_records, "data_checksums", lambda path: checks["data"])
    for f in run_dir.rglob("*"):  # as a clone leaves them: older than the prepared files
        os.utime(f, (1e9, 1e9))
    return cfg_file, run_dir, checks


def test_a_record_that_would_train_the_same_is_adopted(study):
    cfg_file, run_dir, _ = study
    ok, why = adopt_records.check_record(reports.load_config(cfg_file), run_dir / "record.json", {})
    assert ok, why


def test_other_data_is_refused_and_named(study):
    cfg_file, run_dir, checks = study
    checks["data"]["train_sha256"] = "0" * 64
    ok, why = adopt_records.check_record(reports.load_config(cfg_file), run_dir / "record.json", {})
    assert not ok and "data.train_sha256" in why


def test_another_training_config_is_refused_and_named(study):
    cfg_file, run_dir, _ = study
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["train"]["max_steps"] = 151
    cfg_file.write_text(yaml.safe_dump(cfg))
    ok, why = adopt_records.check_record(reports.load_config(cfg_file), run_dir / "record.json", {})
    assert not ok and "max_steps" in why


def test_a_failed_record_is_not_adopted(study):
    cfg_file, run_dir, _ = study
    record = json.loads((run_dir / "record.json").read_text())
    record["run_info"]["status"] = "failed"
    (run_dir / "record.json").write_text(json.dumps(record))
    ok, why = adopt_records.check_record(reports.load_config(cfg_file), run_dir / "record.json", {})
    assert not ok and "failed" in why


def test_outputs_are_dated_in_the_dags_order(study):
    cfg_file, run_dir, _ = study
    assert adopt_records.main(["--configfile", str(cfg_file)]) == 0
    record = (run_dir / "record.json").stat().st_mtime
    val = [f.stat().st_mtime for f in (run_dir / "val").rglob("*") if f.is_file()]
    ev = [f.stat().st_mtime for f in (run_dir / "eval").rglob("*") if f.is_file()]
    choice = (cfg_file.parent / "results/lr_sweep/choice.json").stat().st_mtime
    prepared = (cfg_file.parent / "resources/models/smollm2-135m/prepared.json").stat().st_mtime
    assert val and ev
    assert prepared <= record < min(val) and max(val) < choice < min(ev)


def test_a_refused_record_keeps_its_date(study):
    cfg_file, run_dir, checks = study
    checks["model"]["files_sha256"] = {"model.safetensors": "0" * 64}
    assert adopt_records.main(["--configfile", str(cfg_file)]) == 0
    assert (run_dir / "record.json").stat().st_mtime == 1e9
