"""Paths that only run on CUDA in the paper's setting, tested where they run: bf16 autocast in the
training loop's own step, bf16 weights, accumulate_on_cpu in the warm-up, CUDA memory in Table 1,
and the GPU check's exactness checks on the device.

Marked `cuda` (`pytest -m cuda`; benchmarks.gpu_check runs them) and skipped without a CUDA
device. SMT_CUDA_TEST_DEVICE=cpu runs the same tests on the CPU (autocast there is CPU bf16
autocast), which checks their logic on a machine without a GPU; it is not a CUDA run.
"""
import copy
import os

import pytest
import torch
from torch import nn

import smt
import conftest
from harness.run_config import RunConfig, TrainConfig
from harness.step import TrainStep, make_optimizer

DEV = os.environ.get("SMT_CUDA_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEV.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="needs a CUDA device (SMT_CUDA_TEST_DEVICE=cpu runs the logic on the CPU)")]
BF16_TOL = 3e-2      # max |error| / max(|reference|, 1), as benchmarks.gpu_check.TOL
L = 16


def _model(dtype=torch.float32, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).to(device=DEV, dtype=dtype).train()


def _batch(seed=0, b=2, t=16):
    ids = torch.randint(0, 128, (b, t), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids.to(DEV), "attention_mask": torch.ones_like(ids).to(DEV), "labels": ids.clone().to(DEV)}


def _accelerator(mixed_precision):
    from benchmarks.gpu_check import fresh_accelerator   # earlier tests' Accelerators may have another precision

    run = conftest.run_cfg({"name": "smt"}, model={"name": "tiny", "path": "-", "device": DEV})
    return fresh_accelerator(run, {"dtype": "bfloat16" if mixed_precision == "bf16" else "float32"})


TRAIN = {"grad_accum": 1, "max_grad_norm": 1.0, "micro_batch_size": 2, "warmup_steps": 0,
         "lr_scheduler": "constant", "weight_decay": 0.0, "adam_betas": [0.9, 0.999]}


def _err(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / max(float(b.abs().max()), 1.0))


def test_bf16_autocast_in_the_loop_step_matches_dense_blocks():
    """TrainStep under the accelerator's bf16 autocast (the paper's mixed_precision: bf16): SMT's loss
    and block gradients equal a dense model's (q/k/v trainable) at those blocks within bf16 tolerance,
    the linears really ran in bf16, and the fp32 blocks get fp32 gradients."""
    base = _model()
    dense, sparse = copy.deepcopy(base), copy.deepcopy(base)
    plan = smt.random_plan(sparse, smt.SMTConfig(block_size=L, budget=12,
                                                          target_modules=["q_proj", "k_proj", "v_proj"]), seed=0)
    smt.apply_smt(sparse, plan)
    for n, p in dense.named_parameters():
        p.requires_grad_(any(k in n for k in ("q_proj", "k_proj", "v_proj")))
    seen, grads, losses = {}, {}, {}
    for name, model in (("dense", dense), ("smt", sparse)):
        acc = _accelerator("bf16")
        prepared = acc.prepare(model)
        q = acc.unwrap_model(prepared).model.layers[0].self_attn.q_proj
        q.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))

        def grab(m, name=name):
            grads[name] = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}
        step = TrainStep(TrainConfig.from_json({**TRAIN, "max_grad_norm": 0.0}), prepared, None, None, acc, after_backward=grab)
        losses[name] = step(iter([_batch()]), 0).loss
    assert seen == {"dense": torch.bfloat16, "smt": torch.bfloat16}          # autocast was on in the loop
    assert abs(losses["smt"] - losses["dense"]) <= BF16_TOL * max(abs(losses["dense"]), 1.0)
    n_checked = 0
    for mod_name, blocks in plan.blocks.items():
        if not blocks:
            continue
        g = grads["smt"][f"{mod_name}.blocks"]
        assert g.dtype == torch.float32
        W = grads["dense"][f"{mod_name}.weight"]
        for i, (r, c) in enumerate(blocks):
            assert _err(g[i], W[r * L:(r + 1) * L, c * L:(c + 1) * L]) <= BF16_TOL, (mod_name, r, c)
            n_checked += 1
    assert n_checked == 12


