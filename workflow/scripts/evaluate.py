"""Snakemake script: evaluate one run on one suite (harness.evaluate.evaluate_run)."""
import pathlib

from _job import start

start(snakemake.threads, snakemake.log[0])

from harness.evaluate import evaluate_run

out = pathlib.Path(snakemake.output[0])
evaluate_run(snakemake.params.run_dir, dict(snakemake.params.eval_cfg), out.parent)
if not out.is_file():
    raise FileNotFoundError(f"evaluate_run wrote no {out}")
out.touch()  # newer than the record it just updated, so the job is not rerun
