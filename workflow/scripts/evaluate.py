"""Snakemake script: evaluate one run on one suite (harness.evaluate.evaluate_run).

The data root is resolved here, at run time (harness.config.data_root), not passed as a param:
where the data lives does not decide the result, its checksums (a param) do.
"""
import pathlib

from _job import start

start(snakemake.threads, snakemake.log[0])

from harness import config as hc
from harness.evaluate import evaluate_run

out = pathlib.Path(snakemake.output[0])
eval_cfg = dict(snakemake.params.eval_cfg)
config = hc.load_config(dict(snakemake.config))  # validated, defaults filled
result = evaluate_run(snakemake.params.run_dir, eval_cfg, out.parent, data_root=hc.data_root(config))
shas = {t: r["test_sha256"] for t, r in result["tasks"].items()}
expected = dict(snakemake.params.test_sha256)
if result["status"] == "ok" and "unavailable" not in expected and shas != expected:
    raise RuntimeError(f"test files changed between planning and evaluation: {expected} -> {shas}; rerun")
