"""Checkpoints of a run: each one a complete directory, made current by one atomic pointer switch.

    checkpoints/
      LATEST               {"checkpoint": "step-000120", "step": 120}: the one complete checkpoint to resume
      step-000120/         one checkpoint, written as step-000120.tmp/ and renamed when complete
        deepspeed/         DeepSpeed only: every rank's ZeRO-2 partitions (engine.save_checkpoint)
        weights.pt         the trainable parameters
        optimizer.pt       the optimizer and the scheduler
        method/            the method's own state (SMT: its plan, its full-FT warm-up weights)
        state.pt           step, curves, tokens, seconds, RNG, the run fingerprint (and its inputs)
        MANIFEST.json      the parts above, written last: a directory without it is incomplete
      warmup_weights.*     staged by a method's end_warmup; each checkpoint links them into method/

A save (`save_checkpoint`, every rank) writes the new directory, renames it, then switches
LATEST (harness.records.atomic_write_json) and only then removes the older checkpoints. A process
killed at any moment leaves LATEST naming a complete checkpoint (or no LATEST: a fresh start);
`open_checkpoint` reads only what LATEST names and removes leftovers of a killed save.

A restart with the same fingerprint resumes exactly (same batches, RNG, optimizer and scheduler
state); any mismatch, an unreadable or incomplete checkpoint, or a method file that belongs to
another fingerprint (`Method.restore` raises StaleResumeError) means: start afresh, with the reason
in the log and in the attempt's `fresh_start_reason`.

Fault injection (tests/test_checkpoint_faults.py): SMT_FAULT_AT=<point>[@<step>] ends the process
with os._exit(FAULT_EXIT) at that point of a save (of the given step, else of any), one of
FAULT_POINTS.
"""
from __future__ import annotations

import logging
import os
import pathlib
import random
import shutil

import numpy as np
import torch

from baselines.base import StaleResumeError
from harness import launch
from harness.records import atomic_write_json, fingerprint_diff

CKPT_DIR, CKPT_FILE = "checkpoints", "LATEST"   # CKPT_FILE: the pointer; it exists iff a complete checkpoint does
PARTS = ("weights.pt", "optimizer.pt", "state.pt")
FAULT_POINTS = ("before_save", "after_engine", "after_weights", "after_optimizer", "before_switch",
                "after_switch", "saved")
FAULT_EXIT = 75
log = logging.getLogger("harness.train")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fault_point(point: str, step: int) -> None:
    """The fault-injection hook: SMT_FAULT_AT=<point>[@<step>] ends this process here, at once."""
    want = os.environ.get("SMT_FAULT_AT")
    if not want:
        return
    name, _, at = want.partition("@")
    if name not in FAULT_POINTS:
        raise ValueError(f"SMT_FAULT_AT={want!r}: unknown point {name!r}; use one of {', '.join(FAULT_POINTS)}")
    if name == point and (not at or int(at) == step):
        os._exit(FAULT_EXIT)


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(acc, out_dir: pathlib.Path, model, opt, sched, method, state: dict) -> pathlib.Path:
    """Write one complete checkpoint of `state` (step, curves, fingerprint, ...) and make it the one
    to resume. Every rank calls it (DeepSpeed's ZeRO partitions are a collective); the main process
    writes the rest, renames the directory, switches LATEST and removes the older checkpoints."""
    root = pathlib.Path(out_dir) / CKPT_DIR
    step, main = state["step"], acc.is_main_process
    final = root / step_dir_name(step)
    tmp = final.with_name(final.name + ".tmp")
    fault_point("before_save", step)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    engine = launch.save_engine_state(acc, tmp)   # every rank: its ZeRO partition (DeepSpeed only)
    acc.wait_for_everyone()
    fault_point("after_engine", step)
    if main:
        torch.save({n: p.detach().cpu() for n, p in acc.unwrap_model(model).named_parameters() if p.requires_grad},
                   tmp / "weights.pt")
        fault_point("after_weights", step)
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optimizer.pt")
        fault_point("after_optimizer", step)
        method_files = [f"method/{name}" for name in method.save_state(tmp / "method") or []]
        torch.save({**state, "rng": rng_state()}, tmp / "state.pt")
        atomic_write_json(tmp / "MANIFEST.json", {
            "step": step, "fingerprint": state.get("fingerprint"), "parts": list(PARTS),
            "method_files": sorted(str(p) for p in method_files), "deepspeed": engine})
        if final.exists():   # a complete checkpoint of this step that LATEST does not name (a killed save)
            shutil.rmtree(final)
        tmp.rename(final)
        fault_point("before_switch", step)
        atomic_write_json(root / CKPT_FILE, {"checkpoint": final.name, "step": step})
        fault_point("after_switch", step)
        remove_stale(root, keep=final.name)
    acc.wait_for_everyone()
    fault_point("saved", step)
    return final


