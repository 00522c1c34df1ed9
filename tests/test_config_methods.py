"""Config side of "a method owns its settings": Settings validated at load time, variants without
code, overrides, recipes, duplicate YAML keys, and the target registry."""
import copy

import pytest
import yaml

from harness import config as hc
from harness import reports


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((hc.REPO_ROOT / "config/test.yaml").read_text())


def with_methods(raw, **methods):
    cfg = copy.deepcopy(raw)
    cfg["methods"].update(methods)
    return cfg


def test_unknown_method_key_names_method_key_and_valid_keys(raw):
    bad = copy.deepcopy(raw)
    bad["methods"]["lora"]["rnak"] = 8
    with pytest.raises(hc.ConfigError, match=r"methods\.lora\.rnak: unknown key.*valid keys: rank .*alpha_ratio"):
        reports.load_config(bad)


@pytest.mark.parametrize("method,key,value,message", [
    ("smt", "scoring", "mean", r"methods\.smt\.scoring: 'mean' is not one of"),
    ("smt", "block_size", 0, r"methods\.smt\.block_size: 0 is less than the minimum 1"),
    ("lora", "dropout", "high", r"methods\.lora\.dropout: expected a number"),
    ("lora", "rank", 2.5, r"methods\.lora\.rank: expected an integer"),
])
def test_bad_method_value_is_named(raw, method, key, value, message):
    bad = copy.deepcopy(raw)
    bad["methods"][method][key] = value
    with pytest.raises(hc.ConfigError, match=message):
        reports.load_config(bad)


def test_keys_the_code_reads_are_accepted(raw):
    cfg = with_methods(raw, vera={"lr": 1e-3, "placement": "qkvud", "d_initial": 0.2, "rank": 4},
                       lora={"lr": 1e-3, "placement": "qkvud", "rank": 8})
    cfg["train"].update(keep_checkpoints=True, val_records=8, val_every=2, adam_betas=[0.9, 0.95])
    cfg = reports.load_config(cfg)
    run = hc.resolve_run(cfg, "tiny/commonsense/vera/b2.00/qkvud/s0").to_json()
    assert run["method"]["d_initial"] == 0.2 and run["method"]["rank"] == 4
    assert run["train"]["keep_checkpoints"] and run["train"]["val_records"] == 8 and run["train"]["adam_betas"] == [0.9, 0.95]
    assert hc.resolve_run(cfg, "tiny/commonsense/lora/b2.00/qkvud/s0").to_json()["method"]["rank"] == 8
    defaults = reports.load_config(raw)["train"]
    assert (defaults["val_records"], defaults["val_every"], defaults["keep_checkpoints"]) == (0, None, False)
    assert defaults["adam_betas"] == [0.9, 0.999]


def test_resolved_method_has_every_setting_and_the_registered_name(raw):
    cfg = reports.load_config(raw)
    m = hc.resolve_run(cfg, "tiny/commonsense/smt_absmean/b2.00/qkv/s0").to_json()["method"]
    assert m["name"] == "smt" and m["variant"] == "smt_absmean" and m["lr"] == 1e-3
    assert m["scoring"] == "abs_mean" and m["block_size"] == 16 and m["warmup_steps"] == 2  # inherited
    assert m["selection"] == "gradient" and m["warmup_lr"] is None  # defaults filled from Settings
    lora = hc.resolve_run(cfg, "tiny/commonsense/lora/b2.00/qkvud/s0").to_json()["method"]
    assert set(lora) == {"name", "variant", "lr", "rank", "alpha_ratio", "dropout", "target_modules"}


def test_variant_validated_with_its_base_settings(raw):
    with pytest.raises(hc.ConfigError, match=r"methods\.smt_x\.rank: unknown key"):
        reports.load_config(with_methods(raw, smt_x={"base": "smt", "rank": 3}))
    with pytest.raises(hc.ConfigError, match=r"methods\.x\.base: no method 'nope' in the baselines registry"):
        reports.load_config(with_methods(raw, x={"base": "nope", "lr": 1e-3, "placement": "qkv"}))
    with pytest.raises(hc.ConfigError, match="cycle"):
        reports.load_config(with_methods(raw, a={"base": "b"}, b={"base": "a"}))
    with pytest.raises(hc.ConfigError, match=r"methods\.loner: set `lr`"):
        reports.load_config(with_methods(raw, loner={"placement": "qkv", "base": "smt_unknown_entry"}))


