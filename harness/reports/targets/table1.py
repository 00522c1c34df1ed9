"""Table 1: every method's training step against the frozen-weight floor, side by side in one
profile job (harness.profile); the table is rendered from that job's JSON, not from run records."""
from __future__ import annotations

import os
import pathlib

from harness import config as hc
from harness import provenance
from harness.records import read_json

KIND = "table"
TITLE = "Table 1: training step time and memory at the same budget"
SECTION = ("Table 1: step time and memory", "table")  # the report's category and subcategory
CAPTION = """\
Table 1: time per training step of every method against the frozen-weight floor, measured side by side in one job on the same batches, and accounted memory (parameters, gradients, optimizer state, saved activations).

**Runs:** {{ snakemake.params.facts.runs }} (config ``{{ snakemake.params.facts.config }}``); no test examples: the numbers are timings.

**Intervals:** step time as the median with its interquartile range over the timed rounds; ratios are medians of per-round ratios.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = {
    "description": "Step time and peak memory of each method at one budget (profile jobs).",
    "type": "object", "additionalProperties": False,
    "required": ["model", "dataset", "methods", "budget", "steps"],
    "properties": {
        "model": {"type": "string"},
        "dataset": {"type": "string"},
        "methods": {"$ref": "#/$defs/name_list",
                    "description": "Methods profiled (the frozen-model floor row is always added; do not list it)."},
        "budget": {"$ref": "#/$defs/percent"},
        "steps": {"type": "integer", "minimum": 2, "description": "Timed rounds: every method (and the frozen "
                  "floor) runs one training step per round, round-robin, on the same batch."},
        "warmup_steps": {"type": "integer", "minimum": 1, "default": 2, "description": "Untimed rounds before the "
                         "timed ones (the first also does the memory accounting); SMT's own warm-up is timed "
                         "separately."},
        "batch_size": {"type": ["integer", "null"], "minimum": 1, "default": None,
                       "description": "Examples per step (grad_accum forced to 1); null: train.micro_batch_size."},
        "seq_len": {"type": ["integer", "null"], "minimum": 1, "default": None, "description": "Every batch exactly "
                    "batch_size x seq_len positions; null: pad to the longest example, as training does."},
        "threads": {"type": ["integer", "null"], "minimum": 1, "default": None,
                    "description": "Torch threads of the profile job; null: the config's threads."},
    },
}


def runs(config, exp) -> list[str]:
    return []  # Table 1 profiles methods in one job (profile_job); it trains no run


def profiles(config, exp) -> list[tuple[str, str]]:
    """(model, method) pairs Table 1 profiles."""
    return [(exp["model"], method) for method in exp["methods"]]


def files(config, exp) -> list[str]:
    """The one side-by-side profile JSON the table is rendered from (made by profile_job)."""
    return [f"{config['paths']['results']}/profile/{exp['model']}/table1.json"]


def profile_job(config, exp) -> dict:
    """The profile job that writes files() (rule profile_table1, workflow/rules/profile.smk):
    every method's run config at the table's budget, on the table's model and training set."""
    return {"model": exp["model"], "dataset": exp["dataset"], "settings": exp,
            "runs": {m: hc.resolve_run(config, hc.profile_run_id(config, model, m)).to_json()
                     for model, m in profiles(config, exp)},
            "threads": exp.get("threads") or config["threads"]}


def extra_inputs(config, exp, from_records) -> list[str]:
    """The GPU check's JSON when there is one: committing it reruns table1, which renders
    table1_gpu beside it (after_write)."""
    path = f"{config['paths']['results']}/gpu/gpu_check.json"
    return [path] if os.path.exists(path) else []


def caption_facts(config, exp) -> dict:
    """Table 1 profiles methods on training batches: no runs, seeds or test examples."""
    return {"runs": f"{len(exp['methods'])} methods profiled side by side", "seeds": "-", "n": "-",
            "config": config["name"]}


def build_from_files(paths):
    """(frame, the profile files, title) from the profile JSON(s) harness.profile wrote."""
    from harness.profile import table1_frame

    profiles = [read_json(pathlib.Path(p), "a Table 1 profile JSON") for p in paths]
    if len(profiles) != 1:
        raise ValueError(f"Table 1 is rendered from one side-by-side profile JSON, got {len(profiles)}: {paths}")
    df = table1_frame(profiles[0])
    df.attrs.update(footnotes=[], deviations=list(profiles[0].get("deviations") or []),
                    provenance=provenance.profiled_at(profiles))
    return df, [str(p) for p in paths], TITLE


def after_write(out_prefix) -> None:
    """The GPU check's Table 1 beside it, table1_gpu.{md,csv} (harness.gpu_table; "no GPU
    measurement yet" while results/gpu/gpu_check.json does not exist)."""
    from harness import gpu_table

    gpu_table.write_beside(out_prefix)


def build(ctx):
    raise TypeError("Table 1 is built from its profile JSON (build_from_files), not from run records")
