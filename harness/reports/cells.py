"""The numbers of a table cell: seed groups, estimates with intervals, paired differences, the
label-prior row, "best" marks and footnotes; and the context (`Ctx`) a target builds from.

Accuracies are percentages with a 95 % interval computed from the per-example predictions
(`harness.stats`): one seed, one task: Wilson; averages over tasks: a bootstrap stratified by
task; several seeds: mean ± standard deviation over seeds and a hierarchical bootstrap interval
(seeds, then examples). Differences between methods are paired (same test examples) bootstrap
intervals; a "best" mark is given only where the best row is significantly better than every
other row, otherwise the rows it cannot be told apart from are marked as tied. Every table has a
"label prior" row (always answering the most frequent label of the examples evaluated) and a
column with each row's difference from it. A dagger marks a task on which a run's predictions are
degenerate (one answer >= 90 % of the time). Failed, diverged or missing runs are shown as such,
with the reason in a footnote.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pandas as pd

from harness import stats
from harness.reports.runs import Run

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


@dataclasses.dataclass
class Ctx:
    name: str
    config: dict
    runs: list[Run]
    notes: Notes = dataclasses.field(default_factory=Notes)

    @property
    def exp(self) -> dict:
        return self.config["experiments"].get(self.name, {})

    @property
    def proposed(self) -> str:
        """The method every other is compared with (config `proposed`, the paper's: smt)."""
        return self.config["proposed"]

    def suite(self, dataset: str) -> str:
        return self.config["datasets"][dataset]["suite"]

    def tasks(self, dataset: str) -> list[str]:
        return list(self.config["eval"][self.suite(dataset)]["tasks"])

    def select(self, **where) -> list[Run]:
        """The runs whose typed fields (Run.fields: model, dataset, method, budget, placement, seed,
        lr; from each record's run config) equal `where`."""
        return [r for r in self.runs if all(r.fields[k] == v for k, v in where.items())]

    def group(self, runs: list[Run], dataset: str) -> Group:
        return Group(sorted(runs, key=lambda r: r.seed), self.suite(dataset), self.tasks(dataset), self.notes)

    def groups(self, runs: list[Run], dataset: str) -> list[Group]:
        """Seed groups by (budget, placement, learning rate), read from the records, in first-seen order."""
        keyed: dict = {}
        for r in runs:
            keyed.setdefault((r.budget, r.placement, r.lr), []).append(r)
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



def prior_level(ctx: Ctx, dataset: str, **select) -> float | None:
    """The label prior's average accuracy (%) on the examples the selected runs of `dataset` evaluated."""
    prior = prior_group(ctx.select(dataset=dataset, **select), ctx.suite(dataset), ctx.tasks(dataset))
    return 100 * stats.estimate(prior, n_boot=200)["mean"] if prior else None


def interval_caption(frame: pd.DataFrame) -> str:
    seeds = sorted({int(s) for s in frame["seeds"]}) if len(frame) else []
    n = sorted({int(v) for v in frame["n"]}) if len(frame) else []
    return (f"points: mean accuracy over seeds; bars: 95 % interval (bootstrap over test examples, stratified "
            f"by task{', hierarchical over seeds' if seeds and max(seeds) > 1 else ''}); "
            f"n = {'/'.join(map(str, n)) or '0'} test examples per seed; seeds = {'/'.join(map(str, seeds)) or '0'}")


def est_row(g: Group) -> dict:
    e = g.avg
    return {"acc": 100 * e["mean"], "lo": 100 * e["lo"], "hi": 100 * e["hi"], "spread": 100 * e["spread"],
            "seeds": e["seeds"], "n": e["n"]}


def train_costs(runs: list[Run]) -> dict:
    """Mean delta size (MB) and seconds per training step over the runs that recorded them."""
    mb = [r.record.get("train_info", {}).get("adapter_bytes") for r in runs]
    sps = [step_seconds(r) for r in runs]
    mb, sps = [v for v in mb if v is not None], [v for v in sps if v is not None]
    return {"delta MB": f"{np.mean(mb) / 2**20:.2f}" if mb else "n/a",
            "s/step": f"{np.mean(sps):.3f}" if sps else "n/a"}


def step_seconds(run: Run) -> float | None:
    ti = run.record.get("train_info", {})
    if ti.get("train_seconds") is None or not ti.get("steps"):
        return None
    return float(ti["train_seconds"]) / float(ti["steps"])
