"""Loading a config: strict YAML (a duplicate key is an error), `extends:` (a config layered over
another), the chosen `recipe`, the JSON schema (workflow/schemas/config.schema.yaml, defaults
filled in), the cross references and every method's own settings.

The experiments entries are checked by the target modules that own them (harness/reports/targets/):
the caller hands their schemas and checks in (`harness.reports.load_config` does), so this module
knows no target. The Snakefile is the one place a workflow loads the config; jobs get resolved JSON.
"""
from __future__ import annotations

import copy
import os
import pathlib

import yaml

from harness.config.errors import ConfigError, need
from harness.config.methods import check_methods, method_entry
from harness.config.run_ids import FULL_FT, ZERO_SHOT

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


MIN_PERCENT = 0.1  # the smallest budget a config may name, in percent: below it, it is almost surely a fraction


def _minimum_percent(validator, minimum, instance, schema):
    """`minimumPercent` (the schema's $defs/percent): a budget below it is refused naming both readings."""
    import jsonschema

    if validator.is_type(instance, "number") and 0 < instance < minimum:
        yield jsonschema.ValidationError(
            f"{instance:g} read as percent is {instance:g} % (a 100x smaller run than {instance * 100:g} %); "
            f"if you meant the fraction {instance:g} write {instance * 100:g}. Budgets in a config are percent of "
            f"the model's total parameters; below {minimum:g} % is refused as almost surely a fraction")


def _validator_with_defaults():
    """A Draft 2020-12 validator that also fills in the schema's `default` values and knows
    `minimumPercent` (a budget that is almost surely a fraction, not a percent, is refused)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(base, {"properties": properties, "minimumPercent": _minimum_percent})


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last silently)."""


def _strict_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"{loader.name}: duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                              f"(first at line {seen[key] + 1}); YAML would silently keep the last one. "
                              "Remove or merge one of them.")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def load_yaml_strict(path) -> dict:
    """A YAML file as a dict; a duplicate key (at any depth) is a ConfigError naming key, file and line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    text = path.read_text()
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    finally:
        loader.dispose()
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    return data or {}


def deep_merge(base: dict, overlay: dict) -> dict:
    """base with overlay merged in: mappings merge key by key, everything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


EXTENDS, UNSET = "extends", "unset"


def load_layered(path, _chain: tuple = ()) -> dict:
    """A config file with its `extends:` chain resolved (see resolve_extends); not yet validated."""
    path = pathlib.Path(path)
    if path.resolve() in _chain:
        loop = " -> ".join(str(p) for p in _chain + (path.resolve(),))
        raise ConfigError(f"{path}: `extends:` makes a cycle ({loop}); a config may not extend itself")
    return resolve_extends(load_yaml_strict(path), path, _chain + (path.resolve(),))


def resolve_extends(config: dict, path, _chain: tuple = ()) -> dict:
    """A config layered over the one it names: `extends: <file>` (relative to the file that names it,
    `path`; chains allowed) is that file's config, then this one's keys merged in (deep_merge:
    mappings key by key, lists and values replaced). `unset: [primary_metric, experiments.lr_sweep]`
    removes keys (dotted paths) of the base before merging. Validation comes after, on the result."""
    path = pathlib.Path(path)
    if EXTENDS not in config:
        if UNSET in config:
            raise ConfigError(f"{path}: `{UNSET}:` removes keys of the config named by `{EXTENDS}:`, which this file "
                              "does not have; drop it")
        return config
    config = dict(config)
    name, unset = config.pop(EXTENDS), config.pop(UNSET, [])
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: `{EXTENDS}:` must be the path of a config file (relative to {path.parent}), "
                          f"got {name!r}")
    base_path = pathlib.Path(name) if pathlib.Path(name).is_absolute() else path.parent / name
    if not base_path.is_file():
        raise ConfigError(f"{path}: `{EXTENDS}: {name}`: no file {base_path} (the path is relative to the file "
                          "that names it)")
    base = load_layered(base_path, _chain or (path.resolve(),))
    if not isinstance(unset, list) or not all(isinstance(k, str) for k in unset):
        raise ConfigError(f"{path}: `{UNSET}:` must be a list of dotted keys, e.g. [experiments.lr_sweep]")
    for dotted in unset:
        *parents, last = dotted.split(".")
        node = base
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise ConfigError(f"{path}: `{UNSET}: {dotted}`: {base_path} has no key {dotted}")
        del node[last]
    return deep_merge(base, config)


def apply_recipe(config: dict) -> dict:
    """The config with its chosen recipe overlay merged in (`recipe: <name>` picks `recipes.<name>`).

    A recipe is a partial config (e.g. the authors' code's values where they differ from the
    paper); `recipe: null` or a recipe without an overlay leaves the config as written.
    """
    name, recipes = config.get("recipe"), config.get("recipes") or {}
    if not isinstance(recipes, dict):
        raise ConfigError("recipes: must map a recipe name to a partial config")
    if name is None:
        return config
    if name not in recipes:
        raise ConfigError(f"recipe: {name!r} is not defined under `recipes:` (defined: {', '.join(recipes) or 'none'})")
    overlay = recipes[name] or {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"recipes.{name}: must be a partial config (a mapping; {{}} keeps the file as written)")
    for key in ("recipe", "recipes"):
        if key in overlay:
            raise ConfigError(f"recipes.{name}.{key}: a recipe cannot set {key}")
    return deep_merge(config, overlay)


