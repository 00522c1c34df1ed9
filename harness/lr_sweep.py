"""Learning rates tuned per method (experiments.lr_sweep): the choice, from the sweep's runs.

Each swept method trains once per rate (one seed, the sweep's budget and the method's placement;
run ids name the rate, `lora@lr0.001`) and is scored on the validation split `<suite>_val`:
test-file records beyond the evaluated head and beyond every record carved for training
(harness.config.validation_starts), never an evaluated test example. The choice is made here and
only here (the workflow's checkpoint `lr_choice` writes it to <results>/lr_sweep/choice.json, the
`lr_sweep` table shows it): RULE says how. Every later run of that method on that dataset (Table 2,
the budget sweep, the placements, the ablation variants of it) uses the chosen rate, and its test
evaluation carries the choice (eval/<suite>.json `lr_choice`).
"""
from __future__ import annotations

import pathlib

from harness import config as hc
from harness.records import atomic_write_json, read_json

RULE = ("per method, the rate with the highest mean of the primary metric on the validation split (macro "
        "average over tasks, the sweep's one seed); a tie goes to the smaller rate; a failed or diverged "
        "rate is not a candidate; the chosen rate is used for every run of that method (and of its variants) "
        "on the sweep's dataset, at every budget and placement")
FILE = "lr_sweep/choice.json"


def choice_path(config: dict) -> str:
    return f"{config['paths']['results']}/{FILE}"


EXPERIMENT = "lr_sweep"  # its entry in a config's experiments


def entry(config: dict) -> dict | None:
    """The config's experiments.lr_sweep (None: no learning rate is tuned)."""
    return config["experiments"].get(EXPERIMENT)


def run_ids(config: dict, exp: dict | None = None) -> list[str]:
    """Every run of the sweep, in the config's order."""
    return [rid for rates in sweep_run_ids(config, exp).values() for rid in rates.values()]


def sweep_run_ids(config: dict, exp: dict | None = None) -> dict[str, dict[float, str]]:
    """{method: {rate: run id}} of the sweep, in the config's order."""
    exp = exp or config["experiments"][EXPERIMENT]
    seed = exp.get("seed", config["seeds"][0])
    out = {}
    for method, rates in exp["lrs"].items():
        placement = hc.method_entry(config, method)["placement"]
        out[method] = {float(lr): hc.make_run_id(exp["model"], exp["dataset"], method, exp["budget"], placement,
                                                 seed, lr=lr) for lr in rates}
    return out


def choose(ctx) -> dict:
    """The choice (what choice.json holds) from the sweep's runs in a report Ctx (harness.reports.cells):
    per method every rate's validation mean, its run id and state, the chosen rate and whether it
    lies on the grid's edge (then the grid may not bracket the best rate)."""
    from harness.reports.cells import Group

    exp = ctx.config["experiments"][EXPERIMENT]
    suite = hc.val_suite(ctx.suite(exp["dataset"]))
    tasks = ctx.tasks(exp["dataset"])
    by_id = {r.run_id: r for r in ctx.runs}
    methods = {}
    for method, rates in sweep_run_ids(ctx.config, exp).items():
        entries = {}
        for lr, rid in rates.items():
            run = by_id.get(rid)
            group = Group([run] if run else [], suite, tasks, ctx.notes)
            state = run.state(suite, tasks) if run else ("missing", f"no record for {rid}")
            entries[lr] = {"run_id": rid, "state": state[0], "reason": state[1],
                           "value": group.avg["mean"] if group.ok else None, "_group": group}
        usable = {lr: e for lr, e in entries.items() if e["value"] is not None}
        chosen = max(sorted(usable), key=lambda lr: usable[lr]["value"]) if usable else None  # ties: smaller
        methods[method] = {"chosen": chosen, "rates": entries,
                           "at_edge": chosen is not None and chosen in (min(entries), max(entries))}
    return {"dataset": exp["dataset"], "suite": suite, "metric": hc.primary_metric(ctx.config), "rule": RULE,
            "validation": {"limit_per_task": exp["validation"]["limit"],
                           "starts": hc.validation_starts(ctx.config, exp["dataset"], tasks)},
            "methods": methods}


def to_json(choice: dict) -> dict:
    """choice.json: the choice without the report's seed groups; rates as Python's g strings."""
    return {**{k: v for k, v in choice.items() if k != "methods"},
            "methods": {m: {"chosen": c["chosen"], "at_edge": c["at_edge"],
                            "rates": {hc.lr_label(lr): {k: v for k, v in e.items() if k != "_group"}
                                      for lr, e in c["rates"].items()}}
                        for m, c in choice["methods"].items()}}


def write_choice(config: dict, record_paths, out) -> dict:
    """Choose from the sweep's records and write choice.json; an error naming the runs when a
    method has no usable rate (nothing later may run at a rate nobody chose)."""
    from harness.reports.cells import Ctx
    from harness.reports.runs import load_run

    choice = to_json(choose(Ctx(EXPERIMENT, config, [load_run(p) for p in record_paths])))
    failed = {m: c for m, c in choice["methods"].items() if c["chosen"] is None}
    if failed:
        lines = [f"  {m}: " + "; ".join(f"{lr} {e['state']} ({e['reason']})" for lr, e in c["rates"].items())
                 for m, c in failed.items()]
        raise RuntimeError("experiments.lr_sweep: no usable rate for " + ", ".join(failed) + ":\n" + "\n".join(lines)
                           + "\nretrain those runs (snakemake --forcerun <record.json>) or widen the grid")
    atomic_write_json(out, choice)  # the project's one atomic JSON writer (harness.records)
    return choice


def read_choice(path) -> dict:
    return read_json(pathlib.Path(path), "the learning-rate choice of experiments.lr_sweep (rule lr_choice)")


def chosen_rates(choice: dict) -> dict:
    """{dataset: {method: chosen rate}}: what a config's `lr_chosen` holds (harness.config.chosen_lr)."""
    return {choice["dataset"]: {m: c["chosen"] for m, c in choice["methods"].items()}}


def with_choice(config: dict, choice: dict | None) -> dict:
    """The config with the sweep's choice in it (`lr_chosen`), so run ids name the chosen rates."""
    return config if choice is None else {**config, "lr_chosen": chosen_rates(choice)}


def check_chosen(choice: dict, config: dict, run_id: str) -> dict:
    """The choice entry of a run about to be evaluated on the test set: its rate must be the one
    chosen on validation for its method (or its variant's base) on its dataset; else an error (the
    test set is never scored at a rate the sweep did not choose)."""
    parts = hc.parse_run_id(run_id)
    method = hc.tuned_method(config, parts["method"])
    entry = choice["methods"].get(method) if parts["dataset"] == choice["dataset"] else None
    # rates compare as the run id writes them (harness.config.lr_label: one spelling per rate)
    if entry is None or parts["lr"] is None or hc.lr_label(parts["lr"]) != hc.lr_label(entry["chosen"]):
        raise ValueError(f"run {run_id}: its learning rate {parts['lr']} is not the one experiments.lr_sweep chose for "
                         f"{method} on {choice['dataset']} ({entry and entry['chosen']}); the test set is scored only "
                         "at chosen rates (the sweep's other rates are scored on validation)")
    return {"method": method, "chosen": entry["chosen"], "at_edge": entry["at_edge"], "metric": choice["metric"],
            "rule": choice["rule"], "suite": choice["suite"],
            "rates": {lr: {"value": e["value"], "run_id": e["run_id"], "state": e["state"]}
                      for lr, e in entry["rates"].items()}}
