"""The evaluation prompt ends with the token training puts before the answer (prompts.boundary_trim).

LLM-Adapters' prompts indent the response by 16 spaces; a BPE tokenizer gives the answer's first
word the 16th as its leading space in training, so a prompt ending in all 16 ends with a token
the model never saw before an answer (measured: bare '1' answers). These tests need no model.
"""
import pytest
from conftest import MIRROR, needs_mirror

from harness.evaluate import task_manager
from harness.models import tiny_tokenizer
from harness.prompts import boundary_trim, eval_context, generate_prompt


def _bpe_tokenizer():
    """A byte-level BPE trained here on prompt text: the GPT-2/SmolLM2 split of spaces and words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [generate_prompt(f"Question {i}: which is right?", "some context" if i % 2 else None,
                              f"the correct answer is answer{i % 4 + 1}") for i in range(50)]
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"])
    tok.train_from_iterator(corpus * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def _context_token_before_answer(tok, instruction, input=None):
    """The token before the answer's first token in the training text (found by character offsets)."""
    text = generate_prompt(instruction, input, "the correct answer is true")
    start = len(generate_prompt(instruction, input))  # where 'the' begins
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    first = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if a <= start < b)
    return enc["input_ids"][first - 1]


@pytest.mark.parametrize("make, want", [(_bpe_tokenizer, 1), (tiny_tokenizer, 0)])
def test_eval_prompt_ends_with_the_token_training_puts_before_the_answer(make, want):
    tok = make()
    assert boundary_trim(tok) == want
    for instruction, input in [("Is the sky blue?", None), ("Pick one.", "Option 1: a. Option 2: b.")]:
        ids = tok(eval_context(instruction, input, boundary_trim(tok)), add_special_tokens=False)["input_ids"]
        assert ids[-1] == _context_token_before_answer(tok, instruction, input)
    if want:  # and the prompt as LLM-Adapters writes it does not (the bug this guards against)
        ids = tok(eval_context("Is the sky blue?", None, 0), add_special_tokens=False)["input_ids"]
        assert ids[-1] != _context_token_before_answer(tok, "Is the sky blue?")


@needs_mirror
@pytest.mark.parametrize("trim", [0, 1])
def test_lm_eval_requests_carry_the_trimmed_prompt(trim):
    from lm_eval.tasks import get_task_dict

    task = get_task_dict(["llm_adapters_boolq"], task_manager(MIRROR, 2, trim))["llm_adapters_boolq"]
    task.build_all_requests(limit=2, rank=0, world_size=1)
    context = task.instances[0].arguments[0]
    assert context.endswith("### Response:\n" + " " * (16 - trim))


@needs_mirror
def test_evaluate_model_trims_by_its_tokenizer_and_records_it(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.evaluate import evaluate_model
    from harness.prompts import EVAL_BOUNDARY_NOTE

    torch.manual_seed(0)
    tok = _bpe_tokenizer()
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    cfg = {"suite": "mini", "tasks": ["boolq"], "data_root": str(MIRROR), "limit": 2, "batch_size": 2,
           "max_new_tokens": 2, "num_beams": 1}
    result = evaluate_model(model, tok, cfg, tmp_path)
    assert result["prompt_trim"] == 1 and result["deviations"] == [EVAL_BOUNDARY_NOTE]
