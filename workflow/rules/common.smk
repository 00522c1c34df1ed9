# Shared helpers: the validated config (CFG), output paths and input functions.
# Which runs a target needs is in its module (harness/reports/targets/); run configs in harness/config.py.
import functools
import json
import os
import sys

sys.path.insert(0, workflow.basedir)  # harness importable before `pip install -e .`

# Jobs run the interpreter that runs this Snakemake (issue 31): its directory goes first on PATH,
# so `python`, `accelerate` and `torchrun` in shell rules are this environment's even when it is
# not activated (`/path/venv/bin/python -m snakemake ...`); `script:` rules already run
# sys.executable. Jobs inherit the variable (locally, and on SLURM through sbatch's environment,
# where the job's own Snakemake sets it again). A conda environment (--sdm conda) still wins: the
# job activates it in front of this. Not a rule parameter, so moving the venv reruns nothing.
JOB_BIN = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != JOB_BIN:
    os.environ["PATH"] = os.pathsep.join([JOB_BIN, os.environ.get("PATH", "")]).rstrip(os.pathsep)

from harness import config as hc
from harness import lr_sweep
from harness import reports


# The config is loaded and validated HERE, once; jobs get resolved JSON (RunConfig, EvalConfig)
# through their rule's params and never load it again. Each --configfile is read again strictly
# (a duplicate key is an error naming the key, file and line) with its `extends:` chain resolved
# (a user config is the default plus its overrides: README "Your own config"), the files merged in
# order, then --config KEY=VALUE on top; the result is validated as a whole.
_LAYERED = {}
for _configfile in workflow.config_settings.configfiles or [os.path.join(workflow.basedir, "config/config.yaml")]:
    _LAYERED = hc.deep_merge(_LAYERED, hc.load_layered(_configfile))
_LAYERED = hc.deep_merge(_LAYERED, dict(workflow.config_settings.config))
# --config from_records=true arrives as the string "true": only true/false are accepted
if isinstance(_LAYERED.get("from_records"), str):
    if _LAYERED["from_records"].lower() not in ("true", "false"):
        raise ValueError(f"--config from_records={_LAYERED['from_records']}: write from_records=true or false")
    _LAYERED["from_records"] = _LAYERED["from_records"].lower() == "true"
CFG = reports.load_config(_LAYERED)  # recipe, schema, each target's experiments entry, every method's Settings
# the jobs' `snakemake.config` is this resolved, validated config: a job reads the keys it needs
# (a location, e.g. data_root, which is deliberately not a param) and never validates it again
config.clear()
config.update(CFG)
PATHS = CFG["paths"]
EXE = CFG["execution"]
TARGETS = reports.configured(CFG)  # every table and figure whose experiments entry this config has
FROM_RECORDS = bool(CFG.get("from_records"))  # --config from_records=true: tables from the records on disk
RES, RESULTS, LOGS, BENCH = (PATHS[k] for k in ("resources", "results", "logs", "benchmarks"))
RUN_ID = hc.RUN_ID_TEMPLATE  # the run-id grammar (harness.config), as wildcards
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
    return RUN_ID.format(**{k: getattr(w, k) for k in hc.RUN_ID_PATTERNS})


def mem(rule_kind):
    return EXE["mem_mb"].get(rule_kind, 4000)


def runtime(rule_kind):
    return EXE["runtime"].get(rule_kind, 60)


def train_inputs(w):
    """Prepared model and training set of a run."""
    return {"model": model_marker(w.model), "data": hc.train_set_path(CFG, w.dataset)}


def model_marker(model):
    return f"{hc.model_dir(CFG, model)}/prepared.json"


def eval_file(rid, split="test"):
    """The evaluation output of one run (its suite follows its training set): eval/<suite>.json on
    the test set, val/<suite>_val.json on experiments.lr_sweep's validation split."""
    if split == "validation":
        return f"{hc.run_dir(CFG, rid)}/val/{hc.val_suite(hc.suite_of(CFG, rid))}.json"
    return f"{hc.run_dir(CFG, rid)}/eval/{hc.suite_of(CFG, rid)}.json"


# Learning rates tuned per method (experiments.lr_sweep, harness.lr_sweep, workflow/rules/lr_sweep.smk):
# the checkpoint lr_choice writes the choice; the runs of every other target on the sweep's dataset
# name the chosen rates, so their input lists are known only once it has run.
SWEEP = lr_sweep.entry(CFG)
CHOICE = hc.repo_path(lr_sweep.choice_path(CFG)) if SWEEP else None


def lr_choice():
    """The sweep's choice (None without a sweep): from the checkpoint (raising Snakemake's
    IncompleteCheckpointException until it has run), with from_records from the file on disk."""
    if not SWEEP:
        return None
    if FROM_RECORDS:
        if not CHOICE.is_file():
            raise FileNotFoundError(f"from_records=true: {CHOICE} (the learning-rate choice) is missing; it is made "
                                    "by `snakemake --cores all lr_sweep` (without from_records)")
        return lr_sweep.read_choice(CHOICE)
    return lr_sweep.read_choice(checkpoints.lr_choice.get().output[0])


def target_config(target):
    """The config a target's runs are named from: with the sweep's choice where the target trains
    on the sweep's dataset (its run ids then name the chosen rates), else the config as it is."""
    if not SWEEP or getattr(reports.target(target).module, "BEFORE_LR_CHOICE", False):
        return CFG  # the sweep's own runs name their rates: they are what the choice is made from
    if all(hc.parse_run_id(r)["dataset"] != SWEEP["dataset"] for r in reports.expand_runs(CFG, target)):
        return CFG  # e.g. Table 5 (math): nothing of it waits for the commonsense sweep
    return lr_sweep.with_choice(CFG, lr_choice())


