"""Tables (CSV, Markdown, LaTeX) and figures (PNG, PDF) from run records and evaluations.

The report joins each run's `record.json` (train job) with its `eval/<suite>.json` and
`eval/<task>.predictions.jsonl` (evaluate job); it never writes into run directories.

Tables and figures are a registry: a new table is one function decorated with
`@table("tableN", title)` (plus its `experiments.tableN` config entry and its target in
`harness.config.TARGETS`); figures likewise with `@figure`. `make_table(name, config,
record_paths, out_prefix)` and `make_figure(...)` are what the Snakemake report rules call.

Numbers. Accuracies are percentages with a 95 % interval computed from the per-example
predictions (`harness.stats`): one seed, one task: Wilson; averages over tasks: a bootstrap
stratified by task; several seeds: mean ± standard deviation over seeds and a hierarchical
bootstrap interval (seeds, then examples). Differences between methods are paired (same test
examples) bootstrap intervals; a "best" mark is given only where the best row is significantly
better than every other row, otherwise the rows it cannot be told apart from are marked as tied.
Every table has a "label prior" row (always answering the most frequent label of the examples
evaluated) and a column with each row's difference from it. A dagger marks a task on which a
run's predictions are degenerate (one answer >= 90 % of the time). Failed, diverged or missing
runs are shown as such, with the reason in a footnote. Under each table: the config and the
deviations of its runs.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import textwrap
from collections import Counter
from typing import Callable

import numpy as np
import pandas as pd

from harness import config as hc
from harness import forgetting
from harness import stats

QKV = ("q_proj", "k_proj", "v_proj")
DAGGER = "†"
N_BOOT = 2000
BOOT_SEED = 0
PRIOR_ROW = "label prior"
VAL_LOSS_NOTE = ("val loss: final validation loss on the answer tokens of train.val_records held-out training "
                 "records (the same records for every run), mean over seeds (lowest–highest seed); lower is "
                 "better, a continuous signal beside accuracy. On the label-prior row: the loss of a model "
                 "that predicts the template exactly and each label by its training frequency; a run at or "
                 "above it has learned nothing about the questions")
DAGGER_NOTE = (f"{DAGGER} degenerate predictions on that task: one answer for >= 90 % of the examples "
               "(in at least one seed); the accuracy there is mostly the share of that label")
UNNUMBERED = (DAGGER_NOTE, VAL_LOSS_NOTE)  # explanatory footnotes no cell points to


# ----------------------------------------------------------------------------------------------
# loading: one Run per record.json, joined with its evaluation outputs

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


def _read_json(path: pathlib.Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it is corrupt: rebuild it ({what})") from err


def load_run(record_path) -> Run:
    """Read a run's record.json and its eval/*.json and per-task predictions (never writes)."""
    path = pathlib.Path(record_path)
    record = _read_json(path, "the run's record, written by the train job")
    if not isinstance(record, dict) or "run_id" not in record.get("run_info", {}):
        raise ValueError(f"{path} is not a run record (no run_info.run_id); train the run again")
    evals, correct, labels, problems = {}, {}, {}, {}
    for result in sorted((path.parent / "eval").glob("*.json")):
        if result.name == forgetting.FILE:  # not a suite's evaluation (harness.forgetting)
            continue
        ev = _read_json(result, "the evaluate job's output")
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
            try:
                rows = sorted((json.loads(line) for line in pred.read_text().splitlines() if line.strip()),
                              key=lambda r: r["id"])
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{pred} is corrupt ({err}); evaluate the run again") from err
            correct[suite][task] = np.array([bool(r["correct"]) for r in rows], dtype=float)
            labels[suite][task] = [str(r["label"]) for r in rows]
            entry = ev["tasks"][task]
            if "degenerate" not in entry and rows:  # an evaluation written before the flag existed
                preds = Counter("<none>" if r.get("prediction") is None else str(r["prediction"]) for r in rows)
                entry["degenerate"] = max(preds.values()) / len(rows) >= stats.DEGENERATE_SHARE
            if len(rows) != ev["tasks"][task].get("n", len(rows)):
                problems[suite] = f"{pred} has {len(rows)} rows, {result} says n={ev['tasks'][task]['n']}"
    return Run(path, record, evals, correct, labels, problems)


def load_record(path) -> dict:
    """A run record with `eval` filled from its eval/<suite>.json files (a joined, read-only view)."""
    run = load_run(path)
    return {**run.record, "eval": dict(run.evals)}


@functools.lru_cache(maxsize=None)
def _class_label(name: str) -> str:
    try:
        import baselines

        return getattr(baselines.get_method(name), "label", None) or name
    except Exception:  # noqa: BLE001 - an unknown or unloadable method keeps its name
        return name


def method_label(config: dict, name: str) -> str:
    """Display name of a method (config entry label, else the method class's `label`, else the name)."""
    helper = getattr(hc, "method_label", None)
    if helper is not None:
        try:
            return helper(config, name)
        except Exception:  # noqa: BLE001
            pass
    entry = config.get("methods", {}).get(name, {})
    return entry.get("label") or _class_label(name)


# ----------------------------------------------------------------------------------------------
# groups of seeds and their numbers

class Notes:
    """Footnotes, each text once; those that cells point to ("[k]") are numbered, the explanatory
    ones (UNNUMBERED: the dagger, the val-loss column) are not, so the numbers run 1, 2, ..."""

    def __init__(self):
        self.items: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.items:
            self.items.append(text)
        return "" if text in UNNUMBERED else f"[{note_number(self.items, text)}]"


def note_number(items: list[str], text: str) -> int:
    """The footnote number of `text` among `items` (the unnumbered notes take no number)."""
    return [t for t in items if t not in UNNUMBERED].index(text) + 1


