"""Table 1 as a measurement: every method's training step, side by side, against the frozen floor.

`profile_table1(runs, table1, out_path)` builds one "arm" per method (its own model copy,
loaded from the same prepared weights, its own optimizer and scheduler, made by the same
harness.step functions the training loop uses: warmup_phase, main_phase, TrainStep) plus the **frozen floor** (every weight frozen, the embedding output requires
grad, no optimizer: forward plus input-gradient backward, the least work any method that trains
layer 0's attention can do). It then runs rounds: in each round every arm takes one step of the
training loop's own step function on the *same* batch, in round-robin order (the starting arm
rotates each round, so no arm always follows the same one). The first `warmup_steps` rounds are
untimed; the first of them also accounts memory. SMT's warm-up and block selection run before
any round and are timed separately (`warmup_seconds`).

Memory is accounted, not sampled: parameters, gradients (measured after backward), optimizer
state (after a step) and the activations saved for backward (torch.autograd.graph
.saved_tensors_hooks, unique storages, parameters' own storages excluded and reported apart).
On GPU, torch.cuda.max_memory_allocated is reset before every step and read after it.

The output JSON (one file for the whole table) is documented in `profile_table1`; Table 1 is
rendered from it by `table1_frame`.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import statistics
import time

import torch
import torch.nn.functional as F

import baselines
from harness.models import load_model, resolve_device
from harness.records import atomic_write_json, meta_info
from harness.loss import loss_route
from harness.run_config import as_run_config
from harness.step import TrainStep, build_accelerator, main_phase, set_seed, warmup_phase
from harness.train_data import collate, has_answer, load_examples

log = logging.getLogger(__name__)

FLOOR = "floor"
FLOOR_LABEL = "Frozen floor"
FORMAT = "smt-bench/table1-profile/v1"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# settings and batches


def table1_settings(table1: dict, train) -> dict:
    """The profiler's settings from config experiments.table1 (defaults filled), validated."""
    s = {"steps": table1.get("steps"), "warmup_steps": table1.get("warmup_steps", 2),
         "batch_size": table1.get("batch_size") or train.micro_batch_size,
         "seq_len": table1.get("seq_len"), "seed": table1.get("seed", 0)}
    if not isinstance(s["steps"], int) or s["steps"] < 2:
        raise ValueError(f"experiments.table1.steps must be an integer >= 2 (timed rounds per method), "
                         f"got {s['steps']!r}; set it in the config (issue 10 asks >= 10)")
    if not isinstance(s["warmup_steps"], int) or s["warmup_steps"] < 1:
        raise ValueError(f"experiments.table1.warmup_steps must be an integer >= 1 (the first untimed round "
                         f"accounts memory), got {s['warmup_steps']!r}")
    if not isinstance(s["batch_size"], int) or s["batch_size"] < 1:
        raise ValueError(f"experiments.table1.batch_size must be a positive integer, got {s['batch_size']!r}")
    if s["seq_len"] is not None and (not isinstance(s["seq_len"], int) or s["seq_len"] < 2):
        raise ValueError(f"experiments.table1.seq_len must be an integer >= 2 or null, got {s['seq_len']!r}")
    return s


def fixed_batches(examples: list[dict], n: int, batch_size: int, seq_len: int | None, pad_id: int,
                  seed: int = 0) -> list[dict]:
    """n distinct batches of batch_size examples, drawn in a seeded order, each used by every arm.

    With seq_len, every batch is exactly batch_size x seq_len positions: examples longer than
    seq_len are skipped (cutting them could cut off the answer), shorter ones are right-padded
    (attention 0, label -100). Examples without any label are skipped (the loop refuses them).
    """
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = []
    for i in order:
        ex = examples[i]
        if seq_len is not None and len(ex["input_ids"]) > seq_len:
            continue
        if not has_answer(ex):
            continue
        chosen.append(ex)
        if len(chosen) == n * batch_size:
            break
    if len(chosen) < n * batch_size:
        raise ValueError(f"Table 1 needs {n} batches of {batch_size} examples "
                         f"{'of at most ' + str(seq_len) + ' tokens ' if seq_len else ''}with a label, but the "
                         f"training set has only {len(chosen)}; lower experiments.table1.steps/batch_size or raise "
                         "seq_len")
    pad = collate(pad_id)
    batches = []
    for b in range(n):
        batch = pad(chosen[b * batch_size:(b + 1) * batch_size])
        if seq_len is not None:
            extra = seq_len - batch["input_ids"].shape[1]
            batch = {"input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_id),
                     "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0),
                     "labels": F.pad(batch["labels"], (0, extra), value=-100)}
        batches.append(batch)
    return batches


