"""Snakemake script: one table or figure from run records (harness.report)."""
from _job import start

start(snakemake.threads, snakemake.log[0])

from harness import report

name, params = snakemake.params.target, snakemake.params
make = report.make_table if name.startswith("table") else report.make_figure
make(name, dict(params.config), list(params.records), params.out_prefix)
