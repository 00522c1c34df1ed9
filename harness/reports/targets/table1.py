"""Table 1: every method's training step against the frozen-weight floor, side by side in one
profile job (harness.profile); the table is rendered from that job's JSON, not from run records."""
from __future__ import annotations

import pathlib

from harness import provenance
from harness.records import read_json

KIND = "table"
TITLE = "Table 1: training step time and memory at the same budget"
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
    return []  # Table 1 profiles methods in one job (harness.reports.expand_profiles); it trains no run


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
