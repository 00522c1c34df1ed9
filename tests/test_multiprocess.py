"""Two processes train like one: DDP and DeepSpeed ZeRO-2 on this CPU (gloo), every method.

One reference run per method in this process (1 process, grad_accum 4, micro-batch 2: global
batch 8), then the same runs under 2 processes with grad_accum 2 (the same global batch, with
gradient accumulation): once under plain DDP (`torchrun`, the ddp launcher) and once under
accelerate + DeepSpeed ZeRO-2 (`accelerate launch --use_deepspeed`, the deepspeed launcher; full
FT and SMT's full-FT warm-up with the offload config). Checked per method: the loss curve matches
the reference within LOSS_TOL; SMT selects the same blocks on every rank and as one process; the
saved delta loads and gives the same logits on a fixed input within LOGIT_TOL. Plus a bf16 path
(DeepSpeed bf16, SMT and LoRA) that must run and agree across ranks.

Each launch runs all of its runs in one pair of processes (this file is its own worker:
`python -m torch.distributed.run ... tests/test_multiprocess.py --worker spec.json`).
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from harness.run_config import as_run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOSS_TOL = 2e-4      # absolute, per logged step (fp32; reduction order differs across processes)
LOGIT_TOL = 1e-2     # absolute, max over a fixed batch's logits of the reloaded delta (measured <= 2e-3: DoRA)
BF16_LOSS_TOL = 0.1  # bf16 runs against the fp32 reference: a sanity bound, not an identity
STEPS, SMT_WARMUP = 5, 2
LR = {"full_ft": 3e-3}


def _methods():
    """Every registered method (MP_TEST_METHODS=a,b narrows it when debugging)."""
    import baselines
    only = [m for m in os.environ.get("MP_TEST_METHODS", "").split(",") if m]
    return [m for m in baselines.available() if baselines.get_method(m).trains and (not only or m in only)]


def _cases():
    """Every method, plus SMT with a gradient-only warm-up (no optimizer, hence no ZeRO engine, in the warm-up)."""
    return _methods() + (["smt_grad_only"] if "smt" in _methods() else [])


def case_cfg(env, case, accum):
    if case == "smt_grad_only":
        cfg = make_cfg(env, "smt", accum)
        cfg["method"]["warmup_mode"] = "grad_only"
        return cfg
    return make_cfg(env, case, accum)


def make_cfg(env, name, accum, micro=2):
    import baselines
    from conftest import tiny_run_cfg
    settings = getattr(baselines.get_method(name), "Settings", None)
    fields = {f.name for f in dataclasses.fields(settings)} if dataclasses.is_dataclass(settings) else set()
    extra = {"dropout": 0.0} if "dropout" in fields else {}  # dropout draws different random numbers per process
    return tiny_run_cfg(env, name, LR.get(name, 5e-2), smt_warmup=SMT_WARMUP, method=extra,
                        deviations=["tiny test run"], max_steps=STEPS, micro_batch_size=micro, grad_accum=accum,
                        warmup_steps=1)


def _capture_smt():
    """Patch SMT.apply to keep the selected blocks and the scorer's summed warm-up gradients."""
    import baselines
    smt_cls = baselines.get_method("smt")
    real_apply, seen = smt_cls.apply, {}

    def apply(self, model, out_dir=None):
        scorer = self.scorer
        info = real_apply(self, model, out_dir)
        seen["plan"] = json.loads(json.dumps({k: v for k, v in self.plan.blocks.items() if v}))
        if scorer is not None:
            seen["sums"] = {k: v.clone() for k, v in scorer._acc.items()}
        return info

    smt_cls.apply = apply
    return seen


