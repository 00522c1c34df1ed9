"""How a training run is launched and which engine it trains with.

Three launchers (config key ``execution.launcher``; see :func:`launcher_settings`):

* ``python``    one process, the train script runs in-process (``snakemake`` ``script:``).
* ``ddp``       data parallel over ``execution.num_processes`` processes
                (``accelerate launch --multi_gpu``; gloo on a CPU, nccl on GPUs).
* ``deepspeed`` the paper's launcher: ``accelerate launch --use_deepspeed`` with DeepSpeed
                ZeRO-2 (``harness/deepspeed/zero2.json``); phases that train every weight
                (full FT, SMT's full-FT warm-up, as the paper does) use the optimizer-offload
                config ``zero2_offload.json``.

Inside the process the engine follows the environment the launcher set (``WORLD_SIZE``,
``ACCELERATE_USE_DEEPSPEED``), so the same train script runs under all three.
:func:`build_accelerator` makes the ``accelerate.Accelerator`` (one DeepSpeed config per
phase, selected with :func:`select_phase`); :func:`micro_batch` runs one micro-batch's
forward/backward correctly under each engine (DDP ``no_sync`` on all but the last
micro-batch; DeepSpeed scales by its own gradient_accumulation_steps and reduces at the
boundary, and forbids ``no_sync`` under ZeRO-2). On a machine without GPUs DeepSpeed runs
with ``DS_ACCELERATOR=cpu`` over gloo (tests/test_multiprocess.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shlex

DEEPSPEED_DIR = pathlib.Path(__file__).resolve().parent / "deepspeed"
LAUNCHERS = ("python", "ddp", "deepspeed", "accelerate")
ENGINES = ("single", "ddp", "deepspeed")
PHASES = ("warmup", "train")


# ----------------------------------------------------------------------------- config side
def launcher_settings(exe: dict) -> dict:
    """The launcher keys of a config's ``execution`` block, with defaults, validated.

    Keys: launcher (python | ddp | deepspeed | accelerate: the raw ``accelerate_args``),
    num_processes (processes per job; default ``gpus`` or 1), mixed_precision (no | bf16;
    default bf16 when gpus > 0), accelerate_args (extra arguments appended to
    ``accelerate launch``), main_process_port (default 29500; 0 lets each job pick one),
    deepspeed_offload (which phases use zero2_offload.json: ``full`` = full FT and SMT's
    full-FT warm-up (the paper), ``none``, ``all``).
    """
    exe = exe or {}
    launcher = exe.get("launcher", "python")
    if launcher not in LAUNCHERS:
        raise ValueError(f"execution.launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    gpus = int(exe.get("gpus") or 0)
    n = int(exe.get("num_processes") or gpus or 1)
    if n < 1:
        raise ValueError(f"execution.num_processes must be >= 1, got {n}")
    if launcher == "python" and n > 1:
        raise ValueError(f"execution.num_processes is {n} but execution.launcher is 'python' (one process); "
                         "set launcher: ddp or deepspeed")
    mp = exe.get("mixed_precision")
    if mp is False:  # YAML 1.1 reads an unquoted `no` as false
        mp = "no"
    mp = mp or ("bf16" if gpus else "no")
    if mp not in ("no", "bf16"):
        raise ValueError(f"execution.mixed_precision {mp!r}: use no or bf16")
    offload = exe.get("deepspeed_offload", "full")
    if offload not in ("full", "none", "all"):
        raise ValueError(f"execution.deepspeed_offload {offload!r}: use full, none or all")
    return {"launcher": launcher, "num_processes": n, "gpus": gpus, "mixed_precision": mp,
            "accelerate_args": exe.get("accelerate_args", "") or "",
            "main_process_port": int(exe.get("main_process_port", 29500)), "deepspeed_offload": offload}


def launch_prefix(exe: dict) -> str:
    """The command that starts ``workflow/scripts/train.py`` (shown by ``snakemake -n -p``).

    python: ``python``; ddp: ``torchrun --standalone --nproc_per_node N`` (accelerate's own
    launcher runs a single process for --cpu); deepspeed: ``accelerate launch --use_deepspeed
    --zero_stage 2``. Mixed precision reaches the Accelerator as ACCELERATE_MIXED_PRECISION.
    """
    s = launcher_settings(exe)
    env = [f"HARNESS_DEEPSPEED_OFFLOAD={s['deepspeed_offload']}"] if s["deepspeed_offload"] != "full" else []
    extra = shlex.split(s["accelerate_args"])
    if s["launcher"] == "python":
        return "python"
    if s["launcher"] == "accelerate":
        return shlex.join(["accelerate", "launch"] + extra)
    if s["launcher"] == "ddp":
        args = ["env", f"ACCELERATE_MIXED_PRECISION={s['mixed_precision']}", *env,
                "torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", str(s["num_processes"])]
        return shlex.join(args)
    # the ZeRO-2 JSON is chosen per phase in-process (harness.launch.deepspeed_config); this selects
    # DeepSpeed and the stage, so the printed command and the run agree
    args = (["env", *env] if env else []) + [
        "accelerate", "launch", "--num_machines", "1", "--num_processes", str(s["num_processes"]),
        "--main_process_port", str(s["main_process_port"]), "--use_deepspeed", "--zero_stage", "2",
        "--mixed_precision", s["mixed_precision"]]
    return shlex.join(args + extra)


# ----------------------------------------------------------------------------- process side
def engine() -> str:
    """The engine this process runs under, from the launcher's environment."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "ddp"
    return "single"