def batches_sha256(batches: list[dict]) -> str:
    h = hashlib.sha256()
    for b in batches:
        for k in ("input_ids", "attention_mask", "labels"):
            h.update(b[k].numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# memory accounting


def _storage(t: torch.Tensor) -> tuple[tuple, int]:
    s = t.untyped_storage()
    return (s.device.type, s.device.index, s.data_ptr()), s.nbytes()


def unique_bytes(tensors) -> int:
    """Bytes of the distinct storages behind tensors (a view counts its whole storage, once)."""
    seen = {}
    for t in tensors:
        if t is not None:
            key, n = _storage(t)
            seen[key] = n
    return sum(seen.values())


class SavedActivations:
    """Context manager: the distinct storages autograd saves for backward while it is active.

    Storages of `exclude` (a model's parameters and buffers) are counted apart (param_bytes):
    they are the weights themselves, already counted as parameters. Only sizes are kept, never
    the tensors, so the accounting does not extend their lifetime.
    """

    def __init__(self, exclude=()):
        self.exclude = {_storage(t)[0] for t in exclude}
        self.saved, self.params, self.n_saves = {}, {}, 0

    def _pack(self, t):
        self.n_saves += 1
        key, n = _storage(t)
        (self.params if key in self.exclude else self.saved)[key] = n
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    @property
    def activation_bytes(self) -> int:
        return sum(self.saved.values())

    @property
    def param_bytes(self) -> int:
        return sum(self.params.values())


def _tensors_of(state) -> list:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors_of(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors_of(v)]
    return []


# ---------------------------------------------------------------------------------------------
# arms: one per method plus the floor


class _Arm:
    """One row of Table 1: its model copy, optimizer, the loop's step function and its measurements."""

    def __init__(self, name, label, model, make_step, opt=None, info=None, warmup_seconds=None):
        self.name, self.label, self.model, self.make_step, self.opt = name, label, model, make_step, opt
        self.step = make_step()
        self.loss_route = loss_route(model)
        self.info = info or {}
        self.warmup_seconds = warmup_seconds
        self.times, self.tokens, self.positions, self.losses = [], [], [], []
        self.memory, self.cuda_peaks, self.cuda_over = None, [], []


def _loop_step(run, acc, model, opt, sched):
    """make_step(after_backward=None) -> step(batch, global_step) -> loss: the training loop's own
    step (harness.step.TrainStep) bound to one arm's model, optimizer, scheduler and accelerator."""
    def make_step(after_backward=None):
        train_step = TrainStep(run.train, model, opt, sched, acc, after_backward=after_backward)
        return lambda batch, global_step: train_step(iter([batch]), global_step).loss
    return make_step


def _profile_run(run, settings: dict):
    """The run with the profile's batch: one micro-batch of batch_size per optimizer step."""
    return run.replace(train=run.train.replace(micro_batch_size=settings["batch_size"], grad_accum=1))


def _method_arm(run, acc, device, batches, total_steps, model=None) -> _Arm:
    """Load the model (or take `model`, already built on `device`), run the method's warm-up and
    selection (timed apart) through the loop's own warm-up phase, apply the method, make the main
    phase's optimizer as the loop does."""
    if model is None:
        model, _ = load_model(run.model.path, run.model.dtype, device)
    cls = baselines.get_method(run.method.name)
    method = cls(run)
    warm, warmup_seconds = method.warmup_steps, None
    model.train()  # as the loop: from_pretrained returns eval mode, training runs in train mode
    if warm:
        start = time.perf_counter()
        stepper = warmup_phase(method, model, run, acc, total_steps + warm).step
        for i in range(warm):
            stepper(iter([{k: v.to(device) for k, v in batches[i % len(batches)].items()}]), i)
        _sync(device)
        warmup_seconds = time.perf_counter() - start
    info = method.apply(model)
    phase = main_phase(model, run, acc, total_steps + warm, warm)
    model, opt, sched = phase.model, phase.opt, phase.sched
    info = {k: v for k, v in info.items() if isinstance(v, (int, float, str, list, type(None)))}
    return _Arm(method.name, getattr(cls, "label", method.name), model,
                _loop_step(run, acc, model, opt, sched), opt, {**info, "warmup_steps": warm}, warmup_seconds)


def _floor_arm(run, acc, device, model=None) -> _Arm:
    """Every weight frozen; the embedding output requires grad, so backward computes input gradients only.
    `model`: one already built on `device` instead of loading the run's."""
    if model is None:
        model, _ = load_model(run.model.path, run.model.dtype, device)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    model.get_input_embeddings().register_forward_hook(lambda mod, inp, out: out.requires_grad_(True))
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    model = acc.prepare(model)
    return _Arm(FLOOR, FLOOR_LABEL, model, _loop_step(run, acc, model, None, None), None,
                {"trainable_params": 0, "total_params": n, "budget_reached": 0.0, "warmup_steps": 0})


def _account(arm: _Arm, batch: dict, global_step: int) -> float:
    """One (untimed) step with every byte accounted: params, grads, optimizer state, saved activations."""
    model = arm.model
    params = list({id(p): p for p in model.parameters()}.values())
    grads = {}

    def grab_grads(m):
        grads["bytes"] = unique_bytes(p.grad for p in m.parameters() if p.grad is not None)
        grads["tensors"] = sum(1 for p in m.parameters() if p.grad is not None)

    with SavedActivations(exclude=params + list(model.buffers())) as saved:
        loss = arm.make_step(grab_grads)(batch, global_step)
    opt_bytes = unique_bytes(t for s in arm.opt.state.values() for t in _tensors_of(s)) if arm.opt else 0
    p_bytes = unique_bytes(params)
    t_bytes = unique_bytes(p for p in params if p.requires_grad)
    arm.memory = {"param_bytes": p_bytes, "trainable_param_bytes": t_bytes,
                  "grad_bytes": grads.get("bytes", 0), "grad_tensors": grads.get("tensors", 0),
                  "optimizer_bytes": opt_bytes, "saved_activation_bytes": saved.activation_bytes,
                  "saved_activation_storages": len(saved.saved), "saved_param_bytes": saved.param_bytes,
                  "saved_tensor_count": saved.n_saves,
                  "total_accounted_bytes": p_bytes + grads.get("bytes", 0) + opt_bytes + saved.activation_bytes}
    return loss


# ---------------------------------------------------------------------------------------------
# statistics


def _quartiles(xs: list[float]) -> dict:
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
    return {"median": med, "q1": q1, "q3": q3, "iqr": q3 - q1}


def round_robin(names: list[str], rnd: int) -> list[str]:
    """The order of round `rnd`: every arm once, the start rotating by one arm per round."""
    k = rnd % len(names)
    return names[k:] + names[:k]


# ---------------------------------------------------------------------------------------------
# the job


def run_rounds(arms: dict, batches: list, settings: dict, device, deadline: float | None = None) -> list:
    """Run the rounds of Table 1 (profile_table1's loop; benchmarks.gpu_check calls it too): in round r
    every arm takes one step on batches[r], in round_robin order; round 0 accounts memory, the first
    settings["warmup_steps"] rounds are untimed. Returns the schedule [{round, arm, timed}].

    deadline: a time.monotonic() value; once past it, no further round starts after at least two
    timed rounds (settings["steps"] is then set to the timed rounds run and settings["stopped_early"]
    to True), so a time-limited job ends with what it measured instead of overrunning."""
    names, schedule = list(arms), []
    n_rounds = settings["warmup_steps"] + settings["steps"]
    for rnd in range(n_rounds):
        if deadline is not None and rnd - settings["warmup_steps"] >= 2 and time.monotonic() > deadline:
            settings["steps"], settings["stopped_early"] = rnd - settings["warmup_steps"], True
            break
        batch = {k: v.to(device) for k, v in batches[rnd].items()}
        timed = rnd >= settings["warmup_steps"]
        for name in round_robin(names, rnd):
            arm = arms[name]
            schedule.append({"round": rnd, "arm": name, "timed": timed})
            if rnd == 0:
                _account(arm, batch, rnd)
                continue
            if device.type == "cuda":
                _sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            _sync(device)
            start = time.perf_counter()
            loss = arm.step(batch, rnd)
            _sync(device)
            seconds = time.perf_counter() - start
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
                arm.cuda_peaks.append(peak)
                arm.cuda_over.append(peak - before)
            if timed:
                arm.times.append(seconds)
                arm.tokens.append(int(batch["attention_mask"].sum()))
                arm.positions.append(int(batch["attention_mask"].numel()))
                arm.losses.append(float(loss))
        log.info("round %d/%d (%s): %s", rnd + 1, n_rounds, "timed" if timed else "untimed",
                 ", ".join(f"{n} {arms[n].times[-1]:.3f}s" for n in names if timed and arms[n].times))
    return schedule


def profile_table1(runs: dict, table1: dict, out_path, threads: int | None = None) -> dict:
    """Measure every method of Table 1 side by side against the frozen floor; write JSON to out_path.

    runs: {method: RunConfig or its JSON form} (same model and training set for all;
    harness.config.resolve_run of profile_run_id). table1: config experiments.table1 (see table1_settings).

    JSON ({"format": FORMAT, ...}): model, model_path, dataset, budget_asked, device, dtype,
    threads, lm_head ("all positions" or "label positions": what the loop's step computes),
    settings {steps, warmup_steps, batch_size, seq_len, seed}, batches {n, sha256, tokens,
    positions}, order [arm names, floor first], schedule [{round, arm, timed}] in execution
    order, noise (a sentence), meta_info, and arms {name: {label, kind ("floor"|"method"),
    trainable_params, total_params, budget_reached, warmup_steps, rank, loss_route
    (harness.loss route: keep/decoder = head on labelled positions only), warmup_seconds (SMT's
    warm-up + selection; null if none), step_seconds [timed, in round order], step {median, q1,
    q3, iqr} (seconds), tokens_per_s {median, q1, q3, iqr} (non-pad tokens), positions_per_s,
    final_loss, ratio_to_floor (median over timed rounds of step / floor's step in the same round),
    ratio_to_floor_paired (those per-round ratios' {median, q1, q3, iqr}), ratio_of_medians_to_floor,
    speedup_vs_full_ft (median over rounds of full FT's step / this step; null without full_ft),
    speedup_vs_full_ft_paired (quartiles), speedup_of_medians_vs_full_ft,
    memory {param_bytes, trainable_param_bytes, grad_bytes, grad_tensors, optimizer_bytes,
    saved_activation_bytes, saved_activation_storages, saved_param_bytes, saved_tensor_count,
    total_accounted_bytes}, cuda (null on CPU, else {max_allocated_bytes, step_peak_over_resident_bytes,
    arm_peak_bytes})}}.
    """
    if not runs:
        raise ValueError("experiments.table1.methods is empty; list the methods Table 1 compares")
    if FLOOR in runs:
        raise ValueError(f"experiments.table1.methods must not list {FLOOR!r}: the frozen floor is always measured")
    runs = {name: as_run_config(run) for name, run in runs.items()}
    first = next(iter(runs.values()))
    for name, run in runs.items():
        for key in ("model", "dataset"):
            if getattr(run, key).path != getattr(first, key).path:
                raise ValueError(f"Table 1 compares methods on one {key}: {name} uses {getattr(run, key).path}, "
                                 f"not {getattr(first, key).path}")
    settings = table1_settings(table1, first.train)
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    device = resolve_device(first.model.device)
    acc = build_accelerator(first)
    cfgs = {name: _profile_run(run, settings) for name, run in runs.items()}
    set_seed(first.seed)
    tok = _tokenizer(first.model.path)
    examples = load_examples(cfgs[next(iter(cfgs))], tok)
    n_rounds = settings["warmup_steps"] + settings["steps"]
    batches = fixed_batches(examples, n_rounds, settings["batch_size"], settings["seq_len"], tok.pad_token_id,
                            settings["seed"])
    arms = {FLOOR: _floor_arm(cfgs[next(iter(cfgs))], acc, device)}
    for name, run in cfgs.items():
        set_seed(run.seed)
        arms[name] = _method_arm(run, acc, device, batches, n_rounds)
        log.info("arm %s ready (%s trainable params, warm-up %s s)", name, arms[name].info.get("trainable_params"),
                 arms[name].warmup_seconds)
    names, schedule = list(arms), run_rounds(arms, batches, settings, device)
    result = {"format": FORMAT, "model": first.model.name, "model_path": str(first.model.path),
              "dataset": first.dataset.name, "budget_asked": first.budget,
              "device": str(device), "dtype": str(next(arms[FLOOR].model.parameters()).dtype).replace("torch.", ""),
              "threads": threads, "lm_head": _lm_head_mode(arms), "settings": settings,
              "batches": {"n": len(batches), "sha256": batches_sha256(batches),
                          "tokens": [int(b["attention_mask"].sum()) for b in batches],
                          "positions": [int(b["attention_mask"].numel()) for b in batches]},
              "order": names, "schedule": schedule,
              "noise": ("step times are wall-clock on a machine that may be shared; arms are interleaved "
                        "round-robin on the same batches so that load changes hit every arm alike: read the "
                        "ratios (and their paired per-round spread) rather than the absolute seconds"),
              "arms": {name: _arm_json(arm, arms) for name, arm in arms.items()},
              "meta_info": meta_info(first.model.path, first.dataset.path)}
    atomic_write_json(out_path, result)
    return result


def _tokenizer(path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def _lm_head_mode(arms: dict) -> str:
    """Where the loop's step applies the LM head (harness.loss routes: keep/decoder = labelled positions)."""
    routes = {arm.loss_route for arm in arms.values()}
    if routes <= {"keep", "decoder"}:
        return "label positions"
    return "all positions" if routes == {"full"} else "mixed: " + ", ".join(sorted(routes))


def _arm_json(arm: _Arm, arms: dict) -> dict:
    floor, full = arms[FLOOR], arms.get("full_ft")
    med = statistics.median(arm.times)

    def paired(num, den):
        return _quartiles([a / b for a, b in zip(num, den)])
    return {
        "label": arm.label, "kind": "floor" if arm.name == FLOOR else "method",
        **{k: arm.info.get(k) for k in ("trainable_params", "total_params", "budget_reached", "warmup_steps")},
        "rank": arm.info.get("rank"), "warmup_seconds": arm.warmup_seconds, "loss_route": arm.loss_route,
        "step_seconds": arm.times, "step": _quartiles(arm.times),
        "tokens_per_s": _quartiles([n / t for n, t in zip(arm.tokens, arm.times)]),
        "positions_per_s": _quartiles([n / t for n, t in zip(arm.positions, arm.times)]),
        "final_loss": arm.losses[-1] if arm.losses else None,
        # ratios are paired per round (same batch, same moment): robust to load that changes during
        # the run, which moves every arm's median but not a round's ratio; ratios of medians kept apart
        "ratio_to_floor": paired(arm.times, floor.times)["median"],
        "ratio_to_floor_paired": paired(arm.times, floor.times),
        "ratio_of_medians_to_floor": med / statistics.median(floor.times),
        "speedup_vs_full_ft": paired(full.times, arm.times)["median"] if full else None,
        "speedup_vs_full_ft_paired": paired(full.times, arm.times) if full else None,
        "speedup_of_medians_vs_full_ft": statistics.median(full.times) / med if full else None,
        "memory": arm.memory,
        "cuda": _cuda_json(arm),
    }


def _cuda_json(arm: _Arm) -> dict | None:
    """GPU peaks: max_memory_allocated (every arm's copy resident), the step's rise over what was
    resident before it, and the arm's own peak = its parameters + optimizer state + that rise."""
    if not arm.cuda_peaks:
        return None
    over = max(arm.cuda_over)
    own = (arm.memory or {}).get("param_bytes", 0) + (arm.memory or {}).get("optimizer_bytes", 0)
    return {"max_allocated_bytes": max(arm.cuda_peaks), "step_peak_over_resident_bytes": over,
            "arm_peak_bytes": own + over}


# ---------------------------------------------------------------------------------------------
# Table 1


def _mb(n):
    return None if n is None else round(n / 2**20, 1)


def table1_frame(profile: dict) -> "pd.DataFrame":
    """Table 1 from the profile JSON: one row per arm (floor first), medians with IQR, ratios, memory."""
    import pandas as pd  # here, not at the top: the GPU check imports this module without pandas

    if profile.get("format") != FORMAT:
        raise ValueError(f"not a Table 1 profile (format {profile.get('format')!r}, expected {FORMAT!r}); "
                         "rebuild it with `snakemake profile_table1` (harness.profile.profile_table1)")
    rows = []
    for name in profile["order"]:
        a = profile["arms"][name]
        m, step = a["memory"] or {}, a["step"]
        full = a["speedup_vs_full_ft"]
        rows.append({
            "Method": a["label"],
            "Params%": round(100 * a["budget_reached"], 2) if a["budget_reached"] is not None else None,
            "Time/step (s)": f"{step['median']:.3f}",
            "IQR (s)": f"{step['q1']:.3f}-{step['q3']:.3f}",
            "Tokens/s": round(a["tokens_per_s"]["median"], 1),
            "x Floor": f"{a['ratio_to_floor']:.2f}",
            "x Floor IQR": f"{a['ratio_to_floor_paired']['q1']:.2f}-{a['ratio_to_floor_paired']['q3']:.2f}",
            "Speed-up vs Full FT": "n/a" if full is None else f"{full:.2f}x",
            "Params (MB)": _mb(m.get("param_bytes")), "Grads (MB)": _mb(m.get("grad_bytes")),
            "Optimizer (MB)": _mb(m.get("optimizer_bytes")),
            "Saved act. (MB)": _mb(m.get("saved_activation_bytes")),
            "Accounted (MB)": _mb(m.get("total_accounted_bytes")),
            "CUDA peak (MB)": _mb(a["cuda"]["arm_peak_bytes"]) if a.get("cuda") else "n/a",
        })
    return pd.DataFrame(rows)
