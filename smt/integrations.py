"""SMT in a Hugging Face `transformers.Trainer`, and a peft-like entry point.

Three lines in a training script::

    from smt.integrations import SMTCallback
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate)
    SMTCallback(smt.SMTConfig(block_size=64, budget=0.0084, warmup_steps=100)).attach(trainer)
    trainer.train()

What the callback does, step by step, as the harness's own loop (`harness.train._Run._warmup`,
`baselines.smt_method.SMT`) does it:

* The first `warmup_steps` optimizer steps are the warm-up. A `GradientScorer` (gradient hooks on
  the target weights) sees every micro-batch's gradient as its backward produces it, and
  `accumulate()` runs ONCE PER OPTIMIZER STEP (`on_pre_optimizer_step`, i.e. after the last
  micro-batch of the step), exactly where the harness's `TrainStep` calls `after_backward`:
  with gradient accumulation the sum over a step's micro-batches is one addend, as in the harness.
  `warmup_mode="full_ft"`: the warm-up steps are the Trainer's ordinary full fine-tuning steps
  (its optimizer, its schedule from step 0, at `args.learning_rate`). `warmup_mode="grad_only"`:
  backward passes only; every gradient is dropped before the optimizer step, so AdamW (which skips
  parameters without a gradient) changes no weight, while the scheduler still advances, so the
  main phase continues the schedule at step `warmup_steps`, as the harness's `make_optimizer(...,
  offset=warmup_steps)` does.
* After step `warmup_steps` (`on_step_end`): `scorer.select()` (a collective: with several
  processes it all-reduces the sums and broadcasts rank 0's plan, so every rank holds the same
  plan), `smt.apply_smt`, then a NEW optimizer over the block parameters only (the Trainer's own
  `create_optimizer`: `args.optim`, weight decay, betas; peak lr `lr` or `args.learning_rate`) and
  a new scheduler (`create_scheduler` over `max_steps`, advanced to the current step).
* `on_save`: every Trainer checkpoint gets `<checkpoint>/smt/`: the delta (`smt.save_smt`) and,
  after a full-FT warm-up, `warmup_weights.pt` (every weight as the warm-up left it; the delta sits
  on those, not on the original base) -- the layout of `baselines.smt_method.SMT.save`.
  `load_smt_checkpoint(fresh_base_model, "<checkpoint>/smt")` restores the trained model (it loads
  the warm-up weights if present, then `smt.load_smt`, which checks the base's fingerprint).

Why `attach(trainer)` and not only `callbacks=[SMTCallback(...)]`: a TrainerCallback is handed the
optimizer and scheduler OBJECTS, not the Trainer, and the loop (transformers 5.x
`Trainer._run_epoch`) calls `self.optimizer.step()` and `self.lr_scheduler.step()` on the
Trainer's attributes at every step; rebuilding them over the block parameters therefore means
assigning `trainer.optimizer` / `trainer.lr_scheduler`, which needs the Trainer. `attach` stores it
and adds the callback; no Trainer subclass is needed. A callback added without `attach` fails at
`on_train_begin` with this explanation.

Several processes (torchrun / `accelerate launch`, DDP): the plan is the same on every rank (see
above). After `apply_smt` the Trainer keeps calling the DDP wrapper it built at the start (a local
variable of its loop: it cannot be replaced from outside), whose reducer knows only the parameters
that required grad then (the full weights, all frozen now), not the new `blocks`: it would never
average them. The callback therefore averages the block gradients itself, one all-reduce of all of
them after the backward of the last micro-batch of a step (before clipping), which is what DDP
computes, and switches the stale wrapper's own sync off (`require_backward_grad_sync = False`, the
flag DDP's `no_sync()` sets; nothing it knows still gets a gradient, and torch 2.13 tolerates the
idle reducer either way, so this is defensive). DeepSpeed and FSDP shard the optimizer over the
parameters it was built with and cannot be given new ones mid-run: refused at `on_train_begin`
(the harness's own loop, `harness/launch.py`, runs SMT under DeepSpeed ZeRO-2). Resuming a Trainer
checkpoint (`resume_from_checkpoint`) is refused too: the model would first need the plan applied.
"""
from __future__ import annotations

import pathlib
import warnings
from typing import Optional, Union

import torch
from transformers import TrainerCallback

