"""Config loading: schema errors name the key, sweeps expand once, runs resolve to the contract."""
import copy

import pytest
import yaml

from harness import config as hc
from harness import reports

CONFIGS = ["config/config.yaml", "config/test.yaml", "config/paper.yaml", "config/generative.yaml",
           "config/test-cloze.yaml"]


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((hc.REPO_ROOT / "config/test.yaml").read_text())


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_validate(path):
    cfg = reports.load_config(hc.REPO_ROOT / path)
    from harness.launch import LAUNCHERS

    assert cfg["paths"]["results"] and cfg["execution"]["launcher"] in LAUNCHERS


def test_typo_key_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["train"]["max_stepz"] = 3
    with pytest.raises(hc.ConfigError, match=r"train: .*'max_stepz' was unexpected"):
        reports.load_config(bad)


def test_bad_value_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["experiments"]["table4"]["budget"] = 80
    with pytest.raises(hc.ConfigError, match=r"experiments\.table4\.budget: 80 is greater than"):
        reports.load_config(bad)


def test_unknown_reference_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["experiments"]["table6"]["placements"] = ["k", "qq"]
    with pytest.raises(hc.ConfigError, match=r"experiments\.table6\.placements names 'qq'"):
        reports.load_config(bad)


def test_quota_shares_must_sum_to_one(raw):
    bad = copy.deepcopy(raw)
    bad["placements"]["mlp50"]["quotas"]["mlp"]["share"] = 0.7
    with pytest.raises(hc.ConfigError, match="mlp50.quotas"):
        reports.load_config(bad)


def test_defaults_filled(raw):
    cfg = reports.load_config(raw)
    assert cfg["train"]["lr_scheduler"] == "linear"
    assert cfg["execution"]["mem_mb"]["train"] == 1500
    assert raw["train"].get("lr_scheduler") is None  # the input dict is not modified


def test_expand_runs_dedups_shared_runs():
    cfg = reports.load_config(hc.REPO_ROOT / "config/generative.yaml")  # the generative study (no rate sweep)
    qkv = "smollm2-135m/commonsense/smt/b0.84/qkv/s0"
    everything = reports.expand_runs(cfg, "all")
    assert len(everything) == len(set(everything)) == 25  # 24 trained + the zero-shot reference
    for target in ("table3", "table2", "table4", "table6", "figure3", "figure4", "figure5"):
        assert qkv in reports.expand_runs(cfg, target)
    assert everything.count(qkv) == 1
    assert not any("/full_ft/" in r for r in reports.expand_runs(cfg, "table2"))  # full_ft: false (cost)
    assert len(reports.expand_runs(cfg, "table3")) == 6  # one seed per budget
    # three seeds of LoRA, DoRA, SMT at 0.84 %, and the zero-shot base model once
    assert len(reports.expand_runs(cfg, "table2")) == 10
    assert "smollm2-135m/commonsense/zero_shot/b0.00/none/s0" in reports.expand_runs(cfg, "table2")
    with pytest.raises(hc.ConfigError, match="unknown target"):
        reports.expand_runs(cfg, "table9")


def test_seeds_multiply_runs(raw):
    cfg = reports.load_config({**raw, "seeds": [0, 1, 2]})
    assert len(reports.expand_runs(cfg, "table3")) == 3 * len(reports.expand_runs(reports.load_config(raw), "table3"))


def test_resolve_run_shape():
    cfg = reports.load_config(hc.REPO_ROOT / "config/config.yaml")
    run = hc.resolve_run(cfg, "smollm2-135m/math/smt/b0.86/qkv/s0").to_json()
    assert set(run) >= {"run_id", "model", "dataset", "method", "budget", "placement", "seed", "train", "deviations"}
    assert run["budget"] == pytest.approx(0.0086)
    assert run["method"]["warmup_steps"] == 5  # per-dataset override
    assert run["placement"] == {"name": "qkv", "target_modules": ["q_proj", "k_proj", "v_proj"], "quotas": None}
    assert run["model"]["path"] == "resources/models/smollm2-135m"
    assert run["dataset"]["path"] == "resources/data/math/train.json"
    assert "threads" not in run["train"] and run["seed"] == 0
    full = hc.resolve_run(cfg, "smollm2-135m/commonsense/full_ft/b100/all/s0").to_json()
    assert full["budget"] is None and full["placement"]["target_modules"] is None
    split = hc.resolve_run(cfg, "smollm2-135m/commonsense/smt/b0.84/mlp25/s0").to_json()
    assert set(split["placement"]["target_modules"]) == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"}
    with pytest.raises(hc.ConfigError, match="not defined under `placements:`"):
        hc.resolve_run(cfg, "smollm2-135m/commonsense/smt/b0.84/nope/s0")
    with pytest.raises(hc.ConfigError, match="bad run id"):
        hc.resolve_run(cfg, "smollm2-135m/smt/b0.84")


