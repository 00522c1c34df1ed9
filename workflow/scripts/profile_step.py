"""Snakemake script: time training steps of one method (harness.profile.profile_step)."""
from _job import start

start(snakemake.threads, snakemake.log[0])

from harness.profile import profile_step

run_cfg = dict(snakemake.params.run_cfg)
run_cfg["train"] = dict(run_cfg["train"], threads=snakemake.threads)
profile_step(run_cfg, snakemake.params.n_steps, snakemake.output[0])
