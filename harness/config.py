"""Configuration: schema validation, sweep expansion and per-run resolution.

All sweep logic lives here; the Snakemake rules only call these functions.
A run id is "<model>/<dataset>/<method>/b<budget%>/<placement>/s<seed>", e.g.
"smollm2-135m/commonsense/smt/b0.84/qkv/s0"; full fine-tuning is
"<model>/<dataset>/full_ft/b100/<placement>/s<seed>".
"""
from __future__ import annotations

import copy
import os
import pathlib

import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
TABLES = ("table1", "table2", "table3", "table4", "table5", "table6")
FIGURES = ("figure3", "figure4", "figure5")
TARGETS = TABLES + FIGURES
FULL_FT = "full_ft"
FULL_FT_BUDGET = "100"
RUN_ID_PATTERNS = {
    "model": r"[A-Za-z0-9._-]+",
    "dataset": r"[A-Za-z0-9_-]+",
    "method": r"[a-z0-9_]+",
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


def load_config(src) -> dict:
    """Load (path) or copy (dict) a config, validate it and fill defaults; raise ConfigError.

    Checks the JSON schema (unknown keys, types, ranges) and then the cross
    references: every model, dataset, method and placement an experiment names
    must be defined, quotas must sum to 1, and the train length must be set.
    """
    if isinstance(src, (str, os.PathLike)):
        path = pathlib.Path(src)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        config = yaml.safe_load(path.read_text()) or {}
    else:
        config = copy.deepcopy(dict(src))
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    errors = sorted(_validator_with_defaults()(schema).iter_errors(config),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {_where(e.absolute_path)}: {e.message}" for e in errors]
        raise ConfigError(f"config {config.get('name', '?')!r} is invalid "
                          f"(see {SCHEMA_PATH.relative_to(REPO_ROOT)}):\n" + "\n".join(lines))
    _check_references(config)
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
    for name, method in config["methods"].items():
        _need(config, "placements", method["placement"], f"methods.{name}.placement")
    for name, place in config["placements"].items():
        quotas = place.get("quotas")
        if quotas and abs(sum(q["share"] for q in quotas.values()) - 1.0) > 1e-6:
            raise ConfigError(f"placements.{name}.quotas: shares must sum to 1")
        if "target_modules" not in place and not quotas:
            raise ConfigError(f"placements.{name}: set target_modules or quotas")
        if "target_modules" in place and place["target_modules"] is None \
                and name != config["methods"].get(FULL_FT, {}).get("placement"):
            raise ConfigError(f"placements.{name}: target_modules null (all parameters) is only for full_ft")
    for target, exp in config["experiments"].items():
        where = f"experiments.{target}"
        for model in exp.get("models", [exp.get("model")]):
            if model is not None:
                _need(config, "models", model, f"{where}.model")
        if "dataset" in exp:
            _need(config, "datasets", exp["dataset"], f"{where}.dataset")
        for method in exp.get("methods", []):
            _need(config, "methods", method, f"{where}.methods")
        for place in exp.get("placements", []) + [exp.get("placement")] * ("placement" in exp):
            _need(config, "placements", place, f"{where}.placements")
    sweep = config["experiments"]["table3"]["methods"]
    for method in ("lora", "dora", "smt"):
        if method not in sweep:
            raise ConfigError(f"experiments.table3.methods must include {method!r} (Table 2 and Figure 3 use it)")
    if config["experiments"]["table2"]["full_ft"]:
        _need(config, "methods", FULL_FT, "experiments.table2.full_ft")
    if "smt" not in config["experiments"]["table5"]["methods"] and config["experiments"]["table5"]["smt_best_budgets"]:
        raise ConfigError("experiments.table5: smt_best_budgets needs 'smt' in methods")


def check_registry(config: dict) -> None:
    """Every configured method must exist in the baselines registry (imports torch; call before jobs run)."""
    import baselines

    known = set(baselines.available())
    for name in config["methods"]:
        if name not in known:
            raise ConfigError(f"methods.{name}: no such method in the baselines registry "
                              f"(available: {', '.join(sorted(known))})")


def budget_label(percent) -> str:
    """0.84 -> '0.84', 2.5 -> '2.50': the budget as it appears in run ids."""
    return f"{float(percent):.2f}"


def make_run_id(model, dataset, method, budget, placement, seed) -> str:
    """Build a run id; budget is a percent (ignored for full FT, which is 'b100')."""
    label = FULL_FT_BUDGET if method == FULL_FT else budget_label(budget)
    return f"{model}/{dataset}/{method}/b{label}/{placement}/s{seed}"


def parse_run_id(run_id: str) -> dict:
    """Split a run id into model, dataset, method, budget (percent, None for full FT), placement, seed."""
    parts = run_id.strip("/").split("/")
    if len(parts) != 6 or not parts[3].startswith("b") or not parts[5].startswith("s"):
        raise ConfigError(f"bad run id {run_id!r}; expected <model>/<dataset>/<method>/b<budget%>/<placement>/s<seed>")
    model, dataset, method, budget, placement, seed = parts
    return {"model": model, "dataset": dataset, "method": method,
            "budget": None if method == FULL_FT else float(budget[1:]),
            "placement": placement, "seed": int(seed[1:])}


def _run(config, model, dataset, method, budget, placement=None):
    placement = placement or config["methods"][method]["placement"]
    return [make_run_id(model, dataset, method, budget, placement, s) for s in config["seeds"]]


def models_of(config: dict, target: str) -> list[str]:
    """Models a sweep-based target covers (Table 2 may list its own; the rest use the sweep's)."""
    exps = config["experiments"]
    return exps[target].get("models") or exps["table3"]["models"]


def _target_runs(config: dict, target: str) -> list[str]:
    exps = config["experiments"]
    exp = exps[target]
    runs = []
    if target == "table1":
        return runs
    sweep = exps["table3"]
    if target in ("table3", "figure3", "table2"):
        for model in models_of(config, target):
            for method in sweep["methods"]:
                for budget in sweep["budgets"]:
                    runs += _run(config, model, sweep["dataset"], method, budget)
            if target == "table2" and exp["full_ft"]:
                runs += _run(config, model, sweep["dataset"], FULL_FT, None)
    elif target in ("table4", "table6"):
        for place in exp["placements"]:
            runs += _run(config, exp["model"], exp["dataset"], "smt", exp["budget"], place)
    elif target == "table5":
        for method in exp["methods"]:
            for budget in exp["budgets"]:
                runs += _run(config, exp["model"], exp["dataset"], method, budget)
        for budget in exp["smt_best_budgets"]:
            runs += _run(config, exp["model"], exp["dataset"], "smt", budget)
    elif target in ("figure4", "figure5"):
        runs = _run(config, exp["model"], exp["dataset"], "smt", exp["budget"], exp["placement"])
    return runs


def expand_runs(config: dict, target: str) -> list[str]:
    """Run ids a target needs ('all' for every target), each once, in a stable order."""
    if target != "all" and target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}; use one of {', '.join(TARGETS)} or all")
    targets = TARGETS if target == "all" else (target,)
    return list(dict.fromkeys(r for t in targets for r in _target_runs(config, t)))


def expand_profiles(config: dict) -> list[tuple[str, str]]:
    """(model, method) pairs Table 1 profiles."""
    exp = config["experiments"]["table1"]
    return [(exp["model"], method) for method in exp["methods"]]


def repo_path(path) -> pathlib.Path:
    """A config path: absolute as given, else relative to the repository root."""
    path = pathlib.Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def data_root(config: dict) -> str | None:
    """The data mirror: env SMT_DATA_ROOT, else config data_root (None: download upstream)."""
    root = os.environ.get("SMT_DATA_ROOT") or config["data_root"]
    return None if root is None else os.path.normpath(repo_path(root))


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
    """The model source spec handed to harness.models.prepare_model (without dtype)."""
    _need(config, "models", model, "model")
    return {k: v for k, v in config["models"][model].items() if k != "dtype"}


def dataset_spec(config: dict, dataset: str) -> dict:
    """The builder spec handed to harness.data.prepare_train_set."""
    _need(config, "datasets", dataset, "dataset")
    return {k: v for k, v in config["datasets"][dataset].items() if k != "suite"}


def suite_of(config: dict, run_id: str) -> str:
    """Evaluation suite of a run (from its training set)."""
    return config["datasets"][parse_run_id(run_id)["dataset"]]["suite"]


def _method_cfg(config: dict, method: str, dataset: str) -> dict:
    spec = copy.deepcopy(config["methods"][method])
    spec.pop("placement")
    spec.pop("deviations", None)
    lr = spec.pop("lr_by_dataset", {}).get(dataset)
    warm = spec.pop("warmup_steps_by_dataset", {}).get(dataset)
    if lr is not None:
        spec["lr"] = lr
    if warm is not None:
        spec["warmup_steps"] = warm
    return {"name": method, **spec}


def target_modules(place: dict) -> list[str] | None:
    """A placement's modules: target_modules as given, else the union of its quota groups."""
    if "target_modules" in place:
        return place["target_modules"]
    return list(dict.fromkeys(m for q in place["quotas"].values() for m in q["modules"]))


def resolve_run(config: dict, run_id: str) -> dict:
    """The full run_cfg of one run (docs/ARCHITECTURE.md), from its id and the config."""
    parts = parse_run_id(run_id)
    for section, key in (("models", "model"), ("datasets", "dataset"), ("methods", "method"),
                         ("placements", "placement")):
        _need(config, section, parts[key], f"run id {run_id!r}")
    if parts["seed"] not in config["seeds"]:
        raise ConfigError(f"run id {run_id!r}: seed {parts['seed']} is not in seeds {config['seeds']}")
    place = config["placements"][parts["placement"]]
    model = config["models"][parts["model"]]
    # threads are an execution resource, not part of the experiment: the job script sets them
    # (snakemake.threads) and the record's meta_info says what was used; keeping them out of
    # the params means a change of threads does not rerun finished runs.
    train = dict(config["train"])
    return {
        "run_id": run_id,
        "config_name": config["name"],
        "model": {"name": parts["model"], "path": model_dir(config, parts["model"]),
                  "dtype": model.get("dtype", "float32"), "device": "auto"},
        "dataset": {"name": parts["dataset"], "path": train_set_path(config, parts["dataset"])},
        "method": _method_cfg(config, parts["method"], parts["dataset"]),
        "budget": None if parts["budget"] is None else round(parts["budget"] / 100.0, 10),
        "placement": {"name": parts["placement"], "target_modules": target_modules(place),
                      "quotas": place.get("quotas")},
        "seed": parts["seed"],
        "train": train,
        "deviations": list(config["deviations"]) + list(config["methods"][parts["method"]].get("deviations", [])),
    }


def profile_run_id(config: dict, model: str, method: str) -> str:
    """The run id a Table 1 profile job uses (the table's budget, first seed)."""
    exp = config["experiments"]["table1"]
    return make_run_id(model, exp["dataset"], method, exp["budget"],
                       config["methods"][method]["placement"], config["seeds"][0])


def eval_cfg(config: dict, suite: str) -> dict:
    """The eval_cfg of one suite (docs/ARCHITECTURE.md)."""
    _need(config, "eval", suite, "suite")
    return {"suite": suite, "data_root": data_root(config), **copy.deepcopy(config["eval"][suite])}