@dataclasses.dataclass
class Group:
    """The seeds of one configuration (model, dataset, method, budget, placement) on one suite."""

    runs: list[Run]
    suite: str
    tasks: list[str]
    notes: Notes

    @functools.cached_property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.state(self.suite, self.tasks)[0] == "ok"]

    @functools.cached_property
    def marks(self) -> str:
        """Footnote marks of the seeds that are not usable (failed, diverged, missing)."""
        out = []
        for r in self.runs:
            state, reason = r.state(self.suite, self.tasks)
            if state != "ok":
                out.append(self.notes.mark(f"{r.run_id}: {state}: {reason}"))
        return "".join(dict.fromkeys(out))

    def data(self) -> list[dict]:
        return [{t: r.correct[self.suite][t] for t in self.tasks} for r in self.ok]

    @functools.cached_property
    def avg(self) -> dict | None:
        return stats.estimate(self.data(), n_boot=N_BOOT, seed=BOOT_SEED) if self.ok else None

    @functools.cached_property
    def per_task(self) -> dict:
        if not self.ok:
            return {}
        return {t: stats.task_estimate(self.data(), t, n_boot=N_BOOT, seed=BOOT_SEED) for t in self.tasks}

    def degenerate(self, task: str) -> bool:
        return any(r.evals[self.suite]["tasks"][task].get("degenerate", False) for r in self.ok)

    @property
    def mean(self) -> float:
        return self.avg["mean"] if self.avg else -math.inf

    @property
    def reached(self) -> float | None:
        vals = [r.reached for r in self.runs if r.reached is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def status_text(self) -> str:
        states = list(dict.fromkeys(r.state(self.suite, self.tasks)[0] for r in self.runs)) or ["missing"]
        return "/".join(states)

    def seeds_text(self) -> str:
        return f"{len(self.ok)}/{len(self.runs)}" if len(self.ok) != len(self.runs) else str(len(self.runs))


def fmt_est(est: dict | None) -> str:
    """'52.3 [48.1, 56.4]' (one seed) or '52.3 ± 1.2 [47.0, 57.1]' (several), in percent."""
    if est is None:
        return "n/a"
    spread = f" ± {100 * est['spread']:.1f}" if est["seeds"] > 1 else ""
    return f"{100 * est['mean']:.1f}{spread} [{100 * est['lo']:.1f}, {100 * est['hi']:.1f}]"


def fmt_diff(d: dict | None) -> str:
    if d is None:
        return "n/a"
    return f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def prior_group(runs: list[Run], suite: str, tasks: list[str]) -> list[dict] | None:
    """Per-example correctness of the label-prior predictor on the examples the runs evaluated."""
    for r in runs:
        if r.state(suite, tasks)[0] == "ok":
            return [{t: stats.label_prior(r.labels[suite][t])["correct"] for t in tasks}]
    return None


def paired(a: Group | list[dict] | None, b: Group | list[dict] | None, notes: Notes | None = None) -> dict | None:
    """Paired bootstrap difference a - b (macro average), None when either has no results."""
    da = a.data() if isinstance(a, Group) else a
    db = b.data() if isinstance(b, Group) else b
    if not da or not db:
        return None
    try:
        return stats.paired_difference(da, db, n_boot=N_BOOT, seed=BOOT_SEED)
    except ValueError as err:  # different test examples (e.g. a changed limit)
        if notes is not None:
            notes.mark(f"no paired difference: {err}")
        return None


# ----------------------------------------------------------------------------------------------
# table context and rows

@dataclasses.dataclass
class Ctx:
    name: str
    config: dict
    runs: list[Run]
    notes: Notes = dataclasses.field(default_factory=Notes)

    @property
    def exp(self) -> dict:
        return self.config["experiments"].get(self.name, {})

    def suite(self, dataset: str) -> str:
        return self.config["datasets"][dataset]["suite"]

    def tasks(self, dataset: str) -> list[str]:
        return list(self.config["eval"][self.suite(dataset)]["tasks"])

    def select(self, **where) -> list[Run]:
        return [r for r in self.runs if all(r.parts[k] == v for k, v in where.items())]

    def group(self, runs: list[Run], dataset: str) -> Group:
        return Group(sorted(runs, key=lambda r: r.parts["seed"]), self.suite(dataset), self.tasks(dataset), self.notes)

    def groups(self, runs: list[Run], dataset: str) -> list[Group]:
        """Seed groups by (budget, placement), in first-seen order."""
        keyed: dict = {}
        for r in runs:
            keyed.setdefault((r.parts["budget"], r.parts["placement"]), []).append(r)
        return [self.group(rs, dataset) for rs in keyed.values()]


def best_group(groups: list[Group]) -> Group | None:
    """The group with the highest mean average accuracy (a group with results beats one without)."""
    return max(groups, key=lambda g: g.mean) if groups else None


def closest_budget(groups: list[Group], reached: float | None) -> Group | None:
    """The group whose reached budget is closest (ratio) to `reached`."""
    cands = [g for g in groups if g.reached]
    if not cands or not reached:
        return None
    return min(cands, key=lambda g: abs(math.log(g.reached / reached)))


def method_row(ctx: Ctx, label: dict, group: Group | None, tasks: list[str], prior: list[dict] | None) -> dict:
    """A row: labels, Params% reached, each task, AVG, n, seeds, difference from the label prior."""
    row = dict(label)
    if group is None or not group.runs:
        row["Params%"] = "n/a"
        for col in tasks + ["AVG"]:
            row[col] = "missing " + ctx.notes.mark(f"{label}: no runs found")
        row.update({"n": 0, "seeds": "0", "vs prior": "n/a"})
        return row
    reached = group.reached
    row["Params%"] = "n/a" if reached is None else f"{reached:.2f}"
    marks = group.marks
    for task in tasks:
        if group.ok:
            dag = DAGGER if group.degenerate(task) else ""
            if dag:
                ctx.notes.mark(DAGGER_NOTE)
            row[task] = fmt_est(group.per_task[task]) + dag
        else:
            row[task] = group.status_text + " " + marks
    row["AVG"] = fmt_est(group.avg) + (" " + marks if marks and group.ok else "") if group.ok \
        else group.status_text + " " + marks
    row["n"] = group.avg["n"] if group.avg else 0
    row["seeds"] = group.seeds_text()
    row["vs prior"] = fmt_diff(paired(group, prior, ctx.notes))
    row["val loss"] = fmt_val_loss(group)
    if row["val loss"] != "-":
        ctx.notes.mark(VAL_LOSS_NOTE)
    row["_group"] = group
    return row


def fmt_val_loss(group: Group) -> str:
    """Final validation loss (answer tokens of the same held-out records for every run): the mean
    over seeds, with the lowest and highest seed when there are several; '-' when not recorded."""
    vals = [r.record.get("train_info", {}).get("final_val_loss") for r in group.ok]
    vals = [float(v) for v in vals if v is not None]
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    return f"{mean:.4f}" if len(vals) == 1 else f"{mean:.4f} ({min(vals):.4f}–{max(vals):.4f})"


def prior_row(ctx: Ctx, label: dict, prior: list[dict] | None, tasks: list[str]) -> dict:
    row = {**label, "Params%": "-"}
    if prior is None:
        return {**row, **{t: "n/a" for t in tasks}, "AVG": "n/a", "n": 0, "seeds": "-", "vs prior": "-"}
    for t in tasks:
        k, n = int(prior[0][t].sum()), len(prior[0][t])
        row[t] = fmt_est({"mean": k / n, "lo": stats.wilson(k, n)[0], "hi": stats.wilson(k, n)[1], "seeds": 1,
                          "spread": 0.0})
    row["AVG"] = fmt_est(stats.estimate(prior, n_boot=N_BOOT, seed=BOOT_SEED))
    row.update({"n": int(sum(len(v) for v in prior[0].values())), "seeds": "-", "vs prior": "-"})
    # the validation loss a label-prior-only model would have (train_info.val_prior_loss): the
    # level a run's "val loss" must go below before it has learned anything about the questions
    levels = {r.record.get("train_info", {}).get("val_prior_loss") for r in ctx.runs} - {None}
    if len(levels) == 1:
        row["val loss"] = f"{levels.pop():.4f}"
    return row


def mark_best(rows: list[dict], column: str = "best") -> None:
    """Set rows[i][column]: 'best' where the top row is significantly better than every other row,
    else 'tied best' on the top row and on every row not significantly worse than it."""
    cands = [r for r in rows if r.get("_group") is not None and r["_group"].ok]
    for r in rows:
        r.setdefault(column, "")
    if len(cands) < 2:
        return
    top = max(cands, key=lambda r: r["_group"].mean)
    ties = []
    for r in cands:
        if r is top:
            continue
        d = paired(top["_group"], r["_group"])
        if d is None or not d["significant"]:
            ties.append(r)
    top[column] = "tied best" if ties else "best"
    for r in ties:
        r[column] = "tied best"


def finish(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "_group"} for r in rows])
    return df.fillna("")


