"""The README's "Add your own table or figure" example works from the README alone: its module,
copied verbatim into harness/reports/targets/ of a fresh-clone copy of this working tree, is a
target that Snakemake plans (default config and the tiny test config) with no other file
touched: no report-section table, no caption file, no workflow edit (issue 30, item 3)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from harness.config import REPO_ROOT

pytestmark = pytest.mark.slow  # copies the repository and runs Snakemake

SECTION = "## Add your own table or figure"


def readme_example() -> tuple[str, str]:
    """(module name, module source): the first ```python block of the README's section."""
    text = (REPO_ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    name = re.search(r"harness/reports/targets/(\w+)\.py", section)
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert name and code, "the README's section names no targets/<name>.py or has no ```python block"
    return name.group(1), code.group(1)


@pytest.fixture(scope="module")
def clone_with_example(tmp_path_factory):
    """The files a fresh clone has (tracked + untracked, not ignored; the committed results and
    figures left out: a dry run reads none of them), plus the README's module."""
    out = tmp_path_factory.mktemp("readme") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO_ROOT / rel
        if src.is_file() and not rel.startswith(("results/", "figures/")):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / rel)
    name, code = readme_example()
    module = out / "harness" / "reports" / "targets" / f"{name}.py"
    assert not module.exists(), f"{module.name} is already a target; the README's example must be a new one"
    module.write_text(code)
    return out, name


def snakemake(cwd, *args):
    env = {**os.environ, "SMT_DATA_ROOT": str(cwd / "no-data-here")}
    env.pop("PYTHONPATH", None)  # harness (and the new module) must come from the copy
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("configfile", [None, "config/test.yaml"])
def test_the_readme_example_target_plans(clone_with_example, configfile):
    repo, name = clone_with_example
    args = ["-n", "--cores", "1", name] + ([f"--configfile={configfile}"] if configfile else [])
    res = snakemake(repo, *args)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert re.search(rf"^{name}\s+1$", res.stdout, re.M), res.stdout[-3000:]  # its own job is planned
    # `all` includes it, and the report's caption was made from the module (no hand-written file)
    res = snakemake(repo, *(["-n", "--cores", "1", "all"] + args[4:]))
    assert res.returncode == 0 and re.search(rf"^{name}\s+1$", res.stdout, re.M), res.stderr[-3000:]
    caption = repo / ".snakemake" / "report_captions" / f"{name}.rst"
    assert caption.is_file() and caption.read_text().startswith("Training cost"), caption
