"""Budget -> rank arithmetic, budget reached, and the method registry."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import baselines
import conftest
from baselines.base import count_params
from baselines.lora import rank_for_budget
from harness.run_config import as_run_config

torch.set_num_threads(1)
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


tiny_model = conftest.tiny_llama


def run_cfg(name, budget, targets=("q_proj", "k_proj", "v_proj"), **method):
    return conftest.run_cfg({"name": name, "lr": 1e-3, **method}, budget=budget,
                            placement={"name": "p", "target_modules": list(targets), "quotas": None})


def test_rank_arithmetic_by_hand():
    model = tiny_model()
    total = count_params(model)
    # per layer: q 64+64, k 64+32, v 64+32, up 64+128, down 128+64 = 704; two layers
    per_rank, magnitudes = 2 * 704, 2 * (64 + 32 + 32 + 128 + 64)
    assert rank_for_budget(model, TARGETS, 8 * per_rank / total) == 8
    assert rank_for_budget(model, TARGETS, 8.4 * per_rank / total) == 8
    assert rank_for_budget(model, TARGETS, 8.6 * per_rank / total) == 9
    assert rank_for_budget(model, TARGETS, (8 * per_rank + magnitudes) / total, dora=True) == 8
    assert rank_for_budget(model, TARGETS, 1e-9) == 1
    with pytest.raises(ValueError, match="positive budget"):
        rank_for_budget(model, TARGETS, None)


@pytest.mark.parametrize("name,extra", [("lora", 0), ("dora", 2 * (64 + 32 + 32 + 128 + 64))])
def test_budget_reached_counts_trainable_params(name, extra):
    model = tiny_model()
    total = count_params(model)
    method = baselines.get_method(name)(as_run_config(run_cfg(name, 0.05, TARGETS)))
    info = method.apply(model)
    assert info["target_modules"] == TARGETS  # the placement decides where adapters go
    assert info["rank"] == rank_for_budget(tiny_model(), TARGETS, 0.05, dora=name == "dora")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == info["rank"] * 2 * 704 + extra == info["trainable_params"]
    assert info["total_params"] == total
    assert info["budget_reached"] == pytest.approx(trainable / total)
    assert abs(info["budget_reached"] - 0.05) < 2 * 704 / total  # within one rank step


def test_vera_budget_counts_scaling_vectors():
    from baselines.vera import vera_rank_for_budget
    model = tiny_model()
    total, outs = count_params(model), 2 * (64 + 32 + 32 + 128 + 64)   # lambda_b: one per output row
    assert vera_rank_for_budget(model, TARGETS, (100 * 10 + outs) / total) == 100  # lambda_d: r per linear
    info = baselines.get_method("vera")(as_run_config(run_cfg("vera", 0.05, TARGETS))).apply(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == info["rank"] * 10 + outs == info["trainable_params"]
    assert abs(info["budget_reached"] - 0.05) < 10 / total


def test_smt_budget_and_full_ft():
    model = tiny_model()
    total = count_params(model)
    method = baselines.get_method("smt")(as_run_config(run_cfg("smt", 0.05, block_size=16, warmup_steps=1)))
    method.begin_warmup(model)
    batch = torch.randint(0, 260, (2, 12))
    model(input_ids=batch, labels=batch).loss.backward()
    method.after_warmup_backward(model)
    info = method.apply(model)
    assert info["trainable_params"] == (0.05 * total // 256) * 256
    assert info["budget_reached"] <= 0.05 and info["plan_summary"]["n_blocks"] == 0.05 * total // 256
    full = baselines.get_method("full_ft")(as_run_config(run_cfg("full_ft", None))).apply(tiny_model())
    assert full["budget_reached"] == 1.0


def test_registry_and_unknown_method():
    assert {"full_ft", "lora", "dora", "smt"} <= set(baselines.available())
    with pytest.raises(KeyError, match="unknown method 'nope'.*available: .*lora"):
        baselines.get_method("nope")


def test_full_ft_delta_reloads_with_tied_embeddings(tmp_path):
    """SmolLM2 ties lm_head to embed_tokens: the saved model names the shared tensor once."""
    def tied():
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=128, vocab_size=260,
                                            tie_word_embeddings=True))
    model, method = tied(), baselines.get_method("full_ft")(as_run_config(run_cfg("full_ft", None)))
    method.apply(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    method.save(model, tmp_path)
    batch = torch.randint(0, 260, (2, 12))
    reloaded = method.load(tied(), tmp_path)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(reloaded(input_ids=batch).logits, model(input_ids=batch).logits)
