"""Jobs depend on data content, not location (issue 8, finding 3), through Snakemake itself.

The tiny config's two prepare_data jobs run for real in a temporary working directory; then
dry runs show: the mirror moved to another directory with identical content -> nothing to do;
one source file of the commonsense set changed -> exactly its prepare_data job reruns (and,
through Snakemake's mtime trigger, everything downstream of it), the math set stays.
"""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from harness.config import REPO_ROOT

CHANGED = "llm-adapters/dataset/boolq/train.json"


def _snakemake(workdir, configfile, mirror, *args):
    env = {**os.environ, "SMT_DATA_ROOT": str(mirror)}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"),
                           "-d", str(workdir), f"--configfile={configfile}", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def _status(workdir, configfile, mirror, targets) -> dict:
    """{output: (status, plan)} from `snakemake --summary` (the table of what a run would redo).
    (`--list-changes params` is not used: Snakemake 9 lists every output there, changed or not.)"""
    res = _snakemake(workdir, configfile, mirror, "--summary", *targets)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split("\t") for line in res.stdout.splitlines() if line.startswith(str(workdir))]
    return {row[0]: (row[4], row[5]) for row in rows}


def _copy_mirror(src, dest, link=False):
    """A copy of the mirror: every file copied (other paths, other mtimes, same bytes), or linked."""
    for path in src.rglob("*"):
        if path.is_file():
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path) if link else shutil.copyfile(path, target)


@pytest.mark.slow
def test_moving_the_mirror_reruns_nothing_and_a_changed_file_reruns_its_job(data_root):
    # a private directory: pytest's tmp_path may be pruned by concurrent pytest sessions meanwhile
    with tempfile.TemporaryDirectory(prefix="smt-dag-") as tmp:
        _check_content_not_location(data_root, pathlib.Path(tmp))


def _check_content_not_location(data_root, tmp_path):
    cfg = yaml.safe_load((REPO_ROOT / "config/test.yaml").read_text())
    cfg["paths"] = {k: str(tmp_path / "out" / k) for k in cfg["paths"]}
    configfile = tmp_path / "test.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    res = tmp_path / "out/resources/data"
    targets = [str(res / "commonsense/train.json"), str(res / "math/train.json")]
    done = _snakemake(tmp_path, configfile, data_root, "--cores", "1", *targets)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(os.path.isfile(t) and os.path.isfile(f"{t}.meta.json") for t in targets)

    moved = tmp_path / "moved-mirror"
    _copy_mirror(data_root / "llm-adapters", moved / "llm-adapters")
    _copy_mirror(data_root / "grade-school-math", moved / "grade-school-math")
    dry = _snakemake(tmp_path, configfile, moved, "-n", *targets)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    assert _status(tmp_path, configfile, moved, targets) == {t: ("ok", "no update") for t in targets}

    edited = tmp_path / "edited-mirror"
    _copy_mirror(moved, edited, link=True)
    (edited / CHANGED).unlink()
    (edited / CHANGED).write_bytes((moved / CHANGED).read_bytes() + b"\n")
    assert _status(tmp_path, configfile, edited, targets) == {targets[0]: ("params changed", "update pending"),
                                                               targets[1]: ("ok", "no update")}
