"""evaluate_model through lm-eval on a tiny random LLaMA: batch-size invariance, outputs, errors."""
import json
import os
import pathlib

import pytest
import torch

from harness.evaluate import evaluate_model, evaluate_run

MIRROR = pathlib.Path(os.environ.get("SMT_DATA_ROOT", pathlib.Path(__file__).resolve().parents[1] / "../shared/data"))
needs_mirror = pytest.mark.skipif(not (MIRROR / "llm-adapters").is_dir(),
                                  reason=f"offline data mirror not found at {MIRROR} (set SMT_DATA_ROOT)")
TASKS = ["boolq", "gsm8k"]


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.models import tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=2048,
                      initializer_range=0.3,  # large weights: generations differ from prompt to prompt
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg), tok


def _cfg(batch_size, num_beams=1):
    return {"suite": "mini", "tasks": TASKS, "data_root": str(MIRROR), "limit": 8,
            "batch_size": batch_size, "max_new_tokens": 8, "num_beams": num_beams}


def _rows(out_dir, task):
    return [json.loads(line) for line in (out_dir / f"{task}.predictions.jsonl").read_text().splitlines()]


@needs_mirror
@pytest.mark.parametrize("num_beams", [1, 4])  # 4: lm-eval's stop criteria alone would break this
def test_batch_1_and_batch_8_give_the_same_predictions_and_consistent_files(tiny, tmp_path, monkeypatch,
                                                                            num_beams):
    monkeypatch.delenv("SMT_DATA_ROOT", raising=False)
    model, tok = tiny
    one = evaluate_model(model, tok, _cfg(1, num_beams), tmp_path / "b1")
    eight = evaluate_model(model, tok, _cfg(8, num_beams), tmp_path / "b8")
    assert one["tasks"] == eight["tasks"]
    for task in TASKS:
        rows1, rows8 = _rows(tmp_path / "b1", task), _rows(tmp_path / "b8", task)
        assert [r["id"] for r in rows1] == list(range(8))
        assert len({r["generated"] for r in rows1}) > 1, "generations must depend on the prompt"
        assert [r["generated"] for r in rows1] == [r["generated"] for r in rows8]
        assert [r["prediction"] for r in rows1] == [r["prediction"] for r in rows8]
    _check_outputs(eight, tmp_path / "b8")


def _check_outputs(result, out_dir):
    assert json.loads((out_dir / "mini.json").read_text()) == json.loads(json.dumps(result))
    for task in TASKS:
        rows, summary = _rows(out_dir, task), result["tasks"][task]
        assert summary["n"] == len(rows) == 8
        assert summary["accuracy"] == sum(r["correct"] for r in rows) / 8
        assert summary["extraction_failures"] == sum(r["extraction_failure"] for r in rows)
        assert summary["sha256"] and summary["test_file"].endswith(f"{task}/test.json")
        assert {"id", "label", "generated", "prediction", "correct"} <= set(rows[0])
    assert result["average"] == sum(t["accuracy"] for t in result["tasks"].values()) / len(TASKS)
    assert result["lm_eval"]["version"]
    gen = result["lm_eval"]["config"]["llm_adapters_gsm8k"]["generation_kwargs"]
    assert gen["max_gen_toks"] == 8 and gen["do_sample"] is False and gen["num_beams"] == result["eval_cfg"]["num_beams"]


def test_bad_task_and_unevaluable_runs_are_refused(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="unknown task"):
        evaluate_model(model, tok, {**_cfg(1), "tasks": ["mmlu"]}, tmp_path)
    with pytest.raises(ValueError, match="empty"):
        evaluate_model(model, tok, {**_cfg(1), "tasks": []}, tmp_path)
    with pytest.raises(FileNotFoundError, match="record.json"):
        evaluate_run(tmp_path, _cfg(1), tmp_path / "eval")
    (tmp_path / "record.json").write_text(json.dumps({"run_info": {"status": "diverged", "error": "nan loss"}}))
    with pytest.raises(RuntimeError, match="diverged"):
        evaluate_run(tmp_path, _cfg(1), tmp_path / "eval")


@needs_mirror
@pytest.mark.slow
def test_evaluate_run_loads_the_delta_and_fills_the_record(tmp_path, monkeypatch):
    from harness import config as hc, data, models, train

    monkeypatch.delenv("SMT_DATA_ROOT", raising=False)
    cfg = hc.load_config(pathlib.Path(__file__).resolve().parents[1] / "config/test.yaml")
    cfg["paths"] = {k: str(tmp_path / k) for k in cfg["paths"]}
    cfg["train"].update(max_steps=1, cutoff_len=512)
    rid = next(r for r in hc.expand_runs(cfg, "table2") if "/full_ft/" in r)
    models.prepare_model(hc.model_spec(cfg, "tiny"), hc.model_dir(cfg, "tiny"))
    data.prepare_train_set(hc.dataset_spec(cfg, "commonsense"), hc.data_root(cfg),
                           hc.train_set_path(cfg, "commonsense"))
    run_dir = pathlib.Path(hc.run_dir(cfg, rid))
    assert train.train(hc.resolve_run(cfg, rid), run_dir)["run_info"]["status"] == "ok"
    eval_cfg = {**hc.eval_cfg(cfg, "commonsense"), "tasks": ["boolq", "piqa"]}
    result = evaluate_run(run_dir, eval_cfg, run_dir / "eval")
    record = json.loads((run_dir / "record.json").read_text())
    assert record["eval"]["commonsense"]["tasks"] == result["tasks"]
    assert (run_dir / "eval/commonsense.json").is_file() and (run_dir / "eval/piqa.predictions.jsonl").is_file()
    assert [t["n"] for t in result["tasks"].values()] == [eval_cfg["limit"]] * 2