def target_runs(target):
    return reports.expand_runs(target_config(target), target)


def target_inputs(target):
    """Files a table/figure reads: the evaluations of its runs (or the files its module names
    instead, Table 1's profile), the further inputs its module names (extra_inputs: the GPU check's
    JSON of Table 1, the sweep's choice), and the base model's forgetting value(s)
    (workflow/rules/forgetting.smk) for a target that shows them (SHOWS_FORGETTING); not with
    from_records (no rule makes them then, and the committed runs have no forgetting value)."""
    own = reports.files(CFG, target)
    if own is None:
        own = [eval_file(r, reports.eval_split(target)) for r in target_runs(target)]
    return own + reports.extra_inputs(CFG, target, FROM_RECORDS) + ([] if FROM_RECORDS else forgetting_inputs(target))


def report_inputs(target):
    """The report rule's inputs: the evaluations (Table 1: the profile); with from_records also the
    records, every one of them required to exist already (no rule makes them in that mode)."""
    files = target_inputs(target)
    if not FROM_RECORDS:
        return files
    files = list(dict.fromkeys(files + target_records(target)))
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        make = f"snakemake --cores all {target}"
        raise FileNotFoundError(
            f"from_records=true rebuilds {target} from the records on disk, but {len(missing)} of its "
            f"{len(files)} input files are missing:\n  " + "\n  ".join(missing[:20])
            + ("\n  ..." if len(missing) > 20 else "")
            + f"\nThey are made by training/evaluating: run `{make}` (without from_records) to produce them.")
    return files


def report_input_function(target):
    """report_inputs(target) as an input function: checked only for the targets asked for."""
    return lambda wildcards: report_inputs(target)


def target_records(target):
    """Record paths handed to harness.reports (or the files its module builds from: Table 1's profile)."""
    own = reports.files(CFG, target)
    if own is not None:
        return own  # extra_inputs (Table 1: the GPU check's JSON) are inputs, not records
    return [f"{hc.run_dir(CFG, r)}/record.json" for r in target_runs(target)]


def report_prefix(target):
    """Output path without extension of a table or figure."""
    if reports.target(target).kind == "table":
        return f"{RESULTS}/tables/{target}"
    return f"{PATHS['figures']}/{target}"


def report_outputs(targets):
    """Every file the given targets write."""
    out = []
    for t in targets:
        exts = ("csv", "md", "tex", "html") if reports.target(t).kind == "table" else ("png", "pdf")  # html: for --report
        out += [f"{report_prefix(t)}.{e}" for e in exts]
    return out


@functools.lru_cache(maxsize=None)
def _eval_params(suite):
    """eval_cfg of a suite (no data root in it), plus the sha256 of each of its test files
    (`test_sets_sha256` of prepare.smk: content, cached by path, size and mtime)."""
    cfg = hc.eval_cfg(CFG, suite)
    try:
        sums = test_sets_sha256(suite)
    except (OSError, ValueError) as err:  # no data here (e.g. a dry run elsewhere): the job will say
        sums = {"unavailable": str(err).splitlines()[0]}
    return {"eval_cfg": cfg, "test_sha256": sums}


# Forgetting (workflow/rules/forgetting.smk, harness.forgetting): the base-model files the targets
# that show forgetting join their runs with.
from harness import forgetting as _forgetting

def forgetting_base_file(model, text):
    return str(_forgetting.base_path(RESULTS, model, text))


def forgetting_inputs(target):
    """The base-model files a table/figure joins its runs' forgetting with (none for other targets)."""
    if not getattr(reports.target(target).module, "SHOWS_FORGETTING", False):
        return []
    pairs = {(hc.parse_run_id(r)["model"], _forgetting.text_for_suite(hc.suite_of(CFG, r)))
             for r in target_runs(target)}
    return [forgetting_base_file(m, t) for m, t in sorted(pairs)]


# `snakemake --report` (workflow/rules/report.smk, harness.report_html): each output marked with
# its section and caption, both declared by its target module (SECTION, CAPTION); the caption is
# written to a file under .snakemake/report_captions/ (Snakemake's report reads captions from files).
from harness import report_html as _report_html

_FORMATS = {"html": "table, rendered", "csv": "table, CSV", "md": "table, Markdown", "tex": "table, LaTeX",
            "png": "figure, PNG", "pdf": "figure, PDF"}


def flagged_outputs(target):
    """Every output of a target, marked for `snakemake --report` in its module's SECTION, with its CAPTION."""
    category, subcategory = reports.target(target).section
    caption = str(_report_html.write_caption(target, os.path.abspath(".snakemake/report_captions")))
    return [report(path, caption=caption, category=category, subcategory=subcategory,
                   labels={"target": target, "format": _FORMATS[path.rsplit(".", 1)[1]]})
            for path in report_outputs([target])]


def lr_choice_input(w):
    """A test evaluation of a run that names a swept method's rate on the sweep's dataset reads the
    choice (the job refuses a rate that was not chosen and writes the choice into its output)."""
    if (SWEEP and w.dataset == SWEEP["dataset"] and hc.LR_SUFFIX in w.method
            and not w.suite.endswith(hc.VAL_SUFFIX)):
        return {"lr_choice": str(CHOICE)}
    return {}