# ----------------------------------------------------------------------------------------------
# the table registry

@dataclasses.dataclass
class Builder:
    name: str
    title: str
    fn: Callable


TABLES: dict[str, Builder] = {}
FIGURES: dict[str, Builder] = {}


def table(name: str, title: str):
    """Register a table builder fn(ctx) -> DataFrame under `name`."""
    def deco(fn):
        TABLES[name] = Builder(name, title, fn)
        return fn
    return deco


def figure(name: str, title: str):
    """Register a figure builder fn(ctx) -> (matplotlib figure, data frame, caption) under `name`."""
    def deco(fn):
        FIGURES[name] = Builder(name, title, fn)
        return fn
    return deco


def _sweep(ctx: Ctx) -> dict:
    return ctx.config["experiments"]["table3"]


@table("table2", "Table 2: commonsense accuracy (%) at equal budget: each method's best budget of the sweep "
                 "(or the one budget of experiments.table2.budgets), SMT at each baseline's budget, best SMT, "
                 "full FT, the zero-shot base model (with each row's paired difference from it) and the "
                 "label prior; 95 % intervals")
def _table2(ctx: Ctx) -> pd.DataFrame:
    sweep = _sweep(ctx)
    dataset = sweep["dataset"]
    tasks, suite = ctx.tasks(dataset), ctx.suite(dataset)
    rows = []
    extra = ctx.exp.get("extra", [])  # runs at budgets outside the sweep (e.g. the paper's DoRA best)
    for model in dict.fromkeys(list(hc.models_of(ctx.config, "table2")) + [e["model"] for e in extra]):
        mruns = ctx.select(model=model, dataset=dataset)
        prior = prior_group(mruns, suite, tasks)
        smt_groups = ctx.groups([r for r in mruns if r.method == "smt"], dataset)
        block = []
        methods = list(sweep["methods"]) + [m for e in extra if e["model"] == model for m in e["methods"]]
        baselines = [m for m in dict.fromkeys(methods) if m != "smt" and any(r.method == m for r in mruns)
                     or (m in sweep["methods"] and m != "smt")]
        best = {m: best_group(ctx.groups([r for r in mruns if r.method == m], dataset)) for m in baselines}
        # with one budget (experiments.table2.budgets) there is no "best" to pick: the rows say
        # the budget, and SMT is one row that each baseline is compared with
        single = len(ctx.exp.get("budgets") or []) == 1 and not extra
        at = f" ({float(ctx.exp['budgets'][0]):.2f} %)" if single else " (Best)"
        for m in baselines:
            block.append(method_row(ctx, {"Model": model, "Method": f"{method_label(ctx.config, m)}{at}"},
                                    best[m], tasks, prior))
        smt_at = {}
        for m in baselines:
            smt_at[m] = closest_budget(smt_groups, best[m].reached if best[m] else None)
            if not single:
                block.append(method_row(ctx, {"Model": model,
                                              "Method": f"SMT (at {method_label(ctx.config, m)} best budget)"},
                                        smt_at[m], tasks, prior))
        smt_best = best_group(smt_groups)
        block.append(method_row(ctx, {"Model": model, "Method": f"SMT{at}"}, smt_best, tasks, prior))
        full = [r for r in mruns if r.method == hc.FULL_FT]
        if ctx.exp.get("full_ft", True) and (full or hc.FULL_FT in ctx.config["methods"]):
            block.append(method_row(ctx, {"Model": model, "Method": method_label(ctx.config, hc.FULL_FT)},
                                    ctx.group(full, dataset) if full else None, tasks, prior))
        for i, m in enumerate(baselines):  # SMT minus each baseline, at the baseline's best budget
            block[i]["SMT − this"] = fmt_diff(paired(smt_at[m], best[m], ctx.notes))
        if full:
            block[-1]["SMT − this"] = fmt_diff(paired(smt_best, block[-1].get("_group"), ctx.notes))
        mark_best(block)
        if ctx.exp.get("zero_shot"):  # the reference every method must clear; not a contender for best
            zero = [r for r in mruns if r.method == hc.ZERO_SHOT]
            zero_group = ctx.group(zero, dataset) if zero else None
            for row in block:
                row["vs zero-shot"] = fmt_diff(paired(row.get("_group"), zero_group, ctx.notes))
            block.append(method_row(ctx, {"Model": model, "Method": method_label(ctx.config, hc.ZERO_SHOT)},
                                    zero_group, tasks, prior))
        forgetting.add_table_column(block, ctx.notes)
        block.append(prior_row(ctx, {"Model": model, "Method": PRIOR_ROW}, prior, tasks))
        rows += block
    return finish(rows)


