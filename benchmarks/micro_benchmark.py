"""Micro-benchmark: forward+backward of one SparseLinear vs the same nn.Linear frozen / trainable.

Variants, all with an input that requires grad (as inside a network):
  frozen     nn.Linear, weight frozen: the floor (forward + input gradient only)
  smt        smt.SparseLinear with ~block_frac of the l x l blocks trainable
  trainable  nn.Linear, weight trainable (forward + input and weight gradients)

Defaults are the issue's: LLaMA-7B q_proj 4096 x 4096, l = 256, 1 % of blocks, 2048 tokens.
Prints ms/iter (median and fastest, variants interleaved), the ratios SMT/frozen (target <= 1.10) and
SMT/trainable (target <= 0.75), and memory: on CUDA the peak allocated during fwd+bwd
above the resting state; on CPU the bytes of tensors saved for backward (parameters
excluded; measured with torch.autograd.graph.saved_tensors_hooks) and the sampled peak RSS
increase. Usage: python benchmarks/micro_benchmark.py [--tokens 512 --repeats 3 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import threading
import time

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # runnable from a checkout, uninstalled
import smt  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-features", type=int, default=4096)
    p.add_argument("--in-features", type=int, default=4096)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--block-frac", type=float, default=0.01, help="fraction of the blocks that are trainable")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """Samples the resident set size in a thread; ``peak`` is the maximum seen above the start."""

    def __enter__(self):
        self.start = self.peak_abs = _rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.001):
            self.peak_abs = max(self.peak_abs, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak_abs, _rss_bytes()) - self.start


def build(args, device, dtype):
    """The three layers sharing one weight value, and the selected blocks."""
    torch.manual_seed(0)
    base = nn.Linear(args.in_features, args.out_features, bias=False, device=device, dtype=dtype)
    l = args.block_size
    R, C = args.out_features // l, args.in_features // l
    m = max(1, round(args.block_frac * R * C))
    flat = torch.randperm(R * C, generator=torch.Generator().manual_seed(0))[:m].tolist()
    blocks = [(i // C, i % C) for i in flat]
    frozen = nn.Linear(args.in_features, args.out_features, bias=False, device=device, dtype=dtype)
    trainable = nn.Linear(args.in_features, args.out_features, bias=False, device=device, dtype=dtype)
    with torch.no_grad():
        frozen.weight.copy_(base.weight)
        trainable.weight.copy_(base.weight)
    frozen.weight.requires_grad_(False)
    sparse = smt.SparseLinear.from_linear(base, l, blocks)
    return {"frozen": frozen, "smt": sparse, "trainable": trainable}, blocks


def step(layer, x, g):
    """One forward + backward; gradients dropped afterwards."""
    y = layer(x)
    y.backward(g)
    x.grad = None
    for p in layer.parameters():
        p.grad = None


def saved_bytes(layer, x) -> int:
    """Bytes of the tensors autograd saves for backward in one forward, parameters excluded."""
    params = {p.data_ptr() for p in layer.parameters()}
    total = []

    def pack(t):
        if t.data_ptr() not in params:
            total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    del y
    return sum(total)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    layers, blocks = build(args, device, dtype)
    x = torch.randn(1, args.tokens, args.in_features, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(1, args.tokens, args.out_features, device=device, dtype=dtype)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    times = {k: [] for k in layers}
    for k, layer in layers.items():
        for _ in range(args.warmup):
            step(layer, x, g)
    for _ in range(args.repeats):                      # interleaved, so load changes hit all variants
        for k, layer in layers.items():
            sync()
            t0 = time.perf_counter()
            step(layer, x, g)
            sync()
            times[k].append(time.perf_counter() - t0)

    res = {}
    for k, layer in layers.items():
        r = {"ms": 1e3 * statistics.median(times[k]), "ms_min": 1e3 * min(times[k]), "saved_bytes": saved_bytes(layer, x),
             "grad_param_bytes": sum(p.numel() * p.element_size() for p in layer.parameters() if p.requires_grad)}
        if cuda:
            sync()
            torch.cuda.reset_peak_memory_stats()
            rest = torch.cuda.memory_allocated()
            step(layer, x, g)
            sync()
            r["peak_bytes"] = torch.cuda.max_memory_allocated() - rest
        else:
            with RssPeak() as rss:
                step(layer, x, g)
            r["peak_bytes"] = rss.peak
        res[k] = r

    ratio_frozen = res["smt"]["ms"] / res["frozen"]["ms"]
    ratio_train = res["smt"]["ms"] / res["trainable"]["ms"]
    min_frozen = res["smt"]["ms_min"] / res["frozen"]["ms_min"]
    min_train = res["smt"]["ms_min"] / res["trainable"]["ms_min"]
    mib = 2 ** 20
    print(f"shape {args.out_features}x{args.in_features}, l={args.block_size}, {len(blocks)} blocks "
          f"({len(blocks) * args.block_size ** 2 / (args.out_features * args.in_features):.2%} of the weight), "
          f"{args.tokens} tokens, {dtype}, {device}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats}")
    peak_name = "peak alloc MiB" if cuda else "peak RSS+ MiB"
    print(f"{'variant':<10} {'ms/iter':>9} {'min ms':>9} {'saved act MiB':>14} {'param grad MiB':>15} {peak_name:>15}")
    for k, r in res.items():
        print(f"{k:<10} {r['ms']:9.2f} {r['ms_min']:9.2f} {r['saved_bytes'] / mib:14.2f} {r['grad_param_bytes'] / mib:15.2f} "
              f"{r['peak_bytes'] / mib:15.2f}")
    print(f"SMT / frozen floor = {ratio_frozen:.3f} (target <= 1.10: {'ok' if ratio_frozen <= 1.10 else 'MISSED'})")
    print(f"SMT / trainable    = {ratio_train:.3f} (target <= 0.75: {'ok' if ratio_train <= 0.75 else 'MISSED'})")
    print(f"(from the fastest iteration: SMT / frozen = {min_frozen:.3f}, SMT / trainable = {min_train:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": str(device), "dtype": str(dtype), "n_blocks": len(blocks),
                       "results": res, "smt_over_frozen": ratio_frozen, "smt_over_trainable": ratio_train,
                       "smt_over_frozen_min": min_frozen, "smt_over_trainable_min": min_train}, f, indent=1)
    return res


if __name__ == "__main__":
    main()
