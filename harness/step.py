"""The optimizer step every method trains with, and the pieces around it.

`TrainStep` is the ONE optimizer step (forward on the answer positions only, backward, clipping,
optimizer and scheduler step): the training loop (harness.train) runs it and profiling
(harness.profile, Table 1) times it. `make_optimizer` (AdamW + the schedule), `build_accelerator`
(the engine), `warmup_phase` (SMT's warm-up steps: every weight trains or only gradients are
summed) and `main_phase` (the method's own parameters), each a `Phase` (its TrainStep and its
end), are the set-up both of them use, so a profile measures exactly what training runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import resource
import time

import numpy as np
import torch

from harness import launch
from harness.checkpoint import restore_training
from harness.loss import causal_lm_loss, n_answer_tokens
from harness.train_data import collate


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


def make_optimizer(model, run, total_steps: int, offset: int, lr: float | None = None):
    """AdamW over the parameters requiring grad + its LambdaLR schedule continuing at `offset`.

    lr: peak learning rate (default: the method's `lr`).
    """
    t = run.train
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(f"method {run.method.name!r} left no parameter trainable")
    opt = torch.optim.AdamW(params, lr=lr or run.method.lr, weight_decay=t.weight_decay, betas=tuple(t.adam_betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, t.warmup_steps, t.lr_scheduler, offset))
    return opt, sched


def build_accelerator(run, method=None):
    """The Accelerator a run trains with (the one place it is built): harness.launch picks the
    engine the launcher set up (one process, DDP, or DeepSpeed ZeRO-2 with a config per phase)."""
    return launch.build_accelerator(run, method)


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

        step = TrainStep(run.train, model, optimizer, scheduler, accelerator=acc)
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

    def __init__(self, train_cfg, model, optimizer=None, scheduler=None, accelerator=None,
                 after_backward=None):  # train_cfg: the run's harness.run_config.TrainConfig
        self.t, self.model, self.opt, self.sched, self.acc = train_cfg, model, optimizer, scheduler, accelerator
        self.after_backward = after_backward
        self.steps_done = 0

    def __call__(self, batches, step_index: int | None = None) -> StepResult:
        accum, acc = self.t.grad_accum, self.acc
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
        if self.t.max_grad_norm:
            params = [p for p in self.model.parameters() if p.requires_grad]
            if acc is not None:
                acc.clip_grad_norm_(params, self.t.max_grad_norm)
            else:
                torch.nn.utils.clip_grad_norm_(params, self.t.max_grad_norm)
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


# ---- the two phases a run trains in -------------------------------------------------------------
@dataclasses.dataclass
class Phase:
    """One phase of a run, ready to step: the steps up to `last` (exclusive) with `step`, the
    phase's TrainStep (bound to its prepared model, optimizer and scheduler).

    main: the method's own training (counts tokens, validates every train.val_every steps, keeps
    checkpoints); False for a warm-up, whose curve points carry `tag` ("warmup")."""

    name: str
    last: int
    step: TrainStep
    main: bool
    tag: str | None = None

    @property
    def model(self):
        return self.step.model

    @property
    def opt(self):
        return self.step.opt

    @property
    def sched(self):
        return self.step.sched


def warmup_phase(method, model, run, accelerator, total_steps: int) -> Phase:
    """A method's warm-up (SMT: `method.warmup_steps` steps before its selection).

    Every weight requires grad and `method.begin_warmup(model)` starts its scoring; warmup_mode
    full_ft: the steps update every weight with their own AdamW (schedule from step 0 over the whole
    run, peak `method.warmup_lr`, else the method's lr); grad_only: gradients only, no optimizer.
    Each backward ends in `method.after_warmup_backward` (SMT sums the gradients).
    """
    for p in model.parameters():
        p.requires_grad_(True)
    method.begin_warmup(model)
    opt = sched = None
    launch.select_phase(accelerator, "warmup")  # DeepSpeed: the offload config of a full-FT warm-up
    if method.warmup_mode == "full_ft":
        opt, sched = make_optimizer(model, run, total_steps, 0, lr=getattr(method, "warmup_lr", None))
        prepared, opt = accelerator.prepare(model, opt)
    elif launch.is_deepspeed(accelerator):
        prepared = model  # gradients only: no ZeRO engine (it needs an optimizer); the scorer all-reduces
    else:
        prepared = accelerator.prepare(model)
    step = TrainStep(run.train, prepared, opt, sched, accelerator, after_backward=method.after_warmup_backward)
    return Phase("warmup", method.warmup_steps, step, main=False, tag="warmup")


def main_phase(model, run, accelerator, total_steps: int, offset: int, checkpoint: dict | None = None) -> Phase:
    """The main phase: AdamW over the parameters the method left trainable, its schedule continuing
    at `offset` (after a warm-up). `checkpoint` (harness.checkpoint.load_checkpoint), when resuming:
    its weights, optimizer and scheduler states are loaded before the engine takes the optimizer,
    DeepSpeed's ZeRO partitions after."""
    model.train()
    opt, sched = make_optimizer(model, run, total_steps, offset)
    if checkpoint is not None:
        restore_training(checkpoint, model, opt, sched)
    launch.select_phase(accelerator, "train")  # DeepSpeed: this phase's ZeRO-2 config (offload for full FT)
    prepared, opt = accelerator.prepare(model, opt)
    if checkpoint is not None:
        launch.load_engine_state(accelerator, checkpoint["dir"])
    return Phase("train", total_steps, TrainStep(run.train, prepared, opt, sched, accelerator), main=True)
