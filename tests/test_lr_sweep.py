"""Learning rates tuned per method (experiments.lr_sweep, harness.lr_sweep) and the cloze protocol's
tiny study run through Snakemake (config/test-cloze.yaml: CI runs both protocols).

Checked against an independent recomputation from the prediction files: the choice (argmax of the
validation acc_norm macro average, ties to the smaller rate), that the validation split never
touches an evaluated or trained example, that the test set is scored only at chosen rates and
that each such evaluation carries the choice; and, without Snakemake, the run-id grammar of a
rate, the validation starts and the config errors.
"""
import json
import os
import pathlib

import numpy as np
import pytest
import yaml

from harness import config as hc
from harness import lr_sweep
from harness import reports
from harness.config import REPO_ROOT
from test_workflow_dag import job_counts, snakemake

MIRROR = pathlib.Path(os.environ.get("SMT_DATA_ROOT") or REPO_ROOT / "../shared/data")
CLOZE = REPO_ROOT / "config/test-cloze.yaml"


def cfg_of(path=CLOZE, **changes):
    raw = hc.load_layered(path)  # an overlay of config/test.yaml (`extends`)
    raw.update(changes)
    return raw


# --- the run-id grammar of a rate ---------------------------------------------------------------

def test_a_rate_in_the_run_id_is_the_runs_rate():
    cfg = reports.load_config(cfg_of())
    rid = hc.make_run_id("tiny", "commonsense", "lora", 2.0, "qkvud", 0, lr=3e-4)
    assert rid == "tiny/commonsense/lora@lr0.0003/b2.00/qkvud/s0"
    parts = hc.parse_run_id(rid)
    assert parts["method"] == "lora" and parts["lr"] == 3e-4
    run = hc.resolve_run(cfg, rid)
    assert run.method.lr == 3e-4 and run.method.name == "lora"
    plain = hc.resolve_run(cfg, "tiny/commonsense/lora/b2.00/qkvud/s0")
    assert plain.method.lr == cfg["methods"]["lora"]["lr"] and hc.parse_run_id(plain.run_id)["lr"] is None
    assert run.to_json() != plain.to_json()  # another rate, another fingerprint


@pytest.mark.parametrize("bad", ["lora@lr3e-4", "lora@lr0.00030", "lora@lr", "lora@lr0"])
def test_a_rate_has_one_spelling(bad):
    with pytest.raises(hc.ConfigError):
        hc.parse_run_id(f"tiny/commonsense/{bad}/b2.00/qkvud/s0")


def test_the_zero_shot_run_takes_no_rate():
    with pytest.raises(hc.ConfigError, match="no learning rate"):
        hc.resolve_run(reports.load_config(cfg_of()), "tiny/commonsense/zero_shot@lr0.001/b0.00/none/s0")


def test_run_ids_name_the_chosen_rate_for_the_method_and_its_variants():
    cfg = reports.load_config(cfg_of())
    chosen = lr_sweep.with_choice(cfg, {"dataset": "commonsense", "methods": {"smt": {"chosen": 0.01}}})
    assert hc.run_ids(chosen, "tiny", "commonsense", "smt_absmean", 2.0, seeds=[0]) == [
        "tiny/commonsense/smt_absmean@lr0.01/b2.00/qkv/s0"]  # a variant runs at its base's rate
    assert hc.run_ids(chosen, "tiny", "math", "smt", 2.0, seeds=[0]) == ["tiny/math/smt/b2.00/qkv/s0"]  # other dataset
    assert hc.run_ids(chosen, "tiny", "commonsense", "dora", 2.0, seeds=[0]) == [
        "tiny/commonsense/dora/b2.00/qkvud/s0"]  # not swept: its entry's rate


# --- the validation split -------------------------------------------------------------------------

def test_validation_starts_beyond_the_evaluated_head_and_the_carve():
    cfg = reports.load_config(hc.REPO_ROOT / "config/config.yaml")
    val = hc.eval_cfg(cfg, "commonsense_val")
    carve = cfg["datasets"]["commonsense"]["carve"]
    head = cfg["eval"]["commonsense"]["limit"]
    for task in val["tasks"]:
        want = carve["offset"] + carve["max_per_task"] if task in carve["tasks"] else head
        assert val["start"][task] == want >= head, task
    assert val["limit"] == cfg["experiments"]["lr_sweep"]["validation"]["limit"] and val["split"] == "validation"
    assert val["metric"] == cfg["primary_metric"] == "acc_norm"


