"""Resolution: one run's typed `RunConfig` (and one suite's evaluation config) from the
validated config; the run ids a set of runs has; where a run's files live.

Built once, where the workflow plans a job (workflow/rules/*.smk); the job receives the JSON form.
"""
from __future__ import annotations

import copy
import dataclasses
import pathlib

from harness.config.errors import ConfigError, need
from harness.config.load import REPO_ROOT
from harness.config.methods import chosen_lr, method_entry, method_ref
from harness.config.run_ids import (VAL_SUFFIX, ZERO_SHOT, ZERO_SHOT_PLACEMENT, make_run_id, parse_run_id)
from harness.run_config import DatasetRef, EvalConfig, MethodRef, ModelRef, Placement, RunConfig, TrainConfig

CLOZE_DEVIATION = ("protocol: cloze (training targets are the gold option's text after a 'Question: ...\\nAnswer:' "
                   "prompt; evaluation scores each option's log-likelihood, lm-eval multiple_choice) instead of "
                   "LLM-Adapters' generative 'the correct answer is <label>' (the paper's)")


def run_ids(config, model, dataset, method, budget, placement=None, seeds=None) -> list[str]:
    """Run ids of one configuration, one per seed (an experiment's `seeds`, else the config's);
    placement: the method entry's default placement unless given. Where the config carries the
    learning-rate choice of experiments.lr_sweep (`lr_chosen`, put there by the workflow from
    the sweep's choice.json, harness.lr_sweep), the run ids name the chosen rate."""
    placement = placement or method_entry(config, method)["placement"]
    lr = chosen_lr(config, dataset, method)
    return [make_run_id(model, dataset, method, budget, placement, s, lr=lr) for s in seeds or config["seeds"]]


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
    """The model source spec handed to harness.models.prepare_model (without dtype)."""
    need(config, "models", model, "model")
    return {k: v for k, v in config["models"][model].items() if k not in ("dtype", "deviations")}


def dataset_spec(config: dict, dataset: str) -> dict:
    """The builder spec handed to harness.data.prepare_train_set; under `protocol: cloze` it says
    so (the records become cloze targets), under the paper's generative protocol it is the
    config's entry as written."""
    need(config, "datasets", dataset, "dataset")
    spec = {k: v for k, v in config["datasets"][dataset].items() if k != "suite"}
    if config.get("protocol", "generative") != "generative" and config["datasets"][dataset]["suite"] == "commonsense":
        spec["protocol"] = config["protocol"]
    return spec


def suite_of(config: dict, run_id: str) -> str:
    """Evaluation suite of a run (from its training set)."""
    return config["datasets"][parse_run_id(run_id)["dataset"]]["suite"]


def target_modules(place: dict) -> list[str] | None:
    """A placement's modules: target_modules as given, else the union of its quota groups."""
    if "target_modules" in place:
        return place["target_modules"]
    return list(dict.fromkeys(m for q in place["quotas"].values() for m in q["modules"]))


def resolve_run(config: dict, run_id: str):
    """The RunConfig of one run (harness.run_config; docs/ARCHITECTURE.md), from its id and the config."""
    parts = parse_run_id(run_id)
    zero_shot = parts["method"] == ZERO_SHOT
    sections = [("models", "model"), ("datasets", "dataset")]
    if not zero_shot:  # the zero-shot run has no entry under methods: or placements: (_zero_shot_cfg)
        sections += [("methods", "method"), ("placements", "placement")]
    for section, key in sections:
        need(config, section, parts[key], f"run id {run_id!r}")
    if parts["seed"] not in config["seeds"]:
        raise ConfigError(f"run id {run_id!r}: seed {parts['seed']} is not in seeds {config['seeds']}")
    model = config["models"][parts["model"]]
    if zero_shot:
        method, placement, deviations = _zero_shot_cfg(config, parts)
    else:
        place = config["placements"][parts["placement"]]
        method = method_ref(config, parts["method"], parts["model"], parts["dataset"], parts["budget"])
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
    return (MethodRef.from_json({"name": ZERO_SHOT, "variant": ZERO_SHOT, "lr": 0.0}),
            Placement(name=ZERO_SHOT_PLACEMENT, target_modules=[], quotas=None),
            list(config["models"][parts["model"]].get("deviations", [])) + list(config["deviations"]))


def profile_run_id(config: dict, model: str, method: str) -> str:
    """The run id a Table 1 profile job uses (the table's budget, first seed)."""
    exp = config["experiments"]["table1"]
    return make_run_id(model, exp["dataset"], method, exp["budget"],
                       method_entry(config, method)["placement"], config["seeds"][0])


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


def resolve_eval(config: dict, suite: str) -> EvalConfig:
    """The EvalConfig of one suite, or of its validation split `<suite>_val` (experiments.lr_sweep:
    `limit` records per task from validation_starts on), resolved once where the evaluate rule is planned."""
    return EvalConfig.from_json(_eval_dict(config, suite))


def eval_cfg(config: dict, suite: str) -> dict:
    """resolve_eval's JSON form: what the evaluate rule passes to its job (docs/ARCHITECTURE.md)."""
    return resolve_eval(config, suite).to_json()


def _eval_dict(config: dict, suite: str) -> dict:
    """The eval_cfg of one suite (docs/ARCHITECTURE.md), or of its validation split `<suite>_val`
    (experiments.lr_sweep.validation: `limit` records per task from validation_starts on). Not
    the data root: where the data lives decides nothing; the job resolves it
    (harness.data.resolve_data_root, the one resolver)."""
    if suite.endswith(VAL_SUFFIX) and suite[:-len(VAL_SUFFIX)] in config["eval"]:
        base, sweep = suite[:-len(VAL_SUFFIX)], config["experiments"].get("lr_sweep")
        if sweep is None or config["datasets"][sweep["dataset"]]["suite"] != base:
            raise ConfigError(f"suite {suite!r} is the validation split of experiments.lr_sweep, which this config "
                              f"does not define for suite {base!r}")
        cfg = _eval_dict(config, base)
        cfg.update(suite=suite, split="validation", limit=int(sweep["validation"]["limit"]),
                   start=validation_starts(config, sweep["dataset"], cfg["tasks"]))
        return cfg
    need(config, "eval", suite, "suite")
    cfg = {"suite": suite, **copy.deepcopy(config["eval"][suite])}
    if config.get("protocol", "generative") != "generative" and suite == "commonsense":
        cfg["protocol"] = config["protocol"]  # harness.evaluate scores options by log-likelihood (cloze)
        cfg["metric"] = primary_metric(config)  # the pick counted as correct (acc_norm or acc)
    return cfg