from .config import SMTConfig
from .model import apply_smt, load_smt, save_smt, sparse_modules
from .plan import SelectionPlan
from .scoring import GradientScorer

WARMUP_WEIGHTS = "warmup_weights.pt"   # the name baselines.smt_method.SMT.save uses
CHECKPOINT_SUBDIR = "smt"


def _world():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


class _BlockGradSync:
    """Average the block gradients over ranks after the last micro-batch of each optimizer step.

    A post-accumulate-grad hook on every `blocks` parameter counts the parameters whose gradient
    is complete for this backward; when all are, and the Trainer marked this micro-batch as the
    step's last (`accelerator.gradient_state.sync_gradients`), all of them are all-reduced at once
    (one flat buffer, the same order on every rank) and divided by the world size.
    """

    def __init__(self, params: list, gradient_state, dist):
        self.params, self.state, self.dist = params, gradient_state, dist
        self.seen = 0
        self.handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params]

    def _hook(self, _param):
        self.seen += 1
        if self.seen < len(self.params):
            return
        self.seen = 0
        if not self.state.sync_gradients:
            return
        grads = [p.grad for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dev = torch.device("cpu") if "gloo" in str(self.dist.get_backend()).lower() else flat.device
        buf = flat.to(dev)
        self.dist.all_reduce(buf, op=self.dist.ReduceOp.SUM)
        buf = buf.to(flat.device).div_(self.dist.get_world_size())
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(buf[offset:offset + n].view_as(g))
            offset += n

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


class SMTCallback(TrainerCallback):
    """Sparse Matrix Tuning inside a `transformers.Trainer` (see the module docstring).

    Args:
        config: the `smt.SMTConfig` (block size, budget, targets, quotas, scoring strategy,
            `warmup_steps` and `warmup_mode`).
        lr: peak learning rate of the block parameters after the selection (None: the Trainer's
            `args.learning_rate`, which the full-FT warm-up also uses). The paper's recipe: the
            warm-up at 9.65e-6 (`learning_rate`), then `lr=2e-4`.

    After the selection: `plan` (the `SelectionPlan`, the same on every rank); `scorer` is
    dropped. Use `SMTCallback(config).attach(trainer)`.
    """

    def __init__(self, config: SMTConfig, lr: Optional[float] = None):
        if not isinstance(config, SMTConfig):
            raise TypeError(f"SMTCallback needs an smt.SMTConfig, got {type(config).__name__}")
        config.validate()
        if lr is not None and not lr > 0:
            raise ValueError(f"SMTCallback lr must be > 0 (or None for args.learning_rate), got {lr!r}")
        self.config, self.lr = config, lr
        self.trainer = None
        self.scorer: Optional[GradientScorer] = None
        self.plan: Optional[SelectionPlan] = None
        self.warmup_accumulated = 0
        self._sync = None

    def attach(self, trainer) -> "SMTCallback":
        """Bind to `trainer` (needed to replace its optimizer and scheduler) and add the callback."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    # ---- warm-up --------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        t = self.trainer
        if t is None:
            raise RuntimeError("SMTCallback is not attached to its Trainer: use SMTCallback(config).attach(trainer) "
                               "instead of callbacks=[...] / add_callback (it must replace trainer.optimizer and "
                               "trainer.lr_scheduler after the warm-up, which a callback is not handed)")
        if getattr(t, "is_deepspeed_enabled", False) or getattr(t, "is_fsdp_enabled", False):
            raise RuntimeError("SMTCallback cannot rebuild a DeepSpeed or FSDP optimizer over the block parameters "
                               "mid-run; train with DDP (torchrun / accelerate without DeepSpeed), or use the "
                               "harness (harness/launch.py) for SMT under DeepSpeed ZeRO-2")
        if state.global_step > 0:
            raise RuntimeError(f"SMTCallback does not resume Trainer checkpoints (global step {state.global_step}): "
                               "start the run afresh, or load the delta with "
                               "smt.integrations.load_smt_checkpoint and train it further")
        if state.max_steps <= self.config.warmup_steps:
            raise ValueError(f"SMT warm-up ({self.config.warmup_steps} steps) must be shorter than the run "
                             f"({state.max_steps} optimizer steps); lower SMTConfig.warmup_steps or raise "
                             "max_steps / num_train_epochs")
        if t.optimizer is None or t.lr_scheduler is None:
            raise RuntimeError("SMTCallback: the Trainer has no optimizer or scheduler at on_train_begin")
        model = t.model
        self.scorer = GradientScorer(model, self.config)
        frozen = [n for n, m in self.scorer.modules.items() if not m.weight.requires_grad]
        if frozen:
            self.scorer.remove_hooks()
            raise ValueError(f"SMT target weights {frozen[:4]} do not require grad; the warm-up needs their "
                             "gradients (leave the model trainable; SMTCallback freezes it after the selection)")
        self.warmup_accumulated = 0

    def _in_warmup(self, state) -> bool:
        return self.scorer is not None and state.global_step < self.config.warmup_steps

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        """After the step's last backward (and the clipping), before optimizer.step: one accumulate
        per optimizer step; grad_only drops every gradient so that the optimizer changes nothing."""
        if not self._in_warmup(state):
            return
        self.scorer.accumulate()
        self.warmup_accumulated += 1
        if self.config.warmup_mode == "grad_only":
            for p in self.trainer.model.parameters():
                p.grad = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.plan is not None:
            # the optimizer just moved the blocks: write them into the frozen weights now (a forward
            # would do it next step), so that what the Trainer saves or evaluates is this step's model
            with torch.no_grad():
                for m in sparse_modules(self.trainer.model).values():
                    m.sync_()
            return
        if self.scorer is None or state.global_step != self.config.warmup_steps:
            return
        if self.warmup_accumulated != self.config.warmup_steps:
            raise RuntimeError(f"SMTCallback accumulated {self.warmup_accumulated} warm-up steps, expected "
                               f"{self.config.warmup_steps}")
        self.plan = self.scorer.select()            # collective: the same plan on every rank
        self.plan.meta.update({"warmup_steps": self.config.warmup_steps, "warmup_mode": self.config.warmup_mode,
                               "strategy": self.config.strategy, "integration": "transformers.Trainer"})
        self.scorer = None
        self._apply_and_rebuild(args, state)

    # ---- selection, apply, optimizer rebuild ------------------------------------------------------
    def _apply_and_rebuild(self, args, state):
        t = self.trainer
        apply_smt(t.model, self.plan)
        wrapped = t.model_wrapped
        dist = _world()
        if dist is not None and isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            wrapped.require_backward_grad_sync = False   # its reducer does not know the blocks
            blocks = [m.blocks for m in sparse_modules(t.model).values()]
            self._sync = _BlockGradSync(blocks, t.accelerator.gradient_state, dist)
        old = t.optimizer
        inner = getattr(old, "optimizer", old)
        inner.state.clear()                         # the warm-up's AdamW moments (a full model's worth)
        optimizers = getattr(t.accelerator, "_optimizers", None)
        if isinstance(optimizers, list) and old in optimizers:
            optimizers.remove(old)
        t.optimizer, t.lr_scheduler = None, None
        t.create_optimizer()                        # over the parameters requiring grad: the blocks
        if self.lr is not None:
            for group in t.optimizer.param_groups:
                group["lr"] = self.lr
        t.optimizer = t.accelerator.prepare_optimizer(t.optimizer)
        t.create_scheduler(num_training_steps=state.max_steps, optimizer=t.optimizer)
        with warnings.catch_warnings():             # "lr_scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore")
            for _ in range(state.global_step):      # continue the schedule where the warm-up left it
                t.lr_scheduler.step()
        t.callback_handler.optimizer, t.callback_handler.lr_scheduler = t.optimizer, t.lr_scheduler
        n_opt = sum(p.numel() for g in t.optimizer.param_groups for p in g["params"])
        n_blocks = sum(m.blocks.numel() for m in sparse_modules(t.model).values())
        if n_opt != n_blocks:
            raise RuntimeError(f"SMTCallback: the rebuilt optimizer holds {n_opt} parameters, the blocks "
                               f"{n_blocks}; something else in the model requires grad")

    # ---- checkpoints ----------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        """<output_dir>/checkpoint-<step>/smt/: the delta (+ warm-up weights after a full-FT warm-up)."""
        if self.plan is None or not args.should_save:
            return
        out = pathlib.Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_SUBDIR
        save_smt_checkpoint(self.trainer.model, out, self.config.warmup_mode)

    def on_train_end(self, args, state, control, **kwargs):
        if self._sync is not None:
            self._sync.remove()
            self._sync = None


def save_smt_checkpoint(model, out_dir, warmup_mode: str = "full_ft") -> pathlib.Path:
    """`smt.save_smt(model, out_dir)`; after a full-FT warm-up also every weight but the blocks
    (`warmup_weights.pt`: the base the delta sits on). Returns the delta's path."""
    out_dir = pathlib.Path(out_dir)
    path = save_smt(model, out_dir)
    if warmup_mode == "full_ft":
        state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.endswith(".blocks")}
        torch.save(state, out_dir / WARMUP_WEIGHTS)
    return path