@table("table3", "Table 3: average commonsense accuracy (%) per budget asked (% of all parameters; "
                 "@ = budget reached where it differs); * = significantly best on the line, ≈ = tied best; "
                 "rows 'SMT − X': paired difference at the same budget")
def _table3(ctx: Ctx) -> pd.DataFrame:
    sweep = _sweep(ctx)
    dataset = sweep["dataset"]
    tasks, suite = ctx.tasks(dataset), ctx.suite(dataset)
    cols = [hc.budget_label(b) for b in sweep["budgets"]]
    rows = []
    for model in sweep["models"]:
        mruns = ctx.select(model=model, dataset=dataset)
        by_method = {}
        for method in sweep["methods"]:
            groups = {hc.budget_label(g.runs[0].parts["budget"]): g
                      for g in ctx.groups([r for r in mruns if r.method == method], dataset)}
            by_method[method] = groups
            row = {"Model": model, "Method": method_label(ctx.config, method)}
            usable = [g for g in groups.values() if g.ok]
            top = max(usable, key=lambda g: g.mean) if len(usable) > 1 else None
            tied = [g for g in usable if g is not top and top is not None
                    and not (paired(top, g) or {"significant": False})["significant"]]
            for col in cols:
                g = groups.get(col)
                if g is None:
                    row[col] = "missing " + ctx.notes.mark(f"{model} {method} at {col}%: no runs")
                    continue
                cell = fmt_est(g.avg) if g.ok else g.status_text
                reached = g.reached
                if reached and abs(reached / float(col) - 1) > 0.05 and method != hc.FULL_FT:
                    cell += f" @{reached:.2f}"
                if g is top:
                    cell += " ≈" if tied else " *"
                elif g in tied:
                    cell += " ≈"
                row[col] = cell + (" " + g.marks if g.marks else "")
            rows.append(row)
        for method in [m for m in sweep["methods"] if m != "smt"]:
            row = {"Model": model, "Method": f"SMT − {method_label(ctx.config, method)}"}
            for col in cols:
                row[col] = fmt_diff(paired(by_method["smt"].get(col), by_method[method].get(col), ctx.notes))
            rows.append(row)
        prior = prior_group(mruns, suite, tasks)
        pr = {"Model": model, "Method": PRIOR_ROW}
        avg = fmt_est(stats.estimate(prior, n_boot=N_BOOT, seed=BOOT_SEED)) if prior else "n/a"
        rows.append({**pr, **{c: avg for c in cols}})
    return finish(rows)


def _placement_rows(ctx: Ctx, first_col: str, extra: Callable[[str], dict] | None = None) -> pd.DataFrame:
    exp = ctx.exp
    dataset = exp["dataset"]
    tasks, suite = ctx.tasks(dataset), ctx.suite(dataset)
    runs = ctx.select(model=exp["model"], dataset=dataset, method="smt")
    prior = prior_group(runs, suite, tasks)
    rows = []
    for place in exp["placements"]:
        pruns = [r for r in runs if r.parts["placement"] == place
                 and hc.budget_label(r.parts["budget"]) == hc.budget_label(exp["budget"])]
        label = {"Model": exp["model"], first_col: ctx.config["placements"][place].get("label", place)}
        label.update(extra(place) if extra else {})
        rows.append(method_row(ctx, label, ctx.group(pruns, dataset) if pruns else None, tasks, prior))
    mark_best(rows)
    rows.append(prior_row(ctx, {"Model": exp["model"], first_col: PRIOR_ROW}, prior, tasks))
    return finish(rows)


def _mlp_share(ctx: Ctx, place: str) -> dict:
    spec = ctx.config["placements"][place]
    mods = set(hc.target_modules(spec) or [])
    if spec.get("quotas"):
        mlp = sum(q["share"] for q in spec["quotas"].values() if not set(q["modules"]) & set(QKV))
    else:
        mlp = 0.0 if mods <= set(QKV) else 1.0
    budget = ctx.exp["budget"]
    return {"MLP%": f"{mlp * budget:.2f}", "Attention%": f"{(1 - mlp) * budget:.2f}"}


@table("table4", "Table 4: SMT budget split between MLP and attention (commonsense accuracy, %, 95 % intervals)")
def _table4(ctx: Ctx) -> pd.DataFrame:
    return _placement_rows(ctx, "Placement", lambda p: _mlp_share(ctx, p))


@table("table6", "Table 6: SMT budget on K, Q or V alone, or QKV chosen automatically (accuracy, %, 95 % intervals)")
def _table6(ctx: Ctx) -> pd.DataFrame:
    return _placement_rows(ctx, "Param location")


@table("table5", "Table 5: arithmetic reasoning accuracy (%): best of each method over the budgets; "
                 "SMT − X: paired difference")
def _table5(ctx: Ctx) -> pd.DataFrame:
    exp = ctx.exp
    dataset, model = exp["dataset"], exp["model"]
    tasks, suite = ctx.tasks(dataset), ctx.suite(dataset)
    mruns = ctx.select(model=model, dataset=dataset)
    prior = prior_group(mruns, suite, tasks)
    budgets = {hc.budget_label(b) for b in exp["budgets"]}
    rows, groups = [], {}
    for method in exp["methods"]:
        g = best_group(ctx.groups([r for r in mruns if r.method == method
                                   and hc.budget_label(r.parts["budget"]) in budgets], dataset))
        groups[method] = g
        name = method_label(ctx.config, method) + ("" if method == "smt" else " (Best)")
        rows.append(method_row(ctx, {"Model": model, "Method": name}, g, tasks, prior))
    if exp.get("smt_best_budgets"):
        extra = {hc.budget_label(b) for b in exp["smt_best_budgets"]} | budgets
        g = best_group(ctx.groups([r for r in mruns if r.method == "smt"
                                   and hc.budget_label(r.parts["budget"]) in extra], dataset))
        rows.append(method_row(ctx, {"Model": model, "Method": "SMT (Best)"}, g, tasks, prior))
    if "smt" in groups:
        for row, method in zip(rows, exp["methods"]):
            if method != "smt":
                row["SMT − this"] = fmt_diff(paired(groups["smt"], groups[method], ctx.notes))
    mark_best(rows)
    rows.append(prior_row(ctx, {"Model": model, "Method": PRIOR_ROW}, prior, tasks))
    return finish(rows)


