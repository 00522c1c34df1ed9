"""The prepared device check: one command, one JSON, for the few minutes a GPU is at hand.

    python -m benchmarks.gpu_check --out results/gpu          # on a GPU: paper shapes, <= 8 minutes
    python -m benchmarks.gpu_check --out /tmp/gc --tiny       # anywhere (CI): tiny shapes, seconds

It needs torch, transformers, peft and accelerate (and PyYAML, which transformers brings); not
deepspeed, lm-eval, snakemake, pandas or jsonschema (pytest only for the part that runs the
CUDA tests). Nothing is downloaded: the LLaMA-7B-shaped model is built from its config with
random weights (step time and memory do not depend on the values). Parts, each recorded with
a status (``passed`` | ``failed`` | ``measured`` | ``skipped: <why>`` | ``error: <why>``):

1. ``exactness``: SparseLinear on the device against a dense nn.Linear: fp32 (outputs, input
   and block gradients within 1e-5 of the gradient's scale; TF32 off), bf16 weights and fp32
   weights under bf16 autocast (3e-2: bf16 has 8 mantissa bits), weights outside the blocks and
   the bias bit-identical after AdamW steps, the tensor saved for backward = exactly the input's
   distinct block-column slices, GradientScorer's ``accumulate_on_cpu`` sums = the on-device
   sums; then pytest on the tests marked ``cuda`` (a subprocess; its counts recorded).
2. ``layer``: one layer forward + backward at 4096 x 4096 and 11008 x 4096, l = 256, 1 % and
   5 % of the blocks, 2 048 tokens, bf16: the frozen nn.Linear (input gradient only), SMT and
   the trainable nn.Linear, interleaved, CUDA events (perf_counter on CPU), medians and IQR of
   per-sample times and of the paired per-sample ratios (benchmarks/micro_benchmark.py builds
   the layers).
3. ``table1``: a LLaMA-7B-shaped LlamaForCausalLM (full depth when it fits), the frozen
   floor, SMT at 0.84 %, LoRA and DoRA at the same budget (config/paper.yaml's settings and
   placements) and full FT where it fits beside them, batch 16 x 256 tokens (the paper's
   batch and DoRA's cutoff), each step the training loop's own ``TrainStep``, run side by side
   by ``harness.profile.run_rounds`` (the Table 1 job's loop), torch.cuda.max_memory_allocated
   per step.
4. The JSON (``<out>/gpu_check.json``, schema ``benchmarks/gpu_check.schema.json``) and the
   table it renders to (``<out>/table1_gpu.md``, ``harness.gpu_table``; ``snakemake table1``
   renders ``results/gpu/gpu_check.json`` as ``results/tables/table1_gpu.{md,csv}``).

A time guard keeps the whole check under ``--limit-s`` (default 480 s): each part checks the
time left before it starts and records ``skipped: time`` instead of overrunning; Table 1's
rounds stop early (recorded) when its share of the time is spent. With no CUDA device the tiny
shapes are used (``mode: tiny``), and the JSON says ``device.type: cpu``: it is a smoke run of
the check, never a GPU figure.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET

import torch
from torch import nn

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:   # `python benchmarks/gpu_check.py` from a checkout works too
    sys.path.insert(0, str(REPO_ROOT))

import smt  # noqa: E402

FORMAT = "smt-bench/gpu-check/v1"
SCHEMA_PATH = REPO_ROOT / "benchmarks" / "gpu_check.schema.json"
JSON_NAME = "gpu_check.json"
TABLE_NAME = "table1_gpu.md"
# the paper's LLaMA-7B (huggyllama/llama-7b config.json)
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False)
# tiny: the same block grids at 1/8 of the width (l = 32 instead of 256), 2 layers
TINY_LLAMA = dict(vocab_size=1024, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                  rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False)
TOL = {"float32": 1e-5, "bfloat16": 3e-2}    # max |error| / max(|reference|, 1), per tensor
TABLE1_METHODS = ["smt", "lora", "dora", "full_ft"]
STATUS_OK = ("passed", "measured")

# settings per mode; the shapes of part 2 are (out_features, in_features)
MODES = {
    "full": {"layer_shapes": [(4096, 4096), (11008, 4096)], "block_size": 256, "tokens": 2048,
             "block_fracs": [0.01, 0.05], "samples": 15, "iters_per_sample": 10, "layer_warmup": 3,
             "model": LLAMA_7B, "batch_size": 16, "seq_len": 256, "smt_block_size": 256,
             "rounds_warmup": 3, "rounds_timed": 20, "exact_l": 128, "dtype": "bfloat16"},
    "tiny": {"layer_shapes": [(512, 512), (1376, 512)], "block_size": 32, "tokens": 256,
             "block_fracs": [0.01, 0.05], "samples": 5, "iters_per_sample": 2, "layer_warmup": 1,
             "model": TINY_LLAMA, "batch_size": 2, "seq_len": 32, "smt_block_size": 16,
             "rounds_warmup": 1, "rounds_timed": 3, "exact_l": 16, "dtype": "float32"},
}
# each part's minimum time left to start, seconds (full mode; tiny: a tenth)
PART_MIN_S = {"exactness": 20, "pytest": 40, "layer": 30, "table1": 90}
RESERVE_S = 15         # kept for writing the JSON and the table


class Clock:
    """Seconds since the check started and left of its limit."""

    def __init__(self, limit_s: float):
        self.start, self.limit = time.monotonic(), float(limit_s)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.limit - self.elapsed()

    def deadline(self, reserve: float) -> float:
        """A time.monotonic() value `reserve` seconds before the limit."""
        return self.start + self.limit - reserve


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quartiles(xs) -> dict:
    """{median, q1, q3, iqr} of xs (inclusive quartiles, as harness.profile)."""
    xs = [float(x) for x in xs]
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
    return {"median": med, "q1": q1, "q3": q3, "iqr": q3 - q1}


# ---------------------------------------------------------------------------------------------
# environment


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "count": torch.cuda.device_count(),
                "capability": f"{p.major}.{p.minor}", "memory_bytes": int(p.total_memory)}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "count": 1,
            "capability": None, "memory_bytes": None, "cores": os.cpu_count(), "threads": torch.get_num_threads()}


def versions() -> dict:
    """Python, torch, CUDA and the packages that matter here, plus git commit (harness.records.meta_info)."""
    from harness.records import meta_info

    meta = meta_info()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": meta["torch_config"].get("cudnn"), "git_sha": meta["git_sha"], "git_dirty": meta["git_dirty"],
            "platform": meta["platform"], "packages": meta["packages"]}


def absent_packages() -> dict:
    """For each package the check must not need: whether it could be imported here (it is never imported)."""
    import importlib.util

    out = {}
    for name in ("deepspeed", "lm_eval", "snakemake", "pandas", "jsonschema", "pytest"):
        try:
            out[name] = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):   # a module set to None in sys.modules (blocked)
            out[name] = False
    return out


# ---------------------------------------------------------------------------------------------
# part 1: exactness on the device


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(max |b|, 1): the error relative to the reference's scale."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / max(float(b.abs().max()), 1.0))


def _check(name: str, errors: dict, tol: float, **extra) -> dict:
    worst = max(errors.values())
    return {"name": name, "passed": bool(worst <= tol), "max_error": worst, "tolerance": tol,
            "errors": errors, **extra}


def _pair(out_f, in_f, dtype, device, seed=0, bias=True):
    torch.manual_seed(seed)
    dense = nn.Linear(in_f, out_f, bias=bias).to(device=device, dtype=dtype)
    ref = nn.Linear(in_f, out_f, bias=bias).to(device=device, dtype=dtype)
    ref.load_state_dict(dense.state_dict())
    return dense, ref


def _exact_blocks(l: int) -> tuple[int, int, list]:
    """A 6 x 8 block grid; blocks with a shared and an unsorted column (the re-gather path)."""
    return 6 * l, 8 * l, [(0, 3), (5, 3), (2, 0), (4, 7), (1, 5)]


def check_gradients(device, dtype, l, autocast=False) -> dict:
    """SparseLinear vs nn.Linear: output, input gradient and every block's gradient."""
    wdtype = torch.float32 if autocast else dtype
    out_f, in_f, blocks = _exact_blocks(l)
    lin, ref = _pair(out_f, in_f, wdtype, device)
    sl = smt.SparseLinear.from_linear(lin, l, blocks)
    x = torch.randn(2, 3 * l, in_f, device=device, dtype=wdtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        ya, yb = sl(xa), ref(xb)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    W = ref.weight.grad
    errors = {"output": _err(ya, yb), "input_grad": _err(xa.grad, xb.grad)}
    errors["block_grads"] = max(_err(sl.blocks.grad[i], W[r * l:(r + 1) * l, c * l:(c + 1) * l])
                                for i, (r, c) in enumerate(blocks))
    kind = "bf16 autocast, fp32 weights" if autocast else str(dtype).replace("torch.", "")
    tol = TOL["bfloat16" if (autocast or dtype == torch.bfloat16) else "float32"]
    return _check(f"gradients match dense ({kind})", errors, tol, dtype=kind,
                  output_dtype=str(ya.dtype).replace("torch.", ""),
                  shape=[out_f, in_f], block_size=l, blocks=len(blocks))


def check_frozen_bit_identical(device, dtype, l) -> dict:
    """After AdamW steps (weight decay on), every weight outside the blocks and the bias are bit-identical."""
    out_f, in_f, blocks = _exact_blocks(l)
    lin, _ = _pair(out_f, in_f, dtype, device, seed=1)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    sl = smt.SparseLinear.from_linear(lin, l, blocks)
    opt = torch.optim.AdamW(sl.parameters(), lr=1e-2, weight_decay=0.1)
    trainable = [p for grp in opt.param_groups for p in grp["params"] if p.requires_grad]
    for _ in range(3):
        sl(torch.randn(4, l, in_f, device=device, dtype=dtype)).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    sl.sync_()
    w = sl.weight.detach()
    mask = torch.zeros_like(w, dtype=torch.bool)
    for r, c in blocks:
        mask[r * l:(r + 1) * l, c * l:(c + 1) * l] = True
    frozen_same = bool(torch.equal(w[~mask], w0[~mask]))
    bias_same = bool(torch.equal(sl.bias.detach(), b0))
    blocks_moved = not bool(torch.equal(w[mask], w0[mask]))
    only_blocks = len(trainable) == 1 and trainable[0] is sl.blocks
    n_diff = int((w[~mask] != w0[~mask]).sum())
    return {"name": f"frozen weights bit-identical after AdamW ({str(dtype).replace('torch.', '')})",
            "passed": frozen_same and bias_same and blocks_moved and only_blocks,
            "frozen_elements_changed": n_diff, "bias_identical": bias_same, "blocks_changed": blocks_moved,
            "only_blocks_trainable": only_blocks}


def check_saved_columns(device, dtype, l) -> dict:
    """autograd saves one tensor: the input's distinct block-column slices, bit for bit, nothing else."""
    out_f, in_f, blocks = _exact_blocks(l)
    lin, _ = _pair(out_f, in_f, dtype, device, seed=2)
    sl = smt.SparseLinear.from_linear(lin, l, blocks)
    x = torch.randn(2, 5, in_f, device=device, dtype=dtype, requires_grad=True)
    params = {p.data_ptr() for p in sl.parameters()}
    saved = []

    def pack(t):
        if t.data_ptr() not in params:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sl(x)
    cols = sorted({c for _, c in blocks})
    x2 = x.detach().reshape(-1, in_f)
    want = torch.stack([x2[:, c * l:(c + 1) * l] for c in cols])
    ok = len(saved) == 1 and tuple(saved[0].shape) == tuple(want.shape) and bool(torch.equal(saved[0], want))
    return {"name": f"saved activations = the needed columns ({str(dtype).replace('torch.', '')})", "passed": ok,
            "saved_shapes": [list(t.shape) for t in saved], "expected_shape": list(want.shape),
            "distinct_columns": len(cols), "saved_bytes": sum(t.numel() * t.element_size() for t in saved),
            "input_bytes": x.numel() * x.element_size()}


def check_accumulate_on_cpu(device, l) -> dict:
    """GradientScorer: fp32 sums kept on the CPU (accumulate_on_cpu) equal the on-device sums of the same
    gradients (two scorers on one model, so GPU kernels' run-to-run determinism does not enter), and the
    two select the same blocks."""
    torch.manual_seed(3)
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(4 * l, 4 * l, bias=False))
    model.add_module("v_proj", nn.Linear(4 * l, 2 * l, bias=False))
    model = model.to(device)
    scorers = {on_cpu: smt.GradientScorer(model, smt.SMTConfig(block_size=l, budget=5, target_modules=[
        "q_proj", "v_proj"], accumulate_on_cpu=on_cpu)) for on_cpu in (False, True)}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for _ in range(3):
        model(torch.randn(8, 4 * l, generator=gen).to(device)).pow(2).sum().backward()
        for s in scorers.values():
            s.accumulate()
        model.zero_grad(set_to_none=True)
    sums = {k: {n: t.detach().cpu().clone() for n, t in s._acc.items()} for k, s in scorers.items()}
    devices = {k: sorted({t.device.type for t in s._acc.values()}) for k, s in scorers.items()}
    plans = {k: s.select().blocks for k, s in scorers.items()}
    same_sums = all(torch.equal(sums[True][n], sums[False][n]) for n in sums[False])
    return {"name": "accumulate_on_cpu sums = on-device sums", "passed": same_sums and plans[True] == plans[False]
            and devices[True] == ["cpu"] and devices[False] == [device.type], "sums_identical": same_sums,
            "same_plan": plans[True] == plans[False],
            "accumulator_devices": {"accumulate_on_cpu": devices[True], "on_device": devices[False]}}