def test_run_id_roundtrip():
    rid = hc.make_run_id("m", "commonsense", "lora", 2.5, "qkvud", 3)
    assert rid == "m/commonsense/lora/b2.50/qkvud/s3"
    assert hc.parse_run_id(rid)["budget"] == 2.5


def test_eval_cfg_and_data_root(monkeypatch):
    cfg = reports.load_config(hc.REPO_ROOT / "config/config.yaml")
    ev = hc.eval_cfg(cfg, "commonsense")
    assert ev["suite"] == "commonsense" and len(ev["tasks"]) == 8 and ev["limit"] == cfg["eval"]["commonsense"]["limit"]
    assert "data_root" not in ev  # where data lives is resolved by the job (harness.data.resolve_data_root)


def test_experiment_seeds_and_table2_budgets(raw):
    """A one-seed sweep for the plateau, three seeds where Table 2's methods meet."""
    cfg = copy.deepcopy(raw)
    cfg["seeds"] = [0, 1, 2]
    cfg["experiments"]["table3"]["seeds"] = [0]
    cfg["experiments"]["table2"]["budgets"] = [2.0]
    cfg["experiments"]["table6"]["seeds"] = [1]
    cfg = reports.load_config(cfg)
    sweep = reports.expand_runs(cfg, "table3")
    assert {hc.parse_run_id(r)["seed"] for r in sweep} == {0} and len(sweep) == 3 * 2
    t2 = [hc.parse_run_id(r) for r in reports.expand_runs(cfg, "table2")]
    assert {(p["method"], p["budget"]) for p in t2} == {("lora", 2.0), ("dora", 2.0), ("smt", 2.0),
                                                      ("full_ft", None), ("zero_shot", 0.0)}
    assert [p["seed"] for p in t2 if p["method"] == "zero_shot"] == [0]  # deterministic: evaluated once
    assert sorted(p["seed"] for p in t2 if p["method"] == "smt") == [0, 1, 2]
    assert sorted(p["seed"] for p in t2 if p["method"] == "full_ft") == [0, 1, 2]
    assert {hc.parse_run_id(r)["seed"] for r in reports.expand_runs(cfg, "table6")} == {1}
    everything = reports.expand_runs(cfg, "all")
    assert len(everything) == len(set(everything))


def test_experiment_seeds_outside_config_seeds_are_named(raw):
    bad = copy.deepcopy(raw)
    bad["experiments"]["table4"]["seeds"] = [0, 5]
    with pytest.raises(hc.ConfigError, match=r"experiments\.table4\.seeds: \[5\] not in seeds \[0\]"):
        reports.load_config(bad)
    bad = copy.deepcopy(raw)
    bad["experiments"]["table2"]["budgets"] = [3.0]
    with pytest.raises(hc.ConfigError, match=r"experiments\.table2\.budgets: \[3\.0\] are not budgets of the sweep"):
        reports.load_config(bad)


def test_zero_shot_run_is_the_base_model_and_its_name_is_reserved(raw):
    cfg = reports.load_config(raw)
    rid = hc.zero_shot_run_id(cfg, "tiny", "commonsense")
    run = hc.resolve_run(cfg, rid).to_json()
    assert run["method"] == {"name": "zero_shot", "variant": "zero_shot", "lr": 0.0} and run["budget"] == 0.0
    assert run["placement"]["target_modules"] == [] and run["deviations"] == cfg["deviations"]
    with pytest.raises(hc.ConfigError, match="budget 0, placement 'none' and no learning rate"):
        hc.resolve_run(cfg, "tiny/commonsense/zero_shot/b0.84/qkv/s0")
    with pytest.raises(hc.ConfigError, match="methods.zero_shot: the name is reserved"):
        reports.load_config({**raw, "methods": {**raw["methods"], "zero_shot": {"lr": 1e-3, "placement": "qkv"}}})
