"""Forgetting (harness.forgetting): pooled mean token loss on held-out text, base vs after fine-tuning.

Checked against an independent recomputation (one text at a time, no padding, log-softmax in
float64), on texts of very different lengths (so a mean over texts is not the mean over tokens),
for the base model (the once-per-model file) and a trained tiny run (its eval/forgetting.json),
whose value must differ from the base; the report's join gives after - base, never base - after.
"""
import json
import pathlib
import types

import pytest
import torch

from harness import data as hd
from harness import forgetting as fg
from harness.tasks import SUITES
from conftest import make_tiny_env, needs_mirror, tiny_run_cfg

torch.set_num_threads(1)


def independent_loss(model, tok, texts, max_length=fg.MAX_LENGTH):
    """Mean next-token loss over all tokens of all texts, one text per forward, no padding."""
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tok(text, truncation=True, max_length=max_length)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        total += -float(logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum())
        count += ids.shape[1] - 1
    return total / count


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from harness.models import load_model

    env = make_tiny_env(tmp_path_factory.mktemp("forgetting"))
    model, tok = load_model(env / "model", "float32", "cpu")
    return env, model, tok


def test_every_paper_suite_has_a_held_out_text_of_the_other_domain():
    assert set(SUITES) <= set(fg.SUITE_TEXT)
    for name in fg.TEXTS.values():
        assert hd.FILES[name.relpath][1], f"{name.relpath} has no pinned sha256"  # pinned by SHA-256


def test_pooled_over_tokens_not_over_texts_and_padding_ignored(tiny):
    _, model, tok = tiny
    texts = ["a b", "The quick brown fox jumps over the lazy dog. " * 12, "x" * 40, "7 plus 5 is 12."]
    ref = independent_loss(model, tok, texts)
    for batch in (1, 3, 8):  # padding to the longest text of a batch changes nothing
        got = fg.mean_token_loss(model, tok, texts, batch_size=batch)
        assert got["mean_token_loss"] == pytest.approx(ref, abs=1e-5), batch
        assert got["n_tokens"] == sum(len(tok(t)["input_ids"]) - 1 for t in texts)
    per_text = sum(independent_loss(model, tok, [t]) for t in texts) / len(texts)
    assert abs(per_text - ref) > 1e-3  # the texts are unequal enough for a mean over texts to be caught


def test_truncation_at_max_length(tiny):
    _, model, tok = tiny
    text = "abcdefghij" * 100  # 1 000 bytes: > 768 tokens with the byte-level tokenizer
    got = fg.mean_token_loss(model, tok, [text])
    assert got["n_tokens"] == fg.MAX_LENGTH - 1
    assert got["mean_token_loss"] == pytest.approx(independent_loss(model, tok, [text]), abs=1e-5)


@needs_mirror
def test_held_out_texts_are_pinned_and_disjoint_from_both_training_mixtures(data_root):
    trained = []
    for rel in ["llm-adapters/ft-training_set/math_data.json"] + [
            f"llm-adapters/dataset/{t}/train.json" for t in hd.COMMONSENSE_MIRROR_SOURCES] + [
            f"llm-adapters/dataset/{t}/test.json" for t in ("piqa", "social_i_qa", "winogrande")]:  # carve tasks
        trained += [r["instruction"] + " " + r.get("input", "") for r in json.loads((data_root / rel).read_text())]
    for line in (data_root / "grade-school-math/train.jsonl").read_text().splitlines():  # math_mirror's gsm8k_train
        trained.append(json.loads(line)["question"])
    for line in (data_root / "hellaswag/validation.jsonl").read_text().splitlines():  # carve task hellaswag
        trained.append(json.loads(line)["ctx"])
    blob = fg._norm("\n".join(trained))
    for name, spec in fg.TEXTS.items():
        texts, source = fg.load_texts(name, data_root)
        assert len(texts) == fg.N_TEXTS and len(set(texts)) == fg.N_TEXTS
        assert source["source_sha256"] == hd.FILES[spec.relpath][1]
    # each held-out question, whole (ARC questions share long passages with other questions)
    gsm, _ = fg.load_texts("gsm8k_test", data_root)
    assert all("####" in t for t in gsm)  # problem + reference solution
    arc, _ = fg.load_texts("arc_challenge_test", data_root)
    assert not any("Answer1" in t or "answer format" in t.lower() for t in arc)  # template removed
    arc_records = json.loads((data_root / fg.TEXTS["arc_challenge_test"].relpath).read_text())[:fg.N_TEXTS]
    questions = [t.partition("\n")[0] for t in gsm] + [fg._ARC.search(r["instruction"]).group("q") for r in arc_records]
    assert all(arc[i].startswith(questions[fg.N_TEXTS + i]) for i in range(fg.N_TEXTS))
    leaked = [q for q in questions if fg._norm(q) in blob]
    assert not leaked, leaked[:2]


