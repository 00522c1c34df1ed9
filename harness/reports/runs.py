"""Loading: one `Run` per record.json, joined with its evaluation outputs (read-only).

The report reads a run's `record.json` (train job) and its `eval/<suite>.json` and
`eval/<task>.predictions.jsonl` (evaluate job); it never writes into run directories.

The record is the source of truth of what a run is: its identity (model, dataset, method
variant, budget, placement, seed, learning rate) comes from the typed `RunConfig` the train job
stored in it (`run_info.config`, harness.run_config), not from re-reading its run id or today's
config. A table groups and selects runs on these typed fields (`Run.fields`). The run id is the
run's path; the only thing still read from it is whether it names its learning rate
(`Run.lr_named`: the rate was tuned, experiments.lr_sweep). What today's config still decides is
presentation only: a method's display label (`method_label`) and the layout of each table.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import numpy as np

from harness import config as hc
from harness import forgetting
from harness.records import read_json, read_record
from harness.run_config import RunConfig, RunConfigError


@dataclasses.dataclass
class Run:
    """A run record joined with its evaluation outputs (read-only)."""

    path: pathlib.Path
    record: dict
    evals: dict  # suite -> eval/<suite>.json content
    correct: dict  # suite -> {task: np.ndarray of 0/1, in example-id order}
    labels: dict  # suite -> {task: [label, ...]}
    problems: dict  # suite -> why per-example data is unusable

    @property
    def info(self) -> dict:
        return self.record["run_info"]

    @property
    def run_id(self) -> str:
        return self.info["run_id"]

    @functools.cached_property
    def config(self) -> RunConfig:
        """The typed config the run was trained with (run_info.config of its record)."""
        try:
            return RunConfig.from_json(self.info.get("config"))
        except (RunConfigError, TypeError, ValueError) as err:
            raise ValueError(f"{self.path}: run_info.config is not a run config ({err}); the record was not "
                             "written by the train job: train the run again") from err

    @functools.cached_property
    def fields(self) -> dict:
        """The typed fields a table groups and selects on, from the record's run config: model,
        dataset, method (the method entry / variant name), budget (percent as the run id writes it,
        None for full FT), placement, seed, lr (the rate trained with)."""
        c = self.config
        budget = c.budget_percent
        return {"model": c.model.name, "dataset": c.dataset.name, "method": c.method.variant,
                "budget": None if budget is None else float(hc.budget_label(budget)),
                "placement": c.placement.name, "seed": c.seed, "lr": c.method.lr}

    @property
    def model(self) -> str:
        return self.fields["model"]

    @property
    def dataset(self) -> str:
        return self.fields["dataset"]

    @property
    def method(self) -> str:
        return self.fields["method"]

    @property
    def budget(self) -> float | None:
        return self.fields["budget"]

    @property
    def placement(self) -> str:
        return self.fields["placement"]

    @property
    def seed(self) -> int:
        return self.fields["seed"]

    @property
    def lr(self) -> float:
        return self.fields["lr"]

    @property
    def lr_named(self) -> float | None:
        """The learning rate the run id names (a rate tuned by experiments.lr_sweep), else None."""
        return self.lr if hc.parse_run_id(self.run_id)["lr"] is not None else None

    @property
    def status(self) -> str:
        return self.info.get("status") or "unknown"

    @property
    def reached(self) -> float | None:
        """Budget reached, percent of all parameters (full FT: 100)."""
        if self.method == hc.FULL_FT:
            return 100.0
        value = self.info.get("budget_reached", self.record.get("train_info", {}).get("budget_reached"))
        return None if value is None else 100.0 * float(value)

    def state(self, suite: str, tasks: list[str]) -> tuple[str, str | None]:
        """("ok", None) when the run has per-example results for every task, else (state, reason)."""
        if self.status != "ok":
            return self.status, self.info.get("error") or f"status {self.status}"
        ev = self.evals.get(suite)
        if ev is None:
            return "missing", f"no evaluation {self.path.parent / 'eval' / (suite + '.json')}"
        if ev.get("status", "ok") != "ok":
            return ev.get("status"), ev.get("reason")
        if suite in self.problems:
            return "missing", self.problems[suite]
        lacking = [t for t in tasks if t not in self.correct.get(suite, {})]
        if lacking:
            return "missing", f"no results for {', '.join(lacking)} in {self.path.parent / 'eval'}"
        return "ok", None


def read_predictions(path) -> list[dict]:
    """The rows of one `<task>.predictions.jsonl`, in example-id order; a corrupt file is an error
    naming it (the one reader of prediction files)."""
    path = pathlib.Path(path)
    try:
        return sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                      key=lambda r: r["id"])
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path} is corrupt ({err}); evaluate the run again") from err


def load_run(record_path) -> Run:
    """Read a run's record.json and its eval/*.json and per-task predictions (never writes)."""
    path = pathlib.Path(record_path)
    record = read_record(path)  # the one record reader (harness.records)
    if not isinstance(record, dict) or "run_id" not in record.get("run_info", {}):
        raise ValueError(f"{path} is not a run record (no run_info.run_id); train the run again")
    if "config" not in record["run_info"]:
        raise ValueError(f"{path} has no run_info.config (the typed run config the reports read); "
                         "train the run again")
    evals, correct, labels, problems = {}, {}, {}, {}
    # eval/: the test suites; val/: the validation split of experiments.lr_sweep (<suite>_val.json)
    for result in sorted([*(path.parent / "eval").glob("*.json"), *(path.parent / "val").glob("*.json")]):
        if result.name == forgetting.FILE:  # not a suite's evaluation (harness.forgetting)
            continue
        ev = read_json(result, "the evaluate job's output")
        suite = ev.get("suite") or result.stem
        evals[suite] = ev
        if ev.get("status", "ok") != "ok":
            continue
        correct[suite], labels[suite] = {}, {}
        for task in ev.get("tasks", {}):
            pred = result.parent / f"{task}.predictions.jsonl"
            if not pred.is_file():
                problems[suite] = f"no per-example predictions {pred}; evaluate the run again"
                break
            rows = read_predictions(pred)
            correct[suite][task] = np.array([bool(r["correct"]) for r in rows], dtype=float)
            labels[suite][task] = [str(r["label"]) for r in rows]
            if len(rows) != ev["tasks"][task].get("n", len(rows)):
                problems[suite] = f"{pred} has {len(rows)} rows, {result} says n={ev['tasks'][task]['n']}"
    return Run(path, record, evals, correct, labels, problems)




def method_label(config: dict, name: str) -> str:
    """Display name of a method: its config entry's label, else the method class's `label`, else
    the name (a run of a method the config no longer defines keeps its name)."""
    try:
        return hc.method_label(config, name)
    except (hc.ConfigError, KeyError):
        return name
