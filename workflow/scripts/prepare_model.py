"""Snakemake script: materialise one model source (harness.models.prepare_model).

The full spec (with a `path` source's location) comes from the config at run time; the
params hold only content (the spec without location, and the source's sha256 sums).
"""
import os

from _job import start

start(snakemake.threads, snakemake.log[0])

from harness import config as hc
from harness.models import prepare_model

# the Snakefile's resolved, validated config (common.smk); read, not validated again
spec = hc.model_spec(snakemake.config, snakemake.wildcards.model)
prepare_model(spec, os.path.dirname(snakemake.output[0]))
