"""Every registered method: its own Settings, a label, a few training steps on the tiny LLaMA,
its reached budget next to the asked one, its delta reloading, and its settings reaching peft."""
import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import baselines
import conftest
from baselines.base import count_params
from baselines.lora import nearest_rank, rank_for_budget, target_linears
from baselines.settings import SettingsError
from harness.run_config import as_run_config

torch.set_num_threads(1)
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
BUDGET = 0.05
METHODS = [m for m in baselines.available() if baselines.get_method(m).trains]  # zero_shot trains nothing


tiny_model = conftest.tiny_llama


def run_cfg(name, budget=BUDGET, **settings):
    cls = baselines.get_method(name)
    if name == "smt" or issubclass(cls, baselines.get_method("smt")):
        settings = {"block_size": 16, "warmup_steps": 2, **settings}
    return conftest.run_cfg({"name": name, "variant": name, "lr": 1e-2, **settings},
                            budget=None if name == "full_ft" else budget,
                            placement={"name": "qkvud", "target_modules": TARGETS if name != "full_ft" else None,
                                       "quotas": None})


def test_registry_lists_every_method_with_label_and_settings():
    assert {"full_ft", "lora", "dora", "smt", "vera", "loha"} <= set(METHODS)
    labels = {name: baselines.get_method(name).label for name in METHODS}
    assert labels["lora"] == "LoRA" and labels["dora"] == "DoRA" and labels["smt"] == "SMT"
    assert labels["full_ft"] == "Full FT" and labels["vera"] == "VeRA" and labels["loha"] == "LoHa"
    for name in METHODS:
        cls = baselines.get_method(name)
        assert dataclasses.is_dataclass(cls.Settings), name
        for f in dataclasses.fields(cls.Settings):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help"
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def test_smt_settings_defaults_are_smtconfig_defaults():
    import smt

    d, s = smt.SMTConfig(), baselines.get_method("smt").Settings()
    assert (s.block_size, s.warmup_steps, s.warmup_mode, s.scoring, s.accumulate_on_cpu) == \
        (d.block_size, d.warmup_steps, d.warmup_mode, d.strategy, d.accumulate_on_cpu)


@pytest.mark.parametrize("name", METHODS)
def test_unknown_and_bad_settings_are_named(name):
    cls = baselines.get_method(name)
    with pytest.raises(SettingsError, match=rf"methods\.{name}\.nope: unknown key.*valid keys"):
        cls(as_run_config(run_cfg(name, nope=1)))
    fields = [f for f in dataclasses.fields(cls.Settings) if f.type in ("int", "Optional[int]", int)]
    if fields:
        with pytest.raises(SettingsError, match=rf"methods\.{name}\.{fields[0].name}: expected an integer"):
            cls(as_run_config(run_cfg(name, **{fields[0].name: "three"})))


