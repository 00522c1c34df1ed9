"""Data: which records a prepared training set holds, record conversions, prompt masking and EOS."""
import json
import os
import pathlib

import pytest

from harness import data
from harness.models import tiny_tokenizer
from harness.prompts import eval_prompt, generate_prompt, tokenize_example

MIRROR = pathlib.Path(os.environ.get("SMT_DATA_ROOT", pathlib.Path(__file__).resolve().parents[1] / "../shared/data"))
needs_mirror = pytest.mark.skipif(not (MIRROR / "llm-adapters").is_dir(),
                                  reason=f"offline data mirror not found at {MIRROR} (set SMT_DATA_ROOT)")


@needs_mirror
def test_a_subset_is_shuffled_before_it_is_cut(tmp_path, monkeypatch):
    """boolq comes first in the concatenation: a cut before the shuffle would be all boolq."""
    monkeypatch.delenv("SMT_DATA_ROOT", raising=False)
    root = str(MIRROR.resolve())

    def build(seed, name):
        spec = {"name": "commonsense_mirror", "sources": ["boolq", "ARC-Easy"], "max_records": 300, "seed": seed}
        data.prepare_train_set(spec, root, tmp_path / name)
        return json.loads((tmp_path / name).read_text())

    recs = build(0, "a.json")
    assert len(recs) == 300
    arc = sum(r["answer"].startswith("answer") for r in recs)
    boolq = sum(r["answer"] in ("true", "false") for r in recs)
    assert arc + boolq == 300
    # ARC-Easy holds ~19 % of the pool (2251 of 11678 records): a fair sample has 57 +- 7
    assert 25 <= arc <= 95, arc
    assert recs == build(0, "b.json")
    assert recs != build(1, "c.json")


def test_gsm8k_record_drops_calculator_annotations_and_commas():
    rec = data.gsm8k_record({"question": "How many?", "answer": "2 * 3 = <<2*3=6>>6 apples\n#### 1,200"})
    assert rec == {"instruction": "How many?", "input": "", "output": "2 * 3 = 6 apples\nThe answer is 1200.",
                   "answer": "1200"}


def test_hellaswag_label_counts_from_one():
    rec = data.hellaswag_record({"ctx": "He runs.", "activity_label": "Running", "label": "2",
                                 "endings": ["a", "b", "c", "d"]})
    assert rec["answer"] == "ending3" and rec["output"] == "the correct answer is ending3"
    assert "Ending1: a Ending2: b Ending3: c Ending4: d" in rec["instruction"]


def test_records_without_the_llm_adapters_keys_are_refused():
    with pytest.raises(Exception, match="answer"):
        data.check_records([{"instruction": "i", "input": "", "output": "o"}], "x.json")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_exactly_the_prompt_is_masked(tok):
    rec = {"instruction": "Say hi", "input": "to Bob", "output": "hi Bob"}
    ex = tokenize_example(tok, rec, 512, False, True)
    n_prompt = len(tok(generate_prompt("Say hi", "to Bob"))["input_ids"])
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert tok.decode(ex["input_ids"][n_prompt:-1]) == "hi Bob" and ex["input_ids"][-1] == tok.eos_token_id
    assert ex["attention_mask"] == [1] * len(ex["input_ids"])
    everything = tokenize_example(tok, rec, 512, True, True)
    assert everything["labels"] == everything["input_ids"]


@pytest.mark.parametrize("cutoff", [40, 41, 300])
def test_eos_never_goes_past_cutoff(tok, cutoff):
    rec = {"instruction": "x" * 300, "input": "", "output": "y"}
    ex = tokenize_example(tok, rec, cutoff, True, True)
    assert len(ex["input_ids"]) <= cutoff and len(ex["labels"]) == len(ex["input_ids"])


def test_input_reaches_the_prompts():
    with_input = generate_prompt("Do it", "the context", "done")
    assert "### Input:\n" + " " * 16 + "the context" in with_input
    assert with_input.endswith("### Response:\n" + " " * 16 + "done")
    assert "the context" in eval_prompt("Do it", "the context")
    assert "### Input:" not in generate_prompt("Do it", "", "done")
