"""Table 1 as a measurement: one side-by-side job, round-robin, the frozen floor, memory accounted."""
import json
import statistics

import pytest
import torch
from torch import nn

import harness.profile as prof
from conftest import make_tiny_env, tiny_run_cfg

torch.set_num_threads(1)
METHODS = ["full_ft", "smt", "lora", "dora"]
STEPS, WARM = 3, 1


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory, tiny_model_dir):
    return make_tiny_env(tmp_path_factory.mktemp("env"), [(a, b) for a in range(4) for b in range(4)], tiny_model_dir)


def run_cfg(env, name):
    return tiny_run_cfg(env, name, 1e-3)


@pytest.fixture(scope="module")
def profile(tiny_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "table1.json"
    prof.profile_table1({m: run_cfg(tiny_env, m) for m in METHODS},
                        {"steps": STEPS, "warmup_steps": WARM, "batch_size": 2, "seq_len": 300}, out)
    return json.loads(out.read_text())


def test_json_has_every_arm_with_timed_steps(profile):
    assert profile["format"] == prof.FORMAT and profile["lm_head"] == "label positions"  # the loop's head (H1)
    assert profile["order"] == [prof.FLOOR] + METHODS and set(profile["arms"]) == set(profile["order"])
    for name, arm in profile["arms"].items():
        assert len(arm["step_seconds"]) == STEPS, name
        assert all(t > 0 for t in arm["step_seconds"])
        s = arm["step"]
        assert s["q1"] <= s["median"] <= s["q3"] and s["iqr"] == pytest.approx(s["q3"] - s["q1"])
        assert arm["tokens_per_s"]["median"] > 0 and arm["memory"]["param_bytes"] > 0
    assert profile["arms"]["floor"]["ratio_to_floor"] == 1.0
    assert profile["arms"]["full_ft"]["speedup_vs_full_ft"] == 1.0
    # ratios are paired per round (same batch, same moment), not ratios of medians
    arms, fl = profile["arms"], profile["arms"]["floor"]["step_seconds"]
    for name in METHODS:
        ts, full = arms[name]["step_seconds"], arms["full_ft"]["step_seconds"]
        assert arms[name]["ratio_to_floor"] == pytest.approx(statistics.median([a / b for a, b in zip(ts, fl)]))
        assert arms[name]["speedup_vs_full_ft"] == pytest.approx(statistics.median([f / t for f, t in zip(full, ts)]))
    assert profile["arms"]["smt"]["warmup_seconds"] > 0 and profile["arms"]["lora"]["warmup_seconds"] is None
    # every batch is exactly batch_size x seq_len positions
    assert profile["batches"]["n"] == STEPS + WARM and set(profile["batches"]["positions"]) == {600}


def test_schedule_is_round_robin_on_shared_rounds(profile):
    names, sched = profile["order"], profile["schedule"]
    assert len(sched) == len(names) * (STEPS + WARM)
    for rnd in range(STEPS + WARM):
        this = [s["arm"] for s in sched if s["round"] == rnd]
        assert this == names[rnd % len(names):] + names[:rnd % len(names)]  # each once, start rotating
        assert all(s["timed"] == (rnd >= WARM) for s in sched if s["round"] == rnd)
    assert [s["round"] for s in sched] == sorted(s["round"] for s in sched)  # rounds are not mixed


def test_memory_accounting_per_method(profile):
    arms = profile["arms"]
    n = arms["full_ft"]["total_params"]
    full, floor = arms["full_ft"]["memory"], arms["floor"]["memory"]
    assert full["grad_bytes"] == full["trainable_param_bytes"] == full["param_bytes"]
    assert full["optimizer_bytes"] >= 2 * full["param_bytes"]                 # AdamW: exp_avg + exp_avg_sq
    assert floor["grad_bytes"] == floor["optimizer_bytes"] == floor["trainable_param_bytes"] == 0
    for name in ("smt", "lora", "dora"):
        m = arms[name]["memory"]
        assert m["grad_bytes"] == m["trainable_param_bytes"] == 4 * arms[name]["trainable_params"] > 0
        assert 0 < m["trainable_param_bytes"] < 0.2 * n * 4
    # training weights must keep inputs the floor does not: every method saves more than the floor
    for name in METHODS:
        assert arms[name]["memory"]["saved_activation_bytes"] > floor["saved_activation_bytes"], name
    assert arms["smt"]["memory"]["saved_activation_bytes"] < arms["full_ft"]["memory"]["saved_activation_bytes"]


def test_saved_activations_frozen_linear_saves_no_input():
    lin = nn.Linear(32, 8)
    x = torch.randn(5, 32, requires_grad=True)
    params = list(lin.parameters())
    lin.weight.requires_grad_(False)
    lin.bias.requires_grad_(False)
    with prof.SavedActivations(exclude=params) as saved:
        lin(x).sum().backward()
    assert saved.activation_bytes == 0 and saved.param_bytes == 32 * 8 * 4   # only W (for dL/dx)
    lin.weight.requires_grad_(True)
    with prof.SavedActivations(exclude=params) as saved:
        lin(x).sum().backward()
    assert saved.activation_bytes == 5 * 32 * 4                               # x, for dL/dW
    other = nn.Linear(32, 8)
    with prof.SavedActivations(exclude=params + list(other.parameters())) as saved:
        (lin(x).sum() + other(x[1:]).sum()).backward()                            # x saved twice, x[1:] a view
    assert saved.activation_bytes == 5 * 32 * 4 and len(saved.saved) == 1     # one storage, counted once


def test_saved_activations_smt_only_needed_columns():
    from smt.layer import SparseLinear

    torch.manual_seed(0)
    # the case of tests/test_smt_layer.py: blocks in columns 0 and 5 of width 16 -> (2, 12, 16) saved
    sl = SparseLinear.from_linear(nn.Linear(128, 64), 16, [(0, 0), (1, 5), (3, 0)])
    x = torch.randn(3, 4, 128, requires_grad=True)
    with prof.SavedActivations(exclude=list(sl.parameters()) + list(sl.buffers())) as saved:
        sl(x).sum().backward()
    assert saved.activation_bytes == 2 * 12 * 16 * 4


def test_floor_does_not_update_weights(tiny_env):
    from accelerate import Accelerator

    from harness.run_config import RunConfig

    cfg = prof._profile_run(RunConfig.from_json(run_cfg(tiny_env, "full_ft")), {"batch_size": 2})
    arm = prof._floor_arm(cfg, Accelerator(cpu=True), torch.device("cpu"))
    before = {k: v.clone() for k, v in arm.model.state_dict().items()}
    tok = prof._tokenizer(cfg.model.path)
    from harness.train_data import load_examples
    batch = prof.fixed_batches(load_examples(cfg, tok), 1, 2, None, tok.pad_token_id)[0]
    seen = {}
    arm.model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.setdefault("emb", o))
    prof._account(arm, batch, 0)
    assert not any(p.requires_grad for p in arm.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in arm.model.state_dict().items())
    assert seen["emb"].requires_grad and seen["emb"].grad_fn is None     # backward reached the embedding output
    assert arm.memory["saved_activation_bytes"] > 0 and arm.memory["grad_bytes"] == 0


