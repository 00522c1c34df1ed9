"""Snakemake script: evaluate one run on one suite (harness.evaluate.evaluate_run).

The data root is resolved here, at run time (harness.data.resolve_data_root), not passed as a param:
where the data lives does not decide the result, its checksums (a param) do.
"""
import pathlib

from _job import start

start(snakemake.threads, snakemake.log[0])

from harness import data as hd
from harness.evaluate import evaluate_run
from harness.run_config import EvalConfig

out = pathlib.Path(snakemake.output[0])
eval_cfg = EvalConfig.from_json(dict(snakemake.params.eval_cfg))  # resolved once, in the Snakefile
config = snakemake.config  # the Snakefile's resolved, validated config (common.smk); not validated again
root = hd.resolve_data_root(config["data_root"])  # SMT_DATA_ROOT, else the config's; None: download
# the test files must still hold what the job was planned with (params: their checksums);
# checked before anything is written
planned = dict(snakemake.params.test_sha256)
if "unavailable" not in planned:
    now = hd.test_set_checksums(list(planned), root)
    if now != planned:
        raise RuntimeError(f"test files changed since the DAG was built: {planned} -> {now}; run snakemake again")
# a test evaluation at a swept method's rate: that rate must be the one chosen on validation, and
# the output carries the choice (the sweep, the rule, every rate's validation score)
annotations = None
if "lr_choice" in snakemake.input.keys():
    from harness import lr_sweep
    from harness.records import read_record

    choice = lr_sweep.read_choice(snakemake.input.lr_choice)
    run_id = read_record(snakemake.input.record)["run_info"]["run_id"]
    annotations = {"lr_choice": lr_sweep.check_chosen(choice, config, run_id)}
evaluate_run(snakemake.params.run_dir, eval_cfg.to_json(), out.parent, data_root=root, annotations=annotations)
