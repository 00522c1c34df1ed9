"""Snakemake script: the base model's loss on one held-out text (harness.forgetting.write_base).

The data root is resolved here, at run time (harness.data.resolve_data_root), as in evaluate.py.
"""
import os

from _job import start

start(snakemake.threads, snakemake.log[0])

from harness import data as hd
from harness.forgetting import write_base

config = snakemake.config  # the Snakefile's resolved, validated config (common.smk); not validated again
write_base(os.path.dirname(snakemake.input.model), dict(snakemake.params.model_cfg), snakemake.wildcards.text,
           hd.resolve_data_root(config["data_root"]), snakemake.output[0])
