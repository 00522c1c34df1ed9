# Shared helpers: the validated config (CFG), output paths and input functions.
# All sweep logic is in harness/config.py; nothing heavy is imported here.
import functools
import json
import os
import sys

sys.path.insert(0, workflow.basedir)  # harness importable before `pip install -e .`

from harness import config as hc


# Snakemake parses the config files itself and keeps the last of two equal keys silently: read
# each one again, refusing duplicates (the error names the key, file and line), then validate.
for _configfile in workflow.config_settings.configfiles or [os.path.join(workflow.basedir, "config/config.yaml")]:
    hc.load_yaml_strict(_configfile)
CFG = hc.load_config(config)  # applies `recipe`, checks the schema and every method's own Settings
PATHS = CFG["paths"]
EXE = CFG["execution"]
TARGETS = list(hc.TARGETS)
RES, RESULTS, LOGS, BENCH = (PATHS[k] for k in ("resources", "results", "logs", "benchmarks"))
RUN_ID = "{model}/{dataset}/{method}/b{budget}/{placement}/s{seed}"
RUN = f"{RESULTS}/runs/{RUN_ID}"
ENV = "../envs/smt.yaml"


wildcard_constraints:
    **hc.RUN_ID_PATTERNS,
    suite=r"[A-Za-z0-9_-]+",


onstart:
    hc.check_registry(CFG)
    __import__("harness.records", fromlist=["x"]).print_failed_runs(RESULTS)  # failed/diverged runs + how to retrain


def run_id(w):
    """The run id named by a job's wildcards."""
    return f"{w.model}/{w.dataset}/{w.method}/b{w.budget}/{w.placement}/s{w.seed}"


def mem(rule_kind):
    return EXE["mem_mb"].get(rule_kind, 4000)


def runtime(rule_kind):
    return EXE["runtime"].get(rule_kind, 60)


def train_inputs(w):
    """Prepared model and training set of a run."""
    return {"model": model_marker(w.model), "data": hc.train_set_path(CFG, w.dataset)}


def model_marker(model):
    return f"{hc.model_dir(CFG, model)}/prepared.json"


def eval_file(rid):
    """The evaluation output of one run (its suite follows its training set)."""
    return f"{hc.run_dir(CFG, rid)}/eval/{hc.suite_of(CFG, rid)}.json"


def profile_file():
    """Table 1's one side-by-side profile (rule profile_table1)."""
    return f"{RESULTS}/profile/{CFG['experiments']['table1']['model']}/table1.json"


def target_inputs(target):
    """Files a table/figure reads: eval outputs of its runs, or Table 1's profiles."""
    if target == "table1":
        return [profile_file()]
    # + the base model's forgetting value(s) (workflow/rules/forgetting.smk) for the targets that show it
    return [eval_file(r) for r in hc.expand_runs(CFG, target)] + forgetting_inputs(target)


def target_records(target):
    """Record paths handed to harness.report (profiles for Table 1)."""
    if target == "table1":
        return target_inputs(target)
    return [f"{hc.run_dir(CFG, r)}/record.json" for r in hc.expand_runs(CFG, target)]


def report_prefix(target):
    """Output path without extension of a table or figure."""
    if target.startswith("table"):
        return f"{RESULTS}/tables/{target}"
    return f"{PATHS['figures']}/{target}"


def report_outputs(targets):
    """Every file the given targets write."""
    out = []
    for t in targets:
        exts = ("csv", "md", "tex", "html") if t.startswith("table") else ("png", "pdf")  # html: for --report
        out += [f"{report_prefix(t)}.{e}" for e in exts]
    return out


@functools.lru_cache(maxsize=None)
def _eval_params(suite):
    """eval_cfg of a suite without data_root, plus the sha256 of each of its test files
    (`test_sets_sha256` of prepare.smk: content, cached by path, size and mtime)."""
    cfg = {k: v for k, v in hc.eval_cfg(CFG, suite).items() if k != "data_root"}
    try:
        sums = test_sets_sha256(suite)
    except (OSError, ValueError) as err:  # no data here (e.g. a dry run elsewhere): the job will say
        sums = {"unavailable": str(err).splitlines()[0]}
    return {"eval_cfg": cfg, "test_sha256": sums}


# Forgetting (workflow/rules/forgetting.smk, harness.forgetting): the base-model files the targets
# that show forgetting join their runs with.
from harness import forgetting as _forgetting

FORGETTING_TARGETS = ("table2", "figure_pareto")  # the targets that show it


def forgetting_base_file(model, text):
    return str(_forgetting.base_path(RESULTS, model, text))


def forgetting_inputs(target):
    """The base-model files a table/figure joins its runs' forgetting with (none for other targets)."""
    if target not in FORGETTING_TARGETS:
        return []
    pairs = {(hc.parse_run_id(r)["model"], _forgetting.text_for_suite(hc.suite_of(CFG, r)))
             for r in hc.expand_runs(CFG, target)}
    return [forgetting_base_file(m, t) for m, t in sorted(pairs)]


# `snakemake --report` (workflow/rules/report.smk, harness.report_html): each output marked with
# its paper table's section and caption.
from harness import report_html as _report_html

_FORMATS = {"html": "table, rendered", "csv": "table, CSV", "md": "table, Markdown", "tex": "table, LaTeX",
            "png": "figure, PNG", "pdf": "figure, PDF"}


def flagged_outputs(target):
    """Every output of a target, marked for `snakemake --report` in its paper table's section."""
    category, subcategory = _report_html.REPORT_GROUPS[target]
    return [report(path, caption=f"../report/{target}.rst", category=category, subcategory=subcategory,
                   labels={"target": target, "format": _FORMATS[path.rsplit(".", 1)[1]]})
            for path in report_outputs([target])]