# ------------------------------------------------------------------------------------------ worker
def worker(spec_path: str) -> None:
    """Run every case of the spec in this process (one rank); write out_dir/rank<r>.json."""
    import baselines
    from harness.train import train

    from accelerate import Accelerator
    seen = _capture_smt()
    real_prepare_ds, offloads = Accelerator._prepare_deepspeed, []

    def prepare_ds(self, *args):          # which engines DeepSpeed really built: optimizer offloaded or not
        out = real_prepare_ds(self, *args)
        if self.deepspeed_engine_wrapped is not None and any(isinstance(a, torch.nn.Module) for a in args):
            offloads.append(bool(getattr(self.deepspeed_engine_wrapped.engine.optimizer, "cpu_offload", False)))
        return out

    Accelerator._prepare_deepspeed = prepare_ds
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", 0))
    for case in json.loads(pathlib.Path(spec_path).read_text()):
        os.environ["ACCELERATE_MIXED_PRECISION"] = case.get("mixed_precision", "no")
        seen.clear()
        offloads.clear()
        out = pathlib.Path(case["out_dir"])
        if case.get("interrupt_at"):      # stop every rank right after the complete checkpoint of that step
            import harness.checkpoint as checkpoint_mod
            real_fault = checkpoint_mod.fault_point

            def fault_then_stop(point, step, _at=case["interrupt_at"]):
                real_fault(point, step)
                if point == "saved" and step == _at:  # on every rank, after the barrier
                    raise KeyboardInterrupt(f"test: stopped after the checkpoint of step {step}")

            checkpoint_mod.fault_point = fault_then_stop
            try:
                train(case["run_cfg"], out)
                raise AssertionError("the interrupted run did not stop")
            except KeyboardInterrupt:
                pass
            finally:
                checkpoint_mod.fault_point = real_fault
        rec = train(case["run_cfg"], out)
        from accelerate import PartialState
        info = rec["train_info"]
        if "sums" in seen:
            torch.save(seen["sums"], out / f"scores_rank{rank}.pt")
        (out / f"rank{rank}.json").write_text(json.dumps({
            "loss_curve": info["loss_curve"], "plan": seen.get("plan"), "num_processes": info["num_processes"],
            "engine": info.get("engine"), "world": PartialState().num_processes, "offloads": list(offloads),
            "resumed_from_step": info.get("resumed_from_step")}))