def _safe(name: str, fn, *args, **kw) -> dict:
    """fn(*args) -> its check dict; an exception is a failed check named `name`, with the error."""
    try:
        return fn(*args, **kw)
    except Exception as err:
        return {"name": name, "passed": False, "error": f"{type(err).__name__}: {str(err)[:300]}"}


def exactness_checks(device, l: int) -> list[dict]:
    """Every exactness check on `device` (TF32 off during them, so fp32 means fp32)."""
    device = torch.device(device)
    f32, b16 = torch.float32, torch.bfloat16
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        checks = [_safe("gradients match dense (float32)", check_gradients, device, f32, l),
                  _safe("gradients match dense (bfloat16)", check_gradients, device, b16, l),
                  _safe("gradients match dense (bf16 autocast, fp32 weights)", check_gradients, device, f32, l,
                        autocast=True),
                  _safe("frozen weights bit-identical after AdamW (float32)", check_frozen_bit_identical,
                        device, f32, l),
                  _safe("frozen weights bit-identical after AdamW (bfloat16)", check_frozen_bit_identical,
                        device, b16, l),
                  _safe("saved activations = the needed columns (float32)", check_saved_columns, device, f32, l),
                  _safe("saved activations = the needed columns (bfloat16)", check_saved_columns, device, b16, l),
                  _safe("accumulate_on_cpu sums = on-device sums", check_accumulate_on_cpu, device, l)]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return checks


