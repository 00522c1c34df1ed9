"""The random-blocks control (SMT setting selection: random): same budget, placement and quotas as
the gradient selection, no warm-up, blocks seeded by the run seed."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import baselines
import conftest
import smt
from harness.run_config import as_run_config
from harness import reports

torch.set_num_threads(1)
QUOTAS = {"mlp": {"modules": ["gate_proj", "up_proj", "down_proj"], "share": 0.25},
          "attn": {"modules": ["q_proj", "k_proj", "v_proj"], "share": 0.75}}


tiny_model = conftest.tiny_llama


def cfg(**kw):
    return smt.SMTConfig(**{"block_size": 16, "budget": 0.05, **kw})


def gradient_plan(model, c):
    scorer = smt.GradientScorer(model, c)
    batch = torch.randint(0, 260, (2, 12))
    model(input_ids=batch, labels=batch).loss.backward()
    scorer.accumulate()
    return scorer.select()


@pytest.mark.parametrize("quotas", [None, QUOTAS])
def test_random_plan_has_the_gradient_plans_budget_and_quotas(quotas):
    targets = ["q_proj", "k_proj", "v_proj"] + (["gate_proj", "up_proj", "down_proj"] if quotas else [])
    c = cfg(target_modules=targets, quotas=quotas)
    rand, grad = smt.random_plan(tiny_model(), c, seed=0), gradient_plan(tiny_model(), c)
    assert rand.n_blocks == grad.n_blocks == int(0.05 * rand.total_params // 256)
    assert rand.shapes == grad.shapes and rand.budget_reached == grad.budget_reached <= 0.05
    assert rand.meta["group_blocks"] == grad.meta["group_blocks"]
    if quotas:
        per_type = rand.summary()["per_type"]
        mlp = sum(per_type[t]["blocks"] for t in ("gate_proj", "up_proj", "down_proj"))
        assert mlp == rand.meta["group_blocks"]["mlp"] == smt.scoring.split_quota(rand.n_blocks, [0.25, 0.75])[0]
    assert rand.meta["selection"] == "random" and rand.meta["warmup_steps"] == 0


def test_random_plan_is_seeded():
    c = cfg()
    a, b, again = (smt.random_plan(tiny_model(), c, seed=s) for s in (0, 1, 0))
    assert a == again and a.blocks != b.blocks
    # spread over the modules, not the first ones only
    assert sum(1 for v in a.blocks.values() if v) > 1


def test_random_plan_rejects_what_the_scorer_rejects():
    with pytest.raises(ValueError, match="less than one"):
        smt.random_plan(tiny_model(), cfg(budget=1e-6), seed=0)
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        smt.random_plan(tiny_model(), cfg(target_modules=["nope"]), seed=0)


def test_smt_method_random_selection_has_no_warmup_and_uses_the_run_seed(tmp_path):
    def method(seed):
        return baselines.get_method("smt")(as_run_config(conftest.run_cfg(
            {"name": "smt", "variant": "smt_random", "lr": 1e-3, "block_size": 16, "selection": "random"},
            budget=0.05, seed=seed)))
    m0 = method(0)
    assert m0.warmup_steps == 0
    info = m0.apply(tiny_model(), tmp_path)
    assert info["plan_summary"]["n_blocks"] == int(0.05 * info["total_params"] // 256)
    assert (tmp_path / "plan.json").is_file()
    assert m0.plan.blocks == smt.random_plan(tiny_model(), m0.cfg, 0).blocks
    m1 = method(1)
    m1.apply(tiny_model())
    assert m1.plan.blocks != m0.plan.blocks
    assert not (tmp_path / "warmup_weights.pt").exists()


def test_random_variant_runs_through_the_config_and_the_training_loop(tmp_path):
    """config/test.yaml's smt_random entry, resolved like a Snakemake job, trains in the real loop."""
    import json

    from harness import config as hc
    from harness.models import prepare_model
    from harness.train import train

    prepare_model({"source": "tiny", "seed": 0}, tmp_path / "model")
    records = [{"instruction": f"Is {a} even? Answer format: true/false", "input": "",
                "output": f"the correct answer is {str(a % 2 == 0).lower()}", "answer": ""} for a in range(8)]
    (tmp_path / "train.json").write_text(json.dumps(records))
    cfg = reports.load_config(hc.REPO_ROOT / "config/test.yaml")
    run = hc.resolve_run(cfg, "tiny/commonsense/smt_random/b2.00/qkv/s0").to_json()
    assert run["method"]["name"] == "smt" and run["method"]["selection"] == "random"
    run["model"].update(path=str(tmp_path / "model"), device="cpu")
    run["dataset"]["path"] = str(tmp_path / "train.json")
    run["train"].update(max_steps=3, checkpoint_every=None)
    rec = train(run, tmp_path / "out")
    assert rec["run_info"]["status"] == "ok", rec["run_info"].get("error")
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["meta"]["selection"] == "random" and plan["meta"]["seed"] == 0
    assert rec["train_info"]["steps"] == 3 and not any(p.get("phase") == "warmup" for p in rec["train_info"]["loss_curve"])
    assert abs(rec["run_info"]["budget_reached"] - 0.02) < 0.02 * 0.35
