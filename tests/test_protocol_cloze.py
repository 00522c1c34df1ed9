"""The protocol switch end to end (issue 19, item 1): `protocol: cloze` changes what a run trains on
(the gold option's text after the cloze prompt, loss on it alone) and how it is evaluated (every
option scored by its log-likelihood), and says so in the run config, the record and the eval JSON;
`protocol: generative` (the paper's, the default) leaves every spec, run config and eval_cfg as
they were, so no committed run goes stale."""
import copy
import json
import pathlib

import pytest

from conftest import MIRROR, needs_mirror
from harness import config as hc
from harness import reports

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def configs():
    generative = reports.load_config(REPO / "config" / "test.yaml")
    raw = hc.load_yaml_strict(REPO / "config" / "test.yaml")
    raw["protocol"] = "cloze"
    return generative, reports.load_config(raw)


def test_generative_is_the_default_and_changes_nothing(configs):
    generative, cloze = configs
    assert generative["protocol"] == "generative"
    rid = "tiny/commonsense/smt/b2.00/qkv/s0"
    entry = {k: v for k, v in generative["datasets"]["commonsense"].items() if k != "suite"}
    assert hc.dataset_spec(generative, "commonsense") == entry
    assert "protocol" not in hc.eval_cfg(generative, "commonsense")
    assert hc.CLOZE_DEVIATION not in hc.resolve_run(generative, rid).deviations


def test_cloze_is_in_the_spec_the_eval_cfg_and_the_deviations(configs):
    generative, cloze = configs
    rid = "tiny/commonsense/smt/b2.00/qkv/s0"
    run = hc.resolve_run(cloze, rid)
    assert run.dataset.spec["protocol"] == "cloze" and hc.CLOZE_DEVIATION in run.deviations
    assert hc.eval_cfg(cloze, "commonsense")["protocol"] == "cloze"
    # the arithmetic suite has no options: it keeps the generative protocol
    assert "protocol" not in hc.eval_cfg(cloze, "math") and "protocol" not in hc.dataset_spec(cloze, "math")
    # the spec is in the fingerprint: a cloze run never resumes a generative one's checkpoint
    from harness.records import fingerprint, fingerprint_inputs
    meta = {"model_checksums": {}, "data_checksums": {"train_sha256": "x"}}
    fp = lambda c: fingerprint(fingerprint_inputs(hc.resolve_run(c, rid).to_json(), meta, 1))  # noqa: E731
    assert fp(cloze) != fp(generative)


def test_a_bad_protocol_is_refused_naming_the_key():
    raw = hc.load_yaml_strict(REPO / "config" / "test.yaml")
    raw["protocol"] = "mc"
    with pytest.raises(hc.ConfigError, match="protocol"):
        reports.load_config(raw)


@needs_mirror
def test_cloze_training_records_and_tokens(configs, tiny_model_dir, tmp_path):
    """Every prepared record is the gold option's text after the cloze prompt; tokenized, the loss
    is on exactly the option's tokens (no EOS), split as the scorer splits them."""
    from harness import cloze
    from harness.data import prepare_train_set
    from harness.models import load_model
    from harness.prompts import tokenize_example

    _, cfg = configs
    out = tmp_path / "train.json"
    meta = prepare_train_set(hc.dataset_spec(cfg, "commonsense"), MIRROR, out, eval_limit=cfg["eval"]["commonsense"]["limit"])
    records = json.loads(out.read_text())
    assert meta["spec"]["protocol"] == "cloze" and len(records) == meta["records"] > 0
    _, tok = load_model(tiny_model_dir, "float32", "cpu")
    for r in records:
        c = r["cloze"]
        assert r["output"] == " " + c["options"][c["gold"]] or c["task"] == "winogrande", r
        ex = tokenize_example(tok, r, 10_000, False, True)
        ctx, cont = cloze.encode_pair(tok, c["prompt"], r["output"])
        assert ex["input_ids"] == ctx + cont and ex["labels"] == [-100] * len(ctx) + cont
        assert tok.eos_token_id not in cont or r["output"].endswith(tok.eos_token)


@needs_mirror
def test_a_cloze_run_trains_and_is_evaluated_by_option_loglikelihoods(configs, tiny_model_dir, tmp_path):
    """Prepare, train (the loop's own path) and evaluate under cloze; the eval JSON names the
    protocol and its deviations, every prediction line holds each option's log-likelihood, and the
    trained model scores the options differently from the base model."""
    from harness.data import prepare_train_set
    from harness.evaluate import CLOZE_NOTE, evaluate_model, evaluate_run
    from harness.models import load_model
    from harness.train import train

    _, cfg = configs
    prepare_train_set(hc.dataset_spec(cfg, "commonsense"), MIRROR, tmp_path / "train.json", eval_limit=2)
    run = hc.resolve_run(cfg, "tiny/commonsense/lora/b2.00/qkvud/s0").to_json()
    run["model"].update(path=str(tiny_model_dir), device="cpu")
    run["dataset"]["path"] = str(tmp_path / "train.json")
    run["train"].update(max_steps=3, checkpoint_every=None, val_records=4)
    rec = train(run, tmp_path / "run")
    assert rec["run_info"]["status"] == "ok" and hc.CLOZE_DEVIATION in rec["run_info"]["deviations"]
    assert rec["train_info"]["n_dropped_no_answer"] == 0 and rec["train_info"]["final_val_loss"] > 0
    eval_cfg = {**hc.eval_cfg(cfg, "commonsense"), "limit": 2}
    result = evaluate_run(tmp_path / "run", eval_cfg, tmp_path / "run" / "eval", data_root=MIRROR)
    assert result["protocol"]["name"] == "cloze" and CLOZE_NOTE in result["deviations"]
    assert set(result["tasks"]) == set(cfg["eval"]["commonsense"]["tasks"])
    for task, entry in result["tasks"].items():
        assert entry["n"] == 2 and entry["accuracy"] == entry["acc_norm"] and entry["choice_nll"] > 0
        rows = [json.loads(x) for x in (tmp_path / "run" / "eval" / f"{task}.predictions.jsonl").read_text().splitlines()]
        for r in rows:
            assert len(r["loglikelihoods"]) == len(r["continuations"]) == len(r["choices"]) >= 2
            assert r["correct"] == bool(r["acc_norm"]) and r["label"] == str(r["gold"])
            assert r["prediction"] == str(r["pred_acc_norm"])
    base, tok = load_model(tiny_model_dir, "float32", "cpu")
    base_result = evaluate_model(base, tok, eval_cfg, tmp_path / "base", data_root=MIRROR)
    trained = [json.loads(x)["loglikelihoods"] for x in (tmp_path / "run" / "eval" / "piqa.predictions.jsonl").read_text().splitlines()]
    untrained = [json.loads(x)["loglikelihoods"] for x in (tmp_path / "base" / "piqa.predictions.jsonl").read_text().splitlines()]
    assert trained != untrained and base_result["protocol"]["name"] == "cloze"


def test_the_dag_plans_cloze_preparation_with_its_spec(tmp_path):
    """snakemake -n with --config protocol=cloze: the prepare job's spec says cloze (a dry run)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", "--configfile=config/test.yaml",
                          "--config", "protocol=cloze", "--", "table2"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "prepare_data" in out.stdout and "train" in out.stdout
