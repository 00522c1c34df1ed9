"""Snakemake script: build one training set (harness.data.prepare_train_set).

The data root is resolved here, at run time (SMT_DATA_ROOT, then the config's data_root):
it is not a job parameter, so moving the mirror reruns nothing. The files read must hold
what the DAG's params recorded (`sources_sha256`); a change in between is an error.
"""
from _job import start

start(snakemake.threads, snakemake.log[0])

from harness.data import prepare_train_set, resolve_data_root

cfg = snakemake.config  # the Snakefile's resolved, validated config (common.smk); not validated again
dataset = snakemake.wildcards.dataset
suite = cfg["datasets"][dataset]["suite"]
meta = prepare_train_set(dict(snakemake.params.spec), resolve_data_root(cfg["data_root"]), snakemake.output[0],
                         eval_limit=cfg["eval"][suite].get("limit"))
read = {s["relpath"]: s["sha256"] for s in meta["sources"] + meta["carved"]}
planned = {k: v for k, v in dict(snakemake.params.sources_sha256).items()
           if k != "unavailable" and not v.startswith("upstream:")}
if any(read.get(k) != v for k, v in planned.items()):
    raise RuntimeError(f"the data files changed while the workflow ran: read {read}, the DAG planned with "
                       f"{planned}; rerun snakemake")
