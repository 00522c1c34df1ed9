"""Failure and partial-data paths (issue 31, item 4), on constructed records (the record and
evaluation factory of tests/test_report_tables.py):

* the learning-rate sweep (harness.lr_sweep.write_choice, what rule lr_choice runs): a method
  whose every rate failed is an error naming the runs and nothing is written; a failed rate is no
  candidate, and a failed rate at the grid's end still bounds the grid (the chosen inner rate is
  not "at the edge"); a tie goes to the smaller rate; the choice names the declared metric;
* forgetting (harness.forgetting, Table 2's column): a seed whose forgetting was not measured is
  neither averaged in as zero nor hidden (the cell says how many seeds were measured); a base
  value measured on other model weights is refused, not joined.
"""
import json
import shutil

import pytest

from harness import config as hc
from harness.reports import load_config as _load_config
from harness import forgetting as fg
from harness import lr_sweep
from harness.reports.runs import load_run
from test_report_tables import write_runs

CLOZE = hc.REPO_ROOT / "config" / "test-cloze.yaml"


def sweep_config(**changes):
    raw = hc.load_yaml_strict(CLOZE)
    raw.update(changes)
    return _load_config(raw)


def write_sweep(root, cfg, accuracy, status=None):
    """The sweep's runs with their validation split (val/<suite>_val.json and predictions):
    write_runs' test-split files moved to val/ and renamed to the validation suite."""
    rids = [rid for rates in lr_sweep.sweep_run_ids(cfg).values() for rid in rates.values()]
    paths = write_runs(root, cfg, rids, accuracy=accuracy, status=status)
    for path in paths:
        run_dir = path.parent
        (run_dir / "eval").rename(run_dir / "val")
        ev = json.loads((run_dir / "val" / "commonsense.json").read_text())
        (run_dir / "val" / "commonsense.json").unlink()
        (run_dir / "val" / "commonsense_val.json").write_text(json.dumps({**ev, "suite": "commonsense_val"}))
    return paths


def rate_accuracy(table):
    """accuracy(run id) from {method: {rate: accuracy}}."""
    return lambda rid: table[hc.parse_run_id(rid)["method"]][hc.parse_run_id(rid)["lr"]]


ACC = {"full_ft": {1e-5: 0.55, 1e-4: 0.75, 1e-3: 0.6},
       "lora": {1e-4: 0.5, 1e-3: 0.6, 1e-2: 0.85},   # best at the grid's top: at the edge
       "smt": {1e-4: 0.5, 1e-3: 0.85, 1e-2: 0.2}}    # 1e-2 diverges (below): 1e-3 is an inner choice


def test_every_rate_of_a_method_failing_is_an_error_naming_its_runs(tmp_path):
    cfg = sweep_config()
    ids = lr_sweep.sweep_run_ids(cfg)
    status = {rid: ("failed", f"loss is nan at {lr}") for lr, rid in ids["lora"].items()}
    paths = write_sweep(tmp_path / "runs", cfg, rate_accuracy(ACC), status)
    out = tmp_path / "choice.json"
    with pytest.raises(RuntimeError, match="no usable rate for lora") as err:
        lr_sweep.write_choice(cfg, paths, out)
    assert all(hc.lr_label(lr) in str(err.value) for lr in ids["lora"]) and "failed" in str(err.value)
    assert "smt" not in str(err.value).split("\n")[0]
    assert not out.exists()  # nothing later may run at a rate nobody chose


def test_a_failed_rate_is_no_candidate_and_still_bounds_the_grid(tmp_path):
    cfg = sweep_config()
    ids = lr_sweep.sweep_run_ids(cfg)
    status = {ids["smt"][1e-2]: ("diverged", "loss exploded")}
    paths = write_sweep(tmp_path / "runs", cfg, rate_accuracy(ACC), status)
    choice = lr_sweep.write_choice(cfg, paths, tmp_path / "choice.json")
    assert json.loads((tmp_path / "choice.json").read_text()) == choice
    smt = choice["methods"]["smt"]
    assert smt["chosen"] == 1e-3 and smt["at_edge"] is False  # the diverged 1e-2 brackets it from above
    assert smt["rates"][hc.lr_label(1e-2)]["state"] == "diverged" and smt["rates"][hc.lr_label(1e-2)]["value"] is None
    lora = choice["methods"]["lora"]
    assert lora["chosen"] == 1e-2 and lora["at_edge"] is True
    assert choice["methods"]["full_ft"]["chosen"] == 1e-4 and choice["methods"]["full_ft"]["at_edge"] is False
    assert choice["metric"] == "acc_norm"


