"""The one training loop shared by every method (incl. SMT warm-up), with config-keyed resume.

`train(run_cfg, out_dir)` writes out_dir/record.json (status ok, failed, diverged or
interrupted; on failure with the error, traceback and the loss curve up to it), out_dir/delta/
(the method's adapter/delta), appends one line per attempt to out_dir/attempts.jsonl (never
rewritten), and while running keeps out_dir/checkpoints/.

Resume. Every checkpoint, SMT plan (plan.json meta) and warm-up weights file (sidecar
warmup_weights.json) carries the run's fingerprint (harness.records.fingerprint_inputs: the
resolved run_cfg without paths/threads/descriptions, model and data checksums and
TRAIN_CODE_VERSION). A restart with the same fingerprint resumes exactly (same batches, RNG,
optimizer and scheduler state); any mismatch, an unreadable checkpoint, or a missing file
discards checkpoints/ and starts afresh, giving the reason in the log and in
record.run_info.attempts[-1].fresh_start_reason. A diverged run deletes its checkpoints: it is
never resumed.

The step. `TrainStep` is the one optimizer step (forward on the answer positions only, backward,
clipping, optimizer and scheduler step) that training runs and profiling (Table 1) times; the
pieces around it (`build_accelerator`, `load_data`, `batch_stream`, `make_optimizer`,
`validation_loss`) are public so profiling builds exactly what training builds.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
import datetime
import logging
import math
import os
import pathlib
import random
import re
import resource
import shutil
import time
import traceback

import numpy as np
import torch

import baselines
from baselines.base import WARMUP_WEIGHTS, StaleResumeError
from harness import launch
from harness.data import DataError, meta_path, read_records
from harness.loss import causal_lm_loss, n_answer_tokens
from harness.models import load_model
from harness.prompts import tokenize_example
from harness.records import (append_attempt, atomic_write_json, file_sizes, fingerprint, fingerprint_diff,
                             fingerprint_inputs, new_record, read_attempts, read_json, write_record)

# Bump when the loop's semantics change (what a step computes, the schedule, the data order):
# every checkpoint written by an older loop is then discarded instead of resumed.
# 2: lr logged is the lr the step used; model in train mode; loss on answer positions only;
#    no-answer examples dropped; validation records held out.
TRAIN_CODE_VERSION = 2
CKPT_DIR, CKPT_FILE = "checkpoints", "latest.pt"
WARMUP_SIDECAR = "warmup_weights.json"
VAL_SPLIT_SEED = 0  # the held-out validation records depend on the dataset only, never on the run seed
log = logging.getLogger("harness.train")


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA max_memory_allocated on GPU, else the process RSS high-water mark."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ---- data ------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainData:
    """Tokenized examples of a prepared training set: `train` (what the loop trains on) and `val`
    (held out: train.val_records records chosen with VAL_SPLIT_SEED, never trained on)."""

    train: list
    val: list
    n_records: int
    n_dropped_no_answer: int
    val_indices: list  # indices (into the cleaned records) of the held-out records
    val_prior_loss: float | None = None  # the validation loss of a label-prior-only model


def has_answer(example: dict) -> bool:
    """Whether a tokenized example keeps at least one label token that carries a loss."""
    return any(label != -100 for label in example["labels"][1:])


def check_prepared_spec(path: pathlib.Path, spec: dict | None) -> None:
    """The prepared set at `path` must have been built from `spec` (its meta's `spec`).

    Prepared files live at resources/data/<dataset>/train.json whatever the config, and Snakemake
    keeps a file it did not make (or whose metadata it lost) as up to date: without this check a
    run would train on another config's data of the same dataset name and record it as its own.
    """
    meta_file = meta_path(path)
    if spec is None or not meta_file.is_file():
        return
    prepared = read_json(meta_file, "prepared training set meta").get("spec")
    if prepared is not None and prepared != spec:
        raise DataError(f"{path} was prepared from dataset spec {prepared}, but this run's config asks "
                        f"for {spec}; delete {path} (and its .meta.json) and rerun, or run snakemake with "
                        f"--forcerun {path}")


def load_data(run_cfg: dict, tokenizer) -> TrainData:
    """Tokenize run_cfg's prepared training set, drop examples with no answer token left after
    train.cutoff_len, and hold out train.val_records of them for validation.

    The prepared set is used whole: subsampling happens once, when it is prepared (datasets.
    <name>.max_records), never here.
    """
    path = pathlib.Path(run_cfg["dataset"]["path"])
    if not path.is_file():
        raise FileNotFoundError(f"training set {path} not found; run the prepare_data step "
                                "(harness.data.prepare_train_set) first")
    try:
        records = read_records(path)
    except DataError:  # names the file and the fix already (modified, corrupt, miscounted)
        raise
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"training set {path} is not valid JSON ({err}); delete it and rerun the "
                         "prepare_data step") from err
    check_prepared_spec(path, run_cfg["dataset"].get("spec"))
    if not records:
        raise ValueError(f"training set {path} holds no records; check datasets.<name> in the config "
                         "and rerun the prepare_data step")
    t = run_cfg["train"]
    tokenized = [tokenize_example(tokenizer, r, t["cutoff_len"], t["train_on_inputs"], t["add_eos_token"])
                 for r in records]
    answered = [i for i, e in enumerate(tokenized) if has_answer(e)]
    kept, kept_records = [tokenized[i] for i in answered], [records[i] for i in answered]
    dropped = len(tokenized) - len(kept)
    if dropped:
        log.warning("%s: dropped %d of %d examples whose answer is cut off entirely by train.cutoff_len=%d",
                    path, dropped, len(tokenized), t["cutoff_len"])
    if not kept:
        raise ValueError(f"training set {path}: none of its {len(records)} examples keeps an answer token "
                         f"after truncation to train.cutoff_len={t['cutoff_len']} tokens (the prompts are "
                         "longer); raise train.cutoff_len or set train.train_on_inputs: true")
    n_val = int(t.get("val_records") or 0)
    if n_val and n_val >= len(kept):
        raise ValueError(f"train.val_records={n_val} leaves no training example: {path} keeps {len(kept)} "
                         "examples with an answer; lower train.val_records or prepare more records")
    held = sorted(random.Random(VAL_SPLIT_SEED).sample(range(len(kept)), n_val)) if n_val else []
    held_set = set(held)
    prior = prior_val_loss([r for i, r in enumerate(kept_records) if i not in held_set],
                           [kept_records[i] for i in held], [kept[i] for i in held])
    return TrainData(train=[e for i, e in enumerate(kept) if i not in held_set], val=[kept[i] for i in held],
                     n_records=len(records), n_dropped_no_answer=dropped, val_indices=held,
                     val_prior_loss=prior)


_ANSWER = re.compile(r"the correct answer is (\S+?)\.?\s*$", re.I)
_FORMAT = re.compile(r"Answer format: ?([\w/ ]+)")


def prior_val_loss(train_records: list, val_records: list, val_examples: list) -> float | None:
    """The validation loss of a model that knows nothing but the label prior: every template
    token and EOS predicted with certainty, the label drawn from the training frequencies of its
    answer format ("solution1/solution2", "true/false", ...). Token-weighted like the validation
    loss itself, so a run whose validation loss stays at or above this value has learned the
    format and the label shares, nothing about the questions. None for sets whose answers are not
    "the correct answer is <label>" (arithmetic) or when nothing is held out."""
    def key(record):
        answer, fmt = _ANSWER.search(str(record.get("output", ""))), _FORMAT.search(str(record.get("instruction", "")))
        return (fmt.group(1).strip() if fmt else None, answer.group(1).lower()) if answer else None

    if not val_records or any(key(r) is None for r in val_records):
        return None
    counts: dict = {}
    for r in train_records:
        k = key(r)
        if k is not None:
            counts.setdefault(k[0], Counter())[k[1]] += 1
    total = 0.0
    for r in val_records:
        fmt, label = key(r)
        seen = counts.get(fmt, Counter())
        n_labels = max(len(seen), len(fmt.split("/")) if fmt else 1)
        # add-one smoothing over the format's labels: a label never seen in training is not infinite
        total -= math.log((seen[label] + 1) / (sum(seen.values()) + n_labels))
    tokens = sum(sum(1 for x in e["labels"] if x != -100) for e in val_examples)
    return round(total / max(tokens, 1), 6)


def load_examples(run_cfg: dict, tokenizer) -> list[dict]:
    """The training examples of load_data (no-answer examples dropped, validation held out)."""
    return load_data(run_cfg, tokenizer).train


class EpochBatches(torch.utils.data.Sampler):
    """Micro-batch index lists from global micro-batch `start` to `stop`; epoch e is a fixed
    permutation seeded by (seed, e), so any position can be resumed exactly."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int):
        self.n, self.bs, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.per_epoch = math.ceil(n / batch_size)

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for k in range(self.start, self.stop):
            epoch, i = divmod(k, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            yield perm[i * self.bs:(i + 1) * self.bs].tolist()


def collate(pad_id: int):
    """Right-pad input_ids with pad_id, attention_mask with 0, labels with -100."""
    def fn(batch):
        width = max(len(b["input_ids"]) for b in batch)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for b in batch:
            pad = width - len(b["input_ids"])
            out["input_ids"].append(list(b["input_ids"]) + [pad_id] * pad)
            out["attention_mask"].append(list(b["attention_mask"]) + [0] * pad)
            out["labels"].append(list(b["labels"]) + [-100] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
    return fn


def batch_stream(examples: list, run_cfg: dict, pad_id: int, start_step: int, total_steps: int,
                 accelerator=None):
    """Iterator over the micro-batches of optimizer steps start_step..total_steps (grad_accum x
    processes micro-batches per step), identical for any start_step (exact resume)."""
    t, seed = run_cfg["train"], int(run_cfg.get("seed", 0))
    per_step = t.get("grad_accum", 1) * (accelerator.num_processes if accelerator else 1)
    sampler = EpochBatches(len(examples), t["micro_batch_size"], seed, start_step * per_step,
                           total_steps * per_step)
    # its own generator: iterating must not draw from torch's global RNG (exact resume)
    loader = torch.utils.data.DataLoader(examples, batch_sampler=sampler, collate_fn=collate(pad_id),
                                         generator=torch.Generator().manual_seed(seed))
    return iter(accelerator.prepare(loader) if accelerator else loader)


# ---- optimizer, schedule, accelerator --------------------------------------------------------
def lr_lambda(total_steps: int, warmup: int, kind: str, offset: int = 0):
    """LR multiplier of the step with 0-based index offset + s: linear warm-up over `warmup`
    steps (from 0, as transformers' get_linear_schedule_with_warmup) then linear decay to 0 at
    total_steps; or "constant" after a warm-up that reaches 1 at its last step."""
    if kind not in ("linear", "constant"):
        raise ValueError(f"unknown lr_scheduler {kind!r}; use linear or constant")

    def fn(s):
        step = s + offset
        if step < warmup:
            return (step + 1) / max(1, warmup) if kind == "constant" else step / max(1, warmup)
        if kind == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return fn


def make_optimizer(model, run_cfg: dict, total_steps: int, offset: int, lr: float | None = None):
    """AdamW over the parameters requiring grad + its LambdaLR schedule continuing at `offset`.

    lr: peak learning rate (default: the method's `lr`).
    """
    t = run_cfg["train"]
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(f"method {run_cfg['method']['name']!r} left no parameter trainable")
    opt = torch.optim.AdamW(params, lr=lr or run_cfg["method"]["lr"], weight_decay=t.get("weight_decay", 0.0),
                            betas=tuple(t.get("adam_betas", (0.9, 0.999))))  # train.adam_betas (schema default)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(total_steps, t.get("warmup_steps", 0), t.get("lr_scheduler", "linear"), offset))
    return opt, sched


def build_accelerator(run_cfg: dict, method=None):
    """The Accelerator a run trains with (the one place it is built): harness.launch picks the
    engine the launcher set up (one process, DDP, or DeepSpeed ZeRO-2 with a config per phase)."""
    from harness import launch

    return launch.build_accelerator(run_cfg, method)


# ---- the step --------------------------------------------------------------------------------
@dataclasses.dataclass
class StepResult:
    """What one TrainStep did: mean micro-batch loss, the learning rate the optimizer step used
    (0.0 without an optimizer), tokens processed (all processes) and wall seconds."""

    loss: float
    lr: float
    tokens: int
    seconds: float


class TrainStep:
    """One optimizer step: the function training runs and profiling (Table 1) times.

        step = TrainStep(run_cfg["train"], model, optimizer, scheduler, accelerator=acc)
        result = step(batches)          # -> StepResult(loss, lr, tokens, seconds)

    batches: an iterator of micro-batches (dicts with input_ids, attention_mask, labels, on the
    model's device; `batch_stream` gives them). One call takes train.grad_accum micro-batches,
    and for each: loss = harness.loss.causal_lm_loss (LM head on answer positions only), a
    non-finite loss raises DivergedError before any update, backward of loss / grad_accum
    (accelerator.backward, gradient sync only on the last micro-batch). Then after_backward(model)
    (SMT's warm-up gradient scoring), clipping to train.max_grad_norm, optimizer.step,
    scheduler.step and zero_grad. optimizer None: gradients only (SMT's grad_only warm-up).
    model/optimizer are the accelerator-prepared ones when an accelerator is given; without one
    the step runs on the plain model (loss.backward, torch clipping).
    """

    def __init__(self, train_cfg: dict, model, optimizer=None, scheduler=None, accelerator=None,
                 after_backward=None):
        self.t, self.model, self.opt, self.sched, self.acc = train_cfg, model, optimizer, scheduler, accelerator
        self.after_backward = after_backward
        self.steps_done = 0

    def __call__(self, batches, step_index: int | None = None) -> StepResult:
        accum, acc = int(self.t.get("grad_accum", 1)), self.acc
        where = f"step {step_index + 1}" if step_index is not None else f"step {self.steps_done + 1}"
        lr = self.opt.param_groups[0]["lr"] if self.opt is not None else 0.0
        start, losses, tokens = time.perf_counter(), [], 0
        for i in range(accum):
            batch = next(batches)
            # DDP: no_sync but on the last micro-batch; DeepSpeed: the engine scales and syncs (harness.launch)
            micro = launch.micro_batch(acc, self.model, i, accum) if acc is not None else contextlib.nullcontext(
                lambda loss: (loss / accum).backward())
            with micro as backward:
                loss = causal_lm_loss(self.model, batch)
                if not torch.isfinite(loss):
                    raise DivergedError(f"non-finite loss ({loss.item()}) at {where}; lower the learning "
                                        "rate (method lr) or check the data and dtype")
                backward(loss)
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum()) * (acc.num_processes if acc is not None else 1)
        if self.after_backward is not None:
            self.after_backward(acc.unwrap_model(self.model) if acc is not None else self.model)
        if self.t.get("max_grad_norm"):
            params = [p for p in self.model.parameters() if p.requires_grad]
            if acc is not None:
                acc.clip_grad_norm_(params, self.t["max_grad_norm"])
            else:
                torch.nn.utils.clip_grad_norm_(params, self.t["max_grad_norm"])
        if self.opt is not None:
            self.opt.step()
            if self.sched is not None:
                self.sched.step()
        if acc is not None:
            launch.zero_grad(acc, self.model)
        else:
            self.model.zero_grad(set_to_none=True)
        self.steps_done += 1
        loss = sum(losses) / len(losses)
        if acc is not None and acc.num_processes > 1:  # the record shows the global batch's loss, not rank 0's
            loss = acc.reduce(torch.tensor([loss], dtype=torch.float64, device=acc.device), "mean").item()
        return StepResult(loss=loss, lr=float(lr), tokens=tokens,
                          seconds=time.perf_counter() - start)


@torch.no_grad()
def validation_loss(model, examples: list, batch_size: int, pad_id: int, device) -> float:
    """Mean cross-entropy over every answer token of `examples` (token-weighted), in eval mode
    (no dropout) and without gradients; the model's training mode is restored."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(pad_id)(examples[i:i + batch_size]).items()}
            total += float(causal_lm_loss(model, batch, reduction="sum"))
            count += n_answer_tokens(batch["labels"])
    finally:
        model.train(was_training)
    return total / max(count, 1)


def total_steps(run_cfg: dict, n_examples: int, n_proc: int = 1) -> int:
    """train.max_steps, else ceil(epochs * micro-batches per epoch / (grad_accum * processes))."""
    t = run_cfg["train"]
    if t.get("max_steps"):
        return int(t["max_steps"])
    if not t.get("epochs"):
        raise ValueError("set train.max_steps or train.epochs")
    per_epoch = math.ceil(n_examples / t["micro_batch_size"]) / (t.get("grad_accum", 1) * n_proc)
    return max(1, math.ceil(t["epochs"] * per_epoch))


# ---- checkpoints and resume ------------------------------------------------------------------
def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
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
    payload = {**state, "rng": _rng_state(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _load_trainable(model, saved: dict) -> None:
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


def _resume_state(out_dir: pathlib.Path, fp: str, fp_inputs: dict, method, attempts: list):
    """(checkpoint to resume or None, fresh_start_reason or None). Checks the checkpoint, the
    method's own resume files (method.restore) and the warm-up weights against fingerprint fp."""
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
    if method.warmup_steps and method.warmup_mode == "full_ft":
        side = out_dir / CKPT_DIR / WARMUP_SIDECAR
        try:
            stamped = read_json(side, "warm-up weights sidecar").get("fingerprint")
        except ValueError as err:
            return None, str(err)
        if stamped != fp or not (out_dir / CKPT_DIR / WARMUP_WEIGHTS).is_file():
            return None, (f"warm-up weights in {out_dir / CKPT_DIR} are missing or belong to run fingerprint "
                          f"{str(stamped)[:12]}, not {fp[:12]}")
    try:  # last: it may remember the files it reuses
        method.restore(out_dir)
    except (StaleResumeError, ValueError, OSError) as err:
        return None, f"cannot resume the method's own state: {err}"
    return ckpt, None


# ---- the run ---------------------------------------------------------------------------------
class _Run:
    """State of one attempt; `run()` starts fresh or resumes, then trains to the end."""

    def __init__(self, run_cfg: dict, out_dir: pathlib.Path, record: dict, attempt: dict, attempts: list):
        self.cfg, self.out_dir, self.record, self.attempt, self.attempts = run_cfg, out_dir, record, attempt, attempts
        self.t, self.info = run_cfg["train"], record["train_info"]
        self.curve, self.val_curve = [], []
        self.info.update({"loss_curve": self.curve, "val_curve": self.val_curve, "steps": 0})

    def _log_point(self, step: int, res: StepResult, phase: str | None = None):
        point = {"step": step, "loss": round(res.loss, 6), "lr": res.lr}
        if phase:
            point["phase"] = phase
        self.curve.append(point)

    def _validate(self, step: int, phase: str | None = None):
        if not self.data.val:
            return
        loss = validation_loss(self.model, self.data.val, self.t["micro_batch_size"], self.tok.pad_token_id,
                               self.acc.device)
        point = {"step": step, "val_loss": round(loss, 6)}
        if phase:
            point["phase"] = phase
        self.val_curve.append(point)
        self.info["final_val_loss"] = point["val_loss"]
        log.info("step %d: validation loss %.4f", step, loss)

    def _checkpoint(self, model, opt, sched, step: int):
        launch.save_engine_state(self.acc, self.out_dir / CKPT_DIR)  # DeepSpeed: ZeRO partitions, all ranks
        if self.acc.is_main_process:
            state = {"fingerprint": self.fp, "fingerprint_inputs": self.fp_inputs, "step": step,
                     "loss_curve": list(self.curve), "val_curve": list(self.val_curve), "tokens": self.tokens,
                     "train_seconds": self.prior_seconds + time.time() - self.main_start}
            save_checkpoint(self.out_dir, self.acc.unwrap_model(model), opt, sched, state)
        self.acc.wait_for_everyone()

    def run(self):
        from tqdm.auto import tqdm

        cfg, t, info, out_dir = self.cfg, self.t, self.info, self.out_dir
        self.fp_inputs = fingerprint_inputs(cfg, self.record["meta_info"], TRAIN_CODE_VERSION)
        self.fp = fingerprint(self.fp_inputs)
        self.record["run_info"]["fingerprint"] = self.attempt["fingerprint"] = self.fp
        method = baselines.get_method(cfg["method"]["name"])(cfg)
        method.fingerprint = self.fp
        torch.set_num_threads(int(t.get("threads") or torch.get_num_threads()))
        seed = int(cfg.get("seed", 0))
        set_seed(seed)
        acc = self.acc = build_accelerator(cfg, method)
        ckpt, reason = _resume_state(out_dir, self.fp, self.fp_inputs, method, self.attempts)
        acc.wait_for_everyone()
        if ckpt is None:
            if reason:
                log.warning("starting run %s afresh: %s", cfg.get("run_id"), reason)
            if acc.is_main_process:
                discard_resume_state(out_dir, reason or "fresh start")
            acc.wait_for_everyone()
        self.attempt["fresh_start_reason"] = reason
        mcfg = cfg["model"]
        model, self.tok = load_model(mcfg["path"], mcfg.get("dtype", "auto"), acc.device)
        model.train()  # from_pretrained returns eval mode; training runs with dropout, as HF's Trainer
        self.model = model
        data = self.data = load_data(cfg, self.tok)
        info.update({"n_records": data.n_records, "n_dropped_no_answer": data.n_dropped_no_answer,
                     "n_examples": len(data.train), "n_val_examples": len(data.val),
                     "val_prior_loss": data.val_prior_loss})
        total = total_steps(cfg, len(data.train), acc.num_processes)
        warm = method.warmup_steps
        if warm >= total:
            raise ValueError(f"SMT warm-up ({warm} steps) must be shorter than the run ({total} steps); "
                             "lower the method's warmup_steps or raise train.max_steps")
        val_every = int(t.get("val_every") or t.get("checkpoint_every") or 10)
        progress = tqdm(total=total, desc=cfg.get("run_id") or method.name, disable=not acc.is_main_process,
                        initial=ckpt["step"] if ckpt else 0)
        start_time, step = time.time(), 0
        log_every = max(1, int(t.get("log_every", 1)))

        def stream(start_step):
            return batch_stream(data.train, cfg, self.tok.pad_token_id, start_step, total, acc)

        ckpt_dir = out_dir / CKPT_DIR
        if ckpt is None and warm:
            self._validate(0, phase="warmup")
            step = self._warmup(method, stream, progress, total, log_every)
            info["warmup_seconds"] = round(time.time() - start_time, 3)
            if method.warmup_mode == "full_ft" and acc.is_main_process:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                torch.save({k: v.cpu() for k, v in model.state_dict().items()}, ckpt_dir / WARMUP_WEIGHTS)
                atomic_write_json(ckpt_dir / WARMUP_SIDECAR, {"fingerprint": self.fp, "warmup_steps": warm})
        elif ckpt is not None and warm and method.warmup_mode == "full_ft":
            model.load_state_dict(torch.load(ckpt_dir / WARMUP_WEIGHTS, weights_only=True))
        info.update(method.apply(model, out_dir))
        self.record["run_info"]["budget_reached"] = info["budget_reached"]
        self.tokens, self.prior_seconds = 0, 0.0
        if not method.trains:  # the zero-shot reference: the base model's validation loss, no step
            progress.close()
            self._validate(0)
            return self._finish(method, model, data, 0, 0.0, val_every)
        model.train()
        opt, sched = make_optimizer(model, cfg, total, warm)
        if ckpt is not None:
            _load_trainable(model, ckpt["trainable"])
            if not launch.is_deepspeed(acc):  # DeepSpeed restores its ZeRO partitions after prepare
                opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            step = ckpt["step"]
            self.curve[:], self.val_curve[:] = ckpt["loss_curve"], ckpt.get("val_curve", [])
            self.tokens, self.prior_seconds = ckpt["tokens"], ckpt["train_seconds"]
            info["resumed_from_step"] = self.attempt["resumed_from_step"] = step
            log.info("resuming run %s from step %d", cfg.get("run_id"), step)
        launch.select_phase(acc, "train")  # DeepSpeed: this phase's ZeRO-2 config (offload for full FT)
        prepared, opt = acc.prepare(model, opt)
        self.model = prepared
        if ckpt is not None:
            launch.load_engine_state(acc, out_dir / CKPT_DIR)
        batches = stream(step)
        if ckpt is not None:
            _set_rng_state(ckpt["rng"])
        else:
            self._validate(step)
        stepper = TrainStep(t, prepared, opt, sched, acc)
        self.main_start, every = time.time(), t.get("checkpoint_every")
        if warm and ckpt is None:
            self._checkpoint(prepared, opt, sched, step)
        while step < total:
            res = stepper(batches, step)
            step += 1
            info["steps"] = step
            self.tokens += res.tokens
            progress.update(1)
            progress.set_postfix(loss=f"{res.loss:.4f}", tok_s=f"{res.tokens / max(res.seconds, 1e-9):.0f}")
            if step % log_every == 0 or step == total:
                self._log_point(step, res)
            if step % val_every == 0 or step == total:
                self._validate(step)
            if every and step % every == 0 and step < total:
                self._checkpoint(prepared, opt, sched, step)
        progress.close()
        seconds = self.prior_seconds + time.time() - self.main_start
        model = launch.finish(acc, prepared)  # DeepSpeed: engine released, parameters own their storage
        self._finish(method, model, data, step, seconds, val_every)

    def _finish(self, method, model, data, step: int, seconds: float, val_every: int):
        """Save the delta, fill train_info, drop the checkpoints (unless train.keep_checkpoints)."""
        t, info, out_dir, acc = self.t, self.info, self.out_dir, self.acc
        warm = method.warmup_steps
        delta = method.save(model, out_dir / "delta")
        delta_files = file_sizes(out_dir / "delta")
        info.update({"steps": step, "warmup_steps": warm, "micro_batch_size": t["micro_batch_size"],
                     "grad_accum": t.get("grad_accum", 1), "num_processes": acc.num_processes,
                     "engine": launch.describe(acc),
                     "tokens": self.tokens, "first_loss": self.curve[0]["loss"] if self.curve else None,
                     "final_loss": self.curve[-1]["loss"] if self.curve else None,
                     "final_val_loss": self.val_curve[-1]["val_loss"] if self.val_curve else None,
                     "val_every": val_every if data.val else None, "train_seconds": round(seconds, 3),
                     "tokens_per_s": round(self.tokens / max(seconds, 1e-9), 1),
                     "peak_memory_bytes": peak_memory_bytes(acc.device), "adapter_path": str(delta),
                     "adapter_bytes": sum(delta_files.values()), "adapter_files": delta_files})
        if acc.is_main_process and not t.get("keep_checkpoints"):
            shutil.rmtree(out_dir / CKPT_DIR, ignore_errors=True)

    def _warmup(self, method, stream, progress, total, log_every) -> int:
        """SMT warm-up: full-FT steps with their own optimizer (schedule from step 0, peak
        warmup_lr), or gradient-only steps; the main phase continues the schedule after them."""
        model, acc = self.model, self.acc
        for p in model.parameters():
            p.requires_grad_(True)
        method.begin_warmup(model)
        opt = sched = None
        launch.select_phase(acc, "warmup")  # DeepSpeed: offload config for a full-FT warm-up
        if method.warmup_mode == "full_ft":
            opt, sched = make_optimizer(model, self.cfg, total, 0, lr=getattr(method, "warmup_lr", None))
            prepared, opt = acc.prepare(model, opt)
        elif launch.is_deepspeed(acc):
            prepared = model  # gradients only: no ZeRO engine (it needs an optimizer); the scorer all-reduces
        else:
            prepared = acc.prepare(model)
        stepper = TrainStep(self.t, prepared, opt, sched, acc, after_backward=method.after_warmup_backward)
        batches = stream(0)
        for step in range(method.warmup_steps):
            res = stepper(batches, step)
            self.info["steps"] = step + 1
            progress.update(1)
            if (step + 1) % log_every == 0:
                self._log_point(step + 1, res, phase="warmup")
        return method.warmup_steps


def train(run_cfg: dict, out_dir) -> dict:
    """Train run_cfg's method; write out_dir/record.json and append to out_dir/attempts.jsonl.

    Returns the record (status ok). A failure is recorded (status failed or diverged, error,
    traceback, loss curve so far) and re-raised; so is KeyboardInterrupt (status interrupted,
    checkpoints kept for resume). A diverged run's checkpoints are deleted.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    attempts = read_attempts(out_dir)
    record = new_record(run_cfg)
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
        _Run(run_cfg, out_dir, record, attempt, attempts).run()
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
