"""A checkpoint is one unit: a job killed at any point of a save resumes as if never killed.

Each case trains SMT (full-FT warm-up, so the checkpoint also carries the method's state: its plan
and its warm-up weights) with a checkpoint every 2 steps, is killed by the fault hook
(SMT_FAULT_AT=<point>@<step>: os._exit at that point of the save of that step, see
harness.checkpoint), then rerun: the resumed run's loss curve, validation curve and saved delta
must equal an uninterrupted run's exactly. Killed before the pointer switch it resumes from the
previous checkpoint, after it from the new one; the killed save's leftovers are removed at start-up.

Single process: every fault point. DeepSpeed ZeRO-2 on 2 CPU processes (gloo, DS_ACCELERATOR=cpu,
marked slow): the points around the engine's ZeRO part and between the parts.
"""
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from conftest import tiny_run_cfg
from harness.checkpoint import CKPT_DIR, CKPT_FILE, FAULT_EXIT, FAULT_POINTS

ROOT = pathlib.Path(__file__).resolve().parents[1]
KILL_AT = 6                                   # single process: checkpoints at 3 (warm-up end), 4, 6
RESUMED_FROM = {p: (KILL_AT if p in ("after_switch", "saved") else 4) for p in FAULT_POINTS}
DS_KILL_AT = 4                                # DeepSpeed: checkpoints at 2 (warm-up end), 4
DS_POINTS = ["before_save", "after_engine", "after_weights", "after_optimizer", "before_switch", "after_switch"]


def make_cfg(env, steps=8, warm=3, **train):
    return tiny_run_cfg(env, "smt", 5e-2, smt_warmup=warm, deviations=["tiny test run"], max_steps=steps,
                        checkpoint_every=2, val_records=2, val_every=3, **train)


def summary(out: pathlib.Path) -> dict:
    """What a run left: its curves, where it resumed, and the bytes of every tensor of its delta
    (file bytes differ: safetensors' metadata names the run's directory)."""
    from safetensors.torch import load_file
    info = json.loads((out / "record.json").read_text())["train_info"]
    delta = {}
    for path in sorted((out / "delta").iterdir()):
        tensors = load_file(path) if path.suffix == ".safetensors" else (
            torch.load(path, weights_only=True) if path.suffix == ".pt" else {})
        delta[path.name] = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
                            for k, v in sorted(tensors.items())}
    return {"loss_curve": info["loss_curve"], "val_curve": info["val_curve"],
            "resumed_from_step": info.get("resumed_from_step"), "delta": delta}


def train_in_subprocess(cfg, out, fault):
    code = ("import json, sys, torch; torch.set_num_threads(1); from harness.train import train; "
            "train(json.loads(sys.argv[1]), sys.argv[2])")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SMT_FAULT_AT": fault, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, json.dumps(cfg), str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tiny_env, tmp_path_factory):
    from harness.train import train
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("faults") / "uninterrupted"
    train(make_cfg(tiny_env), out)
    return summary(out)


FAST_POINTS = ("after_weights", "after_switch")   # the fast tier's; every point in the slow tier


@pytest.mark.parametrize("point", [p if p in FAST_POINTS else pytest.param(p, marks=pytest.mark.slow)
                                   for p in FAULT_POINTS])
def test_a_kill_at_any_point_of_a_save_resumes_exactly(tiny_env, tmp_path, uninterrupted, point, monkeypatch):
    from harness.train import train
    cfg, out = make_cfg(tiny_env), tmp_path / "run"
    res = train_in_subprocess(cfg, out, f"{point}@{KILL_AT}")
    assert res.returncode == FAULT_EXIT, f"the job was not killed at {point}:\n{res.stderr[-3000:]}"
    ckpts = out / CKPT_DIR
    pointer = json.loads((ckpts / CKPT_FILE).read_text())
    assert pointer["step"] == RESUMED_FROM[point], pointer  # LATEST names a complete checkpoint, old or new
    monkeypatch.delenv("SMT_FAULT_AT", raising=False)
    torch.set_num_threads(1)
    train(cfg, out)
    got = summary(out)
    assert got["resumed_from_step"] == RESUMED_FROM[point]
    assert got["loss_curve"] == uninterrupted["loss_curve"], point
    assert got["val_curve"] == uninterrupted["val_curve"], point
    assert got["delta"] == uninterrupted["delta"], point


def test_resume_reads_only_what_the_pointer_names_and_removes_leftovers(tiny_env, tmp_path, uninterrupted):
    """A killed save's directory (complete or not) that LATEST does not name is never read and is
    removed at start-up; a checkpoint named by LATEST but incomplete means a fresh start, saying why."""
    from harness.checkpoint import latest_dir
    from harness.train import train
    torch.set_num_threads(1)
    cfg, out = make_cfg(tiny_env), tmp_path / "run"
    assert train_in_subprocess(cfg, out, f"before_switch@{KILL_AT}").returncode == FAULT_EXIT
    assert (out / CKPT_DIR / f"step-{KILL_AT:06d}" / "MANIFEST.json").is_file()   # renamed, not yet current
    (out / CKPT_DIR / "step-000099.tmp").mkdir()                                   # a half-written save
    rec = train(cfg, out, threads=1)
    assert rec["train_info"]["resumed_from_step"] == 4
    assert summary(out)["loss_curve"] == uninterrupted["loss_curve"]
    # an incomplete checkpoint named by the pointer (a part lost): start afresh, with the reason
    out2 = tmp_path / "run2"
    assert train_in_subprocess(cfg, out2, f"saved@{KILL_AT}").returncode == FAULT_EXIT
    (latest_dir(out2) / "optimizer.pt").unlink()
    rec = train(cfg, out2, threads=1)
    reason = rec["run_info"]["attempts"][-1]["fresh_start_reason"]
    assert "incomplete" in reason and "optimizer.pt" in reason and "resumed_from_step" not in rec["train_info"]
    assert summary(out2)["loss_curve"] == uninterrupted["loss_curve"]


