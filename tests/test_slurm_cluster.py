"""The tiny study through a real single-node SLURM (issue 31): `pytest -m slurm`.

The cluster is the one of tools/slurm/start.sh (munge, MariaDB + slurmdbd, slurmctld, slurmd; one
node in the partitions `cpu` and `gpu`, the latter with a `gpu` GRES): a running one when
SLURM_CONF names it and `sinfo` answers, else the test starts one (root and Debian's packages
needed: docs/CLUSTER.md) and stops it afterwards. The tiny config's `all` is submitted through
`snakemake --profile workflow/profiles/slurm` with a test overlay (the local account, small
resources) and with execution.gpus=1 (mixed_precision=no: the jobs still run on the CPU), so the
rules that ask for a GPU (train, evaluate, profile_table1, forgetting_base) declare gpu=1 and the
others gpu=0. Checked: every job finishes, sacct shows each on the partition its resources ask for
(gpu>0 -> gpu, else cpu), and the tables equal those of a local run of the same config, but for
the columns that are measured wall time (see MEASURED).
"""
import csv
import io
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest
import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MIRROR = pathlib.Path(os.environ.get("SMT_DATA_ROOT") or REPO_ROOT / "../shared/data")
START, STOP = REPO_ROOT / "tools/slurm/start.sh", REPO_ROOT / "tools/slurm/stop.sh"
ACCOUNT = os.environ.get("SMT_SLURM_ACCOUNT", "smt")

pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("sbatch") is None,
                                 reason="no sbatch: install slurm-wlm (docs/CLUSTER.md) to run the SLURM tier"),
              pytest.mark.skipif(not MIRROR.is_dir(), reason=f"offline data mirror not found at {MIRROR}")]
pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install snakemake-executor-plugin-slurm")

GPU_RULES = {"train", "evaluate", "profile_table1", "forgetting_base"}  # gpu=min(execution.gpus, 1) or more
# The table columns that are measured wall-clock time (and what is computed from it), so that two
# runs of the same config legitimately differ there; every other cell and comment line must agree
# (table1's saved activations are measured too: DoRA 17.1 vs 17.0 MB in two runs here)
MEASURED = {"table1.csv": {"Time/step (s)", "IQR (s)", "Tokens/s", "x Floor", "x Floor IQR", "Speed-up vs Full FT",
                           "Saved act. (MB)", "Accounted (MB)"},
            "table7.csv": {"s/step"}}


def _sinfo_ok(env) -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], env=env, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    """The SLURM_CONF environment of a running cluster; started here (and stopped) when none runs."""
    if "slurm" not in (request.config.getoption("markexpr") or "") and os.environ.get("SMT_SLURM_TEST") != "1":
        pytest.skip("the SLURM tier runs on request only (~40 min on 2 shared cores): pytest -m slurm, or SMT_SLURM_TEST=1")
    env = dict(os.environ)
    if env.get("SLURM_CONF") and _sinfo_ok(env):
        yield env
        return
    if os.geteuid() != 0:
        pytest.skip("no running cluster (SLURM_CONF) and not root: start one with sudo tools/slurm/start.sh")
    state = tmp_path_factory.mktemp("slurm")
    env["SMT_SLURM_DIR"] = str(state)
    t0 = time.time()
    p = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        subprocess.run(["bash", str(STOP)], env=env, capture_output=True, timeout=300)
        pytest.skip(f"the single-node SLURM did not start: {(p.stdout + p.stderr).strip()[-1500:]}")
    print(f"SLURM set-up: {time.time() - t0:.0f} s")
    env["SLURM_CONF"] = str(state / "etc/slurm.conf")
    try:
        yield env
    finally:
        subprocess.run(["bash", str(STOP)], env=env, capture_output=True, timeout=300)


def _config(out: pathlib.Path) -> pathlib.Path:
    cfg = yaml.safe_load((REPO_ROOT / "config/test.yaml").read_text())
    cfg["paths"] = {k: str(out / k) for k in cfg["paths"]}
    cfg["data_root"] = str(MIRROR.resolve())
    cfg["execution"].update(gpus=1, mixed_precision="no")
    f = out / "test.yaml"
    out.mkdir(parents=True, exist_ok=True)
    f.write_text(yaml.safe_dump(cfg))
    return f


