"""The one training loop shared by every method (incl. SMT warm-up), with checkpoints and resume.

`train(run_cfg, out_dir)` writes out_dir/record.json (also on failure), out_dir/delta/ (the
method's adapter/delta) and, while running, out_dir/checkpoints/. Restarting a run with the
same out_dir resumes from its latest checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import pathlib
import random
import resource
import shutil
import time
import traceback

import numpy as np
import torch

import baselines
from harness.data import read_records
from harness.models import load_model
from harness.prompts import tokenize_example
from harness.records import file_sizes, new_record, write_record

DEEPSPEED_DIR = pathlib.Path(__file__).resolve().parent / "deepspeed"
CKPT_DIR, CKPT_FILE, WARMUP_WEIGHTS = "checkpoints", "latest.pt", "warmup_weights.pt"


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def deepspeed_config(method_name: str) -> pathlib.Path:
    """DeepSpeed ZeRO-2 JSON for `accelerate launch --deepspeed_config_file` (offload for full FT)."""
    return DEEPSPEED_DIR / ("zero2_offload.json" if method_name == "full_ft" else "zero2.json")


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


def load_examples(run_cfg: dict, tokenizer) -> list[dict]:
    """Tokenized training examples of run_cfg['dataset']['path'] (optionally a seeded subset)."""
    path = pathlib.Path(run_cfg["dataset"]["path"])
    if not path.is_file():
        raise FileNotFoundError(f"training set {path} not found; run the prepare_data step "
                                "(harness.data.prepare_train_set) first")
    records = read_records(path)
    t = run_cfg["train"]
    limit = t.get("max_train_records")
    if limit and len(records) > limit:
        keep = sorted(random.Random(run_cfg.get("seed", 0)).sample(range(len(records)), limit))
        records = [records[i] for i in keep]
    if not records:
        raise ValueError(f"training set {path} holds no records")
    return [tokenize_example(tokenizer, r, t["cutoff_len"], t["train_on_inputs"], t["add_eos_token"])
            for r in records]


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


def lr_lambda(total_steps: int, warmup: int, kind: str, offset: int = 0):
    """LR multiplier at global step offset + s: linear warm-up then linear decay (or constant)."""
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
    opt = torch.optim.AdamW(params, lr=lr or run_cfg["method"]["lr"], weight_decay=t.get("weight_decay", 0.0))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(total_steps, t.get("warmup_steps", 0), t.get("lr_scheduler", "linear"), offset))
    return opt, sched


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
    """Write trainable params + optimizer + scheduler + RNG + progress to checkpoints/latest.pt."""
    path = out_dir / CKPT_DIR / CKPT_FILE
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


class _Stepper:
    """Runs optimizer steps over a micro-batch stream; tracks loss, tokens and the LR."""

    def __init__(self, run_cfg, accelerator, model, opt, sched, progress):
        self.t = run_cfg["train"]
        self.acc, self.model, self.opt, self.sched, self.progress = accelerator, model, opt, sched, progress
        self.tokens = 0

    def step(self, batches, global_step: int, hook=None) -> float:
        """One optimizer step from grad_accum micro-batches; hook(model) runs after backward."""
        accum = self.t.get("grad_accum", 1)
        losses, start, n_tok = [], time.time(), 0
        for i in range(accum):
            batch = next(batches)
            if not bool((batch["labels"] != -100).any()):
                raise ValueError(f"every label of a micro-batch at step {global_step + 1} is masked (prompts longer "
                                 "than train.cutoff_len?); raise cutoff_len or set train_on_inputs")
            ctx = self.acc.no_sync(self.model) if i < accum - 1 else contextlib.nullcontext()
            with ctx:
                loss = self.model(**batch, use_cache=False).loss
                if not torch.isfinite(loss):
                    raise DivergedError(f"non-finite loss ({loss.item()}) at step {global_step + 1}; lower the "
                                        "learning rate (method.lr) or check the data and dtype")
                self.acc.backward(loss / accum)
            losses.append(loss.item())
            n_tok += int(batch["attention_mask"].sum()) * self.acc.num_processes
        if hook is not None:
            hook(self.acc.unwrap_model(self.model))
        if self.t.get("max_grad_norm"):
            self.acc.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                     self.t["max_grad_norm"])
        if self.opt is not None:
            self.opt.step()
            self.sched.step()
        self.model.zero_grad(set_to_none=True)
        self.tokens += n_tok
        loss = sum(losses) / len(losses)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tok / max(time.time() - start, 1e-9):.0f}")
        return loss


def _total_steps(run_cfg: dict, n_examples: int, n_proc: int) -> int:
    t = run_cfg["train"]
    if t.get("max_steps"):
        return int(t["max_steps"])
    if not t.get("epochs"):
        raise ValueError("set train.max_steps or train.epochs")
    per_epoch = math.ceil(n_examples / t["micro_batch_size"]) / (t.get("grad_accum", 1) * n_proc)
    return max(1, math.ceil(t["epochs"] * per_epoch))


def _run(run_cfg: dict, out_dir: pathlib.Path, record: dict) -> None:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    t, info = run_cfg["train"], record["train_info"]
    method = baselines.get_method(run_cfg["method"]["name"])(run_cfg)
    torch.set_num_threads(int(t.get("threads") or torch.get_num_threads()))
    seed = int(run_cfg.get("seed", 0))
    set_seed(seed)
    mcfg = run_cfg["model"]
    acc = Accelerator(cpu=mcfg.get("device") == "cpu")
    model, tok = load_model(mcfg["path"], mcfg.get("dtype", "auto"), acc.device)
    examples = load_examples(run_cfg, tok)
    total = _total_steps(run_cfg, len(examples), acc.num_processes)
    warm = method.warmup_steps
    if warm >= total:
        raise ValueError(f"SMT warm-up ({warm} steps) must be shorter than the run ({total} steps); "
                         "lower method.warmup_steps or raise train.max_steps")
    accum, micro = t.get("grad_accum", 1), t["micro_batch_size"]
    per_step = accum * acc.num_processes

    def stream(start_step):
        sampler = EpochBatches(len(examples), micro, seed, start_step * per_step, total * per_step)
        # its own generator: iterating must not draw from torch's global RNG (exact resume)
        loader = torch.utils.data.DataLoader(examples, batch_sampler=sampler, collate_fn=collate(tok.pad_token_id),
                                             generator=torch.Generator().manual_seed(seed))
        return iter(acc.prepare(loader))

    ckpt_path = out_dir / CKPT_DIR / CKPT_FILE
    ckpt = torch.load(ckpt_path, weights_only=False) if ckpt_path.is_file() else None
    progress = tqdm(total=total, desc=run_cfg.get("run_id") or method.name, disable=not acc.is_main_process,
                    initial=ckpt["step"] if ckpt else 0)
    start_time = time.time()
    step, curve, log_every = 0, [], max(1, int(t.get("log_every", 1)))
    if ckpt is None and warm:
        step, curve = _warmup(run_cfg, method, acc, model, stream, progress, total, log_every)
        info["warmup_seconds"] = round(time.time() - start_time, 3)
        if method.warmup_mode == "full_ft":
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, _ckpt_dir(out_dir) / WARMUP_WEIGHTS)
    elif ckpt is not None:
        warm_weights = out_dir / CKPT_DIR / WARMUP_WEIGHTS
        if warm and warm_weights.is_file():
            model.load_state_dict(torch.load(warm_weights, weights_only=True))
        method.restore(out_dir)
    info.update(method.apply(model, out_dir))
    record["run_info"]["budget_reached"] = info["budget_reached"]
    opt, sched = make_optimizer(model, run_cfg, total, warm)
    if ckpt is not None:
        _load_trainable(model, ckpt["trainable"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, curve = ckpt["step"], ckpt["loss_curve"]
        info["resumed_from_step"] = step
    model, opt = acc.prepare(model, opt)
    batches = stream(step)
    if ckpt is not None:
        _set_rng_state(ckpt["rng"])
    stepper = _Stepper(run_cfg, acc, model, opt, sched, progress)
    stepper.tokens = ckpt["tokens"] if ckpt else 0
    prior_seconds = ckpt["train_seconds"] if ckpt else 0.0
    main_start, every = time.time(), t.get("checkpoint_every")
    if warm and ckpt is None:
        _checkpoint(out_dir, acc, model, opt, sched, step, curve, stepper, prior_seconds, main_start)
    while step < total:
        loss = stepper.step(batches, step)
        step += 1
        if step % log_every == 0 or step == total:
            curve.append({"step": step, "loss": round(loss, 6), "lr": sched.get_last_lr()[0]})
        if every and step % every == 0 and step < total:
            _checkpoint(out_dir, acc, model, opt, sched, step, curve, stepper, prior_seconds, main_start)
    progress.close()
    seconds = prior_seconds + time.time() - main_start
    model = acc.unwrap_model(model)
    delta = method.save(model, out_dir / "delta")
    delta_files = file_sizes(out_dir / "delta")
    info.update({"steps": step, "warmup_steps": warm, "micro_batch_size": micro, "grad_accum": accum,
                 "num_processes": acc.num_processes, "n_examples": len(examples), "tokens": stepper.tokens,
                 "loss_curve": curve, "first_loss": curve[0]["loss"] if curve else None,
                 "final_loss": curve[-1]["loss"] if curve else None, "train_seconds": round(seconds, 3),
                 "tokens_per_s": round(stepper.tokens / max(seconds, 1e-9), 1),
                 "peak_memory_bytes": peak_memory_bytes(acc.device), "adapter_path": str(delta),
                 "adapter_bytes": sum(delta_files.values()), "adapter_files": delta_files})
    if acc.is_main_process and not t.get("keep_checkpoints"):
        shutil.rmtree(out_dir / CKPT_DIR, ignore_errors=True)


def _ckpt_dir(out_dir: pathlib.Path) -> pathlib.Path:
    path = out_dir / CKPT_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _checkpoint(out_dir, acc, model, opt, sched, step, curve, stepper, prior_seconds, main_start):
    if acc.is_main_process:
        state = {"step": step, "loss_curve": list(curve), "tokens": stepper.tokens,
                 "train_seconds": prior_seconds + time.time() - main_start}
        save_checkpoint(out_dir, acc.unwrap_model(model), opt, sched, state)
    acc.wait_for_everyone()


def _warmup(run_cfg, method, acc, model, stream, progress, total, log_every):
    """SMT warm-up: full-FT steps with their own optimizer, or gradient-only steps."""
    for p in model.parameters():
        p.requires_grad_(True)
    method.begin_warmup(model)
    opt = sched = None
    if method.warmup_mode == "full_ft":
        opt, sched = make_optimizer(model, run_cfg, total, 0, lr=getattr(method, "warmup_lr", None))
        prepared, opt = acc.prepare(model, opt)
    else:
        prepared = acc.prepare(model)
    stepper = _Stepper(run_cfg, acc, prepared, opt, sched, progress)
    batches, curve = stream(0), []
    for step in range(method.warmup_steps):
        loss = stepper.step(batches, step, hook=method.after_warmup_backward)
        if (step + 1) % log_every == 0:
            curve.append({"step": step + 1, "loss": round(loss, 6), "phase": "warmup",
                          "lr": sched.get_last_lr()[0] if sched else 0.0})
    return method.warmup_steps, curve


def train(run_cfg: dict, out_dir) -> dict:
    """Train run_cfg's method; write out_dir/record.json (status ok/diverged/failed/interrupted)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = new_record(run_cfg)
    write_record(out_dir, record)
    status = "failed"
    try:
        _run(run_cfg, out_dir, record)
        status = "ok"
    except DivergedError as err:
        status, record["run_info"]["error"] = "diverged", str(err)
        raise
    except KeyboardInterrupt:
        status, record["run_info"]["error"] = "interrupted", "KeyboardInterrupt; rerun to resume from the last checkpoint"
        raise
    except Exception as err:
        record["run_info"]["error"] = f"{type(err).__name__}: {err}"
        record["run_info"]["traceback"] = traceback.format_exc(limit=8)
        raise
    finally:
        record["run_info"]["status"] = status
        record["run_info"]["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_record(out_dir, record)
    return record