@pytest.mark.slow
@needs_mirror
def test_a_trained_run_forgets_and_the_report_joins_after_minus_base(tiny, data_root, tmp_path):
    from harness.evaluate import evaluate_run, trained_model
    from harness.reports.runs import load_run
    from harness.train import train

    env, base_model, tok = tiny
    results = tmp_path / "results"
    rid = "tiny/commonsense/full_ft/b100/all/s0"
    run_dir = results / "runs" / rid
    cfg = tiny_run_cfg(env, "full_ft", 5e-3, run_id=rid, max_steps=6, micro_batch_size=2, warmup_steps=0)
    assert train(cfg, run_dir)["run_info"]["status"] == "ok"
    evaluate_run(run_dir, {"suite": "commonsense", "tasks": ["boolq"], "limit": 2, "batch_size": 2,
                           "max_new_tokens": 4}, run_dir / "eval", data_root=data_root)
    after_file = json.loads((run_dir / "eval" / fg.FILE).read_text())
    assert after_file["text"] == "gsm8k_test"
    base_file = fg.base_path(results, "tiny", "gsm8k_test")
    fg.write_base(env / "model", {"name": "tiny", "dtype": "float32", "device": "cpu"}, "gsm8k_test",
                  data_root, base_file)

    texts, _ = fg.load_texts("gsm8k_test", data_root)
    before = independent_loss(base_model, tok, texts)
    trained, _ = trained_model(json.loads((run_dir / "record.json").read_text())["run_info"]["config"],
                               run_dir / "delta")
    after = independent_loss(trained, tok, texts)
    assert json.loads(base_file.read_text())["mean_token_loss"] == pytest.approx(before, abs=1e-5)
    assert after_file["mean_token_loss"] == pytest.approx(after, abs=1e-5)
    assert abs(after - before) > 1e-3  # fine-tuning moved the loss on text it never saw

    value = fg.run_value(load_run(run_dir / "record.json"))
    assert value["before"] == pytest.approx(before, abs=1e-5) and value["after"] == pytest.approx(after, abs=1e-5)
    assert value["forgetting"] == pytest.approx(after - before, abs=1e-5)  # after minus base, not base minus after

    # a base value measured on other text is refused, not joined
    other = json.loads(base_file.read_text())
    other["texts_sha256"] = "0" * 64
    base_file.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="texts_sha256"):
        fg.run_value(load_run(run_dir / "record.json"))


def test_a_run_without_a_measurement_is_not_measured_never_a_number(tmp_path):
    run_dir = tmp_path / "results" / "runs" / "m" / "commonsense" / "lora" / "b1" / "qkv" / "s0"
    (run_dir / "eval").mkdir(parents=True)
    run = types.SimpleNamespace(path=run_dir / "record.json", run_id="m/commonsense/lora/b1/qkv/s0",
                                info={"fingerprint": "f"}, parts={"model": "m"})
    assert fg.run_value(run) is None
    assert fg.fmt_group([run]) == fg.NOT_MEASURED
    notes = types.SimpleNamespace(items=[], mark=lambda text: notes.items.append(text) or "[1]")
    rows = [{"Method": "LoRA", "_group": types.SimpleNamespace(ok=[run])}, {"Method": "label prior"}]
    fg.add_table_column(rows, notes)
    assert rows[0]["forgetting"] == "not measured [1]" and fg.NOTE_NOT_MEASURED in notes.items
    assert "forgetting" not in rows[1]
