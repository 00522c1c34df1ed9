"""Evaluation scores base + trained delta (not the base model), and extraction rules at their edges."""
import copy
import json
import os
import pathlib

import pytest
import torch

import baselines
from harness.evaluate import evaluate_model, evaluate_run, extract_answer, is_correct, response_text, score
from harness.models import load_model, prepare_model
from harness.train import train
from conftest import tiny_run_cfg
from harness.run_config import as_run_config

torch.set_num_threads(1)
MIRROR = pathlib.Path(os.environ.get("SMT_DATA_ROOT", pathlib.Path(__file__).resolve().parents[1] / "../shared/data"))
needs_mirror = pytest.mark.skipif(not (MIRROR / "llm-adapters").is_dir(),
                                  reason=f"offline data mirror not found at {MIRROR} (set SMT_DATA_ROOT)")
RECORDS = [{"instruction": "Is water wet? Answer format: true/false", "input": "",
            "output": "the correct answer is true", "answer": "true"}] * 4


def run_cfg(env, name):
    return tiny_run_cfg(env, name, 0.05 if name != "full_ft" else 5e-3, run_id=f"bite/{name}",
                        max_steps=8, micro_batch_size=2, warmup_steps=0)


EVAL = {"suite": "bite", "tasks": ["boolq"], "limit": 3, "batch_size": 3, "max_new_tokens": 8}


def rows(out_dir):
    return [json.loads(line) for line in (out_dir / "boolq.predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task,text,expected", [
    ("boolq", "false, then true", "false"),
    ("piqa", "solution1 or solution2", "solution1"),
    ("gsm8k", "first 3, then 1,234", 1234.0),
    ("gsm8k", "2 and 7", 7.0),
    ("AQuA", "Answer: C", "C"),
    ("AQuA", "A lot. The answer is (D)", "D"),
    ("SVAMP", "no number", None),
])
def test_extraction_edges(task, text, expected):
    assert extract_answer(task, text) == expected


def test_numbers_count_within_one_thousandth_only():
    assert is_correct("gsm8k", 5.0009, "5")
    assert is_correct("gsm8k", 0.001, "0")  # within 1e-3 includes 1e-3 itself
    assert not is_correct("gsm8k", 5.01, "5")
    assert not is_correct("gsm8k", 5.002, "5")
    assert not is_correct("boolq", None, "")
    assert not is_correct("gsm8k", None, "5")


def test_response_is_cut_at_a_further_response_marker():
    assert response_text(" true\n### Response: false") == "true"
    assert score("boolq", " true ### Response: false")["prediction"] == "true"
    assert score("boolq", "nothing here")["extraction_failure"] is True


def test_task_summary_counts_extraction_failures_apart_from_wrong_answers():
    from harness.evaluate import task_summary

    rows = [{"label": "true", "prediction": "true", "extraction_failure": False, "correct": True},
            {"label": "false", "prediction": "true", "extraction_failure": False, "correct": False},
            {"label": "true", "prediction": "true", "extraction_failure": False, "correct": True},
            {"label": "false", "prediction": None, "extraction_failure": True, "correct": False}]
    s = task_summary("boolq", rows)
    assert (s["n"], s["correct"], s["extraction_failures"]) == (4, 2, 1)
    assert s["accuracy"] == 0.5


@needs_mirror
@pytest.mark.parametrize("name", ["full_ft", "lora", "smt"])
def test_evaluate_run_scores_the_trained_model_not_the_base(tmp_path, monkeypatch, name):
    monkeypatch.delenv("SMT_DATA_ROOT", raising=False)
    env = tmp_path
    prepare_model({"source": "tiny", "seed": 0}, env / "model")
    (env / "train.json").write_text(json.dumps(RECORDS))
    cls, trained = baselines.get_method(name), {}
    real_save = cls.save

    def keep_trained(self, model, out_dir):  # the model exactly as training left it
        trained["model"] = copy.deepcopy(model)
        return real_save(self, model, out_dir)

    monkeypatch.setattr(cls, "save", keep_trained)
    cfg = run_cfg(env, name)
    assert train(cfg, env / "run")["run_info"]["status"] == "ok"
    eval_cfg = {**EVAL, "data_root": str(MIRROR)}
    result = evaluate_run(env / "run", eval_cfg, env / "run" / "eval")
    got = rows(env / "run" / "eval")

    base, tok = load_model(env / "model", "float32", "cpu")
    evaluate_model(base, tok, eval_cfg, env / "base")
    model = trained["model"]
    if name != "full_ft":  # evaluation merges; generation must see the same weights
        model = baselines.get_method(name)(as_run_config(cfg)).merge(model)
    evaluate_model(model, tok, eval_cfg, env / "trained")
    assert [r["generated"] for r in rows(env / "base")] != [r["generated"] for r in rows(env / "trained")], \
        "the test needs training to change the generations"
    assert [r["generated"] for r in got] == [r["generated"] for r in rows(env / "trained")]
    summary = result["tasks"]["boolq"]
    assert summary["n"] == len(got) == 3
    assert summary["accuracy"] == sum(r["correct"] for r in got) / 3
    assert summary["extraction_failures"] == sum(r["extraction_failure"] for r in got)
