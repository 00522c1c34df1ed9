"""Checkpoints and resume of a run: one file, checkpoints/latest.pt, tied to the run's fingerprint.

A restart with the same fingerprint resumes exactly (same batches, RNG, optimizer and scheduler
state); any mismatch, an unreadable checkpoint, or a method file kept for resuming that belongs
to another fingerprint (`Method.restore` raises StaleResumeError) means: start afresh, with the
reason in the log and in the attempt's `fresh_start_reason`.
"""
from __future__ import annotations

import logging
import pathlib
import random
import shutil

import numpy as np
import torch

from baselines.base import StaleResumeError
from harness import launch
from harness.records import fingerprint_diff

CKPT_DIR, CKPT_FILE = "checkpoints", "latest.pt"
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


def save_checkpoint(out_dir: pathlib.Path, model, opt, sched, state: dict) -> pathlib.Path:
    """Write trainable params + optimizer + scheduler + RNG + progress (state: step, curves,
    fingerprint, ...) to checkpoints/latest.pt, atomically."""
    path = pathlib.Path(out_dir) / CKPT_DIR / CKPT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**state, "rng": rng_state(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def save_resumable(acc, out_dir: pathlib.Path, model, opt, sched, state: dict) -> None:
    """Every rank: DeepSpeed's ZeRO partitions (launch.save_engine_state); the main process:
    checkpoints/latest.pt (save_checkpoint, of the unwrapped model); then a barrier."""
    launch.save_engine_state(acc, pathlib.Path(out_dir) / CKPT_DIR)
    if acc.is_main_process:
        save_checkpoint(out_dir, acc.unwrap_model(model), opt, sched, state)
    acc.wait_for_everyone()


def load_trainable(model, saved: dict) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
    if missing:
        raise RuntimeError(f"checkpoint does not hold trainable parameters {missing[:5]}; "
                           "delete the run's checkpoints/ to start over")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


def discard_resume_state(out_dir: pathlib.Path, reason: str) -> None:
    """Delete out_dir/checkpoints (checkpoint and warm-up weights), logging why."""
    ckpt_dir = pathlib.Path(out_dir) / CKPT_DIR
    if ckpt_dir.exists():
        log.warning("discarding %s: %s", ckpt_dir, reason)
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def resume_state(out_dir: pathlib.Path, fp: str, fp_inputs: dict, method, attempts: list):
    """(checkpoint to resume or None, fresh_start_reason or None). Checks the checkpoint against
    fingerprint fp, then the method's own resume files (method.restore)."""
    path = out_dir / CKPT_DIR / CKPT_FILE
    if not path.is_file():
        last = attempts[-1] if attempts else None
        if last is None:
            return None, None
        how = f"ended {last.get('status')}" + (f" ({last['error']})" if last.get("error") else "")
        return None, f"no checkpoint to resume; the previous attempt {how}"
    try:
        ckpt = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint means: start afresh
        return None, f"checkpoint {path} is unreadable ({type(err).__name__}: {err})"
    if ckpt.get("fingerprint") != fp:
        changed = fingerprint_diff(ckpt.get("fingerprint_inputs"), fp_inputs)
        return None, (f"checkpoint {path} belongs to run fingerprint {str(ckpt.get('fingerprint'))[:12]}, "
                      f"this run is {fp[:12]} (changed: {', '.join(changed[:8]) or 'unknown'})")
    try:  # last: it may remember the files it reuses
        method.restore(out_dir, out_dir / CKPT_DIR)
    except (StaleResumeError, ValueError, OSError) as err:
        return None, f"cannot resume the method's own state: {err}"
    return ckpt, None
