"""Method entries of a config: variants (`base:`), the registered class each runs, its own
settings (validated by the method's `Settings` in baselines), labels and tuned rates.
"""
from __future__ import annotations

import copy

from baselines.settings import SHARED_METHOD_KEYS, SettingsError
from harness.config.errors import ConfigError, need
from harness.run_config import MethodRef


def method_entry(config: dict, name: str) -> dict:
    """The config entry methods.<name> with its `base` entry's keys inherited (variants).

    A variant `{base: smt, scoring: abs_mean, label: ...}` starts from methods.smt (when the
    config defines it; every key but `label`), then its own keys replace those; `deviations` and
    `overrides` are concatenated (the base's first). `base` names a registered method or another
    entry; the chain ends at a registered method (see registered_method).
    """
    methods = config["methods"]
    need(config, "methods", name, "method")
    chain, entry = [name], methods[name]
    while "base" in entry and entry["base"] in methods and entry["base"] != chain[-1]:
        if entry["base"] in chain:
            raise ConfigError(f"methods.{name}.base: the chain {' -> '.join(chain + [entry['base']])} is a cycle")
        chain.append(entry["base"])
        entry = methods[entry["base"]]
    merged = {}
    for link in reversed(chain):
        spec = copy.deepcopy(methods[link])
        if link != name:
            spec.pop("label", None)
        for key in ("deviations", "overrides"):
            spec[key] = merged.get(key, []) + spec.get(key, [])
        merged.update(spec)
    merged["base"] = registered_name(config, name)
    return merged


def registered_name(config: dict, name: str) -> str:
    """The registered method a config entry runs: the end of its `base` chain (itself when none)."""
    methods, seen = config["methods"], [name]
    while "base" in methods.get(seen[-1], {}):
        nxt = methods[seen[-1]]["base"]
        if nxt == seen[-1] or nxt not in methods:
            return nxt
        if nxt in seen:
            raise ConfigError(f"methods.{name}.base: the chain {' -> '.join(seen + [nxt])} is a cycle")
        seen.append(nxt)
    return seen[-1]


def method_class(config: dict, name: str):
    """The registered class a method entry runs (imports the registry, so torch: called where a run is
    resolved, not at import, which the Snakemake DAG does)."""
    import baselines

    registered = registered_name(config, name)
    try:
        return baselines.get_method(registered)
    except KeyError:
        where = f"methods.{name}.base" if registered != name else f"methods.{name}"
        raise ConfigError(f"{where}: no method {registered!r} in the baselines registry "
                          f"(available: {', '.join(baselines.available())}). Add a module under baselines/ "
                          "(README, Add your own method) or name a registered method in `base:`") from None


def settings_values(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in SHARED_METHOD_KEYS}


def check_methods(config: dict) -> None:
    """Validate every method entry's own keys with its method's Settings (imports the registry)."""
    for name in config["methods"]:
        cls, entry = method_class(config, name), method_entry(config, name)
        values = settings_values(entry)
        try:
            cls.parse_settings(values, f"methods.{name}")
            for i, ov in enumerate(entry.get("overrides", [])):
                cls.parse_settings({**values, **{k: v for k, v in ov["set"].items() if k != "lr"}},
                                   f"methods.{name}.overrides[{i}].set")
        except SettingsError as err:
            raise ConfigError(f"config {config.get('name', '?')!r}: {err}") from None


def method_label(config: dict, name: str) -> str:
    """Display name of a method entry: its `label`, else the registered method's `label`."""
    label = config["methods"].get(name, {}).get("label")
    return label if label else getattr(method_class(config, name), "label", name)


def check_registry(config: dict) -> None:
    """Every configured method must run a method of the baselines registry (imports torch)."""
    for name in config["methods"]:
        method_class(config, name)


def tuned_method(config: dict, method: str) -> str:
    """The method whose swept rate a method entry uses: a variant (`base: smt`) uses its base's."""
    return config["methods"].get(method, {}).get("base", method)


def chosen_lr(config: dict, dataset: str, method: str):
    """The learning rate experiments.lr_sweep chose for a method on a dataset (None: not swept,
    the method entry's rate applies). The choice comes from the sweep's validation results,
    never from the config (config["lr_chosen"], written by the workflow: workflow/rules/lr_sweep.smk)."""
    chosen = (config.get("lr_chosen") or {}).get(dataset) or {}
    return chosen.get(tuned_method(config, method))


def _matches(when: dict, model: str, dataset: str, budget) -> bool:
    return (when.get("model", model) == model and when.get("dataset", dataset) == dataset
            and ("budget" not in when or (budget is not None and abs(when["budget"] - budget) < 1e-9)))


def method_ref(config: dict, method: str, model: str, dataset: str, budget):
    """The run's MethodRef: the registered method, the variant, lr and its Settings (parsed here,
    once, with defaults filled). Overrides whose `when` (model, dataset, budget in percent) matches
    the run apply in order."""
    entry = method_entry(config, method)
    values = settings_values(entry)
    lr = entry["lr"]
    for ov in entry.get("overrides", []):
        if _matches(ov["when"], model, dataset, budget):
            lr = ov["set"].get("lr", lr)
            values.update({k: v for k, v in ov["set"].items() if k != "lr"})
    cls = method_class(config, method)
    return MethodRef(name=cls.name, variant=method, lr=lr, settings=cls.parse_settings(values, f"methods.{method}"))
