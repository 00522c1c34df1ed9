"""The Snakemake DAG: dry runs of the three configs, targets, lint, a config typo."""
import re
import subprocess
import sys

import pytest

from harness.config import REPO_ROOT


def snakemake(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def job_counts(stdout: str) -> dict:
    block = stdout.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


@pytest.mark.parametrize("configfile, trains", [("config/generative.yaml", 25), ("config/test.yaml", 19),
                                                ("config/paper.yaml", 103)])
@pytest.mark.slow
def test_dry_run_all(configfile, trains):
    res = snakemake("-n", "--forceall", f"--configfile={configfile}", "all")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    assert counts["train"] == counts["evaluate"] == trains
    assert counts["profile_table1"] == 1  # one side-by-side job for every method
    assert all(counts[t] == 1 for t in ("table1", "table2", "table3", "table4", "table5", "table6",
                                        "table7", "figure3", "figure4", "figure5", "figure7"))


def test_dry_run_table2_needs_only_its_runs():
    res = snakemake("-n", "--forceall", "--configfile=config/generative.yaml", "table2")
    assert res.returncode == 0, res.stderr[-3000:]
    # (the default config's table2 waits for its learning-rate sweep: tests/test_lr_sweep.py)
    # the local profile (keep-going, rerun-incomplete) applies without --profile
    assert "Using workflow specific profile profiles/default" in res.stdout + res.stderr
    counts = job_counts(res.stdout)
    # 9 trained runs + the zero-shot reference (the base model, evaluated through the same jobs)
    assert counts["train"] == 10 and "profile_table1" not in counts and "table3" not in counts


@pytest.mark.slow
def test_slurm_profile_dry_run():
    res = snakemake("-n", "--forceall", "--configfile=config/paper.yaml", "--profile", "workflow/profiles/slurm",
                    "table6")
    assert res.returncode == 0, res.stderr[-3000:]


def test_config_typo_fails_before_jobs(tmp_path):
    text = (REPO_ROOT / "config/test.yaml").read_text().replace("micro_batch_size:", "micro_bach_size:")
    bad = tmp_path / "typo.yaml"
    bad.write_text(text)
    res = snakemake("-n", f"--configfile={bad}", "all")
    assert res.returncode != 0
    assert "micro_bach_size" in res.stderr + res.stdout


def test_lint_clean():
    res = snakemake("--lint")
    assert res.returncode == 0 and "good condition" in res.stdout + res.stderr, res.stdout[-3000:]