CUDA_TEST_FILES = ["tests/test_smt_layer.py", "tests/test_cuda_paths.py"]


def run_pytest(out_dir: pathlib.Path, timeout: float) -> dict:
    """pytest -m cuda on CUDA_TEST_FILES in a subprocess; counts from its JUnit XML."""
    import importlib.util

    res = {"command": None, "files": CUDA_TEST_FILES, "seconds": 0.0}
    if importlib.util.find_spec("pytest") is None:
        return {**res, "status": "skipped: pytest is not installed (pip install pytest to run the CUDA tests)"}
    xml = out_dir / "pytest_cuda.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           *CUDA_TEST_FILES]
    res["command"] = " ".join(cmd[1:])
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or "")[-2000:] if isinstance(err.stdout, str) else ""
        return {**res, "status": f"error: pytest ran past {timeout:.0f} s", "seconds": time.monotonic() - start,
                "output_tail": tail}
    res.update(seconds=time.monotonic() - start, returncode=proc.returncode,
               output_tail=(proc.stdout + proc.stderr)[-3000:])
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml.is_file():
        root = ET.parse(xml).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for s in suites:
            for k in counts:
                counts[k] += int(s.get(k, 0))
        res["failed_tests"] = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
                               if c.find("failure") is not None or c.find("error") is not None]
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    res["counts"] = counts
    if proc.returncode not in (0, 5) or counts["failures"] or counts["errors"]:   # 5: nothing collected
        res["status"] = "failed"
    elif counts["passed"] == 0:
        res["status"] = f"skipped: {counts['skipped']} CUDA tests skipped (no CUDA device)"
    else:
        res["status"] = "passed"
    return res


