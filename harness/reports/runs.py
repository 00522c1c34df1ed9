"""Loading: one `Run` per record.json, joined with its evaluation outputs (read-only).

The report reads a run's `record.json` (train job) and its `eval/<suite>.json` and
`eval/<task>.predictions.jsonl` (evaluate job); it never writes into run directories.
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
    def parts(self) -> dict:
        return hc.parse_run_id(self.run_id)

    @property
    def method(self) -> str:
        return self.parts["method"]

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
