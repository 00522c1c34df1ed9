"""Train one run (harness.train.train).

Runs as a Snakemake `script:` (single process), or under `accelerate launch` as
`train.py --run-cfg JSON --out-dir DIR --threads N` (multi-GPU / DeepSpeed).
A failed or interrupted run fails the job; its record is kept in the log.
"""
import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _job import start

if "snakemake" in globals():
    run_cfg, out_dir = dict(snakemake.params.run_cfg), snakemake.params.out_dir
    threads, log = snakemake.threads, snakemake.log[0]
else:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-cfg", required=True, help="resolved run config (JSON)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    run_cfg, out_dir, threads, log = json.loads(args.run_cfg), args.out_dir, args.threads, None
start(threads, log)

from harness.train import train

run_cfg["train"] = dict(run_cfg["train"], threads=threads)
record = train(run_cfg, out_dir)
status = record["run_info"]["status"]
if status not in ("ok", "diverged"):
    print(json.dumps(record["run_info"], indent=1, default=str))
    raise SystemExit(f"run {run_cfg['run_id']} ended with status {status!r}: {record['run_info'].get('error')}")