def test_a_carve_without_an_end_leaves_no_validation_split():
    raw = cfg_of(hc.REPO_ROOT / "config/config.yaml")
    raw["datasets"]["commonsense"]["carve"]["max_per_task"] = None
    with pytest.raises(hc.ConfigError, match="max_per_task"):
        reports.load_config(raw)


@pytest.mark.skipif(not MIRROR.is_dir(), reason="offline data mirror not found")
def test_validation_docs_are_the_records_after_the_start():
    from harness import data as hd

    head = hd.load_cloze_docs("ARC-Easy", MIRROR, 5)
    val = hd.load_cloze_docs("ARC-Easy", MIRROR, 3, start=5)
    more = hd.load_cloze_docs("ARC-Easy", MIRROR, 8)
    assert [d.doc_id for d in val] == [5, 6, 7] and val == more[5:8] and not set(d.doc_id for d in head) & {5, 6, 7}
    with pytest.raises(ValueError, match="records"):
        hd.load_cloze_docs("openbookqa", MIRROR, 50, start=480)  # 500 records in its test file


# --- config errors ------------------------------------------------------------------------------------

def test_the_sweep_needs_the_cloze_protocol():
    raw = cfg_of()
    raw["protocol"] = "generative"
    raw.pop("primary_metric")
    with pytest.raises(hc.ConfigError, match="protocol: cloze"):
        reports.load_config(raw)


def test_a_cloze_metric_under_generative_is_refused():
    raw = cfg_of(hc.REPO_ROOT / "config/test.yaml", primary_metric="acc")
    with pytest.raises(hc.ConfigError, match="primary_metric"):
        reports.load_config(raw)


@pytest.mark.parametrize("change, match", [
    (lambda e: e["lrs"].update(lora=[1e-3, 1e-2]), "lrs"),           # fewer than 3 rates
    (lambda e: e["lrs"].update(smt_absmean=[1e-4, 1e-3, 1e-2]), "base"),  # a variant is not swept
    (lambda e: e.update(seed=7), "seed"),
])
def test_bad_sweep_entries_are_named(change, match):
    raw = cfg_of()
    change(raw["experiments"]["lr_sweep"])
    with pytest.raises(hc.ConfigError, match=match):
        reports.load_config(raw)


def test_the_test_set_is_scored_only_at_a_chosen_rate():
    cfg = reports.load_config(cfg_of())
    choice = {"dataset": "commonsense", "metric": "acc_norm", "rule": lr_sweep.RULE, "suite": "commonsense_val",
              "methods": {"smt": {"chosen": 0.01, "at_edge": True, "rates": {}}}}
    entry = lr_sweep.check_chosen(choice, cfg, "tiny/commonsense/smt_random@lr0.01/b2.00/qkv/s0")
    assert entry["method"] == "smt" and entry["chosen"] == 0.01
    with pytest.raises(ValueError, match="not the one"):
        lr_sweep.check_chosen(choice, cfg, "tiny/commonsense/smt@lr0.001/b2.00/qkv/s0")
    with pytest.raises(ValueError, match="not the one"):
        lr_sweep.check_chosen(choice, cfg, "tiny/commonsense/lora@lr0.01/b2.00/qkvud/s0")


# --- the tiny cloze study, through Snakemake --------------------------------------------------------

def test_dry_run_of_the_default_config_stops_at_the_choice():
    res = snakemake("-n", "--forceall", "table2")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    cfg = reports.load_config(hc.REPO_ROOT / "config/config.yaml")
    sweep = sum(len(v) for v in cfg["experiments"]["lr_sweep"]["lrs"].values())
    assert counts["train"] == counts["evaluate_val"] == sweep and counts["lr_choice"] == 1
    assert "evaluate" not in counts  # no test evaluation before the rates are chosen
    assert "DAG of jobs will be updated after completion" in res.stdout + res.stderr


@pytest.fixture(scope="module")
def cloze_run(tmp_path_factory):
    if not MIRROR.is_dir():
        pytest.skip(f"offline data mirror not found at {MIRROR}")
    out = tmp_path_factory.mktemp("tiny-cloze")
    raw = cfg_of()
    raw["paths"] = {k: str(out / k) for k in raw["paths"]}
    cfg_file = out / "test-cloze.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    res = snakemake("--cores", "2", f"--configfile={cfg_file}", "table2", "lr_sweep", "table7", timeout=1800)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    return out, reports.load_config(raw)


