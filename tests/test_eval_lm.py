"""evaluate_model through lm-eval on a tiny random LLaMA: batch-size invariance, outputs, errors."""
import json

import pytest

import conftest
import torch
from conftest import MIRROR, needs_mirror  # SMT_DATA_ROOT, else ../shared/data; skip with the reason

from harness.evaluate import evaluate_model, evaluate_run, is_correct

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
    assert result["status"] == "ok" and "data_root" not in result["eval_cfg"]
    for task in TASKS:
        rows, summary = _rows(out_dir, task), result["tasks"][task]
        assert summary["n"] == len(rows) == 8
        assert summary["accuracy"] == sum(r["correct"] for r in rows) / 8
        assert summary["extraction_failures"] == sum(r["extraction_failure"] for r in rows)
        assert summary["test_sha256"] and summary["test_file"].endswith(f"{task}/test.json")
        assert summary["correct"] == sum(r["correct"] for r in rows)
        labels = [str(r["label"]) for r in rows]
        top = max(set(labels), key=labels.count)
        assert summary["label_counts"] == {lab: labels.count(lab) for lab in set(labels)}
        assert summary["label_prior"] == pytest.approx(sum(is_correct(task, float(top) if task == "gsm8k" else top, lab)
                                                           for lab in labels) / 8)
        assert sum(summary["prediction_counts"].values()) == 8
        assert summary["degenerate"] == (summary["top_prediction_share"] >= 0.9)
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


def test_failed_run_gets_the_skipped_output_and_its_record_is_untouched(tmp_path):
    record = {"run_info": {"status": "diverged", "error": "loss is nan at step 7"}}
    (tmp_path / "record.json").write_text(json.dumps(record))
    before = (tmp_path / "record.json").read_bytes()
    result = evaluate_run(tmp_path, _cfg(1), tmp_path / "eval")
    assert result == {"suite": "mini", "status": "skipped", "tasks": {},
                      "reason": "run status diverged: loss is nan at step 7"}
    assert json.loads((tmp_path / "eval" / "mini.json").read_text()) == result
    assert (tmp_path / "record.json").read_bytes() == before


@pytest.mark.parametrize("content", ["{\"run_info\": {\"status\": \"ok\"", "[]", "{\"train_info\": {}}"])
def test_corrupt_record_names_the_file_and_keeps_a_good_evaluation(tmp_path, content):
    (tmp_path / "record.json").write_text(content)
    good = tmp_path / "eval" / "mini.json"
    good.parent.mkdir()
    good.write_text('{"suite": "mini", "status": "ok", "tasks": {"boolq": {}}}')
    with pytest.raises(ValueError, match=str(tmp_path / "record.json")):
        evaluate_run(tmp_path, _cfg(1), tmp_path / "eval")
    assert good.read_text() == '{"suite": "mini", "status": "ok", "tasks": {"boolq": {}}}'


@needs_mirror
def test_evaluate_run_uses_base_plus_delta_and_never_writes_the_record(tiny, tmp_path, monkeypatch):
    """A full_ft delta that differs from the base: evaluate_run must predict with the delta."""
    from safetensors.torch import save_model

    monkeypatch.delenv("SMT_DATA_ROOT", raising=False)
    model, tok = tiny
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    base = evaluate_model(model, tok, _cfg(4), tmp_path / "base_eval")
    tuned = type(model)(model.config)
    tuned.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():  # a different model of the same shape
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    run_dir = tmp_path / "run"
    (run_dir / "delta").mkdir(parents=True)
    save_model(tuned, str(run_dir / "delta" / "model.safetensors"))
    record = {"run_info": {"status": "ok", "config": conftest.run_cfg(
        {"name": "full_ft", "lr": 1e-4}, model={"name": "tiny", "path": str(base_dir), "dtype": "float32", "device": "cpu"})}}
    (run_dir / "record.json").write_text(json.dumps(record))
    before = (run_dir / "record.json").read_bytes()
    result = evaluate_run(run_dir, _cfg(4), run_dir / "eval", data_root=MIRROR)
    assert (run_dir / "record.json").read_bytes() == before
    ref = evaluate_model(tuned, tok, _cfg(4), tmp_path / "tuned_eval")
    for task in TASKS:
        got = [r["generated"] for r in _rows(run_dir / "eval", task)]
        assert got == [r["generated"] for r in _rows(tmp_path / "tuned_eval", task)]
        assert got != [r["generated"] for r in _rows(tmp_path / "base_eval", task)], "the delta was not applied"
    assert result["tasks"] == ref["tasks"] and result["status"] == "ok"
    assert base["tasks"].keys() == result["tasks"].keys()
