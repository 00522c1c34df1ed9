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
from harness.checkpoint import (CKPT_DIR, discard_resume_state, load_trainable, resume_state, save_resumable,
                                set_rng_state)
from harness.models import load_model
from harness.records import (append_attempt, file_sizes, fingerprint, fingerprint_inputs, new_record,
                             read_attempts, write_record)
from harness.run_config import as_run_config
from harness.step import (DivergedError, TrainStep, build_accelerator, main_phase, peak_memory_bytes, set_seed,
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


def _train(run, out_dir: pathlib.Path, record: dict, attempt: dict, attempts: list) -> None:
    from tqdm.auto import tqdm

    t, info, resume_dir = run.train, record["train_info"], out_dir / CKPT_DIR
    curve, val_curve = [], []
    info.update({"loss_curve": curve, "val_curve": val_curve, "steps": 0})

    # ---- set-up: what this run is, the method, the engine
    fp_inputs = fingerprint_inputs(run.to_json(), record["meta_info"], TRAIN_CODE_VERSION)
    fp = fingerprint(fp_inputs)
    record["run_info"]["fingerprint"] = attempt["fingerprint"] = fp
    method = baselines.get_method(run.method.name)(run)
    method.fingerprint = fp
    set_seed(run.seed)
    acc = build_accelerator(run, method)

    # ---- start fresh or resume: the one branch
    ckpt, reason = resume_state(out_dir, fp, fp_inputs, method, attempts)
    acc.wait_for_everyone()
    if ckpt is None:
        if reason:
            log.warning("starting run %s afresh: %s", run.run_id, reason)
        if acc.is_main_process:
            discard_resume_state(out_dir, reason or "fresh start")
        acc.wait_for_everyone()
    attempt["fresh_start_reason"] = reason
    model, tok = load_model(run.model.path, run.model.dtype, acc.device)
    model.train()  # from_pretrained returns eval mode; training runs with dropout, as HF's Trainer
    data = load_data(run, tok)
    info.update({"n_records": data.n_records, "n_dropped_no_answer": data.n_dropped_no_answer,
                 "n_examples": len(data.train), "n_val_examples": len(data.val),
                 "val_prior_loss": data.val_prior_loss})
    total, warm = total_steps(run, len(data.train), acc.num_processes), method.warmup_steps
    if warm >= total:
        raise ValueError(f"SMT warm-up ({warm} steps) must be shorter than the run ({total} steps); "
                         "lower the method's warmup_steps or raise train.max_steps")
    every_val, log_every = val_every(t, bool(data.val)), t.log_every
    progress = tqdm(total=total, desc=run.run_id or method.name, disable=not acc.is_main_process,
                    initial=ckpt["step"] if ckpt else 0)

    def stream(start_step):
        return batch_stream(data.train, run, tok.pad_token_id, start_step, total, acc)

    def validate(step, net, phase=None):
        if not data.val:
            return
        loss = validation_loss(net, data.val, t.micro_batch_size, tok.pad_token_id, acc.device)
        val_curve.append({"step": step, "val_loss": round(loss, 6), **({"phase": phase} if phase else {})})
        info["final_val_loss"] = val_curve[-1]["val_loss"]
        log.info("step %d: validation loss %.4f", step, loss)

    def log_point(step, res, phase=None):
        curve.append({"step": step, "loss": round(res.loss, 6), "lr": res.lr, **({"phase": phase} if phase else {})})

    start_time = time.time()
    if ckpt is None and warm:  # the method's warm-up (SMT: score blocks by summed gradients)
        validate(0, model, phase="warmup")
        stepper, batches = warmup_phase(method, model, run, acc, total), stream(0)
        for step in range(warm):
            res = stepper(batches, step)
            info["steps"] = step + 1
            progress.update(1)
            if (step + 1) % log_every == 0:
                log_point(step + 1, res, phase="warmup")
        info["warmup_seconds"] = round(time.time() - start_time, 3)
        if acc.is_main_process:
            method.end_warmup(model, resume_dir)
    elif ckpt is not None:
        method.resume(model, resume_dir)

    # ---- the method: only its parameters train from here on
    info.update(method.apply(model, out_dir))
    record["run_info"]["budget_reached"] = info["budget_reached"]
    tokens, prior_seconds, step = 0, 0.0, warm if ckpt is None else ckpt["step"]
    if not method.trains:  # the zero-shot reference: the base model's validation loss, no step
        progress.close()
        validate(0, model)
        return _finish(method, model, data, 0, 0.0, 0, every_val, curve, val_curve, acc, t, info, out_dir)

    def restore(opt, sched):
        load_trainable(model, ckpt["trainable"])
        if not launch.is_deepspeed(acc):  # DeepSpeed restores its ZeRO partitions after prepare
            opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])

    prepared, opt, sched = main_phase(model, run, acc, total, warm, restore if ckpt is not None else None)
    if ckpt is not None:
        launch.load_engine_state(acc, resume_dir)
        curve[:], val_curve[:] = ckpt["loss_curve"], ckpt.get("val_curve", [])
        tokens, prior_seconds = ckpt["tokens"], ckpt["train_seconds"]
        info["resumed_from_step"] = attempt["resumed_from_step"] = step
        log.info("resuming run %s from step %d", run.run_id, step)
    batches = stream(step)
    if ckpt is not None:
        set_rng_state(ckpt["rng"])  # after the stream is built: the same draws as the uninterrupted run
    else:
        validate(step, prepared)
    main_start = time.time()

    def checkpoint(step):
        save_resumable(acc, out_dir, prepared, opt, sched,
                       {"fingerprint": fp, "fingerprint_inputs": fp_inputs, "step": step, "loss_curve": list(curve),
                        "val_curve": list(val_curve), "tokens": tokens,
                        "train_seconds": prior_seconds + time.time() - main_start})

    # ---- the loop
    stepper = TrainStep(t, prepared, opt, sched, acc)
    if warm and ckpt is None:  # the warm-up is not repeated on resume: keep its end at once
        checkpoint(step)
    while step < total:
        res = stepper(batches, step)
        step += 1
        info["steps"], tokens = step, tokens + res.tokens
        progress.update(1)
        progress.set_postfix(loss=f"{res.loss:.4f}", tok_s=f"{res.tokens / max(res.seconds, 1e-9):.0f}")
        if step % log_every == 0 or step == total:
            log_point(step, res)
        if (every_val and step % every_val == 0) or step == total:
            validate(step, prepared)
        if t.checkpoint_every and step % t.checkpoint_every == 0 and step < total:
            checkpoint(step)
    progress.close()
    seconds = prior_seconds + time.time() - main_start
    model = launch.finish(acc, prepared)  # DeepSpeed: engine released, parameters own their storage
    _finish(method, model, data, step, seconds, tokens, every_val, curve, val_curve, acc, t, info, out_dir)


def _finish(method, model, data, step, seconds, tokens, every_val, curve, val_curve, acc, t, info, out_dir):
    """Save the delta, fill train_info, drop the checkpoints (unless train.keep_checkpoints)."""
    delta = method.save(model, out_dir / "delta")
    delta_files = file_sizes(out_dir / "delta")
    info.update({"steps": step, "warmup_steps": method.warmup_steps, "micro_batch_size": t.micro_batch_size,
                 "grad_accum": t.grad_accum, "num_processes": acc.num_processes, "engine": launch.describe(acc),
                 "tokens": tokens, "first_loss": curve[0]["loss"] if curve else None,
                 "final_loss": curve[-1]["loss"] if curve else None,
                 "final_val_loss": val_curve[-1]["val_loss"] if val_curve else None,
                 "val_every": every_val, "train_seconds": round(seconds, 3),
                 "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
                 "peak_memory_bytes": peak_memory_bytes(acc.device), "adapter_path": str(delta),
                 "adapter_bytes": sum(delta_files.values()), "adapter_files": delta_files})
    if acc.is_main_process and not t.keep_checkpoints:
        shutil.rmtree(out_dir / CKPT_DIR, ignore_errors=True)
