"""The fast subset of the mutation test (tools/mutants.yaml, tag smoke): every mutant still
applies to the code (none stale) and the tests kill every one of them."""
import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # plants mutants in a copy of the repository and runs their tests

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_smoke_mutants_are_all_killed(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "mutate.py"), "--tag", "smoke", "--fast",
                           "--timeout", "120", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert len(results) >= 5
    status = {r["id"]: r["status"] for r in results}
    assert all(s == "killed" for s in status.values()), (status, proc.stdout[-3000:])
    assert proc.returncode == 0