def part_exactness(device, mode: dict, clock: Clock, out_dir, scale: float) -> dict:
    start = time.monotonic()
    if clock.left() < PART_MIN_S["exactness"] * scale + RESERVE_S * scale:
        return {"status": f"skipped: time ({clock.left():.0f} s left)", "seconds": 0.0, "checks": [], "pytest": None}
    checks = exactness_checks(device, mode["exact_l"])
    res = {"checks": checks, "tolerances": {"float32": TOL["float32"], "bfloat16": TOL["bfloat16"],
                                            "measure": "max |error| / max(max |reference|, 1) per tensor"}}
    left = clock.left() - RESERVE_S * scale - (PART_MIN_S["layer"] + PART_MIN_S["table1"]) * scale
    if left < PART_MIN_S["pytest"] * scale:
        res["pytest"] = {"status": f"skipped: time ({clock.left():.0f} s left)", "files": CUDA_TEST_FILES}
    else:
        res["pytest"] = run_pytest(pathlib.Path(out_dir), timeout=min(left, 240))
    ok = all(c["passed"] for c in checks) and not res["pytest"]["status"].startswith(("failed", "error"))
    res["status"] = "passed" if ok else "failed"
    res["seconds"] = time.monotonic() - start
    return res


# ---------------------------------------------------------------------------------------------
# part 2: one layer


class Timer:
    """CUDA events on a GPU, perf_counter (after a sync) elsewhere; seconds."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.device = device

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, started):
        """A callable returning the seconds since `started` (CUDA: resolved after a later synchronize)."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            return lambda: started.elapsed_time(end) / 1e3
        t = time.perf_counter() - started
        return lambda: t


