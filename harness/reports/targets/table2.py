"""Table 2: accuracy at equal budget: each other method at its best budget of the sweep (or the
one budget of experiments.table2.budgets), the proposed method at each of those budgets and at
its own best, full FT, the zero-shot base model and the label prior. Its runs also feed the
Pareto figure."""
from __future__ import annotations

import pandas as pd

from harness import config as hc
from harness import forgetting
from harness.reports.cells import (PRIOR_ROW, Ctx, best_group, closest_budget, finish, fmt_diff, mark_best,
                                   method_row, paired, prior_group, prior_row)
from harness.reports.runs import method_label
from harness.reports.targets._sweep import sweep_runs

KIND = "table"
TITLE = ("Table 2: commonsense accuracy (%) at equal budget: each method's best budget of the sweep "
         "(or the one budget of experiments.table2.budgets), SMT at each baseline's budget, best SMT, "
         "full FT, the zero-shot base model (with each row's paired difference from it) and the "
         "label prior; 95 % intervals")
SHOWS_FORGETTING = True  # its inputs include the base model's forgetting values (workflow/rules/forgetting.smk)
SECTION = ("Table 2: commonsense at equal budget", "table")  # the report's category and subcategory
CAPTION = """\
Table 2: commonsense accuracy (%) at equal budget: each method at its best budget of the sweep, SMT at each baseline's budget, best SMT, full fine-tuning, the zero-shot base model and the label prior; the ``forgetting`` column is the change of the mean token loss on held-out text outside the training domain (after minus before fine-tuning, as peft's method_comparison), "not measured" for runs evaluated before the metric existed.

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``). The n and seeds each row or point actually has are in the table's ``n`` and ``seeds`` columns or drawn under the figure.

**Intervals:** 95 %: Wilson for one task; for averages a bootstrap over test examples stratified by task (over seeds and examples when there are several seeds); differences are paired bootstraps over the same examples; "best" only where the difference is significant. Footnotes, the config's and the runs' deviations from the paper and the run ids are printed under the table.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = {
    "description": "Best LoRA / best DoRA over a sweep, SMT at DoRA's best budget, best SMT, full FT.",
    "type": "object", "additionalProperties": False, "required": ["from_sweep", "full_ft"],
    "properties": {
        "seeds": {"$ref": "#/$defs/exp_seeds", "description": "Seeds of Table 2's runs (default: all of `seeds`, "
                  "not the sweep's)."},
        "budgets": {"type": "array", "items": {"$ref": "#/$defs/percent"}, "minItems": 1, "uniqueItems": True,
                    "description": "The sweep budgets Table 2 reads (default: all); each must be one of "
                    "experiments.table3.budgets."},
        "from_sweep": {"const": "table3", "description": "The sweep whose methods, budgets and dataset Table 2 reads."},
        "models": {"$ref": "#/$defs/name_list", "description": "Models of Table 2 (default: the sweep's models); "
                   "each gets the whole sweep."},
        "full_ft": {"type": "boolean", "description": "Add a full fine-tuning run per model."},
        "zero_shot": {"type": "boolean", "default": False, "description": "Add a zero-shot row per model: the base "
                      "model evaluated as it is (run <model>/<dataset>/zero_shot/b0.00/none/s<first seed>, nothing "
                      "trained), and each row's paired difference from it."},
        "extra": {"description": "Runs at budgets outside the sweep, e.g. the paper's DoRA(Best) budget of a model.",
                  "type": "array", "default": [],
                  "items": {"type": "object", "additionalProperties": False, "required": ["model", "methods", "budgets"],
                            "properties": {"model": {"type": "string"}, "methods": {"$ref": "#/$defs/name_list"},
                                           "budgets": {"type": "array", "items": {"$ref": "#/$defs/percent"},
                                                       "minItems": 1}}}},
    },
}


def check(config, exp) -> None:
    """Table 2 reads the sweep (experiments.table3): its budgets must be the sweep's."""
    if "table3" not in config["experiments"]:
        raise hc.ConfigError("experiments.table2 reads the sweep experiments.table3; define it")
    sweep = config["experiments"]["table3"]
    stray = [b for b in exp.get("budgets", []) if float(b) not in {float(x) for x in sweep["budgets"]}]
    if stray:
        raise hc.ConfigError(f"experiments.table2.budgets: {stray} are not budgets of the sweep (experiments.table3."
                             f"budgets {sweep['budgets']}); Table 2 picks its rows from the sweep's budgets")
    if exp["full_ft"] and hc.FULL_FT not in config["methods"]:
        hc._need(config, "methods", hc.FULL_FT, "experiments.table2.full_ft")


def models(config) -> list[str]:
    """Models of Table 2: its own list, else the sweep's."""
    return config["experiments"]["table2"].get("models") or config["experiments"]["table3"]["models"]