def test_a_save_keeps_one_checkpoint_and_its_method_state(tiny_env, tmp_path):
    """After a save: LATEST, the one step directory it names (manifest, parts, the method's plan and
    warm-up weights) and the staged warm-up weights; no older checkpoint, no temporary directory."""
    cfg, out = make_cfg(tiny_env), tmp_path / "run"
    assert train_in_subprocess(cfg, out, f"saved@{KILL_AT}").returncode == FAULT_EXIT
    names = sorted(p.name for p in (out / CKPT_DIR).iterdir())
    assert names == [CKPT_FILE, f"step-{KILL_AT:06d}", "warmup_weights.json", "warmup_weights.pt"], names
    step = out / CKPT_DIR / f"step-{KILL_AT:06d}"
    manifest = json.loads((step / "MANIFEST.json").read_text())
    assert manifest["step"] == KILL_AT and manifest["deepspeed"] is False
    assert manifest["method_files"] == ["method/plan.json", "method/warmup_weights.json", "method/warmup_weights.pt"]
    assert all((step / p).is_file() for p in manifest["parts"] + manifest["method_files"])


def test_an_unknown_fault_point_is_refused(monkeypatch):
    from harness.checkpoint import fault_point
    monkeypatch.setenv("SMT_FAULT_AT", "halfway")
    with pytest.raises(ValueError, match="SMT_FAULT_AT='halfway': unknown point"):
        fault_point("before_save", 2)


# ------------------------------------------------------------------------------------ DeepSpeed
def ds_cfg(env):
    return tiny_run_cfg(env, "smt", 5e-2, smt_warmup=2, deviations=["tiny test run"], max_steps=6,
                        micro_batch_size=2, grad_accum=2, warmup_steps=1, checkpoint_every=2,
                        val_records=2, val_every=2)


def worker(spec_path: str) -> None:
    """One rank: run the spec's jobs in order (each with its SMT_FAULT_AT); rank 0 writes summaries."""
    from harness.train import train
    torch.set_num_threads(1)
    for job in json.loads(pathlib.Path(spec_path).read_text()):
        os.environ.pop("SMT_FAULT_AT", None)
        if job.get("fault"):
            os.environ["SMT_FAULT_AT"] = job["fault"]
        out = pathlib.Path(job["out"])
        train(job["cfg"], out)
        if int(os.environ.get("RANK", 0)) == 0:
            (out / "summary.json").write_text(json.dumps(summary(out)))


def launch_ds(jobs, tmp, port):
    spec = tmp / f"spec{port}.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu"}
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    env.pop("SMT_FAULT_AT", None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", "2",
           "--main_process_port", str(port), "--use_deepspeed", "--zero_stage", "2", "--mixed_precision", "no",
           str(ROOT / "tests" / "test_checkpoint_faults.py"), "--worker", str(spec)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def deepspeed_faults(tiny_env, tmp_path_factory):
    """Launch k resumes the run killed in launch k-1, then runs the next job until its kill: one
    launch per point (plus one), the first also running the uninterrupted reference."""
    tmp = tmp_path_factory.mktemp("ds_faults")
    cfg = ds_cfg(tiny_env)
    ref = {"cfg": cfg, "out": str(tmp / "uninterrupted")}
    kills = [{"cfg": cfg, "out": str(tmp / p), "fault": f"{p}@{DS_KILL_AT}"} for p in DS_POINTS]
    results, prev = {}, None
    for i, kill in enumerate(kills + [None]):
        jobs = ([ref] if i == 0 else []) + ([{"cfg": cfg, "out": prev["out"]}] if prev else []) + ([kill] if kill else [])
        res = launch_ds(jobs, tmp, 29640 + i)
        (tmp / f"launch{i}.log").write_text(res.stdout + res.stderr)
        done = [j for j in jobs if (pathlib.Path(j["out"]) / "summary.json").exists()]
        assert done == [j for j in jobs if j is not kill], \
            f"launch {i}: a job that must finish did not:\n{res.stderr[-5000:]}"
        if kill is not None:   # killed by the fault hook: rank 0 (at least) ended with FAULT_EXIT
            results[DS_POINTS[i]] = {"killed": res.returncode != 0 and f"exitcode  : {FAULT_EXIT}" in res.stderr
                                     and not (pathlib.Path(kill["out"]) / "summary.json").exists(),
                                     "log": res.stderr[-3000:]}
        else:
            assert res.returncode == 0, res.stderr[-5000:]
        prev = kill
    ref_summary = json.loads((tmp / "uninterrupted" / "summary.json").read_text())
    for p in DS_POINTS:
        path = tmp / p / "summary.json"
        results[p]["summary"] = json.loads(path.read_text()) if path.exists() else None
    return ref_summary, results


@pytest.mark.slow
@pytest.mark.parametrize("point", DS_POINTS)
def test_deepspeed_kill_at_any_point_of_a_save_resumes_exactly(deepspeed_faults, point):
    ref, results = deepspeed_faults
    r = results[point]
    assert r["killed"], f"the DeepSpeed job was not killed at {point}:\n{r['log']}"
    got = r["summary"]
    assert got is not None, f"the run killed at {point} did not resume to the end"
    assert got["resumed_from_step"] == (DS_KILL_AT if point in ("after_switch", "saved") else 2)
    assert got["loss_curve"] == ref["loss_curve"], point
    assert got["val_curve"] == ref["val_curve"], point
    assert got["delta"] == ref["delta"], point


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    sys.path.insert(0, str(ROOT / "tests"))
    worker(sys.argv[2])