def load_smt_checkpoint(model, path, merge: bool = False):
    """Put a saved SMT checkpoint (`<checkpoint>/smt`) on a fresh copy of the base model: the warm-up
    weights first when the directory has them, then `smt.load_smt` (base fingerprint checked)."""
    path = pathlib.Path(path)
    warm = path / WARMUP_WEIGHTS
    if warm.is_file():
        model.load_state_dict(torch.load(warm, weights_only=True), strict=True)
    return load_smt(model, path, merge=merge)


def get_smt_model(model, config: SMTConfig, plan: Union[SelectionPlan, str, pathlib.Path, None] = None,
                  warmup_batches=None, loss_fn=None):
    """The closest thing to peft's `get_peft_model(model, config)` for SMT: returns `model` (in place)
    with only the SMT block parameters trainable, ready for any training loop.

    SMT cannot be a real peft tuner without an upstream change: peft 0.21's `register_peft_method`
    raises `ValueError: Unknown PEFT type SMT, please add an entry to peft.utils.peft_types.PeftType.`
    for any name outside its `PeftType` enum. And unlike LoRA its adapter depends on data: the
    blocks are chosen from warm-up gradients. So the plan comes from one of:

    * `plan`: a `SelectionPlan`, or the path of a `plan.json` (`SelectionPlan.to_json`);
    * `warmup_batches`: an iterable of batches; `config.warmup_steps` of them are run forward and
      backward (gradients only: `warmup_mode` must be `"grad_only"`; a full-FT warm-up needs an
      optimizer: use `SMTCallback` in a Trainer). `loss_fn(model, batch)` gives the loss (default
      `model(**batch).loss`).

    The plan is kept as `model.smt_plan`; save with `smt.save_smt`, load with `smt.load_smt`.
    """
    config.validate()
    if plan is not None and warmup_batches is not None:
        raise ValueError("get_smt_model: pass a plan or warmup_batches, not both")
    if plan is None and warmup_batches is None:
        raise ValueError("get_smt_model needs a selection: pass plan= (a SelectionPlan or plan.json) or "
                         "warmup_batches= (gradient-only warm-up); to select inside a transformers Trainer with "
                         "a full-FT warm-up use smt.integrations.SMTCallback(config).attach(trainer)")
    if plan is None:
        if config.warmup_mode != "grad_only":
            raise ValueError("get_smt_model runs a gradient-only warm-up (no optimizer): set "
                             "SMTConfig(warmup_mode='grad_only'), or use SMTCallback in a Trainer for 'full_ft'")
        plan = _grad_only_plan(model, config, warmup_batches, loss_fn)
    elif not isinstance(plan, SelectionPlan):
        plan = SelectionPlan.from_json(pathlib.Path(plan))
    return apply_smt(model, plan)


def _grad_only_plan(model, config: SMTConfig, batches, loss_fn) -> SelectionPlan:
    loss_fn = loss_fn or (lambda m, b: m(**b).loss)
    was = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    scorer = GradientScorer(model, config)
    it = iter(batches)
    try:
        for step in range(config.warmup_steps):
            try:
                batch = next(it)
            except StopIteration:
                raise ValueError(f"get_smt_model: warmup_batches ran out after {step} of "
                                 f"{config.warmup_steps} warm-up steps (SMTConfig.warmup_steps)") from None
            loss_fn(model, batch).backward()
            scorer.accumulate()
            model.zero_grad(set_to_none=True)
        return scorer.select()
    finally:
        scorer.remove_hooks()
        for p, r in was.items():
            p.requires_grad_(r)
