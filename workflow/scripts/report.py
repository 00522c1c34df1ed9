"""Snakemake script: one table or figure from run records and their evaluations (harness.reports)."""
from _job import start

start(snakemake.threads, snakemake.log[0])

from harness import reports

params = snakemake.params
reports.make(params.target, dict(params.config), list(params.records), params.out_prefix)