def macro_acc_norm(run_dir, suite, tasks):
    """Independent of harness.reports: the macro average of acc_norm from the prediction rows."""
    split = "val" if suite.endswith("_val") else "eval"
    per_task = []
    for task in tasks:
        rows = [json.loads(line) for line in (run_dir / split / f"{task}.predictions.jsonl").read_text().splitlines()]
        per_task.append(np.mean([r["acc_norm"] for r in rows]))
    return float(np.mean(per_task))


@pytest.mark.slow
def test_the_choice_is_the_best_validation_rate(cloze_run):
    out, cfg = cloze_run
    choice = json.loads((out / "results" / lr_sweep.FILE).read_text())
    exp, tasks = cfg["experiments"]["lr_sweep"], cfg["eval"]["commonsense"]["tasks"]
    assert choice["metric"] == "acc_norm" and choice["suite"] == "commonsense_val"
    assert set(choice["methods"]) == set(exp["lrs"])
    for method, rates in exp["lrs"].items():
        values = {}
        for lr in rates:
            rid = hc.make_run_id(exp["model"], exp["dataset"], method, exp["budget"],
                                 cfg["methods"][method]["placement"], 0, lr=lr)
            values[lr] = macro_acc_norm(out / "results" / "runs" / rid, "commonsense_val", tasks)
            assert choice["methods"][method]["rates"][hc.lr_label(lr)]["value"] == pytest.approx(values[lr])
        best = max(values.values())
        assert choice["methods"][method]["chosen"] == min(lr for lr, v in values.items() if v == best), method
    md = (out / "results" / "tables" / "lr_sweep.md").read_text()
    assert md.count("chosen") >= len(exp["lrs"]) and "validation split" in md
    # the table's AVG column is each rate's validation score (recomputed above), in percent
    import pandas as pd

    table = pd.read_csv(out / "results" / "tables" / "lr_sweep.csv", comment="#", dtype=str, keep_default_na=False)
    for _, row in table[table["lr"] != "-"].iterrows():
        method = next(m for m in exp["lrs"] if hc.method_label(cfg, m) == row["Method"])
        value = choice["methods"][method]["rates"][row["lr"]]["value"]
        assert float(row["AVG"].split()[0]) == pytest.approx(100 * value, abs=0.05 + 1e-9), (method, row["lr"])
        assert (row["chosen"].startswith("chosen")) == (float(row["lr"]) == choice["methods"][method]["chosen"])


@pytest.mark.slow
def test_validation_and_test_examples_are_disjoint(cloze_run):
    out, cfg = cloze_run
    starts = hc.validation_starts(cfg, "commonsense", cfg["eval"]["commonsense"]["tasks"])
    for val in (out / "results" / "runs").glob("**/val/commonsense_val.json"):
        for task, start in starts.items():
            ids = [json.loads(l)["id"] for l in (val.parent / f"{task}.predictions.jsonl").read_text().splitlines()]
            assert ids == list(range(start, start + cfg["experiments"]["lr_sweep"]["validation"]["limit"]))
            assert min(ids) >= cfg["eval"]["commonsense"]["limit"]


@pytest.mark.slow
def test_the_test_set_is_scored_at_chosen_rates_only_and_says_so(cloze_run):
    out, cfg = cloze_run
    choice = json.loads((out / "results" / lr_sweep.FILE).read_text())
    chosen_cfg = lr_sweep.with_choice(cfg, choice)
    evaluated = {str(p.parent.parent.relative_to(out / "results" / "runs"))
                 for p in (out / "results" / "runs").glob("**/eval/commonsense.json")}
    wanted = set(reports.expand_runs(chosen_cfg, "table2")) | set(reports.expand_runs(chosen_cfg, "table7"))
    assert evaluated == wanted
    for rid in evaluated:
        parts = hc.parse_run_id(rid)
        ev = json.loads((out / "results" / "runs" / rid / "eval" / "commonsense.json").read_text())
        base = hc.tuned_method(cfg, parts["method"])
        if base in choice["methods"]:
            assert parts["lr"] == choice["methods"][base]["chosen"], rid
            assert ev["lr_choice"]["chosen"] == parts["lr"] and ev["lr_choice"]["rule"] == lr_sweep.RULE
        else:
            assert parts["lr"] is None and "lr_choice" not in ev, rid
    t2 = (out / "results" / "tables" / "table2.md").read_text()
    for method, c in choice["methods"].items():
        assert f"{method}@lr{hc.lr_label(c['chosen'])}" in t2  # Table 2's runs are the chosen ones
