"""LLM-Adapters prompt templates (exact whitespace) and training tokenization with masking."""
import json

import pytest

from harness.prompts import eval_prompt, generate_prompt, tokenize_example

P = " " * 16


def test_training_prompt_of_a_real_boolq_record_is_byte_exact(data_root):
    rec = json.loads((data_root / "llm-adapters/dataset/boolq/train.json").read_text())[0]
    expected = ("Below is an instruction that describes a task. Write a response that appropriately "
                "completes the request.  \n\n"
                f"{P}### Instruction:\n{P}Please answer the following question with true or false, "
                "question: do iran and afghanistan speak the same language?\n\nAnswer format: true/false\n"
                f"{P}\n{P}### Response:\n{P}the correct answer is true")
    assert generate_prompt(rec["instruction"], rec["input"], rec["output"]) == expected
    assert generate_prompt(rec["instruction"], rec["input"]) == expected[: -len("the correct answer is true")]


def test_training_prompt_with_input_keeps_its_own_header_and_blank_lines():
    text = generate_prompt("Add.", "2 and 3", "5")
    assert text == ("Below is an instruction that describes a task, paired with an input that provides "
                    "further context. Write a response that appropriately completes the request. \n\n"
                    f"{P}### Instruction:\n{P}Add.\n{P}\n{P}### Input:\n{P}2 and 3\n{P}\n"
                    f"{P}### Response:\n{P}5")


def test_eval_prompt_of_a_real_gsm8k_record_is_byte_exact(data_root):
    rec = json.loads((data_root / "llm-adapters/dataset/gsm8k/test.json").read_text())[0]
    assert eval_prompt(rec["instruction"], rec["input"]) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        f"the request. \n\n{P}### Instruction:\n{P}{rec['instruction']}\n\n{P}### Response:\n{P}")
    assert eval_prompt("Q", "ctx").startswith(
        "Below is an instruction that describes a task, paired with an input that provides further "
        f"context. Write a response that appropriately completes the request.\n\n{P}### Instruction:\n{P}Q\n\n"
        f"{P}### Input:\n{P}ctx\n\n")


@pytest.fixture(scope="module")
def tok():
    from harness.models import tiny_tokenizer

    return tiny_tokenizer()


RECORD = {"instruction": "Say yes.", "input": "", "output": "yes", "answer": "yes"}


def test_prompt_tokens_are_masked_and_eos_is_appended(tok):
    out = tokenize_example(tok, RECORD, cutoff_len=512, train_on_inputs=False, add_eos_token=True)
    n_prompt = len(tok(generate_prompt("Say yes."))["input_ids"])
    assert out["input_ids"][-1] == tok.eos_token_id
    assert out["labels"][:n_prompt] == [-100] * n_prompt
    assert out["labels"][n_prompt:] == out["input_ids"][n_prompt:]
    assert tok.decode(out["input_ids"][n_prompt:-1]) == "yes"
    assert len(out["labels"]) == len(out["input_ids"]) == len(out["attention_mask"])


def test_train_on_inputs_and_no_eos(tok):
    out = tokenize_example(tok, RECORD, cutoff_len=512, train_on_inputs=True, add_eos_token=False)
    assert out["labels"] == out["input_ids"]
    assert out["input_ids"][-1] != tok.eos_token_id


def test_cutoff_truncates_without_eos_and_masks_everything_left(tok):
    out = tokenize_example(tok, RECORD, cutoff_len=40, train_on_inputs=False, add_eos_token=True)
    assert len(out["input_ids"]) == 40 and tok.eos_token_id not in out["input_ids"]
    assert out["labels"] == [-100] * 40


def test_record_without_output_is_rejected(tok):
    with pytest.raises(KeyError, match="output"):
        tokenize_example(tok, {"instruction": "x"}, 64, False, True)