def _variant_settings(run: Run) -> dict:
    m = run.info.get("config", {}).get("method", {})
    return {"scoring": m.get("scoring", "n/a"),
            "warm-up": f"{m.get('warmup_mode', 'n/a')}, {m.get('warmup_steps', 'n/a')} steps",
            "selection": m.get("selection", "gradient")}


def _train_costs(runs: list[Run]) -> dict:
    """Mean delta size (MB) and seconds per training step over the runs that recorded them."""
    mb = [r.record.get("train_info", {}).get("adapter_bytes") for r in runs]
    sps = [_step_seconds(r) for r in runs]
    mb, sps = [v for v in mb if v is not None], [v for v in sps if v is not None]
    return {"delta MB": f"{np.mean(mb) / 2**20:.2f}" if mb else "n/a",
            "s/step": f"{np.mean(sps):.3f}" if sps else "n/a"}


def _step_seconds(run: Run) -> float | None:
    ti = run.record.get("train_info", {})
    if ti.get("train_seconds") is None or not ti.get("steps"):
        return None
    return float(ti["train_seconds"]) / float(ti["steps"])


def _table7_groups(ctx: Ctx, name: str = "table7") -> tuple[list[tuple[str, Group | None]], list[Run], str]:
    exp = ctx.config["experiments"][name]
    if "from_table" in exp:
        exp = ctx.config["experiments"][exp["from_table"]]
    dataset = exp["dataset"]
    out = []
    runs = ctx.select(model=exp["model"], dataset=dataset)
    for variant in exp["methods"]:
        vruns = [r for r in runs if r.method == variant
                 and hc.budget_label(r.parts["budget"]) == hc.budget_label(exp["budget"])]
        out.append((variant, ctx.group(vruns, dataset) if vruns else None))
    return out, runs, dataset


@table("table7", "Table 7: SMT ablations (scoring, warm-up, selection) at one budget: accuracy (%, 95 % "
                 "intervals), delta size and step time; variant − SMT: paired difference")
def _table7(ctx: Ctx) -> pd.DataFrame:
    groups, runs, dataset = _table7_groups(ctx)
    tasks, suite = ctx.tasks(dataset), ctx.suite(dataset)
    prior = prior_group(runs, suite, tasks)
    base = dict(groups).get("smt")
    rows = []
    for variant, g in groups:
        label = {"Variant": method_label(ctx.config, variant)}
        label.update(_variant_settings(g.runs[0]) if g else {"scoring": "n/a", "warm-up": "n/a", "selection": "n/a"})
        label.update(_train_costs(g.runs) if g else {"delta MB": "n/a", "s/step": "n/a"})
        row = method_row(ctx, label, g, tasks, prior)
        row["variant − SMT"] = "-" if variant == "smt" else fmt_diff(paired(g, base, ctx.notes))
        rows.append(row)
    mark_best(rows)
    rows.append(prior_row(ctx, {"Variant": PRIOR_ROW}, prior, tasks))
    return finish(rows)


def _table1(profiles: list[dict]) -> pd.DataFrame:
    """Table 1: harness.profile.table1_frame (one side-by-side profile JSON) when available."""
    try:
        from harness.profile import table1_frame as measured
    except ImportError:
        measured = None
    if measured is not None and len(profiles) == 1 and profiles[0].get("format"):
        return measured(profiles[0])
    return table1_frame(profiles)


def table1_frame(profiles: list[dict]) -> pd.DataFrame:
    """Table 1 from per-method profile JSONs (older format): Params%, step time, peak memory, speed-up."""
    rows = []
    for prof in profiles:
        peak = prof.get("peak_memory_bytes")
        rows.append({"Method": prof["method"], "Params%": round(100 * prof["budget_reached"], 2),
                     "Time/step (s)": prof.get("step_seconds_mean"),
                     "Peak memory (MB)": None if peak is None else round(peak / 2**20, 1),
                     "Memory measure": prof.get("peak_memory_kind", "n/a")})
    df = pd.DataFrame(rows)
    full = df[df.Method == hc.FULL_FT]["Time/step (s)"]
    df["Speed-up"] = [f"{full.iloc[0] / t:.2f}x" if len(full) and t else "n/a" for t in df["Time/step (s)"]]
    df["Time/step (s)"] = df["Time/step (s)"].map(lambda t: "n/a" if t is None or pd.isna(t) else f"{t:.3f}")
    return df


TABLE1_TITLE = "Table 1: training step time and memory at the same budget"


# ----------------------------------------------------------------------------------------------
# writing tables

def _latex(df: pd.DataFrame, caption: str, notes: list[str]) -> str:
    esc = lambda s: str(s).replace("\\", "\\textbackslash{}").replace("%", "\\%").replace("_", "\\_") \
        .replace("&", "\\&").replace("#", "\\#").replace("±", "$\\pm$").replace("†", "$^\\dagger$") \
        .replace("−", "$-$").replace("≈", "$\\approx$")  # noqa: E731
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{esc(caption)}}}",
             "\\begin{tabular}{" + "l" * len(df.columns) + "}", "\\hline",
             " & ".join(esc(c) for c in df.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(esc(v) for v in row) + " \\\\" for row in df.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}"]
    lines += [f"\\\\\\footnotesize {esc(n)}" for n in notes]
    lines += ["\\end{table}"]
    return "\n".join(lines) + "\n"


def _footer(df: pd.DataFrame, config: dict) -> list[str]:
    notes = df.attrs.get("footnotes", [])
    lines = [n if n in UNNUMBERED else f"{note_number(notes, n)}. {n}" for n in notes]
    devs = df.attrs.get("deviations", [])
    lines.append("deviations: " + ("; ".join(devs) if devs else "none recorded"))
    lines.append(f"config: {config['name']} ({config.get('description', '')})")
    return lines


def write_table(df: pd.DataFrame, title: str, config: dict, run_ids: list[str], out_prefix) -> list[pathlib.Path]:
    """Write <out_prefix>.csv (with '#' header lines), .md and .tex: title, footnotes, deviations, config, runs."""
    out = pathlib.Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    footer = _footer(df, config)
    csv_path, md_path, tex_path = (out.with_suffix(s) for s in (".csv", ".md", ".tex"))
    header = [title] + footer + ["runs: " + "; ".join(run_ids)]
    csv_path.write_text("".join(f"# {h}\n" for h in header) + df.to_csv(index=False))
    md = [f"**{title}**", "", df.to_markdown(index=False), ""] + [f"{line}  " for line in footer] \
        + ["", "Runs:", ""] + [f"- `{r}`" for r in run_ids]
    md_path.write_text("\n".join(md) + "\n")
    tex_path.write_text(f"% config: {config['name']}\n% runs: {'; '.join(run_ids)}\n"
                        + _latex(df, f"{title} (config {config['name']})", footer[:-1]))
    return [csv_path, md_path, tex_path]