def test_a_tie_goes_to_the_smaller_rate(tmp_path):
    cfg = sweep_config()
    ids = lr_sweep.sweep_run_ids(cfg)
    paths = write_sweep(tmp_path / "runs", cfg, rate_accuracy(ACC))
    # lora's 1e-3 scores exactly what its best (1e-2) scores: the same validation predictions
    best, same = (tmp_path / "runs" / ids["lora"][lr] / "val" for lr in (1e-2, 1e-3))
    shutil.rmtree(same)
    shutil.copytree(best, same)
    choice = lr_sweep.write_choice(cfg, paths, tmp_path / "choice.json")
    rates = choice["methods"]["lora"]["rates"]
    assert rates[hc.lr_label(1e-3)]["value"] == rates[hc.lr_label(1e-2)]["value"]
    assert choice["methods"]["lora"]["chosen"] == 1e-3


def test_the_choice_names_the_declared_primary_metric(tmp_path):
    cfg = sweep_config(primary_metric="acc")
    paths = write_sweep(tmp_path / "runs", cfg, rate_accuracy(ACC))
    choice = lr_sweep.write_choice(cfg, paths, tmp_path / "choice.json")
    assert choice["metric"] == "acc"
    rid = hc.make_run_id("tiny", "commonsense", "smt", 2.0, cfg["methods"]["smt"]["placement"], 0, lr=1e-3)
    assert lr_sweep.check_chosen(choice, lr_sweep.with_choice(cfg, choice), rid)["metric"] == "acc"


# --------------------------------------------------------------------------------- forgetting
BASE_LOSS = 2.0
WEIGHTS = {"model.safetensors": "a" * 64}


def forgetting_world(tmp_path, after=None, base_weights=WEIGHTS):
    """Three seeds of one LoRA configuration under <results>/runs, the base value of model tiny on
    gsm8k_test, and eval/forgetting.json for the seeds in `after` ({seed: loss after})."""
    cfg = _load_config({**_load_config(hc.REPO_ROOT / "config/test.yaml"), "seeds": [0, 1, 2]})
    results = tmp_path / "results"
    rids = hc.run_ids(cfg, "tiny", "commonsense", "lora", 2.0)
    assert len(rids) == 3
    paths = write_runs(results / "runs", cfg, rids)
    common = {"text": "gsm8k_test", "texts_sha256": "t" * 64, "protocol": fg.PROTOCOL, "n_tokens": 1234}
    base = fg.base_path(results, "tiny", "gsm8k_test")
    base.parent.mkdir(parents=True)
    base.write_text(json.dumps({**common, "model": "tiny", "stage": "base", "model_files_sha256": base_weights,
                                "mean_token_loss": BASE_LOSS}))
    for seed, loss in (after or {}).items():
        run = load_run(paths[seed])
        (paths[seed].parent / "eval" / fg.FILE).write_text(json.dumps(
            {**common, "run_id": run.run_id, "stage": "after fine-tuning", "fingerprint": run.info.get("fingerprint"),
             "model_files_sha256": WEIGHTS, "mean_token_loss": loss}))
    return [load_run(p) for p in paths]


def test_a_seed_without_a_forgetting_value_is_neither_zero_nor_hidden(tmp_path):
    runs = forgetting_world(tmp_path, after={0: BASE_LOSS + 0.1, 1: BASE_LOSS + 0.3})
    assert fg.run_value(runs[2]) is None
    assert fg.run_value(runs[0])["forgetting"] == pytest.approx(0.1)
    assert fg.fmt_group(runs) == "+0.2000 (+0.1000–+0.3000) (2/3 seeds measured)"
    assert fg.fmt_group(runs[:2]) == "+0.2000 (+0.1000–+0.3000)"
    marked = []
    notes = type("Notes", (), {"mark": lambda self, text: marked.append(text) or "[1]"})()
    rows = [{"Method": "LoRA", "_group": type("G", (), {"ok": runs})()}]
    fg.add_table_column(rows, notes)
    assert rows[0]["forgetting"].startswith("+0.2000") and fg.NOTE_NOT_MEASURED in marked


def test_a_base_value_measured_on_other_weights_is_refused(tmp_path):
    runs = forgetting_world(tmp_path, after={0: BASE_LOSS + 0.1}, base_weights={"model.safetensors": "b" * 64})
    with pytest.raises(ValueError, match="model_files_sha256"):
        fg.run_value(runs[0])
    with pytest.raises(ValueError, match="model_files_sha256"):
        fg.fmt_group(runs)