def layer_case(out_f, in_f, frac, mode, device, dtype) -> dict:
    """Frozen / SMT / trainable layer, forward + backward, samples interleaved (start rotating)."""
    from benchmarks import micro_benchmark as mb

    l, tokens = mode["block_size"], mode["tokens"]
    ns = argparse.Namespace(out_features=out_f, in_features=in_f, block_size=l, block_frac=frac)
    layers, blocks = mb.build(ns, device, dtype)
    x = torch.randn(1, tokens, in_f, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(1, tokens, out_f, device=device, dtype=dtype)
    names, k = list(layers), mode["iters_per_sample"]
    for name in names:
        for _ in range(mode["layer_warmup"]):
            mb.step(layers[name], x, g)
    _sync(device)
    timer, pending = Timer(device), {n: [] for n in names}
    for s in range(mode["samples"]):
        for name in names[s % 3:] + names[:s % 3]:
            _sync(device)
            t0 = timer.start()
            for _ in range(k):
                mb.step(layers[name], x, g)
            pending[name].append(timer.stop(t0))
    _sync(device)
    ms = {n: [1e3 * f() / k for f in pending[n]] for n in names}
    res = {"out_features": out_f, "in_features": in_f, "block_size": l, "block_frac": frac, "n_blocks": len(blocks),
           "distinct_columns": len({c for _, c in blocks}), "tokens": tokens,
           "variants": {n: {**quartiles(ms[n]), "samples_ms": ms[n]} for n in names}}
    res["smt_over_frozen"] = quartiles([a / b for a, b in zip(ms["smt"], ms["frozen"])])
    res["smt_over_trainable"] = quartiles([a / b for a, b in zip(ms["smt"], ms["trainable"])])
    res["saved_bytes"] = {n: mb.saved_bytes(layers[n], x) for n in names}
    if device.type == "cuda":
        peaks = {}
        for n in names:
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            rest = torch.cuda.memory_allocated(device)
            mb.step(layers[n], x, g)
            _sync(device)
            peaks[n] = int(torch.cuda.max_memory_allocated(device) - rest)
        res["peak_bytes_over_resting"] = peaks
    del layers, x, g
    return res


LAYER_GOAL = 1.05


def part_layer(device, mode: dict, clock: Clock, scale: float) -> dict:
    start = time.monotonic()
    dtype = getattr(torch, mode["dtype"])
    res = {"timer": "cuda events" if device.type == "cuda" else "perf_counter", "dtype": str(dtype).replace("torch.", ""),
           "samples": mode["samples"], "iters_per_sample": mode["iters_per_sample"], "warmup": mode["layer_warmup"],
           "goal": f"SMT <= {LAYER_GOAL} x the frozen layer (median of paired ratios)", "cases": []}
    reserve = RESERVE_S * scale + PART_MIN_S["table1"] * scale
    for out_f, in_f in mode["layer_shapes"]:
        for frac in mode["block_fracs"]:
            if clock.left() < reserve + 5 * scale:
                res["cases"].append({"out_features": out_f, "in_features": in_f, "block_frac": frac,
                                     "status": f"skipped: time ({clock.left():.0f} s left)"})
                continue
            res["cases"].append({**layer_case(out_f, in_f, frac, mode, device, dtype), "status": "measured"})
    done = [c for c in res["cases"] if c["status"] == "measured"]
    res["goal_met"] = bool(done) and all(c["smt_over_frozen"]["median"] <= LAYER_GOAL for c in done)
    res["status"] = "measured" if done else f"skipped: time ({clock.left():.0f} s left)"
    res["seconds"] = time.monotonic() - start
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


# ---------------------------------------------------------------------------------------------
# part 3: Table 1 at LLaMA-7B shape


def load_paper_config(path) -> tuple[dict, bool]:
    """(config, validated): harness.reports.load_config; without jsonschema the strict YAML with its
    recipe applied (the methods' own settings are still parsed by resolve_run) and validated False."""
    from harness import config as hc

    try:
        from harness import reports  # the targets' experiments schemas (pandas): optional on a GPU machine

        return reports.load_config(path), True
    except ModuleNotFoundError as err:
        if err.name not in ("jsonschema", "pandas"):  # schema checks (jsonschema; the report targets' pandas)
            raise
        return hc.apply_recipe(hc.load_layered(path)), False


def table1_run_cfgs(config: dict, methods, budget_pct: float, mode: dict, device, model_name="llama-7b") -> dict:
    """The run configs (RunConfig JSON, config/paper.yaml) of Table 1's methods at budget_pct, adapted to
    the check; mixed precision follows mode["dtype"] (fresh_accelerator)."""
    from harness import config as hc

    cfgs = {}
    for m in methods:
        entry = hc.method_entry(config, m)
        rid = hc.make_run_id(model_name, "commonsense", m, budget_pct, entry["placement"], config["seeds"][0])
        cfg = hc.resolve_run(config, rid).to_json()
        cfg["model"] = {"name": f"{model_name}-shaped, random weights", "path": "",
                        "dtype": mode["dtype"], "device": str(device)}
        if cfg["method"]["name"] == "smt":
            # random blocks at the same budget: a warm-up on random weights carries no information,
            # and a full-FT warm-up of 7B parameters does not fit beside the other arms
            cfg["method"].update(selection="random", block_size=mode["smt_block_size"])
        cfgs[m] = cfg
    return cfgs


def build_base(model_cfg: dict, layers: int, dtype, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**model_cfg, "num_hidden_layers": layers})
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.train()


def shared_copy(base: nn.Module, clone: tuple = ()) -> nn.Module:
    """A copy of base whose parameters are new Parameter objects over the SAME storage (requires_grad
    of each copy independent), except the weights of modules whose name ends in one of `clone`,
    which get their own storage. Buffers are copied. Floor, LoRA and DoRA never write their base
    weights, so sharing them keeps one copy of 7B weights resident instead of one per arm."""
    memo = {}
    for mod_name, mod in base.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in memo:
                continue
            own = any(mod_name.endswith(c) for c in clone)
            memo[id(p)] = nn.Parameter(p.detach().clone() if own else p.detach(), requires_grad=p.requires_grad)
    return copy.deepcopy(base, memo)


