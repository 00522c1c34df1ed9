"""Snakemake script: Table 1's one side-by-side profile job (harness.profile.profile_table1)."""
from _job import start

start(snakemake.threads, snakemake.log[0])

from harness.profile import profile_table1

profile_table1(dict(snakemake.params.runs), dict(snakemake.params.settings), snakemake.output[0],
               threads=snakemake.threads)