def runs(config, exp) -> list[str]:
    sweep, out = config["experiments"]["table3"], []
    for model in models(config):
        # Table 2 may read only some of the sweep's budgets, with its own seeds (default: the
        # config's): a cheap one-seed sweep for the plateau, three seeds where the methods meet
        out += sweep_runs(config, [model], budgets=exp.get("budgets"), seeds=exp.get("seeds") or config["seeds"])
        if exp["full_ft"]:
            out += hc.run_ids(config, model, sweep["dataset"], hc.FULL_FT, None, seeds=exp.get("seeds"))
        if exp.get("zero_shot"):  # deterministic: one run (the first seed) is all there is to measure
            out.append(hc.zero_shot_run_id(config, model, sweep["dataset"]))
    for extra in exp.get("extra", []):  # rows at budgets outside the sweep (e.g. DoRA's best)
        for method in extra["methods"]:
            for budget in extra["budgets"]:
                out += hc.run_ids(config, extra["model"], sweep["dataset"], method, budget, seeds=exp.get("seeds"))
    return out


def build(ctx: Ctx) -> pd.DataFrame:
    sweep = ctx.config["experiments"]["table3"]
    dataset, proposed = sweep["dataset"], ctx.proposed
    plabel = method_label(ctx.config, proposed)
    tasks, suite = ctx.tasks(dataset), ctx.suite(dataset)
    rows = []
    extra = ctx.exp.get("extra", [])  # runs at budgets outside the sweep (e.g. the paper's DoRA best)
    for model in dict.fromkeys(list(models(ctx.config)) + [e["model"] for e in extra]):
        mruns = ctx.select(model=model, dataset=dataset)
        prior = prior_group(mruns, suite, tasks)
        own_groups = ctx.groups([r for r in mruns if r.method == proposed], dataset)
        block = []
        methods = list(sweep["methods"]) + [m for e in extra if e["model"] == model for m in e["methods"]]
        others = [m for m in dict.fromkeys(methods) if m != proposed and any(r.method == m for r in mruns)
                  or (m in sweep["methods"] and m != proposed)]
        best = {m: best_group(ctx.groups([r for r in mruns if r.method == m], dataset)) for m in others}
        # with one budget (experiments.table2.budgets) there is no "best" to pick: the rows say
        # the budget, and the proposed method is one row that each other method is compared with
        single = len(ctx.exp.get("budgets") or []) == 1 and not extra
        at = f" ({float(ctx.exp['budgets'][0]):.2f} %)" if single else " (Best)"
        for m in others:
            block.append(method_row(ctx, {"Model": model, "Method": f"{method_label(ctx.config, m)}{at}"},
                                    best[m], tasks, prior))
        own_at = {}
        for m in others:
            own_at[m] = closest_budget(own_groups, best[m].reached if best[m] else None)
            if not single:
                block.append(method_row(ctx, {"Model": model,
                                              "Method": f"{plabel} (at {method_label(ctx.config, m)} best budget)"},
                                        own_at[m], tasks, prior))
        own_best = best_group(own_groups)
        block.append(method_row(ctx, {"Model": model, "Method": f"{plabel}{at}"}, own_best, tasks, prior))
        full = [r for r in mruns if r.method == hc.FULL_FT]
        if ctx.exp.get("full_ft", True) and (full or hc.FULL_FT in ctx.config["methods"]):
            block.append(method_row(ctx, {"Model": model, "Method": method_label(ctx.config, hc.FULL_FT)},
                                    ctx.group(full, dataset) if full else None, tasks, prior))
        diff_col = f"{plabel} − this"
        for i, m in enumerate(others):  # the proposed method minus each other, at the other's best budget
            block[i][diff_col] = fmt_diff(paired(own_at[m], best[m], ctx.notes))
        if full:
            block[-1][diff_col] = fmt_diff(paired(own_best, block[-1].get("_group"), ctx.notes))
        mark_best(block)
        for row in block:  # the rate each row ran at, where the run ids name it (experiments.lr_sweep's choice)
            rates = {r.lr_named for r in row["_group"].runs} - {None} if row.get("_group") else set()
            if rates:
                row["lr"] = "/".join(hc.lr_label(v) for v in sorted(rates)) + " (chosen on validation)"
        if ctx.exp.get("zero_shot"):  # the reference every method must clear; not a contender for best
            zero = [r for r in mruns if r.method == hc.ZERO_SHOT]
            zero_group = ctx.group(zero, dataset) if zero else None
            for row in block:
                row["vs zero-shot"] = fmt_diff(paired(row.get("_group"), zero_group, ctx.notes))
            block.append(method_row(ctx, {"Model": model, "Method": method_label(ctx.config, hc.ZERO_SHOT)},
                                    zero_group, tasks, prior))
        forgetting.add_table_column(block, ctx.notes)  # after - before fine-tuning, on held-out text
        block.append(prior_row(ctx, {"Model": model, "Method": PRIOR_ROW}, prior, tasks))
        rows += block
    return finish(rows)
