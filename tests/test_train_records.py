"""Records that cannot lie: config-keyed resume, failures and divergence kept, attempts history."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import harness.records as records_mod
import harness.checkpoint as checkpoint_mod
import harness.step as step_mod
import harness.train as train_mod
import harness.train_data as train_data
from harness.models import load_model
from harness.records import failed_runs, failed_runs_report, fingerprint, fingerprint_inputs, meta_info, read_attempts
from harness.checkpoint import CKPT_DIR, CKPT_FILE
from harness.step import DivergedError
from harness.train import train
from test_train_loop import LR, die_after_checkpoint, expected_lr, make_cfg

REPO = pathlib.Path(__file__).resolve().parents[1]


def record(path):
    return json.loads((pathlib.Path(path) / "record.json").read_text())


# ---- fingerprint -----------------------------------------------------------------------------
def test_fingerprint_ignores_paths_threads_and_descriptions_but_not_what_trains(tiny_env, tmp_path):
    cfg = make_cfg(tiny_env, "lora")
    meta = meta_info(cfg["model"]["path"], cfg["dataset"]["path"])
    fp = fingerprint(fingerprint_inputs(cfg, meta, 1))
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_env, moved)
    same = make_cfg(moved, "lora", threads=2, checkpoint_every=5)
    same.update(run_id="other/id", config_name="renamed", deviations=["another note"])
    same["model"]["name"] = "renamed-model"
    assert fingerprint(fingerprint_inputs(same, meta_info(same["model"]["path"], same["dataset"]["path"]), 1)) == fp
    for change in ({"method": {**cfg["method"], "lr": 1e-3}}, {"seed": 1}, {"budget": 0.1},
                   {"train": {**cfg["train"], "max_steps": 13}}):
        assert fingerprint(fingerprint_inputs({**cfg, **change}, meta, 1)) != fp, change
    assert fingerprint(fingerprint_inputs(cfg, meta, 2)) != fp  # code version
    recs = json.loads((moved / "train.json").read_text())
    (moved / "train.json").write_text(json.dumps(recs[::-1]))  # same records, other content/order
    assert fingerprint(fingerprint_inputs(same, meta_info(same["model"]["path"], same["dataset"]["path"]), 1)) != fp


def test_changed_config_starts_afresh_with_the_new_lr_throughout(tiny_env, tmp_path, monkeypatch):
    """Kill after a checkpoint, change lr, rerun: a fresh start, saying why, and the new lr everywhere."""
    old = make_cfg(tiny_env, "lora", steps=8, checkpoint_every=3)
    die_after_checkpoint(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        train(old, tmp_path / "run")
    assert (tmp_path / "run" / CKPT_DIR / CKPT_FILE).is_file()
    new = make_cfg(tiny_env, "lora", steps=8, checkpoint_every=3)
    new["method"]["lr"] = 1e-2
    rec = train(new, tmp_path / "run")
    info, attempt = rec["train_info"], rec["run_info"]["attempts"][-1]
    assert "resumed_from_step" not in info and attempt["resumed_from_step"] is None
    assert "method.lr" in attempt["fresh_start_reason"] and "fingerprint" in attempt["fresh_start_reason"]
    assert [c["lr"] for c in info["loss_curve"]] == pytest.approx([expected_lr(1e-2, s, 8, 2) for s in range(8)])
    assert info["loss_curve"] == train(new, tmp_path / "clean")["train_info"]["loss_curve"]
    assert rec["run_info"]["config"]["method"]["lr"] == 1e-2
    assert [a["status"] for a in read_attempts(tmp_path / "run")] == ["interrupted", "ok"]


def test_moved_files_and_other_threads_still_resume(tiny_env, tmp_path, monkeypatch):
    cfg = make_cfg(tiny_env, "lora", steps=6, checkpoint_every=2)
    die_after_checkpoint(monkeypatch, 4)
    real_meta = records_mod.meta_info

    def meta_at(sha, dirty):
        return lambda *a, **k: {**real_meta(*a, **k), "git_sha": sha, "git_dirty": dirty}

    monkeypatch.setattr(records_mod, "meta_info", meta_at("a" * 40, True))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    monkeypatch.setattr(records_mod, "meta_info", meta_at("b" * 40, False))  # a commit between attempts
    moved = tmp_path / "moved-env"
    shutil.copytree(tiny_env, moved)
    again = make_cfg(moved, "lora", steps=6, checkpoint_every=3, threads=2)
    rec = train(again, tmp_path / "run")
    assert rec["train_info"]["resumed_from_step"] == 4
    assert rec["run_info"]["attempts"][-1]["fresh_start_reason"] is None
    # the record's meta_info is the last attempt's; each attempt keeps the code it ran
    assert rec["meta_info"]["git_sha"] == "b" * 40
    assert [(a["git_sha"], a["git_dirty"]) for a in read_attempts(tmp_path / "run")] == [("a" * 40, True), ("b" * 40, False)]


def test_smt_plan_of_another_fingerprint_is_not_reused(tiny_env, tmp_path, monkeypatch):
    cfg = make_cfg(tiny_env, "smt", steps=8, checkpoint_every=5)
    die_after_checkpoint(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    plan_file = checkpoint_mod.latest_dir(tmp_path / "run") / "method" / "plan.json"  # the checkpoint's plan
    plan = json.loads(plan_file.read_text())
    assert plan["meta"]["run_fingerprint"] == record(tmp_path / "run")["run_info"]["fingerprint"]
    plan["meta"]["run_fingerprint"] = "0" * 64  # a plan left by another run
    plan_file.write_text(json.dumps(plan))
    rec = train(cfg, tmp_path / "run")
    reason = rec["run_info"]["attempts"][-1]["fresh_start_reason"]
    assert "plan.json" in reason and "resumed_from_step" not in rec["train_info"]
    assert [c["phase"] for c in rec["train_info"]["loss_curve"][:3]] == ["warmup"] * 3  # warm-up redone
    out_plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert out_plan["meta"]["run_fingerprint"] == rec["run_info"]["fingerprint"]


# ---- divergence and failure ------------------------------------------------------------------
def test_diverged_run_keeps_its_curve_and_is_never_resumed(tiny_env, tmp_path, monkeypatch):
    cfg = make_cfg(tiny_env, "lora", steps=8, checkpoint_every=2)
    real_loss, calls = step_mod.causal_lm_loss, {"n": 0}

    def nan_at_step_6(model, batch, **k):
        calls["n"] += 1
        loss = real_loss(model, batch, **k)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(step_mod, "causal_lm_loss", nan_at_step_6)
    with pytest.raises(DivergedError, match="non-finite loss .* step 6"):
        train(cfg, tmp_path / "run")
    rec = record(tmp_path / "run")
    assert rec["run_info"]["status"] == "diverged" and "lower the learning rate" in rec["run_info"]["error"]
    assert [c["step"] for c in rec["train_info"]["loss_curve"]] == [1, 2, 3, 4, 5]
    assert rec["train_info"]["steps"] == 5 and rec["run_info"]["traceback"]
    assert not (tmp_path / "run" / CKPT_DIR).exists()  # the step-4 checkpoint is gone
    monkeypatch.setattr(step_mod, "causal_lm_loss", real_loss)
    cfg["method"]["lr"] = LR["lora"] / 10
    again = train(cfg, tmp_path / "run")
    attempts = again["run_info"]["attempts"]
    assert again["run_info"]["status"] == "ok" and "resumed_from_step" not in again["train_info"]
    assert [a["status"] for a in attempts] == ["diverged", "ok"] and attempts[0]["steps_reached"] == 5
    assert "diverged" in attempts[1]["fresh_start_reason"]
    assert [c["lr"] for c in again["train_info"]["loss_curve"]] == pytest.approx(
        [expected_lr(LR["lora"] / 10, s, 8, 2) for s in range(8)])


def test_failed_runs_are_listed_with_the_command_that_retrains_them(tiny_env, tmp_path):
    results = tmp_path / "results"
    ok = make_cfg(tiny_env, "lora", steps=2)
    train(ok, results / "runs" / "a" / "ok")
    bad = make_cfg(tiny_env, "lora", steps=2)
    bad["dataset"]["path"] = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError):
        train(bad, results / "runs" / "a" / "bad")
    listed = failed_runs(results)
    assert [r["status"] for r in listed] == ["failed"] and listed[0]["record"].endswith("bad/record.json")
    assert "missing.json" in listed[0]["error"]
    report = failed_runs_report(results)
    assert "--forcerun" in report and listed[0]["record"] in report
    (results / "runs" / "a" / "ok" / "record.json").write_text("{torn")
    assert {r["status"] for r in failed_runs(results)} == {"failed", "unreadable"}
    assert failed_runs_report(tmp_path / "nothing") == ""


# ---- the job script ----------------------------------------------------------------------------
def run_script(cfg, out_dir, **popen):
    cmd = [sys.executable, str(REPO / "workflow" / "scripts" / "train.py"), "--run-cfg", json.dumps(cfg),
           "--out-dir", str(out_dir), "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_job_script_exits_0_for_failed_and_diverged_runs_and_keeps_history(tiny_env, tmp_path):
    model, tok = load_model(tiny_env / "model", "float32", "cpu")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "bad")
    tok.save_pretrained(tmp_path / "bad")
    diverging = make_cfg(tiny_env, "lora", steps=3)
    diverging["model"]["path"] = str(tmp_path / "bad")
    failing = make_cfg(tiny_env, "lora", steps=3)
    failing["dataset"]["path"] = str(tmp_path / "nope.json")
    for cfg, status, out in ((diverging, "diverged", tmp_path / "div"), (failing, "failed", tmp_path / "fail"),
                             (failing, "failed", tmp_path / "fail")):
        proc = run_script(cfg, out)
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, text
        assert "--forcerun" in text
        assert record(out)["run_info"]["status"] == status
    attempts = read_attempts(tmp_path / "fail")
    assert [a["status"] for a in attempts] == ["failed", "failed"]  # the rerun did not erase the first error
    assert all("nope.json" in a["error"] for a in attempts)
    assert "nope.json" in record(tmp_path / "fail")["run_info"]["traceback"]


def test_sigterm_interrupts_the_job_and_keeps_checkpoints(tiny_env, tmp_path):
    cfg = make_cfg(tiny_env, "lora", steps=400, checkpoint_every=1)
    out = tmp_path / "run"
    proc = run_script(cfg, out)
    deadline = time.time() + 240
    while not (out / CKPT_DIR / CKPT_FILE).is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode not in (0, None), text
    assert record(out)["run_info"]["status"] == "interrupted"
    assert (out / CKPT_DIR / CKPT_FILE).is_file()
    assert [a["status"] for a in read_attempts(out)] == ["interrupted"]


# ---- the prepared training set must be the one the config asks for ---------------------------
def test_a_training_set_prepared_from_another_spec_is_refused(tiny_env, tmp_path):
    """resources/data/<dataset>/train.json is shared by every config naming that dataset, and
    Snakemake keeps a file it did not make as up to date: the loop checks the meta's spec."""
    from harness.data import prepare_train_set

    from conftest import MIRROR, needs_mirror  # noqa: F401
    if not (MIRROR / "llm-adapters").is_dir():
        pytest.skip(f"offline data mirror not found at {MIRROR}; set SMT_DATA_ROOT")
    spec = {"name": "commonsense_mirror", "max_records": 40, "seed": 0}
    data = tmp_path / "data" / "train.json"
    prepare_train_set(spec, str(MIRROR), data)
    cfg = make_cfg(tiny_env, "lora", steps=2)
    cfg["dataset"] = {"name": "commonsense", "path": str(data), "spec": dict(spec, max_records=80)}
    with pytest.raises(ValueError, match=r"prepared from dataset spec .*max_records': 40.*--forcerun"):
        train(cfg, tmp_path / "other")
    assert record(tmp_path / "other")["run_info"]["status"] == "failed"
    train_data.check_prepared_spec(data, spec)  # the spec it was prepared from passes
    train_data.check_prepared_spec(data, None)  # a run_cfg without a spec (library use) is not checked


def test_git_dirty_means_code_changed_not_outputs_written(tmp_path, monkeypatch):
    """A study writes results/ and figures/ while it runs; that must not mark its records dirty."""
    import subprocess

    from harness import records

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.setattr(records, "REPO_ROOT", tmp_path)
    assert records.meta_info()["git_dirty"] is False
    for out in ("results/runs/a/record.json", "figures/figure3.png"):
        (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / out).write_text("{}")
    assert records.meta_info()["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert records.meta_info()["git_dirty"] is True
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "new_module.py").write_text("")
    assert records.meta_info()["git_dirty"] is True