def test_table1_frame(profile):
    df = prof.table1_frame(profile)
    assert list(df.Method) == ["Frozen floor", "Full FT", "SMT", "LoRA", "DoRA"]
    row = df.set_index("Method")
    smt = profile["arms"]["smt"]
    assert row.loc["SMT", "Time/step (s)"] == f"{smt['step']['median']:.3f}"
    assert row.loc["SMT", "x Floor"] == f"{smt['ratio_to_floor']:.2f}"
    assert row.loc["SMT", "Speed-up vs Full FT"] == f"{smt['speedup_vs_full_ft']:.2f}x"
    assert row.loc["Full FT", "Params%"] == 100.0 and row.loc["Frozen floor", "Params%"] == 0.0
    assert row.loc["Frozen floor", "x Floor"] == "1.00" and row.loc["Full FT", "Speed-up vs Full FT"] == "1.00x"
    assert row.loc["Full FT", "Grads (MB)"] == round(profile["arms"]["full_ft"]["memory"]["grad_bytes"] / 2**20, 1)
    with pytest.raises(ValueError, match="not a Table 1 profile"):
        prof.table1_frame({"method": "smt"})


def test_bad_settings_fail_before_work(tiny_env, tmp_path):
    with pytest.raises(ValueError, match="table1.steps"):
        prof.profile_table1({"lora": run_cfg(tiny_env, "lora")}, {"steps": 1}, tmp_path / "x.json")
    with pytest.raises(ValueError, match="must not list 'floor'"):
        prof.profile_table1({"floor": run_cfg(tiny_env, "lora")}, {"steps": 3}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
