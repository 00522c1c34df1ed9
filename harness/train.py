"""The one training loop shared by every method, read top to bottom: `train(run, out_dir)`.

    set-up      the record, the fingerprint, the method, the engine
    start       fresh (warm-up, if the method has one) or resumed (one branch)
    the method  apply: only its parameters train from here on
    the loop    step, log, validate, checkpoint, to the last step
    finish      the delta, train_info, checkpoints dropped

It writes out_dir/record.json (status ok, failed, diverged or interrupted; on failure with the
error, traceback and the loss curve up to it), out_dir/delta/ (the method's adapter/delta),
appends one line per attempt to out_dir/attempts.jsonl (never rewritten), and while running
keeps out_dir/checkpoints/ (harness.checkpoint).

Resume. The checkpoint and every file a method keeps to resume (SMT: its plan, its warm-up
weights) carry the run's fingerprint (harness.records.fingerprint_inputs: the run config without
paths and descriptions, the model and data checksums and TRAIN_CODE_VERSION). A restart with
the same fingerprint resumes exactly (same batches, RNG, optimizer and scheduler state); any
mismatch, an unreadable checkpoint or a missing file discards checkpoints/ and starts afresh,
giving the reason in the log and in record.run_info.attempts[-1].fresh_start_reason. A
diverged run deletes its checkpoints: it is never resumed.

The pieces live in their own modules: the data and its order in harness.train_data, the step
and its optimizer in harness.step (profiling times that same step), checkpoints in
harness.checkpoint.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import pathlib
import shutil
import time
import traceback

import torch

import baselines
from harness import launch
from harness.checkpoint import CKPT_DIR, discard_resume_state, open_checkpoint, save_checkpoint, set_rng_state
from harness.models import load_model
from harness.records import (append_attempt, file_sizes, fingerprint, fingerprint_inputs, new_record,
                             read_attempts, write_record)
from harness.run_config import as_run_config
from harness.step import (DivergedError, build_accelerator, main_phase, peak_memory_bytes, set_seed,
                          validation_loss, warmup_phase)
from harness.train_data import batch_stream, load_data, total_steps

# Bump when the loop's semantics change (what a step computes, the schedule, the data order):
# every checkpoint written by an older loop is then discarded instead of resumed.
# 2: lr logged is the lr the step used; model in train mode; loss on answer positions only;
#    no-answer examples dropped; validation records held out.
TRAIN_CODE_VERSION = 2
log = logging.getLogger("harness.train")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def val_every(train_cfg, has_val: bool) -> int | None:
    """Steps between validation losses: train.val_every, else None (only at step 0 and at the end).
    None as well when nothing is held out."""
    return train_cfg.val_every if has_val else None


def train(run, out_dir, threads: int | None = None) -> dict:
    """Train `run` (a harness.run_config.RunConfig, or its JSON form); write out_dir/record.json
    and append to out_dir/attempts.jsonl. threads: torch's CPU threads (None: leave as set).

    Returns the record (status ok). A failure is recorded (status failed or diverged, error,
    traceback, loss curve so far) and re-raised; so is KeyboardInterrupt (status interrupted,
    checkpoints kept for resume). A diverged run's checkpoints are deleted.
    """
    run = as_run_config(run)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    attempts = read_attempts(out_dir)
    record = new_record(run)
    # each attempt names the code it ran: a run resumed after a commit (same fingerprint, so the
    # same training code version) has record.meta_info of its last attempt only
    meta = record["meta_info"]
    attempt = {"attempt": len(attempts) + 1, "started_at": _now(), "finished_at": None, "status": "running",
               "error": None, "fresh_start_reason": None, "resumed_from_step": None, "steps_reached": 0,
               "fingerprint": None, "git_sha": meta.get("git_sha"), "git_dirty": meta.get("git_dirty")}
    record["run_info"]["attempts"] = attempts + [attempt]
    if _is_main_process():
        write_record(out_dir, record)
    status, info = "failed", record["run_info"]
    try:
        if threads:
            torch.set_num_threads(int(threads))
        _train(run, out_dir, record, attempt, attempts)
        status = "ok"
    except DivergedError as err:
        status, info["error"] = "diverged", str(err)
        info["traceback"] = traceback.format_exc(limit=12)
        if _is_main_process():
            discard_resume_state(out_dir, "the run diverged; a diverged run is never resumed")
        raise
    except KeyboardInterrupt:
        status, info["error"] = "interrupted", "interrupted (SIGINT/SIGTERM); rerun to resume from the last checkpoint"
        raise
    except Exception as err:
        info["error"] = f"{type(err).__name__}: {err}"
        info["traceback"] = traceback.format_exc(limit=12)
        raise
    finally:
        info["status"] = status
        info["finished_at"] = _now()
        attempt.update(status=status, error=info.get("error"), finished_at=info["finished_at"],
                       steps_reached=record["train_info"].get("steps", 0))
        if _is_main_process():
            append_attempt(out_dir, attempt)
            write_record(out_dir, record)
    return record


@dataclasses.dataclass
class RunState:
    """Where a run stands: its step, its curves, the tokens and seconds trained so far. Made by
    `fresh()` or `from_checkpoint()` (the one branch on resume); what a checkpoint saves."""

    step: int = 0
    loss_curve: list = dataclasses.field(default_factory=list)
    val_curve: list = dataclasses.field(default_factory=list)
    tokens: int = 0
    prior_seconds: float = 0.0        # main-phase seconds of earlier attempts
    checkpoint: dict | None = None    # resumed: the checkpoint (weights, optimizer, scheduler, ZeRO partitions)

    @classmethod
    def fresh(cls) -> "RunState":
        return cls()

    @classmethod
    def from_checkpoint(cls, ckpt: dict, method, model) -> "RunState":
        """The state a checkpoint saved; the method puts the model as its warm-up left it."""
        method.resume(model, ckpt["dir"] / "method")
        return cls(step=ckpt["step"], loss_curve=ckpt["loss_curve"], val_curve=ckpt.get("val_curve", []),
                   tokens=ckpt["tokens"], prior_seconds=ckpt["train_seconds"], checkpoint=ckpt)

    @property
    def resumed_from(self) -> int | None:
        return self.checkpoint["step"] if self.checkpoint is not None else None

    def batches(self, data, run, pad_id, total, acc):
        """The micro-batches from this step on; a resumed run then gets the RNG the interrupted run had
        there (set after the stream is built: the same draws as the uninterrupted run)."""
        stream = batch_stream(data.train, run, pad_id, self.step, total, acc)
        if self.checkpoint is not None:
            set_rng_state(self.checkpoint["rng"])
        return stream


@dataclasses.dataclass
class Loop:
    """What every part of the loop reads: the run, its method, engine, data and record, and its state."""

    run: object
    method: object
    acc: object
    data: object
    pad_id: int
    total: int
    out_dir: pathlib.Path
    info: dict                    # the record's train_info, filled as the run goes
    fp: str
    fp_inputs: dict
    state: RunState
    progress: object = None
    seconds: float = 0.0          # main-phase seconds, this attempt's and earlier ones'

    def validate(self, model, tag=None) -> None:
        if not self.data.val:
            return
        t, s = self.run.train, self.state
        loss = validation_loss(model, self.data.val, t.micro_batch_size, self.pad_id, self.acc.device)
        s.val_curve.append({"step": s.step, "val_loss": round(loss, 6), **({"phase": tag} if tag else {})})
        self.info["final_val_loss"] = s.val_curve[-1]["val_loss"]
        log.info("step %d: validation loss %.4f", s.step, loss)

    def checkpoint(self, phase) -> None:
        s = self.state
        save_checkpoint(self.acc, self.out_dir, phase.model, phase.opt, phase.sched, self.method,
                        {"fingerprint": self.fp, "fingerprint_inputs": self.fp_inputs, "step": s.step,
                         "loss_curve": list(s.loss_curve), "val_curve": list(s.val_curve), "tokens": s.tokens,
                         "train_seconds": self.seconds})

    def run_phase(self, phase) -> None:
        """Step `phase` from the state's step to its end: log, validate, checkpoint.

        A phase's start is validated (unless the run resumed there: the checkpoint holds it); a main
        phase after a warm-up keeps its start as a checkpoint at once (the warm-up is never repeated).
        Then each step: the loss (and lr) every train.log_every steps and at the last; main phase:
        the tokens, a validation every train.val_every steps and at the last, a checkpoint every
        train.checkpoint_every steps but the last."""
        s, t, every_val = self.state, self.run.train, val_every(self.run.train, bool(self.data.val))
        batches = s.batches(self.data, self.run, self.pad_id, self.total, self.acc)
        if s.step != s.resumed_from:
            self.validate(phase.model, phase.tag)
        start, prior = time.time(), s.prior_seconds
        self.seconds = prior
        if phase.main and s.step > 0 and s.step != s.resumed_from:
            self.checkpoint(phase)
        while s.step < phase.last:
            res = phase.step(batches, s.step)
            s.step += 1
            self.info["steps"] = s.step
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{res.loss:.4f}", tok_s=f"{res.tokens / max(res.seconds, 1e-9):.0f}")
            if s.step % t.log_every == 0 or s.step == self.total:
                s.loss_curve.append({"step": s.step, "loss": round(res.loss, 6), "lr": res.lr,
                                     **({"phase": phase.tag} if phase.tag else {})})
            if not phase.main:
                continue
            s.tokens += res.tokens
            self.seconds = prior + time.time() - start
            if (every_val and s.step % every_val == 0) or s.step == self.total:
                self.validate(phase.model)
            if t.checkpoint_every and s.step % t.checkpoint_every == 0 and s.step < self.total:
                self.checkpoint(phase)
        self.seconds = prior + time.time() - start


def _train(run, out_dir: pathlib.Path, record: dict, attempt: dict, attempts: list) -> None:
    from tqdm.auto import tqdm

    info = record["train_info"]
    info.update({"loss_curve": [], "val_curve": [], "steps": 0})

    # ---- set-up: what this run is, the method, the engine
    fp_inputs = fingerprint_inputs(run.to_json(), record["meta_info"], TRAIN_CODE_VERSION)
    fp = fingerprint(fp_inputs)
    record["run_info"]["fingerprint"] = attempt["fingerprint"] = fp
    method = baselines.get_method(run.method.name)(run)
    method.fingerprint = fp
    set_seed(run.seed)
    acc = build_accelerator(run, method)
    ckpt, reason = open_checkpoint(acc, out_dir, fp, fp_inputs, method, attempts)
    if reason:
        log.warning("starting run %s afresh: %s", run.run_id, reason)
    attempt["fresh_start_reason"] = reason
    model, tok = load_model(run.model.path, run.model.dtype, acc.device)
    model.train()  # from_pretrained returns eval mode; training runs with dropout, as HF's Trainer
    data = load_data(run, tok)
    info.update({"n_records": data.n_records, "n_dropped_no_answer": data.n_dropped_no_answer,
                 "n_examples": len(data.train), "n_val_examples": len(data.val),
                 "val_prior_loss": data.val_prior_loss})
    total = total_steps(run, len(data.train), acc.num_processes)
    method.check_run_length(total)

    # ---- start fresh or resume: the one branch
    if ckpt is None:
        state = RunState.fresh()
    else:
        state = RunState.from_checkpoint(ckpt, method, model)
        info["resumed_from_step"] = attempt["resumed_from_step"] = state.step
        log.info("resuming run %s from step %d", run.run_id, state.step)
    info.update({"loss_curve": state.loss_curve, "val_curve": state.val_curve})
    loop = Loop(run, method, acc, data, tok.pad_token_id, total, out_dir, info, fp, fp_inputs, state)
    loop.progress = tqdm(total=total, desc=run.run_id or method.name, disable=not acc.is_main_process,
                         initial=state.step)

    # ---- the method's warm-up (SMT: score blocks by summed gradients); a resumed run is past it
    if state.step < method.warmup_steps:
        start = time.time()
        loop.run_phase(warmup_phase(method, model, run, acc, total))
        info["warmup_seconds"] = round(time.time() - start, 3)
        if acc.is_main_process:
            method.end_warmup(model, out_dir / CKPT_DIR)

    # ---- the method: only its parameters train from here on
    info.update(method.apply(model, out_dir))
    record["run_info"]["budget_reached"] = info["budget_reached"]
    if method.trains:
        phase = main_phase(model, run, acc, total, method.warmup_steps, state.checkpoint)
        loop.run_phase(phase)
        model = launch.finish(acc, phase.model)  # DeepSpeed: engine released, parameters own their storage
    else:  # the zero-shot reference: the base model's validation loss, no step
        loop.validate(model)
    loop.progress.close()
    _finish(loop, model)


def _finish(loop: Loop, model) -> None:
    """Save the delta, fill train_info, drop the checkpoints (unless train.keep_checkpoints)."""
    method, s, t, acc, info, out_dir = loop.method, loop.state, loop.run.train, loop.acc, loop.info, loop.out_dir
    delta = method.save(model, out_dir / "delta")
    delta_files = file_sizes(out_dir / "delta")
    info.update({"steps": s.step, "warmup_steps": method.warmup_steps, "micro_batch_size": t.micro_batch_size,
                 "grad_accum": t.grad_accum, "num_processes": acc.num_processes, "engine": launch.describe(acc),
                 "tokens": s.tokens, "first_loss": s.loss_curve[0]["loss"] if s.loss_curve else None,
                 "final_loss": s.loss_curve[-1]["loss"] if s.loss_curve else None,
                 "final_val_loss": s.val_curve[-1]["val_loss"] if s.val_curve else None,
                 "val_every": val_every(t, bool(loop.data.val)), "train_seconds": round(loop.seconds, 3),
                 "tokens_per_s": round(s.tokens / max(loop.seconds, 1e-9), 1),
                 "peak_memory_bytes": peak_memory_bytes(acc.device), "adapter_path": str(delta),
                 "adapter_bytes": sum(delta_files.values()), "adapter_files": delta_files})
    if acc.is_main_process and not t.keep_checkpoints:
        shutil.rmtree(out_dir / CKPT_DIR, ignore_errors=True)
