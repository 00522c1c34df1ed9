"""Method hyper-parameters reach what trains (peft config, ranks), SMT reuses a saved plan, and a
saved delta reproduces the trained model (SMT: including what its full-FT warm-up changed)."""
import copy
import json
import shutil

import pytest
import torch

import baselines
import smt
from harness.models import load_model, prepare_model
from harness.train import train
from conftest import parity_records
from harness.run_config import as_run_config

torch.set_num_threads(1)
RECORDS = parity_records([(1, 2), (2, 2), (3, 5), (4, 1)])
QKV = ["q_proj", "k_proj", "v_proj"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("bite_methods")
    shutil.copytree(tiny_model_dir, root / "model")
    (root / "train.json").write_text(json.dumps(RECORDS))
    return root


def cfg(env, name, steps=3, targets=QKV, **method):
    m = {"name": name, "lr": 0.02, **method}
    return {"run_id": f"bite/{name}", "model": {"name": "tiny", "path": str(env / "model"), "dtype": "float32",
                                                "device": "cpu"},
            "dataset": {"name": "toy", "path": str(env / "train.json")}, "method": m, "budget": 0.05,
            "placement": {"name": "p", "target_modules": list(targets), "quotas": None}, "seed": 0,
            "train": {"max_steps": steps, "epochs": None, "micro_batch_size": 2, "grad_accum": 1,
                      "lr_scheduler": "linear", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                      "cutoff_len": 320, "train_on_inputs": False, "add_eos_token": True,
                      "checkpoint_every": None, "log_every": 1},
            "deviations": []}


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_lora_settings_reach_peft(env, tmp_path, name):
    targets = ["q_proj", "v_proj", "up_proj"]
    rec = train(cfg(env, name, targets=targets, alpha_ratio=3.0, dropout=0.2), tmp_path)
    peft_cfg = json.loads((tmp_path / "delta" / "adapter_config.json").read_text())
    r = peft_cfg["r"]
    assert peft_cfg["lora_alpha"] == pytest.approx(3.0 * r)
    assert peft_cfg["lora_dropout"] == pytest.approx(0.2)
    assert sorted(peft_cfg["target_modules"]) == sorted(targets)
    assert bool(peft_cfg.get("use_dora")) == (name == "dora")
    info = rec["train_info"]
    # the parameters that trained are the adapters of that rank on those modules
    model, _ = load_model(env / "model", "float32", "cpu")
    linears = [m for n, m in model.named_modules() if n.split(".")[-1] in targets]
    per_rank = sum(m.in_features + m.out_features for m in linears)
    magnitudes = sum(m.out_features for m in linears) if name == "dora" else 0
    assert info["trainable_params"] == r * per_rank + magnitudes
    assert rec["run_info"]["budget_reached"] == pytest.approx(info["trainable_params"] / info["total_params"])


def test_explicit_rank_wins_over_the_budget(env, tmp_path):
    rec = train(cfg(env, "lora", rank=3), tmp_path)
    assert json.loads((tmp_path / "delta" / "adapter_config.json").read_text())["r"] == 3
    model, _ = load_model(env / "model", "float32", "cpu")
    per_rank = sum(m.in_features + m.out_features for n, m in model.named_modules() if n.split(".")[-1] in QKV)
    assert rec["train_info"]["trainable_params"] == 3 * per_rank


def _hand_plan(env):
    """One block the scorer would not pick on its own: layer 1's k_proj, block (1, 3)."""
    model, _ = load_model(env / "model", "float32", "cpu")
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in QKV}
    blocks = {"model.layers.1.self_attn.k_proj": [(1, 3)]}
    return smt.SelectionPlan(16, shapes, blocks, smt.count_parameters(model), {"budget": 1, "hand": True})


def test_smt_reuses_a_saved_plan_without_warmup(env, tmp_path):
    plan = _hand_plan(env)
    plan.to_json(tmp_path / "given.json")
    rec = train(cfg(env, "smt", steps=3, block_size=16, warmup_steps=2, warmup_mode="full_ft",
                    plan_path=str(tmp_path / "given.json")), tmp_path / "run")
    curve = rec["train_info"]["loss_curve"]
    assert [c["step"] for c in curve] == [1, 2, 3] and not any(c.get("phase") == "warmup" for c in curve)
    used = smt.SelectionPlan.from_json(tmp_path / "run" / "plan.json")
    assert used.blocks == plan.blocks
    assert rec["train_info"]["trainable_params"] == 16 * 16
    # no warm-up: outside its one block, the delta's model is the base model bit for bit
    base, _ = load_model(env / "model", "float32", "cpu")
    run_cfg = rec["run_info"]["config"]
    method = baselines.get_method("smt")(as_run_config(run_cfg))
    merged = method.merge(method.load(load_model(env / "model", "float32", "cpu")[0], tmp_path / "run" / "delta"))
    b, m = base.state_dict(), merged.state_dict()
    changed = {k for k in b if not torch.equal(b[k], m[k])}
    assert changed == {"model.layers.1.self_attn.k_proj.weight"}
    diff = (b["model.layers.1.self_attn.k_proj.weight"] != m["model.layers.1.self_attn.k_proj.weight"])
    assert diff[16:32, 48:64].any() and not diff[:16].any() and not diff[:, :48].any()


@pytest.mark.parametrize("mode", ["full_ft", "grad_only"])
def test_smt_delta_reproduces_the_trained_model(env, tmp_path, monkeypatch, mode):
    cls, seen = baselines.get_method("smt"), {}
    real_save = cls.save

    def capture(self, model, out_dir):
        seen["state"] = {k: v.detach().clone() for k, v in smt.merge_smt(copy.deepcopy(model)).state_dict().items()}
        return real_save(self, model, out_dir)

    monkeypatch.setattr(cls, "save", capture)
    run_cfg = cfg(env, "smt", steps=4, block_size=16, warmup_steps=2, warmup_mode=mode)
    train(run_cfg, tmp_path)
    method = baselines.get_method("smt")(as_run_config(run_cfg))
    merged = method.merge(method.load(load_model(env / "model", "float32", "cpu")[0], tmp_path / "delta"))
    got = merged.state_dict()
    for k, v in seen["state"].items():
        assert torch.equal(got[k], v), k