def load_config(src, experiments: dict) -> dict:
    """Load (path) or copy (dict) a config, validate it and fill defaults; raise ConfigError.

    experiments: {experiments entry name: its owner} where the owner has `SCHEMA` (the entry's JSON
    schema) and may have `check(config, entry)`; the target modules are the owners
    (harness.reports.load_config passes them). Resolves `extends:` (a path: that file's config
    with this one merged over it), applies the chosen `recipe` overlay, checks the JSON schema
    (unknown keys, types, ranges, the budget unit), the cross references (every model, dataset,
    method and placement an experiment names must be defined, quotas must sum to 1, the train
    length must be set), each experiments entry's own check and every method's own settings (the
    method's `Settings` in baselines, including each override and variant). A file is read with
    duplicate keys refused.
    """
    if isinstance(src, (str, os.PathLike)):
        config = load_layered(src)
    else:
        config = copy.deepcopy(dict(src))
        if EXTENDS in config:  # relative to what? only a file knows where it is
            raise ConfigError(f"a config given as a mapping has `{EXTENDS}: {config[EXTENDS]}`, which is relative to "
                              "the file that names it: pass the file's path, or load it with load_layered first")
    config = apply_recipe(config)
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    schema["properties"]["experiments"]["properties"] = {name: copy.deepcopy(owner.SCHEMA)
                                                         for name, owner in experiments.items()}
    errors = sorted(_validator_with_defaults()(schema).iter_errors(config),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {_where(e.absolute_path)}: {e.message}" for e in errors]
        raise ConfigError(f"config {config.get('name', '?')!r} is invalid "
                          f"(see {SCHEMA_PATH.relative_to(REPO_ROOT)}):\n" + "\n".join(lines))
    _check_references(config)
    for name, entry in config["experiments"].items():  # each entry's own checks (its module's `check`)
        if hasattr(experiments[name], "check"):
            experiments[name].check(config, entry)
    check_methods(config)
    return config


def _check_references(config: dict) -> None:
    """Semantic checks the schema cannot express."""
    train = config["train"]
    if train["max_steps"] is None and train["epochs"] is None:
        raise ConfigError("train: set max_steps or epochs")
    for name, ds in config["datasets"].items():
        need(config, "eval", ds["suite"], f"datasets.{name}.suite")
    if ZERO_SHOT in config["methods"]:
        raise ConfigError(f"methods.{ZERO_SHOT}: the name is reserved for the zero-shot reference (the base model, "
                          f"experiments.table2.zero_shot: true); rename the entry")
    for name in config["methods"]:
        entry = method_entry(config, name)
        for key in ("lr", "placement"):
            if key not in entry:
                raise ConfigError(f"methods.{name}: set `{key}` (or `base:` an entry that sets it)")
        need(config, "placements", entry["placement"], f"methods.{name}.placement")
        for i, ov in enumerate(entry.get("overrides", [])):
            for key, section in (("model", "models"), ("dataset", "datasets")):
                if key in ov["when"]:
                    need(config, section, ov["when"][key], f"methods.{name}.overrides[{i}].when.{key}")
    for name, place in config["placements"].items():
        quotas = place.get("quotas")
        if quotas and abs(sum(q["share"] for q in quotas.values()) - 1.0) > 1e-6:
            raise ConfigError(f"placements.{name}.quotas: shares must sum to 1")
        if "target_modules" not in place and not quotas:
            raise ConfigError(f"placements.{name}: set target_modules or quotas")
        if "target_modules" in place and place["target_modules"] is None \
                and name != (method_entry(config, FULL_FT).get("placement") if FULL_FT in config["methods"] else None):
            raise ConfigError(f"placements.{name}: target_modules null (all parameters) is only for full_ft")
    for target, exp in config["experiments"].items():
        where = f"experiments.{target}"
        extra = exp.get("extra", [])
        for model in exp.get("models", [exp.get("model")]) + [e["model"] for e in extra]:
            if model is not None:
                need(config, "models", model, f"{where}.model")
        if "dataset" in exp:
            need(config, "datasets", exp["dataset"], f"{where}.dataset")
        for method in exp.get("methods", []) + [m for e in extra for m in e["methods"]]:
            need(config, "methods", method, f"{where}.methods")
        for place in exp.get("placements", []) + [exp.get("placement")] * ("placement" in exp):
            need(config, "placements", place, f"{where}.placements")
        if "method" in exp:
            need(config, "methods", exp["method"], f"{where}.method")
        stray = [s for s in exp.get("seeds", []) if s not in config["seeds"]]
        if stray:
            raise ConfigError(f"{where}.seeds: {stray} not in seeds {config['seeds']}; an experiment runs a "
                              "subset of the config's seeds (add them to `seeds:` or drop them here)")
    if config.get("primary_metric") and config.get("protocol") != "cloze":
        raise ConfigError(f"primary_metric: {config['primary_metric']} is a cloze metric, but protocol is "
                          f"{config.get('protocol')}; drop primary_metric (generative: the answer's accuracy) "
                          "or set protocol: cloze")
    if config["experiments"]:
        need(config, "methods", config["proposed"], "proposed")
