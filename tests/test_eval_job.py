"""The evaluate rule for real (Snakemake, tiny config): failed runs get the skipped output, a
corrupt record fails the job with its path named and the good evaluation survives."""
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import yaml

from harness import config as hc
from harness import reports

REPO = hc.REPO_ROOT
MIRROR = pathlib.Path(os.environ.get("SMT_DATA_ROOT", REPO / "../shared/data"))
pytestmark = pytest.mark.skipif(not (MIRROR / "llm-adapters").is_dir(),
                                reason=f"offline data mirror not found at {MIRROR} (set SMT_DATA_ROOT)")
RID = "tiny/commonsense/lora/b2.00/qkvud/s0"


def _snakemake(cfg_path, *targets):
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", f"--configfile={cfg_path}",
                           *targets], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_evaluate_job_skips_failed_runs_and_never_loses_a_good_evaluation(tmp_path):
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["paths"] = {k: str(tmp_path / k) for k in cfg["paths"]}
    cfg["data_root"] = str(MIRROR.resolve())
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    full = reports.load_config(cfg_path)
    model = hc.model_dir(full, "tiny") + "/prepared.json"
    data = hc.train_set_path(full, "commonsense")
    res = _snakemake(cfg_path, model, data)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = pathlib.Path(hc.run_dir(full, RID))
    run_dir.mkdir(parents=True)
    time.sleep(1.1)  # the record must be newer than its inputs, as if the train job wrote it
    record = {"run_info": {"run_id": RID, "status": "diverged", "error": "loss is nan at step 3"}}
    (run_dir / "record.json").write_text(json.dumps(record))
    out = run_dir / "eval" / "commonsense.json"

    res = _snakemake(cfg_path, str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    skipped = json.loads(out.read_text())
    assert skipped == {"suite": "commonsense", "status": "skipped", "tasks": {},
                       "reason": "run status diverged: loss is nan at step 3"}
    assert json.loads((run_dir / "record.json").read_text()) == record  # the job never writes it

    time.sleep(1.1)
    (run_dir / "record.json").write_text('{"run_info": {"status": "ok"')  # corrupt, and newer
    res = _snakemake(cfg_path, str(out))
    assert res.returncode != 0
    log = pathlib.Path(full["paths"]["logs"]) / "evaluate" / RID / "commonsense.log"
    assert str(run_dir / "record.json") in log.read_text() + res.stderr
    assert json.loads(out.read_text()) == skipped, "the previous evaluation output must survive"