def remove_stale(root: pathlib.Path, keep: str | None) -> None:
    """Remove every checkpoint directory but `keep`: older ones and the leftovers of a killed save."""
    for path in sorted(pathlib.Path(root).glob("step-*")):
        if path.name != keep and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def latest_dir(out_dir: pathlib.Path) -> pathlib.Path | None:
    """The directory of the complete checkpoint LATEST names, or None (no pointer yet)."""
    pointer = pathlib.Path(out_dir) / CKPT_DIR / CKPT_FILE
    if not pointer.is_file():
        return None
    import json
    return pointer.parent / json.loads(pointer.read_text())["checkpoint"]


def load_checkpoint(path: pathlib.Path) -> dict:
    """The checkpoint in directory `path` as one dict (state.pt's keys plus trainable, optimizer,
    scheduler, dir); an incomplete directory (no manifest, a part missing) raises FileNotFoundError."""
    import json
    path = pathlib.Path(path)
    manifest = json.loads((path / "MANIFEST.json").read_text())
    missing = [p for p in manifest["parts"] + manifest["method_files"] if not (path / p).exists()]
    if manifest["deepspeed"] and not (path / "deepspeed").is_dir():
        missing.append("deepspeed/")
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: {', '.join(missing)} missing")
    ckpt = torch.load(path / "state.pt", weights_only=False, map_location="cpu")
    ckpt.update(torch.load(path / "optimizer.pt", weights_only=False, map_location="cpu"))
    ckpt["trainable"] = torch.load(path / "weights.pt", weights_only=True, map_location="cpu")
    ckpt["dir"], ckpt["deepspeed"] = path, bool(manifest["deepspeed"])
    return ckpt


def load_trainable(model, saved: dict) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
    if missing:
        raise RuntimeError(f"checkpoint does not hold trainable parameters {missing[:5]}; "
                           "delete the run's checkpoints/ to start over")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


def restore_training(ckpt: dict, model, opt, sched) -> None:
    """Put a checkpoint's trainable weights, optimizer (but DeepSpeed's, which the engine restores
    after prepare: launch.load_engine_state) and scheduler states into the main phase's objects."""
    load_trainable(model, ckpt["trainable"])
    if not ckpt.get("deepspeed"):
        opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])


def discard_resume_state(out_dir: pathlib.Path, reason: str) -> None:
    """Delete out_dir/checkpoints (every checkpoint and staged method files), logging why."""
    ckpt_dir = pathlib.Path(out_dir) / CKPT_DIR
    if ckpt_dir.exists():
        log.warning("discarding %s: %s", ckpt_dir, reason)
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def open_checkpoint(acc, out_dir: pathlib.Path, fp: str, fp_inputs: dict, method, attempts: list):
    """(the checkpoint to resume or None, fresh_start_reason or None), the same on every rank.

    Resume only from the complete checkpoint LATEST names, written for fingerprint fp, whose method
    state the method accepts (method.restore). Otherwise the main process discards checkpoints/
    (a fresh start); when resuming it removes the leftovers of a killed save."""
    ckpt, reason = _read_latest(out_dir, fp, fp_inputs, method, attempts)
    acc.wait_for_everyone()
    if acc.is_main_process:
        if ckpt is None:
            discard_resume_state(out_dir, reason or "fresh start")
        else:
            remove_stale(pathlib.Path(out_dir) / CKPT_DIR, keep=ckpt["dir"].name)
    acc.wait_for_everyone()
    return ckpt, reason


def _read_latest(out_dir, fp, fp_inputs, method, attempts):
    out_dir = pathlib.Path(out_dir)
    try:
        path = latest_dir(out_dir)
    except (OSError, ValueError, KeyError) as err:
        return None, f"checkpoint pointer {out_dir / CKPT_DIR / CKPT_FILE} is unreadable ({type(err).__name__}: {err})"
    if path is None:
        last = attempts[-1] if attempts else None
        if last is None:
            return None, None
        how = f"ended {last.get('status')}" + (f" ({last['error']})" if last.get("error") else "")
        return None, f"no checkpoint to resume; the previous attempt {how}"
    try:
        ckpt = load_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint means: start afresh
        return None, f"checkpoint {path} is unreadable ({type(err).__name__}: {err})"
    if ckpt.get("fingerprint") != fp:
        changed = fingerprint_diff(ckpt.get("fingerprint_inputs"), fp_inputs)
        return None, (f"checkpoint {path} belongs to run fingerprint {str(ckpt.get('fingerprint'))[:12]}, "
                      f"this run is {fp[:12]} (changed: {', '.join(changed[:8]) or 'unknown'})")
    try:  # last: it may remember the files it reuses
        method.restore(out_dir, path / "method")
    except (StaleResumeError, ValueError, OSError) as err:
        return None, f"cannot resume the method's own state: {err}"
    return ckpt, None