def _deviations(runs: list[Run]) -> list[str]:
    """The runs' recorded deviations: training's (run_info) and evaluation's (eval/<suite>.json)."""
    return list(dict.fromkeys([d for r in runs for d in (r.info.get("deviations") or [])]
                              + [d for r in runs for e in r.evals.values() for d in (e.get("deviations") or [])]))


def build_table(name: str, config: dict, record_paths) -> tuple[pd.DataFrame, list[str], str]:
    """(frame with attrs footnotes/deviations, run ids, title) of table `name`."""
    if name == "table1":
        profiles = [_read_json(pathlib.Path(p), "a profile JSON") for p in record_paths]
        df = _table1(profiles)
        df.attrs.update(footnotes=[], deviations=list(dict.fromkeys(
            d for p in profiles for d in (p.get("deviations") or []))))
        return df, [str(p) for p in record_paths], TABLE1_TITLE
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; registered: table1, {', '.join(TABLES)}")
    runs = [load_run(p) for p in record_paths]
    ctx = Ctx(name, config, runs)
    df = TABLES[name].fn(ctx)
    notes = ctx.notes.items
    df.attrs.update(footnotes=notes, deviations=_deviations(runs))
    return df, [r.run_id for r in runs], TABLES[name].title


def make_table(name: str, config: dict, record_paths, out_prefix) -> pd.DataFrame:
    """Build table `name` from run records (Table 1: profile JSONs) and write CSV/MD/TeX."""
    df, ids, title = build_table(name, config, record_paths)
    write_table(df, title, config, ids, out_prefix)
    return df


# ----------------------------------------------------------------------------------------------
# figures: each builder returns (figure, the data drawn as a frame, caption)

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interval_caption(frame: pd.DataFrame) -> str:
    seeds = sorted({int(s) for s in frame["seeds"]}) if len(frame) else []
    n = sorted({int(v) for v in frame["n"]}) if len(frame) else []
    return (f"points: mean accuracy over seeds; bars: 95 % interval (bootstrap over test examples, stratified "
            f"by task{', hierarchical over seeds' if seeds and max(seeds) > 1 else ''}); "
            f"n = {'/'.join(map(str, n)) or '0'} test examples per seed; seeds = {'/'.join(map(str, seeds)) or '0'}")


def _est_row(g: Group) -> dict:
    e = g.avg
    return {"acc": 100 * e["mean"], "lo": 100 * e["lo"], "hi": 100 * e["hi"], "spread": 100 * e["spread"],
            "seeds": e["seeds"], "n": e["n"]}


def figure3_frame(ctx: Ctx) -> pd.DataFrame:
    """One row per (model, method, budget) of the sweep with results: reached budget, accuracy, interval."""
    sweep = _sweep(ctx)
    rows = []
    for model in sweep["models"]:
        mruns = ctx.select(model=model, dataset=sweep["dataset"])
        for method in sweep["methods"]:
            for g in ctx.groups([r for r in mruns if r.method == method], sweep["dataset"]):
                if g.ok:
                    rows.append({"model": model, "method": method, "label": method_label(ctx.config, method),
                                 "budget": g.runs[0].parts["budget"], "reached": g.reached, **_est_row(g)})
    return pd.DataFrame(rows, columns=["model", "method", "label", "budget", "reached", "acc", "lo", "hi",
                                       "spread", "seeds", "n"])


@figure("figure3", "Figure 3: average accuracy against trainable-parameter budget reached")
def _figure3(ctx: Ctx):
    plt = _plt()
    frame = figure3_frame(ctx)
    sweep = _sweep(ctx)
    models = list(sweep["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        sub = frame[frame.model == model]
        for method in sweep["methods"]:
            pts = sub[sub.method == method].sort_values("reached")
            if len(pts):
                ax.errorbar(pts.reached, pts.acc, yerr=[pts.acc - pts.lo, pts.hi - pts.acc], marker="o",
                            capsize=3, label=pts.label.iloc[0])
        level = prior_level(ctx, sweep["dataset"], model=model)
        if level is not None:
            ax.axhline(level, color="grey", ls="--", label=PRIOR_ROW)
        ax.set_xlabel("trainable parameters reached (% of all model parameters)")
        ax.set_ylabel("average accuracy over tasks (%)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(title="method")
    return fig, frame, _interval_caption(frame)


def placement_frame(ctx: Ctx, exp_name: str) -> pd.DataFrame:
    """Accuracy with interval per placement of Table 4 or 6 (SMT at that table's budget)."""
    exp = ctx.config["experiments"][exp_name]
    rows = []
    runs = ctx.select(model=exp["model"], dataset=exp["dataset"], method="smt")
    for place in exp["placements"]:
        pruns = [r for r in runs if r.parts["placement"] == place
                 and hc.budget_label(r.parts["budget"]) == hc.budget_label(exp["budget"])]
        g = ctx.group(pruns, exp["dataset"]) if pruns else None
        base = {"placement": place, "label": ctx.config["placements"][place].get("label", place)}
        rows.append({**base, **_est_row(g)} if g is not None and g.ok else
                    {**base, "acc": np.nan, "lo": np.nan, "hi": np.nan, "spread": np.nan, "seeds": 0, "n": 0})
    return pd.DataFrame(rows)


def prior_level(ctx: Ctx, dataset: str, **select) -> float | None:
    """The label prior's average accuracy (%) on the examples the selected runs of `dataset` evaluated."""
    prior = prior_group(ctx.select(dataset=dataset, **select), ctx.suite(dataset), ctx.tasks(dataset))
    return 100 * stats.estimate(prior, n_boot=200)["mean"] if prior else None


def _placement_figure(ctx: Ctx, exp_name: str):
    plt = _plt()
    frame = placement_frame(ctx, exp_name)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.4 * len(frame)), 4))
    ok = frame.dropna(subset=["acc"])
    ax.bar(ok.label, ok.acc, yerr=[ok.acc - ok.lo, ok.hi - ok.acc], capsize=4, color="#4c72b0")
    for label in frame[frame.acc.isna()].label:
        ax.bar(label, 0, color="white")
        ax.annotate("no result", (label, 1), ha="center", fontsize=8)
    exp = ctx.config["experiments"][exp_name]
    level = prior_level(ctx, exp["dataset"], model=exp["model"])
    if level is not None:
        ax.axhline(level, color="grey", ls="--", label=PRIOR_ROW)
        ax.legend()
    ax.set_ylabel("average accuracy over tasks (%)")
    ax.set_xlabel(f"placement (SMT, budget {exp['budget']}%)")
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    return fig, frame, _interval_caption(ok)