def random_batches(n, batch_size, seq_len, vocab, seed=0) -> list[dict]:
    """n batches of random token ids, every position labelled (config/paper.yaml: train_on_inputs true)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def _gib(n) -> float:
    return round(n / 2**30, 2)


def _paired(num: list, den: list) -> dict | None:
    return quartiles([a / b for a, b in zip(num, den)]) if num and den else None


def fresh_accelerator(run, mode: dict):
    """harness.launch.build_accelerator (one process; config/paper.yaml: bf16 weights with mixed
    precision bf16) after dropping accelerate's process-wide state: an earlier Accelerator with
    another mixed_precision in the same process (pytest, the parts of this check) would otherwise
    be refused."""
    from accelerate.state import AcceleratorState

    from harness import launch

    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)
    mp = "bf16" if mode["dtype"] == "bfloat16" else "no"
    return launch.build_accelerator(run, settings=launch.launcher_settings({"launcher": "python", "mixed_precision": mp}))


def measure_table1(cfgs: dict, mode: dict, layers: int, device, deadline: float, with_full_ft: bool) -> dict:
    """Build the arms over one shared set of random weights and run harness.profile.run_rounds."""
    from harness import profile as prof
    from harness.run_config import as_run_config
    from harness.step import set_seed

    dtype = getattr(torch, mode["dtype"])
    cfgs = {n: as_run_config(c) for n, c in cfgs.items()}
    first = cfgs[next(iter(cfgs))]
    settings = prof.table1_settings({"steps": mode["rounds_timed"], "warmup_steps": mode["rounds_warmup"],
                                     "batch_size": mode["batch_size"], "seq_len": mode["seq_len"], "seed": 0},
                                    first.train)
    cfgs = {n: prof._profile_run(c, settings) for n, c in cfgs.items()}
    n_rounds = settings["warmup_steps"] + settings["steps"]
    batches = random_batches(n_rounds, settings["batch_size"], settings["seq_len"], mode["model"]["vocab_size"])
    acc = fresh_accelerator(first, mode)
    set_seed(0)
    base = build_base(mode["model"], layers, dtype, device)
    n_params = sum(p.numel() for p in base.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    arms = {prof.FLOOR: prof._floor_arm(first, acc, device, model=shared_copy(base))}
    not_fitting = {}
    for name, cfg in cfgs.items():
        if name == "full_ft":
            continue
        set_seed(cfg.seed)
        clone = tuple(cfg.placement.target_modules or ()) if cfg.method.name == "smt" else ()
        arms[name] = prof._method_arm(cfg, acc, device, batches, n_rounds, model=shared_copy(base, clone))
    fit = {}
    if "full_ft" in cfgs:
        probe = _probe_rise(arms, batches[0], device)
        fit = {"probe_step_rise_bytes": probe}
        if device.type == "cuda":
            free = torch.cuda.get_device_properties(device).total_memory - torch.cuda.memory_allocated(device)
            need = full_ft_need_bytes(param_bytes, probe)
            fit.update(free_bytes=int(free), need_bytes=int(need))
            if not with_full_ft or need > free:
                not_fitting["full_ft"] = (
                    f"does not fit beside the other arms: needs ~{_gib(need)} GiB (its own weights, gradients, "
                    f"two AdamW states and the update's temporaries = 5 x {_gib(param_bytes)} GiB, the largest step rise "
                    f"{_gib(probe)} GiB, 2 GiB margin), {_gib(free)} GiB free on the device; the paper runs "
                    "full FT with DeepSpeed ZeRO-2 CPU offload, which this check does not use"
                    if with_full_ft else "left out by --no-full-ft")
        elif not with_full_ft:
            not_fitting["full_ft"] = "left out by --no-full-ft"
        if "full_ft" not in not_fitting:
            set_seed(0)
            arms["full_ft"] = prof._method_arm(cfgs["full_ft"], acc, device, batches, n_rounds,
                                               model=shared_copy(base, clone=("",)))
    del base
    _sync(device)
    schedule = prof.run_rounds(arms, batches, settings, device, deadline=deadline)
    arms_json = {n: prof._arm_json(a, arms) for n, a in arms.items()}
    out = {"layers": layers, "total_params": n_params, "param_bytes": param_bytes, "settings": settings,
           "batches": {"n": len(batches), "sha256": prof.batches_sha256(batches),
                       "tokens_per_batch": settings["batch_size"] * settings["seq_len"]},
           "order": list(arms), "schedule_rounds": 1 + max(s["round"] for s in schedule),
           "lm_head": prof._lm_head_mode(arms), "arms": arms_json, "not_fitting": not_fitting, "fit": fit,
           "accelerator": {"mixed_precision": str(acc.mixed_precision), "device": str(acc.device)}}
    arms.clear()
    return out


def full_ft_need_bytes(param_bytes: int, probe_rise: int) -> int:
    """Device memory full FT needs beside arms already resident: its own weights, their gradients,
    AdamW's two states (each the size of the weights: bf16 weights give bf16 states) and about one more
    for the foreach update's temporaries, the largest step rise any other arm showed (activations),
    and a 2 GiB margin."""
    return int(5 * param_bytes + probe_rise + 2 * 2**30)


def _probe_rise(arms: dict, batch: dict, device) -> int:
    """The largest rise of allocated memory during one step of any arm (an extra, untimed step each)."""
    batch = {k: v.to(device) for k, v in batch.items()}
    rise = 0
    for arm in arms.values():
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        arm.step(batch, 0)
        if device.type == "cuda":
            _sync(device)
            rise = max(rise, torch.cuda.max_memory_allocated(device) - before)
    return int(rise)


def ratios(arms: dict) -> dict:
    """SMT's step against LoRA's and DoRA's (paired per round), and the goals of issue 20."""
    def t(n):
        return arms[n]["step_seconds"] if n in arms else []
    out = {"smt_over_floor": arms["smt"]["ratio_to_floor_paired"] if "smt" in arms else None,
           "smt_over_lora": _paired(t("smt"), t("lora")), "smt_over_dora": _paired(t("smt"), t("dora")),
           "lora_over_floor": arms["lora"]["ratio_to_floor_paired"] if "lora" in arms else None,
           "dora_over_floor": arms["dora"]["ratio_to_floor_paired"] if "dora" in arms else None,
           "full_ft_over_smt": _paired(t("full_ft"), t("smt"))}
    peak = {n: (a.get("cuda") or {}).get("arm_peak_bytes") for n, a in arms.items()}
    out["goals"] = {
        "smt_step_le_0.85_lora": None if out["smt_over_lora"] is None else out["smt_over_lora"]["median"] <= 0.85,
        "smt_step_le_0.60_dora": None if out["smt_over_dora"] is None else out["smt_over_dora"]["median"] <= 0.60,
        "smt_peak_below_lora": None if peak.get("smt") is None or peak.get("lora") is None
        else peak["smt"] < peak["lora"]}
    return out


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower() \
        or "CUBLAS_STATUS_ALLOC_FAILED" in str(err)