def _launch(cmd, spec, tmp, extra_env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu", **extra_env}
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    path = tmp / "spec.json"
    path.write_text(json.dumps(spec))
    res = subprocess.run(cmd + [str(ROOT / "tests" / "test_multiprocess.py"), "--worker", str(path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return res


# ------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def env(tiny_env):
    return tiny_env


@pytest.fixture(scope="module")
def reference(env):
    """Every method in one process: grad_accum 4 x micro-batch 2."""
    import baselines
    from harness.train import train

    smt_cls = baselines.get_method("smt")
    real_apply = smt_cls.apply
    out = {}
    torch.set_num_threads(1)
    try:
        seen = _capture_smt()
        for name in _cases():
            seen.clear()
            d = env / "ref" / name
            rec = train(case_cfg(env, name, accum=4), d)
            out[name] = {"loss_curve": rec["train_info"]["loss_curve"], "plan": seen.get("plan"),
                         "sums": seen.get("sums"), "dir": d}
    finally:
        smt_cls.apply = real_apply
    return out


def _run_two(env, engine):
    """All methods under 2 processes x grad_accum 2 with the given launcher; {name: [rank0, rank1]}."""
    from harness import launch
    tmp = env / engine
    tmp.mkdir(exist_ok=True)
    cases = [{"run_cfg": case_cfg(env, n, accum=2), "out_dir": str(tmp / n)} for n in _cases()]
    if engine == "deepspeed":
        for n in [m for m in ("smt", "lora") if m in _methods()]:
            cases.append({"run_cfg": make_cfg(env, n, accum=2), "out_dir": str(tmp / f"{n}_bf16"),
                          "mixed_precision": "bf16"})
        for n in [m for m in ("lora",) if m in _methods()]:   # stopped after step 2's checkpoint, resumed
            cfg = make_cfg(env, n, accum=2)
            cfg["train"]["checkpoint_every"] = 2
            cases.append({"run_cfg": cfg, "out_dir": str(tmp / f"{n}_resume"), "interrupt_at": 2})
    prefix = launch.launch_prefix({"launcher": engine, "num_processes": 2, "main_process_port": 29517})
    cmd = prefix.split()
    cmd = [sys.executable, "-m", "torch.distributed.run"] + cmd[cmd.index("torchrun") + 1:] \
        if engine == "ddp" else [sys.executable, "-m", "accelerate.commands.launch"] + cmd[2:]
    _launch(cmd, cases, tmp, {})
    out = {}
    for c in cases:
        d = pathlib.Path(c["out_dir"])
        out[d.name] = [json.loads((d / f"rank{r}.json").read_text()) for r in (0, 1)] + [d]
    return out


@pytest.fixture(scope="module")
def ddp(env):
    return _run_two(env, "ddp")


@pytest.fixture(scope="module")
def deepspeed_runs(env):
    return _run_two(env, "deepspeed")


def _logits(env, name, delta_dir):
    import baselines
    from harness.models import load_model
    from harness.prompts import tokenize_example
    from harness.train_data import collate
    model, tok = load_model(env / "model", "float32", "cpu")
    cfg = case_cfg(env, name, accum=1)
    method = baselines.get_method(cfg["method"]["name"])(as_run_config(cfg))
    model = method.merge(method.load(model, delta_dir / "delta"))
    model.eval()
    recs = json.loads((env / "train.json").read_text())[:3]
    batch = collate(tok.pad_token_id)([tokenize_example(tok, r, 320, False, True) for r in recs])
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _compare(env, name, ref, two, measured):
    r0, r1, d = two
    assert r0["world"] == 2 and r1["world"] == 2, "the worker did not run in 2 processes"
    assert r0["loss_curve"] == r1["loss_curve"], f"{name}: ranks log different loss curves"
    a = [p["loss"] for p in ref["loss_curve"]]
    b = [p["loss"] for p in r0["loss_curve"]]
    assert len(a) == len(b) == STEPS
    diff = max(abs(x - y) for x, y in zip(a, b))
    logit_diff = (_logits(env, name, ref["dir"]) - _logits(env, name, d)).abs().max().item()
    measured[name] = {"final_loss_1proc": a[-1], "final_loss_2proc": b[-1], "max_loss_diff": diff,
                      "max_logit_diff": logit_diff}
    assert diff <= LOSS_TOL, f"{name}: 2 processes {b} vs 1 process {a} (max diff {diff:.2e} > {LOSS_TOL})"
    assert logit_diff <= LOGIT_TOL, f"{name}: reloaded deltas give logits {logit_diff:.2e} apart"
    if name.startswith("smt"):
        s0, s1 = (torch.load(d / f"scores_rank{r}.pt") for r in (0, 1))
        for k, ref_sum in ref["sums"].items():   # every rank holds the full gradient summed over the global batch
            assert torch.equal(s0[k], s1[k]), f"SMT: ranks hold different warm-up gradient sums for {k}"
            torch.testing.assert_close(s0[k], ref_sum, rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"SMT: 2-process warm-up gradient sum of {k} != 1 process: {m}")
        assert r0["plan"] == r1["plan"], "SMT: the ranks selected different blocks"
        assert r0["plan"] == ref["plan"], \
            "SMT: 2 processes selected other blocks than 1 process"
        measured[name]["plan_identical"] = True


@pytest.mark.parametrize("name", _cases())
def test_ddp_two_processes_match_one(env, reference, ddp, name, record_property):
    measured = {}
    _compare(env, name, reference[name], ddp[name], measured)
    record_property("ddp", measured[name])
    print("ddp", name, json.dumps(measured[name]))


@pytest.mark.parametrize("name", _cases())
def test_deepspeed_zero2_two_processes_match_one(env, reference, deepspeed_runs, name, record_property):
    # ZeRO-Offload exactly where the paper trains every weight: full FT, SMT's full-FT warm-up
    expect = {"full_ft": [True], "smt": [True, False], "smt_grad_only": [False]}.get(name, [False])
    assert deepspeed_runs[name][0]["offloads"] == expect, f"{name}: engines built with offload " \
        f"{deepspeed_runs[name][0]['offloads']}, expected {expect} (one per phase)"
    measured = {}
    _compare(env, name, reference[name], deepspeed_runs[name], measured)
    print("deepspeed", name, json.dumps(measured[name]))


@pytest.mark.parametrize("name", ["smt", "lora"])
def test_deepspeed_bf16_runs_and_ranks_agree(reference, deepspeed_runs, name):
    r0, r1, d = deepspeed_runs[f"{name}_bf16"]
    assert r0["loss_curve"] == r1["loss_curve"] and r0["plan"] == r1["plan"]
    a = [p["loss"] for p in reference[name]["loss_curve"]]
    b = [p["loss"] for p in r0["loss_curve"]]
    assert all(abs(x - y) <= BF16_LOSS_TOL for x, y in zip(a, b)), (a, b)
    diff = max(abs(x - y) for x, y in zip(a, b))
    print("deepspeed bf16", name, json.dumps({"final_loss_fp32_1proc": a[-1], "final_loss_bf16_2proc": b[-1],
                                              "max_loss_diff": diff}))
    assert diff > LOSS_TOL, f"the bf16 run is within the fp32 tolerance ({diff:.1e}): bf16 was not used"
    assert r0["engine"]["engine"] == "deepspeed" and r0["engine"]["bf16"] is True


def test_deepspeed_resume_matches_uninterrupted(deepspeed_runs):
    """A ZeRO-2 run stopped after a checkpoint resumes (every rank's optimizer partition restored)
    and ends as the uninterrupted run."""
    r0, r1, d = deepspeed_runs["lora_resume"]
    assert r0["resumed_from_step"] == 2 and (d / "attempts.jsonl").is_file()
    a = [p["loss"] for p in deepspeed_runs["lora"][0]["loss_curve"]]
    b = [p["loss"] for p in r0["loss_curve"]]
    assert len(b) == STEPS and max(abs(x - y) for x, y in zip(a, b)) <= LOSS_TOL, (a, b)


def test_scorer_hooks_match_grad_sums_bit_for_bit_with_accumulation():
    """Hooks (what ZeRO-2 needs) give exactly the sums of .grad after each step (fp32)."""
    import smt
    torch.manual_seed(0)
    lin = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(32, 32, bias=False)})
    cfg = smt.SMTConfig(block_size=8, budget=3, target_modules=["q_proj"], warmup_mode="grad_only")
    scorer = smt.GradientScorer(lin, cfg)
    ref = torch.zeros(32, 32)
    for _ in range(3):
        for _ in range(2):        # two micro-batches accumulate in .grad
            (lin["q_proj"](torch.randn(4, 32)).pow(2).mean() / 2).backward()
        ref += lin["q_proj"].weight.grad
        scorer.accumulate()
        lin.zero_grad(set_to_none=True)
    assert torch.equal(scorer._acc["q_proj"], ref)


def test_scorer_reads_no_grad_under_zero2_style_backward():
    """A backward whose .grad is taken away at once (ZeRO-2) is still scored."""
    import smt
    torch.manual_seed(0)
    lin = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(16, 16, bias=False)})
    w = lin["q_proj"].weight
    w.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))   # what ZeRO-2 does
    scorer = smt.GradientScorer(lin, smt.SMTConfig(block_size=8, budget=1, target_modules=["q_proj"]))
    x = torch.randn(4, 16)
    lin["q_proj"](x).sum().backward()
    assert w.grad is None
    scorer.accumulate()
    torch.testing.assert_close(scorer._acc["q_proj"], torch.ones(16, 1) @ x.sum(0, keepdim=True))