def test_variant_of_a_registered_method_without_config_entry(raw):
    cfg = copy.deepcopy(raw)
    cfg["methods"]["small_lora"] = {"base": "lora", "lr": 1e-3, "placement": "qkv", "rank": 2, "label": "LoRA r2"}
    cfg["experiments"]["table3"]["methods"].append("small_lora")
    cfg = reports.load_config(cfg)
    assert "tiny/commonsense/small_lora/b2.00/qkv/s0" in reports.expand_runs(cfg, "table3")
    assert hc.method_label(cfg, "small_lora") == "LoRA r2" and hc.method_label(cfg, "lora") == "LoRA"
    assert hc.resolve_run(cfg, "tiny/commonsense/small_lora/b2.00/qkv/s0").to_json()["method"]["alpha_ratio"] == 2.0


def test_new_method_is_one_config_entry_and_reaches_every_sweep_target(raw):
    cfg = copy.deepcopy(raw)
    cfg["methods"]["loha"] = {"lr": 1e-3, "placement": "qkvud"}
    cfg["experiments"]["table3"]["methods"] = ["lora", "loha"]  # no lora/dora/smt requirement any more
    cfg = reports.load_config(cfg)
    for target in ("table2", "table3", "figure3"):
        assert "tiny/commonsense/loha/b2.00/qkvud/s0" in reports.expand_runs(cfg, target)
    assert hc.method_label(cfg, "loha") == "LoHa"


def test_overrides_apply_by_model_dataset_and_budget(raw):
    cfg = copy.deepcopy(raw)
    cfg["methods"]["smt"]["overrides"] = [
        {"when": {"dataset": "math"}, "set": {"warmup_steps": 1}},
        {"when": {"model": "tiny", "budget": 4.0}, "set": {"lr": 5e-4}}]
    cfg = reports.load_config(cfg)
    assert hc.resolve_run(cfg, "tiny/math/smt/b2.00/qkv/s0").to_json()["method"]["warmup_steps"] == 1
    assert hc.resolve_run(cfg, "tiny/commonsense/smt/b2.00/qkv/s0").to_json()["method"]["warmup_steps"] == 2
    assert hc.resolve_run(cfg, "tiny/commonsense/smt/b4.00/qkv/s0").to_json()["method"]["lr"] == 5e-4
    assert hc.resolve_run(cfg, "tiny/commonsense/smt/b2.00/qkv/s0").to_json()["method"]["lr"] == 1e-3
    # a variant inherits its base's overrides
    assert hc.resolve_run(cfg, "tiny/math/smt_absmean/b2.00/qkv/s0").to_json()["method"]["warmup_steps"] == 1
    bad = copy.deepcopy(raw)
    bad["methods"]["smt"]["overrides"] = [{"when": {"dataset": "math"}, "set": {"scoring": "bogus"}}]
    with pytest.raises(hc.ConfigError, match=r"methods\.smt\.overrides\[0\]\.set\.scoring"):
        reports.load_config(bad)
    bad["methods"]["smt"]["overrides"] = [{"when": {"dataset": "maths"}, "set": {"lr": 1e-3}}]
    with pytest.raises(hc.ConfigError, match=r"overrides\[0\]\.when\.dataset names 'maths'"):
        reports.load_config(bad)