def part_table1(device, mode: dict, clock: Clock, scale: float, args) -> dict:
    start = time.monotonic()
    need = PART_MIN_S["table1"] * scale + RESERVE_S * scale
    base = {"model_config": mode["model"], "budget_pct": args.budget, "methods": list(args.methods),
            "batch_size": mode["batch_size"], "seq_len": mode["seq_len"], "attempts": []}
    if clock.left() < need:
        return {**base, "status": f"skipped: time ({clock.left():.0f} s left, needs {need:.0f})", "seconds": 0.0}
    config, validated = load_paper_config(REPO_ROOT / "config" / "paper.yaml")
    cfgs = table1_run_cfgs(config, args.methods, args.budget, mode, device)
    base.update(config="config/paper.yaml", config_validated=validated,
                method_settings={n: c["method"] for n, c in cfgs.items()},
                placements={n: c["placement"]["target_modules"] for n, c in cfgs.items()},
                deviations=[
                    "random weights (LlamaConfig of LLaMA-7B): step time and memory do not depend on the values",
                    "SMT blocks drawn at random at the same budget (selection: random): no warm-up on random "
                    "weights; random blocks spread over more distinct columns than gradient-chosen ones, so SMT's "
                    "saved activations are if anything larger",
                    "one process, one GPU, the batch in one micro-batch (the paper: 4 GPUs x 4, data parallel, "
                    "DeepSpeed ZeRO-2, full FT with CPU offload)",
                    "every batch is batch_size x seq_len tokens of random ids, all positions labelled "
                    "(paper.yaml trains on inputs; real examples are shorter than the cutoff)",
                    f"{mode['rounds_timed']} timed rounds after {mode['rounds_warmup']} untimed (the paper: 1000 "
                    "after 500), fewer when the time guard stops them"])
    layers = args.layers or mode["model"]["num_hidden_layers"]
    with_full_ft = not args.no_full_ft
    result = None
    while True:
        attempt = {"layers": layers, "with_full_ft": with_full_ft}
        try:
            result = measure_table1(cfgs, mode, layers, device, clock.deadline(RESERVE_S * scale), with_full_ft)
            attempt["status"] = "measured"
        except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
            if not _is_oom(err):
                raise
            attempt["status"] = f"error: out of memory ({str(err).splitlines()[0][:200]})"
        base["attempts"].append(attempt)
        if result is not None:
            break
        gc.collect()              # here, not in the except block: its traceback keeps the arms alive
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if with_full_ft and "full_ft" in cfgs:
            with_full_ft = False                 # first drop full FT (the largest arm) ...
        elif layers > 1:
            layers = max(1, layers * 2 // 3)     # ... then layers
        else:
            break
        if clock.left() < need:
            base["attempts"].append({"layers": layers, "with_full_ft": with_full_ft, "status": "skipped: time"})
            break
    if result is None:
        last = base["attempts"][-1]["status"] if base["attempts"] else "not run"
        return {**base, "status": last if last.startswith(("error", "skipped")) else f"error: {last}",
                "seconds": time.monotonic() - start}
    if layers != mode["model"]["num_hidden_layers"] and not args.layers:
        result["not_fitting"]["full_depth"] = (f"{mode['model']['num_hidden_layers']} layers ran out of memory; "
                                               f"measured at {layers}")
    if "full_ft" in cfgs and "full_ft" not in result["arms"] and "full_ft" not in result["not_fitting"]:
        result["not_fitting"]["full_ft"] = "out of memory beside the other arms (see attempts)"
    res = {**base, **result, "ratios": ratios(result["arms"]), "status": "measured",
           "full_depth": layers == mode["model"]["num_hidden_layers"], "seconds": time.monotonic() - start}
    if device.type == "cuda":
        peaks = [a["cuda"]["max_allocated_bytes"] for a in result["arms"].values() if a.get("cuda")]
        res["max_memory_allocated_bytes"] = max(peaks) if peaks else None   # every arm resident, any step
        gc.collect()
        torch.cuda.empty_cache()
    return res


# ---------------------------------------------------------------------------------------------
# the JSON


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(doc: dict) -> list[str]:
    """Errors of doc against the schema ([] = valid): jsonschema when installed, else the required keys."""
    schema = load_schema()
    try:
        import jsonschema
    except ImportError:
        errors = []

        def need(obj, sch, where):
            for k in sch.get("required", []):
                if not isinstance(obj, dict) or k not in obj:
                    errors.append(f"{where or '<top>'}: missing {k!r}")
            for k, sub in sch.get("properties", {}).items():
                if isinstance(obj, dict) and isinstance(obj.get(k), dict) and isinstance(sub, dict):
                    need(obj[k], sub, f"{where}.{k}" if where else k)
        need(doc, schema, "")
        return errors
    v = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in v.iter_errors(doc)]