def _snakemake(args, env, timeout):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _tables(out: pathlib.Path) -> dict:
    return {p.name: p.read_text() for p in sorted((out / "results" / "tables").glob("*.csv"))}


def _comparable(name: str, text: str, out: pathlib.Path) -> tuple:
    """A table CSV's comment lines (the run's output folder written <out>) and its cells, the
    measured columns (MEASURED) left out."""
    comments = [l.replace(str(out), "<out>") for l in text.splitlines() if l.startswith("#")]
    rows = list(csv.reader(io.StringIO("\n".join(l for l in text.splitlines() if not l.startswith("#")))))
    if not rows:
        return comments, rows
    keep = [i for i, h in enumerate(rows[0]) if h not in MEASURED.get(name, ())]
    return comments, [[r[i] if i < len(r) else None for i in keep] for r in rows]


def _differing_columns(a: str, b: str) -> set:
    ra = list(csv.reader(io.StringIO("\n".join(l for l in a.splitlines() if not l.startswith("#")))))
    rb = list(csv.reader(io.StringIO("\n".join(l for l in b.splitlines() if not l.startswith("#")))))
    if not ra or not rb or len(ra) != len(rb) or ra[0] != rb[0]:
        return {"<rows or header>"}
    return {h for i, h in enumerate(ra[0]) if any(x[i:i + 1] != y[i:i + 1] for x, y in zip(ra[1:], rb[1:]))}


def test_tiny_all_on_slurm_lands_on_the_partitions_its_resources_ask_for(cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm-run")
    cfg_slurm, cfg_local = _config(base / "slurm"), _config(base / "local")
    overlay = base / "overlay"
    overlay.mkdir()
    (overlay / "config.yaml").write_text(yaml.safe_dump({
        "jobs": 4, "latency-wait": 10, "retries": 0, "printshellcmds": True,
        "default-resources": {"slurm_account": ACCOUNT, "mem_mb": 1000, "runtime": 30},
        "slurm-init-seconds-before-status-checks": 5, "slurm-status-attempts": 5}))
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    t0 = time.time()
    res = _snakemake(["--profile", "workflow/profiles/slurm", "--workflow-profile", str(overlay),
                      f"--configfile={cfg_slurm}", "--", "all"], cluster, timeout=5400)
    slurm_s = time.time() - t0
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    t0 = time.time()
    loc = _snakemake(["--cores", "2", f"--configfile={cfg_local}", "--", "all"], os.environ, timeout=3600)
    print(f"tiny all: {slurm_s:.0f} s on SLURM, {time.time() - t0:.0f} s locally")
    assert loc.returncode == 0, (loc.stdout + loc.stderr)[-6000:]

    # every job this run submitted, from the accounting (the plugin's comment: rule_<rule>_wildcards_...)
    acct = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", since, "-o",
                           "JobID,Partition,State,AllocTRES,Comment,JobName"],
                          env=cluster, capture_output=True, text=True, check=True).stdout
    jobs = [dict(zip(("id", "partition", "state", "tres", "comment", "name"), l.split("|")))
            for l in acct.splitlines() if l.strip()]
    submitted = [j for j in jobs if j["comment"].startswith("rule_")]
    by_rule = {}
    for j in submitted:
        rule = j["comment"].split("_wildcards_")[0].removeprefix("rule_")
        by_rule.setdefault(rule, []).append(j)
        assert j["state"] == "COMPLETED", j
        asks_gpu = "gres/gpu=" in j["tres"]
        assert (rule in GPU_RULES) == asks_gpu, j
        assert j["partition"] == ("gpu" if asks_gpu else "cpu"), j
    print("jobs by rule and partition:",
          {r: sorted({j["partition"] for j in js}) + [len(js)] for r, js in sorted(by_rule.items())})
    assert GPU_RULES <= set(by_rule) and {"prepare_data", "prepare_model", "table2"} <= set(by_rule), by_rule

    slurm_t, local_t = _tables(base / "slurm"), _tables(base / "local")
    assert slurm_t and slurm_t.keys() == local_t.keys()
    for name in slurm_t:
        assert _comparable(name, slurm_t[name], base / "slurm") == _comparable(name, local_t[name], base / "local"), \
            (name, _differing_columns(slurm_t[name], local_t[name]))
