"""Configuration: schema validation, sweep expansion and per-run resolution.

All sweep logic lives here; the Snakemake rules only call these functions.
A run id is "<model>/<dataset>/<method>/b<budget%>/<placement>/s<seed>", e.g.
"smollm2-135m/commonsense/smt/b0.84/qkv/s0"; full fine-tuning is
"<model>/<dataset>/full_ft/b100/<placement>/s<seed>". <method> is a key of `methods:`: a
registered method (baselines.available()) or a variant of one (`base: smt` plus overrides).

Method hyper-parameters are validated by the method's own `Settings` (baselines), the rest by
workflow/schemas/config.schema.yaml and each experiments entry by its target module: a new table
is one module under harness/reports/targets/ (its run selection, its schema and its builder).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import pathlib

import yaml

from baselines.settings import SHARED_METHOD_KEYS

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
FULL_FT = "full_ft"
FULL_FT_BUDGET = "100"
CLOZE_DEVIATION = ("protocol: cloze (training targets are the gold option's text after a 'Question: ...\\nAnswer:' "
                   "prompt; evaluation scores each option's log-likelihood, lm-eval multiple_choice) instead of "
                   "LLM-Adapters' generative 'the correct answer is <label>' (the paper's)")
# the zero-shot reference (experiments.table2.zero_shot): the base model, nothing trained; not a
# config entry (it has no lr, placement or settings), one run per model at budget 0, placement none
ZERO_SHOT, ZERO_SHOT_PLACEMENT = "zero_shot", "none"
# The run-id grammar, written once: the template (also the Snakemake wildcard pattern of a run's
# directory) and what each field may hold; make_run_id / parse_run_id are its only readers and writers.
RUN_ID_TEMPLATE = "{model}/{dataset}/{method}/b{budget}/{placement}/s{seed}"
RUN_ID_PATTERNS = {
    "model": r"[A-Za-z0-9._-]+",
    "dataset": r"[A-Za-z0-9_-]+",
    # a method, optionally with a tuned learning rate: `lora@lr0.0003` (experiments.lr_sweep;
    # LR_SUFFIX): the rate is then part of the run's name, so every rate of a sweep is its own run
    "method": r"[a-z0-9_]+(@lr[0-9][0-9.e+-]*)?",
    "budget": r"[0-9]+(\.[0-9]+)?",
    "placement": r"[A-Za-z0-9_]+",
    "seed": r"[0-9]+",
}


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key and what to change."""


