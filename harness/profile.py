"""Step-time and peak-memory profiling of one method at one budget (the paper's Table 1)."""
from __future__ import annotations

import statistics
import time

import torch

import baselines
from harness.models import load_model, resolve_device
from harness.records import atomic_write_json, meta_info
from harness.train import EpochBatches, collate, load_examples, make_optimizer, peak_memory_bytes, set_seed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(run_cfg: dict, n_steps: int, out_path, warmup_iters: int = 3) -> dict:
    """Time n_steps steady-state training steps (after warmup_iters untimed ones) and peak memory.

    SMT selects its blocks from a short gradient-only warm-up (its warmup_steps, at most 5).
    Writes the result as JSON to out_path and returns it.
    """
    t = run_cfg["train"]
    torch.set_num_threads(int(t.get("threads") or torch.get_num_threads()))
    set_seed(int(run_cfg.get("seed", 0)))
    device = resolve_device(run_cfg["model"].get("device", "auto"))
    model, tok = load_model(run_cfg["model"]["path"], run_cfg["model"].get("dtype", "auto"), device)
    method = baselines.get_method(run_cfg["method"]["name"])(run_cfg)
    examples = load_examples(run_cfg, tok)
    micro = t["micro_batch_size"]
    n_warm = min(method.warmup_steps, 5)
    total = n_warm + warmup_iters + n_steps
    sampler = EpochBatches(len(examples), micro, int(run_cfg.get("seed", 0)), 0, total)
    batches = iter(torch.utils.data.DataLoader(examples, batch_sampler=sampler, collate_fn=collate(tok.pad_token_id),
                                               generator=torch.Generator().manual_seed(0)))

    def forward_backward():
        batch = {k: v.to(device) for k, v in next(batches).items()}
        model(**batch, use_cache=False).loss.backward()
        return int(batch["attention_mask"].sum())

    if n_warm:
        for p in model.parameters():
            p.requires_grad_(True)
        method.begin_warmup(model)
        for _ in range(n_warm):
            forward_backward()
            method.after_warmup_backward(model)
            model.zero_grad(set_to_none=True)
    info = method.apply(model)
    opt, _ = make_optimizer(model, run_cfg, total, 0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, tokens = [], []
    for i in range(warmup_iters + n_steps):
        _sync(device)
        start = time.perf_counter()
        n_tok = forward_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup_iters:
            times.append(time.perf_counter() - start)
            tokens.append(n_tok)
    result = {"run_id": run_cfg.get("run_id"), "method": method.name, "budget_asked": run_cfg.get("budget"),
              "budget_reached": info["budget_reached"], "trainable_params": info["trainable_params"],
              "total_params": info["total_params"], "micro_batch_size": micro, "n_steps": n_steps,
              "warmup_iters": warmup_iters, "step_seconds_mean": statistics.mean(times),
              "step_seconds_std": statistics.pstdev(times), "step_seconds": times,
              "tokens_per_s": sum(tokens) / sum(times), "peak_memory_bytes": peak_memory_bytes(device),
              "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_rss_highwater",
              "meta_info": meta_info(run_cfg["model"]["path"])}
    atomic_write_json(out_path, result)
    return result