def offloads(method_name: str, phase: str, warmup_mode: str = "full_ft", policy: str = "full") -> bool:
    """Whether a phase uses ZeRO-Offload: phases that train every weight (the paper's full FT and
    SMT's full-FT warm-up) under policy ``full``; always under ``all``; never under ``none``."""
    if policy == "all":
        return True
    if policy == "none":
        return False
    if phase == "warmup":
        return warmup_mode == "full_ft"
    return method_name == "full_ft"


def deepspeed_config(run, phase: str = "train", world_size: int = 1, warmup_mode: str = "full_ft",
                     policy: str = "full", mixed_precision: str = "no") -> dict:
    """The ZeRO-2 JSON of a run's phase with every "auto" filled from the run config.

    train_micro_batch_size_per_gpu = train.micro_batch_size, gradient_accumulation_steps =
    train.grad_accum (DeepSpeed divides the loss by it), train_batch_size = their product x
    world size, gradient_clipping = train.max_grad_norm (0: none), bf16 from the model dtype or
    mixed precision. With offload the client optimizer (torch AdamW) is allowed
    (``zero_force_ds_cpu_optimizer: false``; DeepSpeedCPUAdam would need a compiled op): it
    steps the offloaded partitions on the CPU, the same update, more slowly.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; use {PHASES}")
    from harness.run_config import as_run_config

    run = as_run_config(run)
    off = offloads(run.method.name, phase, warmup_mode, policy)
    cfg = json.loads((DEEPSPEED_DIR / ("zero2_offload.json" if off else "zero2.json")).read_text())
    t = run.train
    micro, accum = int(t.micro_batch_size), int(t.grad_accum)
    bf16 = str(run.model.dtype) == "bfloat16" or mixed_precision == "bf16"
    cfg["train_micro_batch_size_per_gpu"] = micro
    cfg["gradient_accumulation_steps"] = accum
    cfg["train_batch_size"] = micro * accum * world_size
    cfg["gradient_clipping"] = float(t.max_grad_norm or 0.0)
    cfg["bf16"] = {"enabled": bool(bf16)}
    z = cfg["zero_optimization"]
    if z.get("reduce_bucket_size") == "auto":
        z["reduce_bucket_size"] = 5e8
    if "offload_optimizer" in z:
        # the loop's own optimizer (torch AdamW, the run's betas/eps) steps the offloaded fp32 partitions on
        # the CPU: the same update as DeepSpeedCPUAdam (which needs a compiled op), slower
        cfg["zero_force_ds_cpu_optimizer"] = False
    import torch
    if not torch.cuda.is_available():
        z.get("offload_optimizer", {}).pop("pin_memory", None)
    cfg["steps_per_print"] = 10 ** 9
    cfg["wall_clock_breakdown"] = False
    return cfg


def build_accelerator(run, method=None, settings: dict | None = None):
    """The Accelerator of a run under the current engine (see :func:`engine`).

    DeepSpeed: one plugin per phase ("warmup" when the method has warm-up steps, "train"),
    built from :func:`deepspeed_config`; call :func:`select_phase` before preparing each
    phase's model. On a CPU-only host the process group is gloo (``DS_ACCELERATOR=cpu``).
    """
    import torch
    from accelerate import Accelerator, PartialState

    from harness.run_config import as_run_config

    run = as_run_config(run)
    settings = dict(settings or launcher_settings({}))  # the launcher set the engine up (environment)
    settings["mixed_precision"] = os.environ.get("ACCELERATE_MIXED_PRECISION") or settings["mixed_precision"]
    settings["deepspeed_offload"] = os.environ.get("HARNESS_DEEPSPEED_OFFLOAD") or settings["deepspeed_offload"]
    cpu = str(run.model.device) == "cpu" or not torch.cuda.is_available()
    eng = engine()
    mp = settings["mixed_precision"]
    if eng != "deepspeed":
        return Accelerator(cpu=cpu, mixed_precision=None if mp == "no" else mp)
    import deepspeed  # noqa: F401  (fails early and clearly when DeepSpeed is missing)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    name = getattr(method, "name", run.method.name)
    mode = getattr(method, "warmup_mode", "full_ft")
    plugins = {}
    from accelerate.utils import DeepSpeedPlugin
    phases = (["warmup"] if getattr(method, "warmup_steps", 0) else []) + ["train"]
    for phase in phases:
        cfg = deepspeed_config(run, phase, world, mode, settings["deepspeed_offload"], mp)
        plugins[phase] = DeepSpeedPlugin(hf_ds_config=cfg)
    from accelerate.state import AcceleratorState
    if AcceleratorState._shared_state:     # a second run in this process: new per-phase plugins
        AcceleratorState._reset_state(reset_partial_state=False)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")        # accelerate would not start a process group on a CPU by itself
    acc = Accelerator(deepspeed_plugins=plugins if len(plugins) > 1 else plugins["train"])
    acc.phase_offload = {p: offloads(name, p, mode, settings["deepspeed_offload"]) for p in phases}
    if len(plugins) > 1:
        select_phase(acc, phases[0])
    return acc


def is_deepspeed(acc) -> bool:
    from accelerate.utils import DistributedType
    return acc.distributed_type == DistributedType.DEEPSPEED


def select_phase(acc, phase: str) -> None:
    """Before preparing a phase's model: drop the previous phase's engine and pick its DeepSpeed config."""
    if not is_deepspeed(acc):
        return
    acc.free_memory()
    plugins = acc.state.deepspeed_plugins
    if isinstance(plugins, dict) and phase in plugins:
        acc.state.select_deepspeed_plugin(phase)


@contextlib.contextmanager
def micro_batch(acc, model, index: int, accum: int):
    """Context for micro-batch ``index`` of ``accum``; yields ``backward(loss)`` for the unscaled loss.

    single/DDP: backward(loss / accum), the DDP all-reduce only on the last micro-batch;
    DeepSpeed: the engine divides by its gradient_accumulation_steps (= accum), reduces and steps at
    the boundary (the last micro-batch); ZeRO-2 has no ``no_sync``.
    """
    last = index == accum - 1
    if is_deepspeed(acc):
        wrapped = acc.deepspeed_engine_wrapped
        if wrapped is None:   # a model DeepSpeed does not wrap (SMT's gradient-only warm-up): plain backward
            yield lambda loss: (loss / accum).backward()
        else:
            yield lambda loss: wrapped.backward(loss, sync_gradients=last)
        return
    ctx = acc.no_sync(model) if not last else contextlib.nullcontext()
    with ctx:
        yield lambda loss: acc.backward(loss / accum)


def finish(acc, prepared):
    """The trained plain model, ready to save: DeepSpeed's engine is released and every parameter
    gets its own storage again (ZeRO-2 leaves them as views into one flat buffer, which
    safetensors refuses to save). Tied parameters stay tied (one Parameter, cloned once)."""
    import torch
    model = acc.unwrap_model(prepared)
    if is_deepspeed(acc):
        acc.free_memory()
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.clone()
    return model


ENGINE_TAG = "zero"


def save_engine_state(acc, ckpt_dir) -> bool:
    """DeepSpeed: every rank writes its ZeRO partition of the optimizer state (and the trainable
    weights) under ``ckpt_dir/deepspeed`` (a collective: call it on every rank), ckpt_dir being the
    new checkpoint's own directory (harness.checkpoint). False otherwise: the caller's own
    checkpoint holds the whole optimizer state."""
    if not is_deepspeed(acc) or acc.deepspeed_engine_wrapped is None:
        return False
    path = pathlib.Path(ckpt_dir) / "deepspeed"
    acc.deepspeed_engine_wrapped.engine.save_checkpoint(str(path), tag=ENGINE_TAG, save_latest=False,
                                                        exclude_frozen_parameters=True)
    return True


def load_engine_state(acc, ckpt_dir) -> bool:
    """DeepSpeed, after preparing the model: restore every rank's ZeRO optimizer partition saved by
    :func:`save_engine_state` into the checkpoint directory ckpt_dir; False when not under DeepSpeed."""
    if not is_deepspeed(acc):
        return False
    path = pathlib.Path(ckpt_dir) / "deepspeed"
    if not (path / ENGINE_TAG).is_dir():
        raise FileNotFoundError(f"cannot resume under DeepSpeed: {path / ENGINE_TAG} (the ZeRO optimizer state) is "
                                "missing; delete the run's checkpoints/ to start over")
    acc.deepspeed_engine_wrapped.engine.load_checkpoint(str(path), tag=ENGINE_TAG, load_optimizer_states=True,
                                                        load_lr_scheduler_states=False, load_module_strict=False)
    return True


def zero_grad(acc, model) -> None:
    """Drop the gradients after a step (DeepSpeed's engine takes no ``set_to_none``; it frees them itself)."""
    if is_deepspeed(acc):
        model.zero_grad()
    else:
        model.zero_grad(set_to_none=True)


def describe(acc) -> dict:
    """Engine facts for the run record: engine, processes, DeepSpeed stage and offload per phase."""
    info = {"engine": "deepspeed" if is_deepspeed(acc) else ("ddp" if acc.num_processes > 1 else "single"),
            "num_processes": acc.num_processes, "mixed_precision": acc.mixed_precision}
    if is_deepspeed(acc):
        plugins = acc.state.deepspeed_plugins
        plugins = plugins if isinstance(plugins, dict) else {"train": plugins}
        info["zero_stage"] = 2
        info["offload"] = dict(getattr(acc, "phase_offload", {}))
        info["bf16"] = any(p.deepspeed_config.get("bf16", {}).get("enabled") is True for p in plugins.values())
        info["deepspeed_configs"] = {k: p.deepspeed_config for k, p in plugins.items()}
    return info
