"""Snakemake script: materialise one model source (harness.models.prepare_model)."""
from _job import start

start(snakemake.threads, snakemake.log[0])

from harness.models import prepare_model

prepare_model(snakemake.params.spec, snakemake.params.out_dir)