def _train(method, model, steps=3):
    """The training loop's calls in order (warm-up, apply, steps); returns the apply info."""
    batch = torch.randint(0, 260, (2, 12), generator=torch.Generator().manual_seed(1))
    if method.warmup_steps:
        method.begin_warmup(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(method.warmup_steps):
            model(input_ids=batch, labels=batch).loss.backward()
            method.after_warmup_backward(model)
            if method.warmup_mode == "full_ft":
                opt.step()
            opt.zero_grad(set_to_none=True)
    info = method.apply(model)
    target = method.peft_model if getattr(method, "peft_model", None) is not None else model
    lr = {"full_ft": 1e-3, "smt": 3e-3}.get(method.name, 1e-2)  # SMT's few blocks: smaller steps
    opt = torch.optim.AdamW([p for p in target.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = target(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return info, target, batch, losses


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_meets_its_budget_and_reloads(name, tmp_path):
    cls = baselines.get_method(name)
    method = cls(as_run_config(run_cfg(name)))
    model = tiny_model()
    total = count_params(model)
    info, trained, batch, losses = _train(method, model)
    assert losses[-1] < losses[0], losses
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    assert info["trainable_params"] == trainable and info["total_params"] == total
    assert info["budget_reached"] == pytest.approx(trainable / total)
    if name == "full_ft":
        assert info["budget_reached"] == 1.0
    else:  # a tiny model's rank or block is coarse: within 35 % of the asked budget at 5 %
        assert abs(info["budget_reached"] - BUDGET) <= 0.35 * BUDGET, info["budget_reached"]
    method.save(trained, tmp_path / "delta")
    trained.eval()
    with torch.no_grad():
        want = trained(input_ids=batch).logits
    fresh = cls(as_run_config(run_cfg(name)))
    reloaded = fresh.merge(fresh.load(tiny_model(), tmp_path / "delta"))
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=batch).logits, want, atol=1e-4)


def test_nearest_rank_is_nearest():
    for target in range(0, 20000, 37):
        r = nearest_rank(target, 1408, 640)
        best = min(range(1, 40), key=lambda k: (abs(640 + k * 1408 - target), k))
        assert r == best, (target, r, best)


@pytest.mark.parametrize("name", ["lora", "dora", "vera", "loha"])
def test_rank_methods_reach_the_nearest_budget(name):
    """No other rank lands nearer to the asked budget than the one chosen (tiny: 2 % asked)."""
    model, cls = tiny_model(), baselines.get_method(name)
    total = count_params(model)
    info = cls(as_run_config(run_cfg(name, budget=0.02))).apply(model)
    lin = target_linears(tiny_model(), TARGETS)
    per_rank = {"lora": sum(m.in_features + m.out_features for m in lin),
                "dora": sum(m.in_features + m.out_features for m in lin),
                "vera": len(lin), "loha": 2 * sum(m.in_features + m.out_features for m in lin)}[name]
    fixed = sum(m.out_features for m in lin) if name in ("dora", "vera") else 0
    assert info["trainable_params"] == fixed + info["rank"] * per_rank
    reached = [fixed + r * per_rank for r in range(1, 4 * info["rank"] + 4)]
    assert min(abs(x - 0.02 * total) for x in reached) == abs(info["trainable_params"] - 0.02 * total)


def test_lora_rank_setting_overrides_budget():
    info = baselines.get_method("lora")(as_run_config(run_cfg("lora", rank=3))).apply(tiny_model())
    assert info["rank"] == 3 and rank_for_budget(tiny_model(), TARGETS, BUDGET) != 3


def _peft_config(name, **settings):
    method = baselines.get_method(name)(as_run_config(run_cfg(name, **settings)))
    method.apply(tiny_model())
    return method.rank, method.peft_model.peft_config["default"]


def test_settings_reach_peft():
    rank, cfg = _peft_config("lora", alpha_ratio=3.0, dropout=0.2)
    assert cfg.lora_alpha == 3.0 * rank and cfg.lora_dropout == 0.2 and not cfg.use_dora
    assert set(cfg.target_modules) == set(TARGETS)
    rank, cfg = _peft_config("dora", alpha_ratio=0.5, dropout=0.1, rank=4)
    assert rank == 4 and cfg.r == 4 and cfg.lora_alpha == 2.0 and cfg.lora_dropout == 0.1 and cfg.use_dora
    rank, cfg = _peft_config("vera", d_initial=0.3, dropout=0.15)
    assert cfg.d_initial == 0.3 and cfg.vera_dropout == 0.15 and cfg.r == rank
    rank, cfg = _peft_config("loha", alpha_ratio=2.0, rank_dropout=0.1, module_dropout=0.2)
    assert cfg.alpha == 2.0 * rank and cfg.rank_dropout == 0.1 and cfg.module_dropout == 0.2 and cfg.r == rank


def test_smt_settings_reach_the_plan():
    method = baselines.get_method("smt")(as_run_config(run_cfg("smt", scoring="l2", warmup_steps=3, warmup_mode="grad_only")))
    assert (method.cfg.strategy, method.cfg.warmup_steps, method.cfg.block_size) == ("l2", 3, 16)
    info, *_ = _train(method, tiny_model(), steps=1)
    assert method.plan.meta["strategy"] == "l2" and method.plan.meta["warmup_steps"] == 3
    assert method.plan.meta["warmup_mode"] == "grad_only"
