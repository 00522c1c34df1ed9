"""Snakemake script: build one training set (harness.data.prepare_train_set)."""
from _job import start

start(snakemake.threads, snakemake.log[0])

from harness.data import prepare_train_set

prepare_train_set(dict(snakemake.params.spec), snakemake.params.data_root, snakemake.output[0])