@figure("figure_table4", "Figure (Table 4): accuracy per MLP/attention split of the SMT budget")
def _figure_table4(ctx: Ctx):
    return _placement_figure(ctx, "table4")


@figure("figure_table6", "Figure (Table 6): accuracy with the SMT budget on K, Q, V or QKV")
def _figure_table6(ctx: Ctx):
    return _placement_figure(ctx, "table6")


def val_loss_frame(ctx: Ctx) -> pd.DataFrame:
    """Validation loss per step of every run that recorded train_info.val_curve."""
    rows = []
    for r in ctx.runs:
        for point in r.record.get("train_info", {}).get("val_curve") or []:
            rows.append({"run_id": r.run_id, "model": r.parts["model"], "method": r.method,
                         "label": method_label(ctx.config, r.method), "budget": r.parts["budget"],
                         "seed": r.parts["seed"], "step": point["step"], "val_loss": point["val_loss"],
                         "prior_level": r.record.get("train_info", {}).get("val_prior_loss")})
    return pd.DataFrame(rows, columns=["run_id", "model", "method", "label", "budget", "seed", "step", "val_loss",
                                       "prior_level"])


@figure("figure_val_loss", "Validation loss (answer tokens of a held-out part of the training data) against step")
def _figure_val_loss(ctx: Ctx):
    plt = _plt()
    frame = val_loss_frame(ctx)
    methods = list(dict.fromkeys(frame.method)) or ["none"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.8), squeeze=False, sharey=True)
    if frame.empty:
        axes[0][0].text(0.5, 0.5, "no run recorded a validation curve", ha="center", va="center")
        axes[0][0].set_axis_off()
        return fig, frame, "no validation curves in these runs' records"
    for ax, method in zip(axes[0], methods):
        sub = frame[frame.method == method]
        for run_id, g in sub.groupby("run_id", sort=False):
            ax.plot(g.step, g.val_loss, marker=".", label=f"b{g.budget.iloc[0]} s{g.seed.iloc[0]}")
        for level in sorted(set(sub.prior_level.dropna())):
            ax.axhline(level, color="grey", linestyle="--", linewidth=1, label=f"label prior {level:.3f}")
        ax.set_title(sub.label.iloc[0])
        ax.set_xlabel("step")
        ax.set_yscale("log")  # step 0 (~2.6) would flatten the part that matters, near the prior
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation loss (log scale)")
    return fig, frame, (f"one line per run ({frame.run_id.nunique()} runs); dashed: the validation loss of a "
                        "label-prior-only model (template exact, label by training frequency)")


def pareto_frame(ctx: Ctx) -> pd.DataFrame:
    """One point per evaluated run: accuracy with interval, trainable params, step time, training memory."""
    rows = []
    for r in ctx.runs:
        if r.method == hc.ZERO_SHOT:  # nothing trained: drawn as a level (_figure_pareto), not a point
            continue
        dataset = r.parts["dataset"]
        g = ctx.group([r], dataset)
        if not g.ok:
            continue
        ti = r.record.get("train_info", {})
        rows.append({"run_id": r.run_id, "method": r.method, "label": method_label(ctx.config, r.method),
                     "reached": r.reached, **_est_row(g), "trainable_params": ti.get("trainable_params"),
                     "step_seconds": _step_seconds(r), "peak_memory_mb":
                     None if ti.get("peak_memory_bytes") is None else ti["peak_memory_bytes"] / 2**20,
                     **forgetting.pareto_columns(r)})
    return pd.DataFrame(rows, columns=["run_id", "method", "label", "reached", "acc", "lo", "hi", "spread", "seeds",
                                       "n", "trainable_params", "step_seconds", "peak_memory_mb", "forgetting"])


@figure("figure_pareto", "Accuracy against trainable parameters, step time, training memory and forgetting (one point per run)")
def _figure_pareto(ctx: Ctx):
    plt = _plt()
    frame = pareto_frame(ctx)
    axes_spec = [("trainable_params", "trainable parameters", True), ("step_seconds", "seconds per training step", False),
                 ("peak_memory_mb", "training peak memory (MB)", False), forgetting.PARETO_AXIS]
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(5 * len(axes_spec), 4.2), sharey=True)
    for ax, (col, name, log) in zip(axes, axes_spec):
        for method in dict.fromkeys(frame.method):
            sub = frame[(frame.method == method) & frame[col].notna()]
            if len(sub):
                ax.errorbar(sub[col].astype(float), sub.acc, yerr=[sub.acc - sub.lo, sub.hi - sub.acc], fmt="o",
                            capsize=3, label=sub.label.iloc[0])
        if log and frame[col].notna().any():
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    # the level every run must clear to have learned more than the label shares (a run below it
    # is not a point on any accuracy-cost frontier); one line per dataset drawn
    for dataset in dict.fromkeys(r.parts["dataset"] for r in ctx.runs):
        level = prior_level(ctx, dataset)
        if level is not None:
            for ax in axes:
                ax.axhline(level, color="grey", ls="--", label=f"{PRIOR_ROW} ({dataset})" if ax is axes[0] else None)
    zero_levels = {}
    zero = [r for r in ctx.runs if r.method == hc.ZERO_SHOT]
    for r in zero:
        g = ctx.group([r], r.parts["dataset"])
        if g.ok:
            zero_levels[r.parts["dataset"]] = 100 * g.avg["mean"]
            for ax in axes:
                ax.axhline(zero_levels[r.parts["dataset"]], color="black", ls=":",
                           label=f"zero-shot ({r.parts['dataset']})" if ax is axes[0] else None)
    axes[0].set_ylabel("average accuracy over tasks (%)")
    axes[0].legend(title="method", fontsize=8)
    return fig, frame, (_interval_caption(frame).replace("mean accuracy over seeds", "one run")
                        + f"; dashed: the {PRIOR_ROW} (always the most frequent label of each task)"
                        + ("; dotted: the zero-shot base model" if zero_levels else "") + forgetting.pareto_caption(frame))


