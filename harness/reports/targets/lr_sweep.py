"""The learning-rate sweep: each method over its grid of rates, one seed, scored on the
validation split (never an evaluated test example), and the rate chosen for every later run of
it (harness.lr_sweep: the rule, the choice, the split)."""
from __future__ import annotations

import pandas as pd

from harness import config as hc
from harness import lr_sweep
from harness.reports.cells import (PRIOR_ROW, Ctx, finish, fmt_diff, method_row, paired, prior_group,
                                   prior_row)
from harness.reports.runs import method_label

KIND = "table"
TITLE = ("Learning-rate sweep: each method's rates on the validation split (primary metric, %, 95 % intervals, "
         "one seed), the chosen rate and each rate's paired difference from it")
SECTION = ("Learning rates tuned per method", "table: the sweep on the validation split")  # the report's category and subcategory
CAPTION = """\
Learning-rate sweep: each method over its grid of rates (one seed), scored by the primary metric on the validation split (test-file records beyond the evaluated head and beyond every record carved for training; never an evaluated test example), and the rate chosen for all of the method's later runs (harness/lr_sweep.py states the rule; the choice is also in ``lr_sweep/choice.json`` and in each chosen run's ``eval/<suite>.json``).

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``).

**Intervals:** 95 %: Wilson for one task; for averages a bootstrap over validation examples stratified by task; "chosen − this" is a paired bootstrap over the same examples.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
EVAL_SPLIT = "validation"  # its runs are read on <suite>_val (common.smk: eval_file), not on the test set
BEFORE_LR_CHOICE = True  # its runs make the choice (checkpoint lr_choice): their ids name their own rates
SCHEMA = {
    "description": "Learning rates tuned per method on a validation split (harness.lr_sweep).",
    "type": "object", "additionalProperties": False,
    "required": ["model", "dataset", "budget", "lrs", "validation"],
    "properties": {
        "model": {"type": "string", "description": "The model swept."},
        "dataset": {"type": "string", "description": "The training set swept; the choice applies to its runs."},
        "budget": {"$ref": "#/$defs/percent", "description": "The budget the PEFT methods are swept at "
                   "(full FT: all parameters); Table 2's, so that the sweep's chosen run is Table 2's first seed."},
        "lrs": {"type": "object", "minProperties": 1,
                "description": "method -> at least 3 learning rates; a method not listed keeps its entry's lr.",
                "additionalProperties": {"type": "array", "minItems": 3, "uniqueItems": True,
                                         "items": {"type": "number", "exclusiveMinimum": 0}}},
        "seed": {"type": "integer", "description": "The one seed of the sweep (default: the config's first)."},
        "validation": {"type": "object", "additionalProperties": False, "required": ["limit"],
                       "description": "The validation split: test-file records beyond the evaluated head and "
                       "beyond every record carved for training (harness.config.validation_starts).",
                       "properties": {"limit": {"type": "integer", "minimum": 1,
                                                "description": "records per task"}}},
    },
}


def check(config, exp) -> None:
    if config.get("protocol") != "cloze":
        raise hc.ConfigError("experiments.lr_sweep scores a validation split under protocol: cloze only; "
                             "set protocol: cloze or drop the entry")
    for method in exp["lrs"]:
        hc._need(config, "methods", method, "experiments.lr_sweep.lrs")
        if "base" in config["methods"][method]:
            raise hc.ConfigError(f"experiments.lr_sweep.lrs.{method}: a variant uses its base's rate "
                                 f"({config['methods'][method]['base']}); sweep the base instead")
    seed = exp.get("seed", config["seeds"][0])
    if seed not in config["seeds"]:
        raise hc.ConfigError(f"experiments.lr_sweep.seed {seed} is not in seeds {config['seeds']}")
    hc.validation_starts(config, exp["dataset"], config["eval"][config["datasets"][exp["dataset"]]["suite"]]["tasks"])


def runs(config, exp) -> list[str]:
    return lr_sweep.run_ids(config, exp)


def extra_inputs(config, exp, from_records) -> list[str]:
    """The choice file (made by the lr_choice checkpoint, so `snakemake lr_sweep` chooses the
    rates); with from_records none (the table recomputes the choice from the records)."""
    return [] if from_records else [str(hc.repo_path(lr_sweep.choice_path(config)))]


def caption_facts(config, exp) -> dict:
    """The sweep's runs, with n counted on the validation split (experiments.lr_sweep.validation.limit)."""
    from harness.report_html import run_facts

    return run_facts(config, runs(config, exp), "validation", exp["validation"]["limit"])


def build(ctx: Ctx) -> pd.DataFrame:
    choice = lr_sweep.choose(ctx)
    tasks, suite = ctx.tasks(choice["dataset"]), choice["suite"]
    prior = prior_group(ctx.runs, suite, tasks)
    ctx.notes.mark(f"validation split: {choice['validation']['limit_per_task']} records per task of each test file "
                   f"from index {', '.join(f'{t} {s}' for t, s in choice['validation']['starts'].items())} on "
                   "(beyond the evaluated head and the records carved for training); chosen by "
                   f"{choice['metric']}: {choice['rule']}")
    rows = []
    for method, c in choice["methods"].items():
        best = c["rates"][c["chosen"]]["_group"] if c["chosen"] is not None else None
        for lr, e in c["rates"].items():
            row = method_row(ctx, {"Method": method_label(ctx.config, method), "lr": hc.lr_label(lr)},
                             e["_group"], tasks, prior)
            row["chosen"] = ("chosen" + (" (grid edge)" if c["at_edge"] else "")) if lr == c["chosen"] else ""
            row["chosen − this"] = "" if lr == c["chosen"] else fmt_diff(paired(best, e["_group"], ctx.notes))
            rows.append(row)
        if c["at_edge"]:
            ctx.notes.mark("grid edge: the chosen rate is the smallest or largest of the method's grid, so the grid "
                           "may not bracket its best rate")
    rows.append(prior_row(ctx, {"Method": PRIOR_ROW, "lr": "-"}, prior, tasks))
    return finish(rows)