def test_bf16_weights_loop_steps_keep_frozen_weights_bit_identical():
    """bf16 weights (config/paper.yaml's dtype), three TrainSteps with the loop's AdamW: every weight
    outside the blocks bit-identical, the blocks changed and written into the weight."""
    model = _model(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = smt.random_plan(model, smt.SMTConfig(block_size=L, budget=12,
                                                         target_modules=["q_proj", "k_proj", "v_proj"]), seed=1)
    smt.apply_smt(model, plan)
    opt, sched = make_optimizer(model, RunConfig.from_json(conftest.run_cfg({"name": "smt", "lr": 1e-2}, train=TRAIN)), 10, 0)
    acc = _accelerator("bf16")
    prepared, opt = acc.prepare(model, opt)
    step = TrainStep(TrainConfig.from_json(TRAIN), prepared, opt, sched, acc)
    for i in range(3):
        step(iter([_batch(i)]), i)
    for m in smt.sparse_modules(model).values():
        m.sync_()
    after = {n: p.detach() for n, p in model.named_parameters()}
    mask_of = {}
    for mod_name, blocks in plan.blocks.items():
        out_f, in_f = plan.shapes[mod_name]
        mask = torch.zeros(out_f, in_f, dtype=torch.bool, device=DEV)
        for r, c in blocks:
            mask[r * L:(r + 1) * L, c * L:(c + 1) * L] = True
        mask_of[f"{mod_name}.weight"] = mask
    for n, w0 in before.items():
        w = after[n]
        mask = mask_of.get(n)
        if mask is None:
            assert torch.equal(w, w0), n
        else:
            assert torch.equal(w[~mask], w0[~mask]), n
            if mask.any():
                assert not torch.equal(w[mask], w0[mask]), n


def test_accumulate_on_cpu_in_the_loop_matches_on_device_sums():
    """SMT's warm-up through TrainStep under bf16 autocast (after_backward = accumulate, grad_only): a
    scorer keeping its fp32 sums on the CPU and one keeping them on the device, on the same model and
    so the same gradients, hold bit-identical sums and select the same blocks."""
    model = _model()
    for p in model.parameters():
        p.requires_grad_(True)
    scorers = {on_cpu: smt.GradientScorer(model, smt.SMTConfig(
        block_size=L, budget=10, target_modules=["q_proj", "k_proj", "v_proj"], warmup_mode="grad_only",
        accumulate_on_cpu=on_cpu)) for on_cpu in (False, True)}
    acc = _accelerator("bf16")
    prepared = acc.prepare(model)
    step = TrainStep(TrainConfig.from_json({**TRAIN, "max_grad_norm": 0.0}), prepared, None, None, acc,
                     after_backward=lambda m: [s.accumulate() for s in scorers.values()])
    for i in range(3):
        step(iter([_batch(i)]), i)
    assert {t.device.type for t in scorers[True]._acc.values()} == {"cpu"}
    assert {t.device.type for t in scorers[False]._acc.values()} == {torch.device(DEV).type}
    assert scorers[True].steps == scorers[False].steps == 3
    for n, t in scorers[False]._acc.items():
        assert torch.equal(scorers[True]._acc[n], t.cpu()), n
        assert t.abs().sum() > 0, n
    assert scorers[True].select().blocks == scorers[False].select().blocks


def test_gpu_check_exactness_checks_pass_on_the_device():
    from benchmarks import gpu_check

    checks = gpu_check.exactness_checks(DEV, L)
    assert checks and all(c["passed"] for c in checks), [c for c in checks if not c["passed"]]


def test_table1_profile_reads_cuda_memory(tmp_path):
    """harness.profile on the device: every arm's torch.cuda.max_memory_allocated is read (on the
    CPU override: None), and SMT's own peak is below full FT's."""
    import harness.profile as prof
    from conftest import make_tiny_env, tiny_run_cfg

    env = make_tiny_env(tmp_path / "env", [(a, b) for a in range(4) for b in range(4)])
    cfgs = {}
    for m in ("full_ft", "smt", "lora"):
        cfg = tiny_run_cfg(env, m, 1e-3)
        cfg["model"]["device"] = DEV
        cfgs[m] = cfg
    out = prof.profile_table1(cfgs, {"steps": 2, "warmup_steps": 1, "batch_size": 2, "seq_len": 300},
                              tmp_path / "t1.json")
    for name, arm in out["arms"].items():
        if DEV.startswith("cuda"):
            assert arm["cuda"]["max_allocated_bytes"] > 0 and arm["cuda"]["arm_peak_bytes"] > 0, name
        else:
            assert arm["cuda"] is None
    if DEV.startswith("cuda"):
        assert out["arms"]["smt"]["cuda"]["arm_peak_bytes"] < out["arms"]["full_ft"]["cuda"]["arm_peak_bytes"]
