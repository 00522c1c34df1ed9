"""The SLURM profile routes every GPU job to a GPU partition (issue 31), checked without a cluster.

`snakemake -n --profile workflow/profiles/slurm` plans the jobs with the resources the profile
gives them (default-resources, set-resources); the partition of each is then the one the SLURM
executor plugin would pick: the job's own `slurm_partition`, else the plugin's choice among the
profile's partition file (`slurm-partition-config`), else the cluster's default partition (taken
to be a CPU partition). A job with gpu > 0 outside a partition with enough GPUs fails the test, and
so does a rule named in the profile that no rule file defines (the profile once sized
`profile_step`, not a rule, and sent profile_table1, forgetting_base and evaluate_val to `cpu`).
Plans: config/paper.yaml (4 GPUs per training job; Table 1's profile, forgetting) and
config/config.yaml with execution.gpus=1 and --forceall (the learning-rate sweep's evaluate_val).
"""
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
plugin = pytest.importorskip("snakemake_executor_plugin_slurm.partitions",
                             reason="snakemake-executor-plugin-slurm is not installed (pip install .[slurm])")

JOB_HEAD = re.compile(r"^(?:local)?(rule|checkpoint) (\w+):$")
RESOURCE = re.compile(r"(\w+)=(.*?)(?=, \w+=|$)")


class _Resources(dict):
    """A job's resources as the plugin reads them (.get and attribute access)."""
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class _Job:
    def __init__(self, rule, resources, threads, local):
        self.name, self.resources, self.threads, self.local = rule, resources, threads, local

    def __str__(self):
        return self.name


class _Log:
    def debug(self, *a): pass
    info = warning = debug


def _value(v):
    try:
        return int(v)
    except ValueError:
        return v


def planned_jobs(text: str) -> list:
    """The jobs of a `snakemake -n` plan: rule, resources, threads (1 when not printed), local."""
    jobs, cur = [], None
    for line in text.splitlines():
        m = JOB_HEAD.match(line)
        if m:
            cur = _Job(m.group(2), _Resources(), 1, line.startswith("local"))
            jobs.append(cur)
        elif cur is not None and line.startswith("    resources: "):
            cur.resources.update({k: _value(v) for k, v in RESOURCE.findall(line[len("    resources: "):])})
        elif cur is not None and line.startswith("    threads: "):
            cur.threads = int(line.split(":", 1)[1])
    return jobs


def dry_run(profile: pathlib.Path, *args) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--profile", str(profile), *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def defined_rules() -> set:
    """Every rule name of the workflow (config/config.yaml defines them all: its learning-rate sweep
    adds lr_choice and evaluate_val; evaluate and the report rules are named in loops)."""
    p = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules", "--configfile", "config/config.yaml"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    names = set(p.stdout.split())
    assert {"train", "evaluate", "evaluate_val", "profile_table1", "forgetting_base"} <= names, names
    return names


def routing_errors(profile: pathlib.Path, plan: str, rules: set) -> list:
    """What the profile gets wrong for this plan: GPU jobs outside a GPU partition, unknown rules."""
    prof = yaml.safe_load((profile / "config.yaml").read_text())
    errors = [f"{profile}/config.yaml: set-resources names {r!r}, which is not a rule of the workflow"
              for r in sorted(set(prof.get("set-resources") or {}) - rules)]
    # the partitions the plugin chooses among (none without a partition file: then a job without
    # slurm_partition goes to the cluster's default); their GPU limits, from this profile's file or,
    # for a profile without one, the repository's (the cluster's partitions are the same)
    own = prof.get("slurm-partition-config")
    partitions = {p.name: p for p in plugin.read_partition_file(profile / own)} if own else {}
    limits = partitions or {p.name: p for p in plugin.read_partition_file(PROFILE / "partitions.yaml")}
    jobs = [j for j in planned_jobs(plan) if not j.local]
    assert jobs, "the dry run planned no cluster job: nothing was checked"
    for job in jobs:
        gpu = int(job.resources.get("gpu", 0) or 0)
        part = job.resources.get("slurm_partition") or (
            plugin.get_best_partition(list(partitions.values()), job, _Log()) if partitions else None)
        if gpu > 0:
            limit = limits[part].limits.max_gpu if part in limits else 0
            if part is None or limit < gpu:
                errors.append(f"rule {job.name}: gpu={gpu} goes to partition "
                              f"{part or '<the cluster default>'} ({limit} GPUs in {profile.name}'s partitions)")
    return sorted(set(errors))


@pytest.fixture(scope="module")
def paper_plan():
    return dry_run(PROFILE, "--configfile=config/paper.yaml", "--", "all")


def test_paper_plan_routes_every_gpu_job_to_a_gpu_partition(paper_plan, defined_rules):
    jobs = planned_jobs(paper_plan)
    gpu_rules = {j.name for j in jobs if int(j.resources.get("gpu", 0) or 0) > 0}
    # the plan is the one the issue describes: these rules ask for GPUs
    assert {"train", "evaluate", "profile_table1", "forgetting_base"} <= gpu_rules, gpu_rules
    assert routing_errors(PROFILE, paper_plan, defined_rules) == []


def test_sweep_plan_routes_evaluate_val_to_a_gpu_partition(tmp_path, defined_rules):
    (tmp_path / "gpu.yaml").write_text("execution: {gpus: 1}\n")
    plan = dry_run(PROFILE, "--forceall", "--configfile", "config/config.yaml", str(tmp_path / "gpu.yaml"),
                   "--config", "from_records=false", "--", "all")
    assert "evaluate_val" in {j.name for j in planned_jobs(plan) if j.resources.get("gpu") == 1}
    assert routing_errors(PROFILE, plan, defined_rules) == []


def test_the_old_per_rule_profile_is_caught(tmp_path, defined_rules):
    """The profile before issue 31: a cpu default and per-rule GPU partitions, one of them for a
    rule that does not exist. The check must name the misrouted rules and the unknown one."""
    old = tmp_path / "slurm"
    old.mkdir()
    (old / "config.yaml").write_text(textwrap.dedent("""\
        executor: slurm
        jobs: 64
        default-resources: {slurm_partition: "cpu", slurm_account: "my-account", mem_mb: 8000, runtime: 60}
        set-resources:
          train: {slurm_partition: "gpu", gpu_model: "a100"}
          evaluate: {slurm_partition: "gpu", gpu_model: "a100"}
          profile_step: {slurm_partition: "gpu", gpu_model: "a100"}
        """))
    errors = routing_errors(old, dry_run(old, "--configfile=config/paper.yaml", "--", "all"), defined_rules)
    text = "\n".join(errors)
    assert "'profile_step', which is not a rule" in text
    assert "rule profile_table1: gpu=1 goes to partition cpu" in text
    assert "rule forgetting_base: gpu=1 goes to partition cpu" in text
    assert not any(e.startswith(("rule train:", "rule evaluate:")) for e in errors)
