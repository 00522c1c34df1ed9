"""Train one run (harness.train.train).

Runs as `<launcher> workflow/scripts/train.py --run-cfg JSON --out-dir DIR --threads N`, where the
launcher is `python` (one process), `torchrun` (DDP) or `accelerate launch` (DeepSpeed ZeRO-2):
one Snakemake rule, the same command for every engine (`snakemake -n -p` prints it).

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
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[2]))  # harness importable before `pip install -e .`
from _job import start


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--run-cfg", required=True, help="the run config (harness.run_config.RunConfig, JSON)")
parser.add_argument("--out-dir", required=True)
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
signal.signal(signal.SIGTERM, _sigterm)  # Snakemake/SLURM stop jobs with SIGTERM: record "interrupted"
start(args.threads, None)  # the rule redirects stdout and stderr to its log

from harness.run_config import RunConfig  # noqa: E402
from harness.train import train  # noqa: E402

run = RunConfig.from_json(json.loads(args.run_cfg))
out_dir = args.out_dir
try:
    train(run, out_dir, threads=args.threads)
except KeyboardInterrupt:
    raise SystemExit(f"run {run.run_id} interrupted; its checkpoints are kept, rerun to resume")
except Exception as err:  # recorded in record.json by train(); the job succeeds so the record is kept
    print(f"run {run.run_id} did not finish ({type(err).__name__}: {err}); its record.json says "
          f"so. To train it again: snakemake --cores all <target> --forcerun {out_dir}/record.json",
          file=sys.stderr)
