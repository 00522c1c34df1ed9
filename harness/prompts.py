"""The LLM-Adapters prompt templates (whitespace included) and training tokenization.

Two templates exist upstream and both are reproduced byte for byte:

* the training template of LLM-Adapters `finetune.py` (also used by the DoRA and SMT code):
  the header ends with one space (with input) or two spaces (without), and the blank lines
  inside hold 16 spaces;
* the evaluation template of `evaluate.py` / `commonsense_evaluate.py`: the header ends with
  no space (with input) or one space (without), and the blank lines are empty.

Every line after the header is indented by 16 spaces, as in the upstream f-strings.
"""
from __future__ import annotations

from harness.cloze import encode_pair

_PAD = " " * 16

_TRAIN_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request. \n\n"
    f"{_PAD}### Instruction:\n{_PAD}{{instruction}}\n{_PAD}\n"
    f"{_PAD}### Input:\n{_PAD}{{input}}\n{_PAD}\n"
    f"{_PAD}### Response:\n{_PAD}{{output}}"
)
_TRAIN_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.  \n\n"
    f"{_PAD}### Instruction:\n{_PAD}{{instruction}}\n{_PAD}\n"
    f"{_PAD}### Response:\n{_PAD}{{output}}"
)
_EVAL_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    f"{_PAD}### Instruction:\n{_PAD}{{instruction}}\n\n"
    f"{_PAD}### Input:\n{_PAD}{{input}}\n\n"
    f"{_PAD}### Response:\n{_PAD}"
)
_EVAL_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request. \n\n"
    f"{_PAD}### Instruction:\n{_PAD}{{instruction}}\n\n"
    f"{_PAD}### Response:\n{_PAD}"
)
RESPONSE_MARKER = "### Response:"


def generate_prompt(instruction: str, input: str | None = None, output: str | None = None) -> str:
    """LLM-Adapters training prompt; `output=None` gives the prompt alone (the masked part)."""
    template = _TRAIN_WITH_INPUT if input else _TRAIN_NO_INPUT
    return template.format(instruction=instruction, input=input, output=output or "")


def eval_prompt(instruction: str, input: str | None = None) -> str:
    """LLM-Adapters evaluation prompt (evaluate.py / commonsense_evaluate.py), ending after `### Response:`."""
    template = _EVAL_WITH_INPUT if input else _EVAL_NO_INPUT
    return template.format(instruction=instruction, input=input)


def eval_context(instruction: str, input: str | None = None, trim: int = 0) -> str:
    """The evaluation prompt as the model is given it: `eval_prompt` less its last `trim` characters
    (`boundary_trim` of the tokenizer)."""
    prompt = eval_prompt(instruction, input)
    return prompt[:len(prompt) - trim]


def boundary_trim(tokenizer) -> int:
    """How many trailing spaces to take off the evaluation prompt so that it ends with the token
    that training puts before the answer (0 or 1).

    Both templates indent the response by 16 spaces. With SmolLM2's byte-level BPE the answer's
    first word takes the 16th space as its leading space in training ('\\n' + 15 spaces, then
    ' the'), so the token ending the full prompt ('\\n' + 16 spaces) never precedes an answer in
    training. Every tokenizer is checked the same way here, so a LLaMA tokenizer gets what its own
    training tokenization implies. Measured (SMT at 4.91 %, 16 examples each of BoolQ,
    PIQA, ARC-e): with it every answer was a bare '1'; without the last space none was. A
    tokenizer with one token per byte keeps every space in the prompt, so it needs no trim.
    """
    prompt = generate_prompt("Say which.")
    full = tokenizer(generate_prompt("Say which.", None, "the answer"), add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if full[:len(whole)] == whole:
        return 0  # training's context before the answer is the prompt's own tokens
    trimmed = tokenizer(prompt[:-1], add_special_tokens=False)["input_ids"]
    if prompt.endswith(" ") and full[:len(trimmed)] == trimmed:
        return 1
    raise ValueError(f"{type(tokenizer).__name__}: neither the evaluation prompt nor the prompt less its last "
                     "space tokenizes like training's context before the answer; see prompts.boundary_trim")


EVAL_BOUNDARY_NOTE = ("evaluation prompt without its last indent space, so that its final token is the one "
                      "training puts before the answer (LLM-Adapters ends it with all 16; the answer's first "
                      "word takes the 16th in training, and a prompt ending in 16 spaces gave bare '1' "
                      "answers: README, 'The evaluation prompt's last token')")


def _tokenize(tokenizer, text: str, cutoff_len: int, add_eos_token: bool) -> dict:
    """Tokenize like LLM-Adapters `tokenize`: truncate to cutoff_len, append EOS if it fits."""
    result = tokenizer(text, truncation=True, max_length=cutoff_len, padding=False, return_tensors=None)
    ids, mask = list(result["input_ids"]), list(result["attention_mask"])
    eos = tokenizer.eos_token_id
    if add_eos_token and eos is not None and ids and ids[-1] != eos and len(ids) < cutoff_len:
        ids.append(eos)
        mask.append(1)
    return {"input_ids": ids, "attention_mask": mask}


def tokenize_example(tokenizer, record: dict, cutoff_len: int, train_on_inputs: bool,
                     add_eos_token: bool) -> dict:
    """Tokenize one LLM-Adapters record for training, as `generate_and_tokenize_prompt` does.

    Returns input_ids, attention_mask and labels (lists). With `train_on_inputs=False` the
    labels of the prompt tokens (the template up to and including `### Response:\\n` plus its
    indent) are -100, so that only the response (and EOS) is learned.
    """
    for key in ("instruction", "output"):
        if key not in record:
            raise KeyError(f"training record lacks '{key}' (LLM-Adapters format needs instruction, "
                           f"input, output, answer): {str(record)[:200]}")
    if record.get("cloze"):
        return tokenize_cloze(tokenizer, record, cutoff_len)
    full = _tokenize(tokenizer, generate_prompt(record["instruction"], record.get("input"),
                                                record["output"]), cutoff_len, add_eos_token)
    labels = list(full["input_ids"])
    if not train_on_inputs:
        user = _tokenize(tokenizer, generate_prompt(record["instruction"], record.get("input")),
                         cutoff_len, add_eos_token=False)
        n_user = len(user["input_ids"])
        labels = [-100] * n_user + labels[n_user:]
        labels = labels[:len(full["input_ids"])]
    return {**full, "labels": labels}


def tokenize_cloze(tokenizer, record: dict, cutoff_len: int) -> dict:
    """A cloze training record (harness.data.cloze_records): the cloze prompt then the gold option's
    text, split as the scorer splits them (harness.cloze.encode_pair, lm-eval's); the loss is on the
    option's tokens only and no EOS is added (the scorer never scores one). Cut at cutoff_len like a
    generative record: an example whose option is cut off entirely keeps no answer token and is
    dropped (counted) by the loop."""
    ctx, cont = encode_pair(tokenizer, record["cloze"]["prompt"], record["output"])
    ids = (ctx + cont)[:cutoff_len]
    labels = ([-100] * len(ctx) + cont)[:cutoff_len]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