def figure7_frame(ctx: Ctx) -> pd.DataFrame:
    groups, _, _ = _table7_groups(ctx, "figure7" if "figure7" in ctx.config["experiments"] else "table7")
    rows = []
    for variant, g in groups:
        if g is None or not g.ok:
            continue
        mb = [r.record.get("train_info", {}).get("adapter_bytes") for r in g.runs]
        mb = [v for v in mb if v is not None]
        sps = [v for v in (_step_seconds(r) for r in g.runs) if v is not None]
        rows.append({"variant": variant, "label": method_label(ctx.config, variant), **_est_row(g),
                     "delta_mb": np.mean(mb) / 2**20 if mb else np.nan, "step_seconds": np.mean(sps) if sps else np.nan})
    return pd.DataFrame(rows, columns=["variant", "label", "acc", "lo", "hi", "spread", "seeds", "n", "delta_mb",
                                       "step_seconds"])


@figure("figure7", "Figure 7: SMT ablations: accuracy with 95 % interval, delta size and step time")
def _figure7(ctx: Ctx):
    plt = _plt()
    frame = figure7_frame(ctx)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    x = range(len(frame))
    axes[0].bar(x, frame.acc, yerr=[frame.acc - frame.lo, frame.hi - frame.acc], capsize=4, color="#55a868")
    axes[0].set_ylabel("average accuracy over tasks (%)")
    axes[1].bar(x, frame.delta_mb, color="#4c72b0")
    axes[1].set_ylabel("delta size (MB)")
    axes[2].bar(x, frame.step_seconds, color="#dd8452")
    axes[2].set_ylabel("seconds per training step")
    for ax in axes:
        ax.set_xticks(list(x), list(frame.label), rotation=20, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    return fig, frame, _interval_caption(frame)


def _plan(record_path):
    from smt import SelectionPlan

    return SelectionPlan.from_json(pathlib.Path(record_path).parent / "plan.json")


def _plan_run(ctx: Ctx) -> Run:
    ok = [r for r in ctx.runs if r.status == "ok" and (r.path.parent / "plan.json").is_file()]
    if not ok:
        raise FileNotFoundError(f"{ctx.name}: none of the runs {[r.run_id for r in ctx.runs]} has a plan.json "
                                "(the SMT run failed or has not been trained)")
    return ok[0]


@figure("figure4", "Figure 4: where SMT placed trainable blocks (layer x Q/K/V)")
def _figure4(ctx: Ctx):
    plt = _plt()
    run = _plan_run(ctx)
    lmap = _plan(run.path).layer_map()
    cols = [i for i, t in enumerate(lmap["types"]) if t in QKV]
    counts = np.array([[row[i] for i in cols] for row in lmap["counts"]], dtype=float).T
    names = [lmap["types"][i].split("_")[0].upper() for i in cols]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * counts.shape[1] + 2), 3.2))
    im = ax.imshow(np.ma.masked_equal(counts, 0), cmap="Greens", aspect="auto", vmin=0)
    ax.set_facecolor("white")
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(counts.shape[1]), [str(x) for x in lmap["layers"]], fontsize=7)
    ax.set_xlabel("layer (white: frozen, no trainable block)")
    ax.set_ylabel("projection")
    frozen = ", ".join(f"{n}: {int((counts[i] == 0).sum())}/{counts.shape[1]} frozen" for i, n in enumerate(names))
    ax.text(0, -0.9, frozen, fontsize=8)
    fig.colorbar(im, ax=ax, label="trainable blocks")
    frame = pd.DataFrame([{"projection": n, "layer": lay, "blocks": counts[i, j]}
                          for i, n in enumerate(names) for j, lay in enumerate(lmap["layers"])])
    return fig, frame, f"run {run.run_id}"


@figure("figure5", "Figure 5: share of SMT trainable parameters in Q, K and V")
def _figure5(ctx: Ctx):
    plt = _plt()
    run = _plan_run(ctx)
    per_type = _plan(run.path).summary()["per_type"]
    names = [t for t in QKV if t in per_type]
    shares = [100 * per_type[t]["share"] for t in names]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    bars = ax.bar([t.split("_")[0].upper() for t in names], shares, color=["#4c72b0", "#dd8452", "#55a868"])
    ax.bar_label(bars, fmt="%.1f%%")
    ax.set_ylim(0, 110)
    ax.set_xlabel("projection")
    ax.set_ylabel("share of SMT trainable parameters (%)")
    return fig, pd.DataFrame({"projection": names, "share": shares}), f"run {run.run_id}"


def figure_data(name: str, config: dict, record_paths) -> tuple:
    """(matplotlib figure, data frame drawn, caption) of figure `name`, without writing anything."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; registered: {', '.join(FIGURES)}")
    ctx = Ctx(name, config, [load_run(p) for p in record_paths])
    return FIGURES[name].fn(ctx)


def make_figure(name: str, config: dict, record_paths, out_prefix) -> list[pathlib.Path]:
    """Draw figure `name`; write <out_prefix>.png, .pdf and the data drawn as <out_prefix>.data.csv."""
    plt = _plt()
    fig, frame, caption = figure_data(name, config, record_paths)
    runs = [load_run(p) for p in record_paths]
    devs = _deviations(runs)
    width, height = fig.get_figwidth(), fig.get_figheight()
    title = textwrap.fill(f"{FIGURES[name].title} (config {config['name']})", int(width * 11))
    note = textwrap.fill(caption + (f". Deviations: {'; '.join(devs)}" if devs else ""), int(width * 16))
    title_in, note_in = 0.18 * (title.count("\n") + 1) + 0.1, 0.12 * (note.count("\n") + 1) + 0.1
    fig.set_figheight(height + title_in + note_in)  # room above and below the axes for the text
    total = fig.get_figheight()
    fig.suptitle(title, fontsize=10, y=1 - 0.05 / total, va="top")
    fig.text(0.01, 0.05 / total, note, fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, note_in / total, 1, 1 - title_in / total))
    out = pathlib.Path(out_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, metadata=None if path.suffix == ".png" else {"CreationDate": None})
    plt.close(fig)
    data = out.with_name(out.name + ".data.csv")
    data.write_text(f"# {FIGURES[name].title} (config {config['name']})\n# {caption}\n"
                    + frame.to_csv(index=False))
    return paths