def test_duplicate_yaml_key_names_key_file_and_line(tmp_path):
    text = (hc.REPO_ROOT / "config/test.yaml").read_text().replace(
        "  max_steps: 3\n", "  max_steps: 3\n  log_every: 1\n  max_steps: 30\n")
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(hc.ConfigError, match=rf"{path}: duplicate key 'max_steps' at line \d+ \(first at line \d+\)"):
        reports.load_config(path)
    with pytest.raises(hc.ConfigError, match="duplicate key 'max_steps'"):
        hc.load_yaml_strict(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text("a:\n  b: {c: 1, c: 2}\n")
    with pytest.raises(hc.ConfigError, match="duplicate key 'c'"):
        hc.load_yaml_strict(nested)
    assert hc.load_yaml_strict(hc.REPO_ROOT / "config/paper.yaml")["name"] == "paper"


def test_recipe_overlay_switches_values_and_unknown_recipe_is_named(raw):
    cfg = copy.deepcopy(raw)
    cfg["recipes"] = {"plain": {}, "fast": {"train": {"max_steps": 1}, "methods": {"smt": {"scoring": "l2"}}}}
    cfg["recipe"] = "fast"
    loaded = reports.load_config(cfg)
    assert loaded["train"]["max_steps"] == 1 and loaded["methods"]["smt"]["scoring"] == "l2"
    assert loaded["methods"]["smt"]["block_size"] == 16  # mappings merge key by key
    assert hc.resolve_run(loaded, "tiny/commonsense/smt/b2.00/qkv/s0").to_json()["recipe"] == "fast"
    cfg["recipe"] = "plain"
    assert reports.load_config(cfg)["train"]["max_steps"] == 3
    cfg["recipe"] = "slow"
    with pytest.raises(hc.ConfigError, match=r"recipe: 'slow' is not defined under `recipes:` \(defined: plain, fast\)"):
        reports.load_config(cfg)
    cfg["recipe"], cfg["recipes"]["fast"] = "fast", {"methods": {"smt": {"scoring": "nope"}}}
    with pytest.raises(hc.ConfigError, match=r"methods\.smt\.scoring"):  # the overlay is validated too
        reports.load_config(cfg)


def test_targets_are_a_registry_with_table7_and_figure7(raw):
    assert {"table7", "figure7"} <= set(reports.TARGETS)
    # a figure drawn from a table's runs reads that table's entry; every other target owns its schema
    shared = {n for n, t in reports.REGISTRY.items() if t.experiment != n}
    assert {"figure_table4", "figure_table6", "figure_val_loss", "figure_pareto", "table2_tasks"} == shared
    assert set(reports.experiment_schemas()) == set(reports.TARGETS) - shared
    cfg = reports.load_config(raw)
    # the tiny config builds every target but the learning-rate sweep, which needs protocol: cloze
    # (config/test-cloze.yaml builds it: tests/test_lr_sweep.py)
    assert reports.configured(cfg) == [t for t in reports.TARGETS if t != "lr_sweep"]
    t7 = reports.expand_runs(cfg, "table7")
    assert t7 == reports.expand_runs(cfg, "figure7") == [
        f"tiny/commonsense/{m}/b2.00/qkv/s0" for m in cfg["experiments"]["table7"]["methods"]]
    assert set(t7) <= set(reports.expand_runs(cfg, "all"))
    assert reports.expand_runs(cfg, "figure_pareto") == reports.expand_runs(cfg, "table2")
    assert reports.expand_runs(cfg, "figure_table4") == reports.expand_runs(cfg, "table4")


def test_table2_extra_rows(raw):
    cfg = copy.deepcopy(raw)
    cfg["experiments"]["table2"]["extra"] = [{"model": "tiny", "methods": ["dora", "smt"], "budgets": [3.0]}]
    cfg = reports.load_config(cfg)
    runs = reports.expand_runs(cfg, "table2")
    assert {"tiny/commonsense/dora/b3.00/qkvud/s0", "tiny/commonsense/smt/b3.00/qkv/s0"} <= set(runs)
    assert "tiny/commonsense/smt/b3.00/qkv/s0" not in reports.expand_runs(cfg, "table3")


@pytest.mark.slow
def test_snakemake_refuses_a_duplicate_key_in_the_configfile(tmp_path):
    """Snakemake parses --configfile itself (last key wins); common.smk re-reads it strictly."""
    import subprocess
    import sys

    text = (hc.REPO_ROOT / "config/test.yaml").read_text().replace("  max_steps: 3\n", "  max_steps: 3\n  max_steps: 4\n")
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", f"--configfile={path}", "table3"],
                         cwd=hc.REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and f"{path}: duplicate key 'max_steps'" in res.stdout + res.stderr
