"""SMTConfig validation: every bad field raises a ValueError that names it."""
import pytest

import smt


def test_defaults_and_dict_round_trip():
    cfg = smt.SMTConfig()
    assert (cfg.block_size, cfg.strategy, cfg.warmup_mode) == (256, "mean_abs", "full_ft")
    assert cfg.target_modules == ["q_proj", "k_proj", "v_proj"]
    quotas = {"mlp": {"modules": ["up_proj"], "share": 0.25}, "attn": {"modules": ["q_proj"], "share": 0.75}}
    cfg = smt.SMTConfig(block_size=64, budget=12, target_modules="q_proj", quotas=quotas)
    assert cfg.target_modules == ["q_proj"]
    assert smt.SMTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kwargs,match", [
    ({"block_size": 0}, "block_size"),
    ({"block_size": 16.0}, "block_size"),
    ({"budget": 0.0}, r"\(0, 1\)"),
    ({"budget": -0.1}, r"\(0, 1\)"),
    ({"budget": 1.5}, "pass an int"),
    ({"budget": float("nan")}, "budget"),
    ({"budget": 0}, ">= 1"),
    ({"budget": True}, "budget"),
    ({"budget": "1%"}, "budget"),
    ({"target_modules": []}, "target_modules"),
    ({"target_modules": ["re:("]}, "invalid regex"),
    ({"strategy": "max"}, "strategy"),
    ({"warmup_mode": "lora"}, "warmup_mode"),
    ({"warmup_steps": 0}, "warmup_steps"),
    ({"quotas": {"a": {"modules": ["q_proj"], "share": 0.5}}}, "sum to 1"),
    ({"quotas": {"a": {"modules": "q_proj", "share": 1.0}}}, "non-empty list"),
    ({"quotas": {"a": {"modules": ["q_proj"]}}}, "exactly the keys"),
    ({"quotas": {"a": {"modules": ["q_proj"], "share": 1.5}}}, r"\[0, 1\]"),
])
def test_invalid_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        smt.SMTConfig(**kwargs)


def test_unknown_key_in_from_dict():
    with pytest.raises(ValueError, match="unknown SMTConfig keys \\['blocksize'\\]"):
        smt.SMTConfig.from_dict({"blocksize": 8})


@pytest.mark.parametrize("name,pattern,ok", [
    ("model.layers.3.self_attn.q_proj", "q_proj", True),
    ("model.layers.3.self_attn.q_proj", "proj", False),
    ("model.layers.3.self_attn.q_proj", "re:.*layers\\.3\\..*", True),
    ("model.layers.13.self_attn.q_proj", "re:.*layers\\.3\\..*", False),
    ("model.layers.3.self_attn.q_proj", "re:q_proj", False),
])
def test_name_matching(name, pattern, ok):
    assert smt.name_matches(name, pattern) is ok
