"""Jobs run the interpreter that runs the workflow (issue 31, item 3).

Snakemake is started as `<venv>/bin/python -m snakemake` with PATH=/usr/bin:/bin (the venv not
activated) to train one tiny run: the train rule's shell command calls `python` (the launcher), so
it must find the venv's, which imports torch; before the fix it found none, or a system python
without torch ("No module named 'torch'").
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MIRROR = pathlib.Path(os.environ.get("SMT_DATA_ROOT") or REPO_ROOT / "../shared/data")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not MIRROR.is_dir(), reason=f"offline data mirror not found at {MIRROR} "
                                                              "(set SMT_DATA_ROOT); no network here")]


def test_a_shell_job_runs_the_snakemake_interpreter_without_an_activated_venv(tmp_path):
    bare_path = "/usr/bin:/bin"
    probe = subprocess.run(["sh", "-c", "python -c 'import torch'"], env={"PATH": bare_path}, capture_output=True)
    assert probe.returncode != 0, "a python with torch on /usr/bin:/bin: this test cannot tell the fix apart"
    cfg = yaml.safe_load((REPO_ROOT / "config/test.yaml").read_text())
    cfg["paths"] = {k: str(tmp_path / k) for k in cfg["paths"]}
    cfg["data_root"] = str(MIRROR.resolve())
    cfg_file = tmp_path / "test.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    record = tmp_path / "results/runs/tiny/commonsense/lora/b2.00/qkvud/s0/record.json"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env["PATH"] = bare_path
    env["PYTHONPATH"] = str(REPO_ROOT)  # this checkout's harness, as the suite runs it
    res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", f"--configfile={cfg_file}",
                          "--", str(record)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = tmp_path / "logs/train/tiny/commonsense/lora/b2.00/qkvud/s0.log"
    detail = (res.stdout + res.stderr)[-3000:] + (log.read_text()[-2000:] if log.exists() else "")
    assert res.returncode == 0, detail
    assert "Shell command: python workflow/scripts/train.py" in res.stdout + res.stderr  # the shell rule ran
    assert json.loads(record.read_text())["run_info"]["status"] == "ok", detail