def test_launch_commands_and_settings():
    from harness import launch
    assert launch.launch_prefix({}) == "python"
    assert launch.launch_prefix({"launcher": "ddp", "num_processes": 2}).endswith(
        "torchrun --standalone --nnodes 1 --nproc_per_node 2")
    ds = launch.launch_prefix({"launcher": "deepspeed", "gpus": 4})
    assert "--use_deepspeed --zero_stage 2 --mixed_precision bf16" in ds and "--num_processes 4" in ds
    with pytest.raises(ValueError, match="execution.launcher 'mpi'"):
        launch.launcher_settings({"launcher": "mpi"})
    with pytest.raises(ValueError, match="launcher is 'python'"):
        launch.launcher_settings({"launcher": "python", "num_processes": 2})
    cfg = make_cfg(pathlib.Path("/nowhere"), "full_ft", accum=3)
    full = launch.deepspeed_config(cfg, "train", world_size=4)
    assert "offload_optimizer" in full["zero_optimization"]
    assert full["train_batch_size"] == 2 * 3 * 4 and full["gradient_accumulation_steps"] == 3
    smt_cfg = make_cfg(pathlib.Path("/nowhere"), "smt", accum=1)
    assert "offload_optimizer" in launch.deepspeed_config(smt_cfg, "warmup")["zero_optimization"]
    assert "offload_optimizer" not in launch.deepspeed_config(smt_cfg, "train")["zero_optimization"]
    assert "offload_optimizer" not in launch.deepspeed_config(smt_cfg, "warmup",
                                                              warmup_mode="grad_only")["zero_optimization"]
    assert not any(v == "auto" for v in json.dumps(full).split('"'))


if __name__ == "__main__" and "--worker" in sys.argv:
    sys.path.insert(0, str(ROOT))
    worker(sys.argv[sys.argv.index("--worker") + 1])