def _validator_with_defaults():
    """A Draft 2020-12 validator that also fills in the schema's `default` values."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(base, {"properties": properties})


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


def load_config(src) -> dict:
    """Load (path) or copy (dict) a config, validate it and fill defaults; raise ConfigError.

    Applies the chosen `recipe` overlay, checks the JSON schema (unknown keys, types, ranges),
    the cross references (every model, dataset, method and placement an experiment names must
    be defined, quotas must sum to 1, the train length must be set) and every method's own
    settings (the method's `Settings` in baselines, including each override and variant).
    A file is read with duplicate keys refused.
    """
    if isinstance(src, (str, os.PathLike)):
        config = load_yaml_strict(src)
    else:
        config = copy.deepcopy(dict(src))
    config = apply_recipe(config)
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    from harness import reports

    # every target module owns the schema of its experiments entry (harness/reports/targets/)
    schema["properties"]["experiments"]["properties"] = reports.experiment_schemas()
    errors = sorted(_validator_with_defaults()(schema).iter_errors(config),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {_where(e.absolute_path)}: {e.message}" for e in errors]
        raise ConfigError(f"config {config.get('name', '?')!r} is invalid "
                          f"(see {SCHEMA_PATH.relative_to(REPO_ROOT)}):\n" + "\n".join(lines))
    _check_references(config)
    check_methods(config)
    return config


def _need(config, section, name, where):
    if name not in config[section]:
        raise ConfigError(f"{where} names {name!r}, which is not defined under `{section}:` "
                          f"(defined: {', '.join(config[section])})")


def _check_references(config: dict) -> None:
    """Semantic checks the schema cannot express."""
    train = config["train"]
    if train["max_steps"] is None and train["epochs"] is None:
        raise ConfigError("train: set max_steps or epochs")
    for name, ds in config["datasets"].items():
        _need(config, "eval", ds["suite"], f"datasets.{name}.suite")
    if ZERO_SHOT in config["methods"]:
        raise ConfigError(f"methods.{ZERO_SHOT}: the name is reserved for the zero-shot reference (the base model, "
                          f"experiments.table2.zero_shot: true); rename the entry")
    for name in config["methods"]:
        entry = method_entry(config, name)
        for key in ("lr", "placement"):
            if key not in entry:
                raise ConfigError(f"methods.{name}: set `{key}` (or `base:` an entry that sets it)")
        _need(config, "placements", entry["placement"], f"methods.{name}.placement")
        for i, ov in enumerate(entry.get("overrides", [])):
            for key, section in (("model", "models"), ("dataset", "datasets")):
                if key in ov["when"]:
                    _need(config, section, ov["when"][key], f"methods.{name}.overrides[{i}].when.{key}")
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
                _need(config, "models", model, f"{where}.model")
        if "dataset" in exp:
            _need(config, "datasets", exp["dataset"], f"{where}.dataset")
        for method in exp.get("methods", []) + [m for e in extra for m in e["methods"]]:
            _need(config, "methods", method, f"{where}.methods")
        for place in exp.get("placements", []) + [exp.get("placement")] * ("placement" in exp):
            _need(config, "placements", place, f"{where}.placements")
        if "method" in exp:
            _need(config, "methods", exp["method"], f"{where}.method")
        stray = [s for s in exp.get("seeds", []) if s not in config["seeds"]]
        if stray:
            raise ConfigError(f"{where}.seeds: {stray} not in seeds {config['seeds']}; an experiment runs a "
                              "subset of the config's seeds (add them to `seeds:` or drop them here)")
    if config.get("primary_metric") and config.get("protocol") != "cloze":
        raise ConfigError(f"primary_metric: {config['primary_metric']} is a cloze metric, but protocol is "
                          f"{config.get('protocol')}; drop primary_metric (generative: the answer's accuracy) "
                          "or set protocol: cloze")
    if config["experiments"]:
        _need(config, "methods", config["proposed"], "proposed")
    from harness import reports

    for name in reports.configured(config):  # each target's own checks (its module's `check`)
        t = reports.REGISTRY[name]
        if hasattr(t.module, "check"):
            t.module.check(config, config["experiments"][t.experiment])


def method_entry(config: dict, name: str) -> dict:
    """The config entry methods.<name> with its `base` entry's keys inherited (variants).

    A variant `{base: smt, scoring: abs_mean, label: ...}` starts from methods.smt (when the
    config defines it; every key but `label`), then its own keys replace those; `deviations` and
    `overrides` are concatenated (the base's first). `base` names a registered method or another
    entry; the chain ends at a registered method (see registered_method).
    """
    methods = config["methods"]
    _need(config, "methods", name, "method")
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


def _method_class(config: dict, name: str):
    import baselines

    registered = registered_name(config, name)
    try:
        return baselines.get_method(registered)
    except KeyError:
        where = f"methods.{name}.base" if registered != name else f"methods.{name}"
        raise ConfigError(f"{where}: no method {registered!r} in the baselines registry "
                          f"(available: {', '.join(baselines.available())}). Add a module under baselines/ "
                          "(README, Add your own method) or name a registered method in `base:`") from None


def _settings_values(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in SHARED_METHOD_KEYS}


def check_methods(config: dict) -> None:
    """Validate every method entry's own keys with its method's Settings (imports the registry)."""
    from baselines.settings import SettingsError

    for name in config["methods"]:
        cls, entry = _method_class(config, name), method_entry(config, name)
        values = _settings_values(entry)
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
    return label if label else getattr(_method_class(config, name), "label", name)


def check_registry(config: dict) -> None:
    """Every configured method must run a method of the baselines registry (imports torch)."""
    for name in config["methods"]:
        _method_class(config, name)


def budget_label(percent) -> str:
    """0.84 -> '0.84', 2.5 -> '2.50': the budget as it appears in run ids."""
    return f"{float(percent):.2f}"


LR_SUFFIX = "@lr"


def lr_label(lr) -> str:
    """3e-4 -> '0.0003', 1e-5 -> '1e-05': a learning rate as it appears in run ids (Python's g format)."""
    return f"{float(lr):g}"


def make_run_id(model, dataset, method, budget, placement, seed, lr=None) -> str:
    """Build a run id; budget is a percent (ignored for full FT, which is 'b100'); lr: a tuned
    learning rate, written into the method field (`lora@lr0.001`), else the method entry's."""
    label = FULL_FT_BUDGET if method == FULL_FT else budget_label(budget)
    name = method if lr is None else f"{method}{LR_SUFFIX}{lr_label(lr)}"
    return RUN_ID_TEMPLATE.format(model=model, dataset=dataset, method=name, budget=label, placement=placement,
                                  seed=seed)


def _run_id_regex():
    import re

    pattern = re.escape(RUN_ID_TEMPLATE)
    for key, rx in RUN_ID_PATTERNS.items():
        pattern = pattern.replace(re.escape("{" + key + "}"), f"(?P<{key}>{rx})")
    return re.compile(pattern)


def parse_run_id(run_id: str) -> dict:
    """Split a run id into model, dataset, method, budget (percent, None for full FT), placement, seed."""
    m = _run_id_regex().fullmatch(run_id.strip("/"))
    if m is None:
        raise ConfigError(f"bad run id {run_id!r}; expected {RUN_ID_TEMPLATE} "
                          f"({', '.join(f'{k}: {v}' for k, v in RUN_ID_PATTERNS.items())})")
    parts = m.groupdict()
    method, _, written = parts["method"].partition(LR_SUFFIX)
    try:
        lr = float(written) if written else None
    except ValueError:
        raise ConfigError(f"bad run id {run_id!r}: {written!r} after {LR_SUFFIX} is not a learning rate") from None
    if lr is not None and (lr <= 0 or lr_label(lr) != written):
        raise ConfigError(f"bad run id {run_id!r}: write the learning rate as {lr_label(lr)!r} (Python's g format), "
                          "one spelling per rate")
    return {"model": parts["model"], "dataset": parts["dataset"], "method": method, "lr": lr,
            "budget": None if method == FULL_FT else float(parts["budget"]),
            "placement": parts["placement"], "seed": int(parts["seed"])}


def run_ids(config, model, dataset, method, budget, placement=None, seeds=None) -> list[str]:
    """Run ids of one configuration, one per seed (an experiment's `seeds`, else the config's);
    placement: the method entry's default placement unless given. Where the config carries the
    learning-rate choice of experiments.lr_sweep (`lr_chosen`, put there by the workflow from
    the sweep's choice.json, harness.lr_sweep), the run ids name the chosen rate."""
    placement = placement or method_entry(config, method)["placement"]
    lr = chosen_lr(config, dataset, method)
    return [make_run_id(model, dataset, method, budget, placement, s, lr=lr) for s in seeds or config["seeds"]]


def tuned_method(config: dict, method: str) -> str:
    """The method whose swept rate a method entry uses: a variant (`base: smt`) uses its base's."""
    return config["methods"].get(method, {}).get("base", method)


def chosen_lr(config: dict, dataset: str, method: str):
    """The learning rate experiments.lr_sweep chose for a method on a dataset (None: not swept,
    the method entry's rate applies). The choice comes from the sweep's validation results,
    never from the config (config["lr_chosen"], written by the workflow: workflow/rules/lr_sweep.smk)."""
    chosen = (config.get("lr_chosen") or {}).get(dataset) or {}
    return chosen.get(tuned_method(config, method))


def repo_path(path) -> pathlib.Path:
    """A config path: absolute as given, else relative to the repository root."""
    path = pathlib.Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def model_dir(config: dict, model: str) -> str:
    """Directory of the prepared model (relative to the repository root)."""
    return f"{config['paths']['resources']}/models/{model}"


def train_set_path(config: dict, dataset: str) -> str:
    """Prepared training set (LLM-Adapters JSON) of a dataset."""
    return f"{config['paths']['resources']}/data/{dataset}/train.json"


def run_dir(config: dict, run_id: str) -> str:
    """Results directory of a run."""
    return f"{config['paths']['results']}/runs/{run_id}"


def model_spec(config: dict, model: str) -> dict:
    """The model source spec handed to harness.models.prepare_model (without dtype and deviations)."""
    _need(config, "models", model, "model")
    return {k: v for k, v in config["models"][model].items() if k not in ("dtype", "deviations")}


def dataset_spec(config: dict, dataset: str) -> dict:
    """The builder spec handed to harness.data.prepare_train_set; under `protocol: cloze` it says
    so (the records become cloze targets), under the paper's generative protocol it is the
    config's entry as written."""
    _need(config, "datasets", dataset, "dataset")
    spec = {k: v for k, v in config["datasets"][dataset].items() if k != "suite"}
    if config.get("protocol", "generative") != "generative" and config["datasets"][dataset]["suite"] == "commonsense":
        spec["protocol"] = config["protocol"]
    return spec


def suite_of(config: dict, run_id: str) -> str:
    """Evaluation suite of a run (from its training set)."""
    return config["datasets"][parse_run_id(run_id)["dataset"]]["suite"]


def _matches(when: dict, model: str, dataset: str, budget) -> bool:
    return (when.get("model", model) == model and when.get("dataset", dataset) == dataset
            and ("budget" not in when or (budget is not None and abs(when["budget"] - budget) < 1e-9)))


def _method_ref(config: dict, method: str, model: str, dataset: str, budget):
    """The run's MethodRef: the registered method, the variant, lr and its Settings (parsed here,
    once, with defaults filled). Overrides whose `when` (model, dataset, budget in percent) matches
    the run apply in order."""
    from harness.run_config import MethodRef

    entry = method_entry(config, method)
    values = _settings_values(entry)
    lr = entry["lr"]
    for ov in entry.get("overrides", []):
        if _matches(ov["when"], model, dataset, budget):
            lr = ov["set"].get("lr", lr)
            values.update({k: v for k, v in ov["set"].items() if k != "lr"})
    cls = _method_class(config, method)
    return MethodRef(name=cls.name, variant=method, lr=lr, settings=cls.parse_settings(values, f"methods.{method}"))


def target_modules(place: dict) -> list[str] | None:
    """A placement's modules: target_modules as given, else the union of its quota groups."""
    if "target_modules" in place:
        return place["target_modules"]
    return list(dict.fromkeys(m for q in place["quotas"].values() for m in q["modules"]))


def resolve_run(config: dict, run_id: str):
    """The RunConfig of one run (harness.run_config; docs/ARCHITECTURE.md), from its id and the config."""
    from harness.run_config import DatasetRef, ModelRef, Placement, RunConfig, TrainConfig

    parts = parse_run_id(run_id)
    zero_shot = parts["method"] == ZERO_SHOT
    sections = [("models", "model"), ("datasets", "dataset")]
    if not zero_shot:  # the zero-shot run has no entry under methods: or placements: (_zero_shot_cfg)
        sections += [("methods", "method"), ("placements", "placement")]
    for section, key in sections:
        _need(config, section, parts[key], f"run id {run_id!r}")
    if parts["seed"] not in config["seeds"]:
        raise ConfigError(f"run id {run_id!r}: seed {parts['seed']} is not in seeds {config['seeds']}")
    model = config["models"][parts["model"]]
    if zero_shot:
        method, placement, deviations = _zero_shot_cfg(config, parts)
    else:
        place = config["placements"][parts["placement"]]
        method = _method_ref(config, parts["method"], parts["model"], parts["dataset"], parts["budget"])
        if parts["lr"] is not None:  # the rate the run id names (a sweep's rate, or the chosen one)
            method = dataclasses.replace(method, lr=parts["lr"])
        placement = Placement(name=parts["placement"], target_modules=target_modules(place),
                              quotas=copy.deepcopy(place.get("quotas")))
        deviations = list(model.get("deviations", [])) + list(config["deviations"]) \
            + list(method_entry(config, parts["method"]).get("deviations", []))
    if "protocol" in dataset_spec(config, parts["dataset"]):
        deviations.append(CLOZE_DEVIATION)
    # threads are an execution resource, not part of the experiment: the job script takes them
    # (snakemake.threads) and the record's meta_info says what was used; keeping them out of the
    # run config means a change of threads does not rerun finished runs.
    return RunConfig(
        run_id=run_id,
        config_name=config["name"],
        model=ModelRef(name=parts["model"], path=model_dir(config, parts["model"]),
                       dtype=model.get("dtype", "float32"), device="auto"),
        # spec: what the prepared file must have been built from (the loop checks its meta), so a
        # train.json prepared for another config's dataset of the same name is never used silently
        dataset=DatasetRef(name=parts["dataset"], path=train_set_path(config, parts["dataset"]),
                           spec=dataset_spec(config, parts["dataset"])),
        method=method,
        budget=None if parts["budget"] is None else round(parts["budget"] / 100.0, 10),
        placement=placement,
        seed=parts["seed"],
        train=TrainConfig.from_json(config["train"]),
        recipe=config.get("recipe"),
        deviations=tuple(deviations),
    )


def zero_shot_run_id(config: dict, model: str, dataset: str) -> str:
    """The run id of a model's zero-shot reference (the suite of `dataset`, the config's first seed)."""
    return make_run_id(model, dataset, ZERO_SHOT, 0, ZERO_SHOT_PLACEMENT, config["seeds"][0])


def _zero_shot_cfg(config: dict, parts: dict) -> tuple:
    """(method, placement, deviations) of a zero-shot run: no entry under `methods:`/`placements:`."""
    if parts["budget"] != 0 or parts["placement"] != ZERO_SHOT_PLACEMENT or parts["lr"] is not None:
        raise ConfigError(f"a {ZERO_SHOT} run has budget 0, placement {ZERO_SHOT_PLACEMENT!r} and no learning rate; "
                          f"got lr {parts['lr']}, b{parts['budget']}/{parts['placement']}")
    from harness.run_config import MethodRef, Placement

    return (MethodRef.from_json({"name": ZERO_SHOT, "variant": ZERO_SHOT, "lr": 0.0}),
            Placement(name=ZERO_SHOT_PLACEMENT, target_modules=[], quotas=None),
            list(config["models"][parts["model"]].get("deviations", [])) + list(config["deviations"]))


def profile_run_id(config: dict, model: str, method: str) -> str:
    """The run id a Table 1 profile job uses (the table's budget, first seed)."""
    exp = config["experiments"]["table1"]
    return make_run_id(model, exp["dataset"], method, exp["budget"],
                       method_entry(config, method)["placement"], config["seeds"][0])


VAL_SUFFIX = "_val"  # <suite>_val: the validation split experiments.lr_sweep chooses rates on


def val_suite(suite: str) -> str:
    """The name of a suite's validation split (its evaluation file: val/<suite>_val.json)."""
    return suite + VAL_SUFFIX


def primary_metric(config: dict) -> str:
    """The study's declared primary endpoint: `primary_metric` under cloze (acc_norm or acc), the
    generated answer's accuracy under the paper's generative protocol."""
    return (config.get("primary_metric") or "acc_norm") if config.get("protocol") == "cloze" else "accuracy"


def validation_starts(config: dict, dataset: str, tasks) -> dict:
    """Where each task's validation split starts in its test file: beyond the evaluated head
    (eval.<suite>.limit) and beyond the records the dataset carves out of that file for training
    (datasets.<name>.carve: offset + max_per_task), so it never overlaps either."""
    spec = config["datasets"][dataset]
    head = config["eval"][spec["suite"]].get("limit")
    if head is None:
        raise ConfigError(f"experiments.lr_sweep: eval.{spec['suite']}.limit is null (every test example is "
                          "evaluated), so no test example is left for a validation split; set a limit")
    carve = spec.get("carve") or {}
    starts = {}
    for task in tasks:
        start = int(head)
        if task in carve.get("tasks", []):
            if carve.get("max_per_task") is None:
                raise ConfigError(f"datasets.{dataset}.carve.max_per_task is null: {task}'s training records run "
                                  "to the end of its test file and leave no validation split; set max_per_task")
            start = max(start, int(carve.get("offset", 0)) + int(carve["max_per_task"]))
        starts[task] = start
    return starts


def eval_cfg(config: dict, suite: str) -> dict:
    """The eval_cfg of one suite (docs/ARCHITECTURE.md), or of its validation split `<suite>_val`
    (experiments.lr_sweep.validation: `limit` records per task from validation_starts on). Not
    the data root: where the data lives decides nothing; the job resolves it
    (harness.data.resolve_data_root, the one resolver)."""
    if suite.endswith(VAL_SUFFIX) and suite[:-len(VAL_SUFFIX)] in config["eval"]:
        base, sweep = suite[:-len(VAL_SUFFIX)], config["experiments"].get("lr_sweep")
        if sweep is None or config["datasets"][sweep["dataset"]]["suite"] != base:
            raise ConfigError(f"suite {suite!r} is the validation split of experiments.lr_sweep, which this config "
                              f"does not define for suite {base!r}")
        cfg = eval_cfg(config, base)
        cfg.update(suite=suite, split="validation", limit=int(sweep["validation"]["limit"]),
                   start=validation_starts(config, sweep["dataset"], cfg["tasks"]))
        return cfg
    _need(config, "eval", suite, "suite")
    cfg = {"suite": suite, **copy.deepcopy(config["eval"][suite])}
    if config.get("protocol", "generative") != "generative" and suite == "commonsense":
        cfg["protocol"] = config["protocol"]  # harness.evaluate scores options by log-likelihood (cloze)
        cfg["metric"] = primary_metric(config)  # the pick counted as correct (acc_norm or acc)
    return cfg