def overall(parts: dict) -> bool:
    """Passed: exactness passed (its pytest neither failed nor errored) and no part ended in an error."""
    ex = parts["exactness"]["status"]
    return ex == "passed" and not any(p["status"].startswith(("error", "failed")) for p in parts.values())


def _run_part(fn, *a) -> dict:
    try:
        return fn(*a)
    except Exception as err:  # a part's failure is recorded, the other parts still run
        return {"status": f"error: {type(err).__name__}: {str(err)[:300]}", "traceback": traceback.format_exc()[-4000:],
                "seconds": None}


def _percent(text: str) -> float:
    """--budget-pct: a percent; below 0.1 it is almost surely a fraction and is refused naming both readings."""
    from harness.config import MIN_PERCENT

    value = float(text)
    if not 0 < value <= 50:
        raise argparse.ArgumentTypeError(f"{text}: a budget in percent of all parameters, in (0, 50]")
    if value < MIN_PERCENT:
        raise argparse.ArgumentTypeError(f"{value:g} read as percent is {value:g} % (a 100x smaller run than "
                                         f"{value * 100:g} %); if you meant the fraction {value:g} write {value * 100:g}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory for gpu_check.json, table1_gpu.md and pytest_cuda.xml")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (the default without a CUDA device)")
    p.add_argument("--limit-s", type=float, default=None, help="time limit of the whole check (default 480; tiny 300)")
    p.add_argument("--budget-pct", "--budget", dest="budget", type=_percent, default=0.84,
                   help="Table 1's budget in percent of all parameters, as in the configs (default 0.84)")
    p.add_argument("--methods", nargs="+", default=TABLE1_METHODS, choices=TABLE1_METHODS)
    p.add_argument("--layers", type=int, default=None, help="decoder layers of the model (default: full depth, "
                   "fewer after an out-of-memory error)")
    p.add_argument("--no-full-ft", action="store_true", help="leave full FT out of Table 1")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="weights and layer dtype (default: bfloat16 on a GPU, the paper's; float32 in tiny mode)")
    p.add_argument("--parts", nargs="+", default=["exactness", "layer", "table1"],
                   choices=["exactness", "layer", "table1"])
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    mode_name = "tiny" if tiny else "full"
    mode = dict(MODES[mode_name], **({"dtype": args.dtype} if args.dtype else {}))
    limit = args.limit_s or (300.0 if tiny else 480.0)
    scale = 0.1 if tiny else 1.0
    clock = Clock(limit)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if cuda else "cpu")
    doc = {"format": FORMAT, "created_at": _now(), "command": " ".join(["python -m benchmarks.gpu_check"]
                                                                       + list(argv if argv is not None else sys.argv[1:])),
           "mode": mode_name, "mode_reason": "--tiny" if args.tiny else ("no CUDA device" if not cuda else "CUDA device"),
           "device": device_info(device), "versions": versions(), "importable": absent_packages(),
           "limit_s": limit, "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in mode.items()
                                         if k != "model"}}
    parts = {}
    for name, fn, a in (("exactness", part_exactness, (device, mode, clock, out_dir, scale)),
                        ("layer", part_layer, (device, mode, clock, scale)),
                        ("table1", part_table1, (device, mode, clock, scale, args))):
        if name not in args.parts:
            parts[name] = {"status": "skipped: not asked (--parts)", "seconds": 0.0}
            continue
        print(f"[gpu_check] {name} ... ({clock.left():.0f} s left)", flush=True)
        parts[name] = _run_part(fn, *a)
        print(f"[gpu_check] {name}: {parts[name]['status']}", flush=True)
    doc["parts"] = parts
    doc["passed"] = overall(parts)
    doc["elapsed_s"] = clock.elapsed()
    errors = validate(doc)
    doc["schema_errors"] = errors
    path = out_dir / JSON_NAME
    from harness import gpu_table
    from harness.records import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=1, default=str) + "\n")

    gpu_table.write(path, out_dir / pathlib.Path(TABLE_NAME).stem, allow_cpu=True)
    print(f"[gpu_check] wrote {path} and {out_dir / TABLE_NAME} in {doc['elapsed_s']:.0f} s; "
          f"passed: {doc['passed']}" + (f"; schema errors: {errors}" if errors else ""), flush=True)
    return doc


if __name__ == "__main__":
    d = main()
    sys.exit(0 if d["passed"] and not d["schema_errors"] else 1)
