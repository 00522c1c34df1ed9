"""Train one run (harness.train.train).

Runs as a Snakemake `script:` (single process), or under `accelerate launch` as
`train.py --run-cfg JSON --out-dir DIR --threads N` (multi-GPU / DeepSpeed).

Exit status. A run that fails or diverges still exits 0: its record.json (status failed or
diverged, error, traceback, loss curve so far) is the job's output, so Snakemake keeps it and
the tables show the run as such. To train it again after fixing the cause:
`snakemake --cores all <target> --forcerun <its record.json>` (or delete the record.json); the
history of attempts stays in the run's attempts.jsonl. An interrupted run (SIGINT, or SIGTERM
from a scheduler) exits non-zero and keeps its checkpoints; rerunning resumes it.
"""
import argparse
import json
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _job import start


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if "snakemake" in globals():
    run_cfg, out_dir = dict(snakemake.params.run_cfg), snakemake.params.out_dir
    threads, log = snakemake.threads, snakemake.log[0]
else:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-cfg", required=True, help="resolved run config (JSON)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    run_cfg, out_dir, threads, log = json.loads(args.run_cfg), args.out_dir, args.threads, None
signal.signal(signal.SIGTERM, _sigterm)  # Snakemake/SLURM stop jobs with SIGTERM: record "interrupted"
start(threads, log)

from harness.train import train  # noqa: E402

run_cfg["train"] = dict(run_cfg["train"], threads=threads)
try:
    train(run_cfg, out_dir)
except KeyboardInterrupt:
    raise SystemExit(f"run {run_cfg.get('run_id')} interrupted; its checkpoints are kept, rerun to resume")
except Exception as err:  # recorded in record.json by train(); the job succeeds so the record is kept
    print(f"run {run_cfg.get('run_id')} did not finish ({type(err).__name__}: {err}); its record.json says "
          f"so. To train it again: snakemake --cores all <target> --forcerun {out_dir}/record.json",
          file=sys.stderr)
