"""Cloze (multiple-choice log-likelihood) protocol: documents, training targets, a fast exact scorer.

A library only (issue 19, items 1-2); nothing here is wired into the DAG, the config, run ids or
the training loop yet.

Documents. Every commonsense task becomes a list of `ClozeDoc`: one (context, continuation) pair
per option, the gold index, and lm-eval's `doc_to_choice` strings (whose character length is
acc_norm's denominator). They are built from the records the project evaluates (the first
`limit` of `harness.data.load_test_set`), by parsing the LLM-Adapters instruction text back into
question and options (`parse_record`, strict: the instruction is re-rendered from the parse and
must equal the original, and each option marker must occur exactly once). HellaSwag's test set
is the HF-format `hellaswag/validation.jsonl`; its docs are built from the native fields exactly
as lm-eval's `hellaswag/utils.py` does.

Prompts (`target_delimiter` " " everywhere, as lm-eval's default), and how they differ from
lm-eval 0.4.13's own task YAMLs (the deviations; `DEVIATIONS` holds them per task):

| task | context | continuations | lm-eval's own |
|---|---|---|---|
| boolq | `Question: {q}\\nAnswer:` | ` no`, ` yes` | `{passage}\\nQuestion: {q}?\\nAnswer:`: the LLM-Adapters records carry no passage (q already ends in `?`) |
| piqa | `Question: {goal}\\nAnswer:` | ` {sol}` | same |
| social_i_qa | `Question: {context} {question}\\nAnswer:` | ` {answer}` | `Q: {context} {question}\\nA:` |
| hellaswag | `preprocess({activity}: {ctx_a} {ctx_b.capitalize()})` | ` preprocess({ending})` | same |
| winogrande | sentence up to `_` with the option filled in (one context per option) | ` {rest of the sentence}` | same (partial scoring) |
| ARC-Easy/Challenge | `Question: {question}\\nAnswer:` | ` {choice}` | same |
| openbookqa | `Question: {question_stem}\\nAnswer:` | ` {choice}` | `{question_stem}` (no Question/Answer frame) |

Tokenization (`encode_pair`) is lm-eval's HFLM `_encode_pair`: trailing spaces of the context
move to the continuation, context + continuation is encoded as one string and split after
`len(encode(context))` tokens, with the tokenizer's default special tokens (lm-eval's
`add_bos_token=None`). So a token that merges across the boundary belongs to the continuation,
exactly as lm-eval scores it: with a merge (' word' + 's' -> ' words') lm-eval keeps the context's
own tokens and scores `whole[len(context tokens):]`, so the scored sequence is not the tokenization
of the whole string. None of the 800 evaluated SmolLM2 examples has such a merge (the contexts end
in ':' or a word and every continuation starts with a space).

Metrics (lm-eval `ConfigurableTask.process_results`): acc = argmax of the summed log-likelihoods;
acc_norm = argmax of ll / len(choice) where choice is the `doc_to_choice` string in characters
(no delimiter; for WinoGrande's multiple-input form lm-eval's choices are the filled contexts, and
so is the denominator here; lm-eval's WinoGrande YAML does not report acc_norm at all); ties go to
the first option (numpy argmax). Choice NLL = -log softmax(lls)[gold], in nats. (Issue 19's table
divides by the continuation with its leading space, len(" " + choice): on BoolQ that is 38 where
lm-eval's definition gives 50; the records hold lls and chars, so either can be recomputed.)

Scorer (`ClozeScorer`). Per example, the token sequences of all options (context + continuation)
share a prefix: the longest common token prefix, capped so every option keeps at least one token
after it. The prefixes of a batch of examples run once, right-padded, in one forward; each
option's remaining tokens (without its last token, whose output predicts nothing) run in one
right-padded batch reusing its example's KV cache rows; the LM head (and log-softmax, in fp32)
runs only on the positions that predict continuation tokens. Exactness against a naive full
forward per option (`naive_loglikelihoods`, what lm-eval's HFLM computes) and against lm-eval's
own evaluation of the generated YAMLs is tested in tests/test_cloze.py: |difference| <= 1e-4 +
1e-6 |ll| per option in fp32 (measured: <= 4e-5 nats on SmolLM2-135M, 800 examples' first 5 per
task; <= 3e-5 on the tiny model whose lls are ~ -1000).

Cost: FLOPs = 2 N (forwarded + padding tokens) + 2 d V (LM-head positions), N = non-embedding
parameters (`non_embedding_params`); the floor is 2 N x the example's unique tokens (nodes of the
trie of its option token sequences, `unique_tokens`). The last token of each option is never fed
(it predicts nothing), so forwarded tokens are fewer than unique tokens.

Per-example JSONL record (`ClozeScorer.score` returns these dicts; one line per example):

    {"task", "doc_id", "gold",
     "contexts": [str] (one per option; equal for all but WinoGrande),
     "continuations": [str] (scored text, delimiter included),
     "choices": [str] (lm-eval doc_to_choice strings),
     "loglikelihoods": [float] (summed over continuation tokens, nats),
     "tokens": [int] (continuation tokens), "chars": [int] (len(choice), acc_norm's denominator),
     "bytes": [int] (UTF-8 bytes of choice, lm-eval acc_bytes),
     "pred_acc": int, "pred_acc_norm": int, "acc": 0|1, "acc_norm": 0|1,
     "choice_nll": float, "unique_tokens": int, "forwarded_tokens": int}

Training targets (`training_target`): an LLM-Adapters training record of the default mixture
becomes (prompt, target) = the gold option's (context, continuation) pair as scored above, so
training with the loss on the target tokens alone (split by `encode_pair`) optimises exactly the
quantity evaluation scores. For WinoGrande the target is the rest of the sentence after the
gold-filled blank (partial scoring). A record that does not parse is a ClozeParseError naming the
task, the record and what did not match.
"""
from __future__ import annotations

import dataclasses
import math
import re

from harness.tasks import COMMONSENSE_TASKS

CLOZE_TASKS = tuple(COMMONSENSE_TASKS)
TARGET_DELIMITER = " "
BOOLQ_CHOICES = ("no", "yes")  # lm-eval super_glue/boolq order; gold = index of the answer word

DEVIATIONS = {
    "boolq": "no passage: LLM-Adapters' BoolQ records hold the question only (lm-eval: "
             "'{passage}\\nQuestion: {question}?\\nAnswer:'); the question keeps its own '?'",
    "social_i_qa": "'Question: ... \\nAnswer:' frame (lm-eval: 'Q: {context} {question}\\nA:')",
    "openbookqa": "'Question: {question_stem}\\nAnswer:' frame (lm-eval: the bare question_stem)",
}
HELLASWAG_TRAIN_DEVIATION = (
    "hellaswag training records in LLM-Adapters form keep the raw HF `ctx` (ctx_b not capitalized as "
    "lm-eval's process_docs does) unless `hellaswag_docs` (native docs by instruction) is passed to "
    "training_target")


class ClozeParseError(ValueError):
    """An LLM-Adapters record whose instruction does not parse into question and options."""


@dataclasses.dataclass(frozen=True)
class ClozeDoc:
    """One example: a (context, continuation) pair per option, the gold index, lm-eval's choices."""

    task: str
    doc_id: int
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    choices: tuple[str, ...]
    gold: int

    def __post_init__(self):
        n = len(self.choices)
        if not (n >= 2 and len(self.contexts) == n and len(self.continuations) == n and 0 <= self.gold < n):
            raise ValueError(f"{self.task} doc {self.doc_id}: inconsistent options {self}")

    @property
    def requests(self) -> list[tuple[str, str]]:
        return list(zip(self.contexts, self.continuations))

    def lm_eval_doc(self) -> dict:
        """The doc as the generated lm-eval YAMLs read it (query/choices/gold/target)."""
        multi = self.task == "winogrande"  # lm-eval's multiple-input form: one context per option
        return {"id": self.doc_id, "task": self.task, "query": "" if multi else self.contexts[0],
                "choices": list(self.choices), "gold": self.gold,
                "target": self.continuations[0][len(TARGET_DELIMITER):] if multi else ""}


# ---------------------------------------------------------------- parsing LLM-Adapters records
_PIQA_HEAD = "Please choose the correct solution to the question: "
_QA_HEAD = "Please choose the correct answer to the question: "
_BOOLQ_HEAD = "Please answer the following question with true or false, question: "
_WINO_HEAD = "Please choose the correct answer to fill in the blank to complete the given sentence: "
_HS_HEAD = "Please choose the correct ending to complete the given sentence: "


def _render(task: str, question: str, options: list[str]) -> str:
    """The LLM-Adapters instruction of (question, options), as the upstream data has it."""
    n = len(options)
    if task == "boolq":
        return f"{_BOOLQ_HEAD}{question}\n\nAnswer format: true/false"
    if task == "piqa":
        return (f"{_PIQA_HEAD}{question}\n\nSolution1: {options[0]}\n\nSolution2: {options[1]}"
                "\n\nAnswer format: solution1/solution2")
    if task == "winogrande":
        return (f"{_WINO_HEAD}{question}\n\nOption1: {options[0]} Option2: {options[1]} "
                "Answer format: option1/option2")
    if task == "hellaswag":
        return (f"{_HS_HEAD}{question}\n\n" + " ".join(f"Ending{i + 1}: {e}" for i, e in enumerate(options))
                + "\n\nAnswer format: " + "/".join(f"ending{i + 1}" for i in range(n)))
    return (f"{_QA_HEAD}{question}\n\n" + " ".join(f"Answer{i + 1}: {o}" for i, o in enumerate(options))
            + "\n\nAnswer format: " + "/".join(f"answer{i + 1}" for i in range(n)))


def _split_options(text: str, marker: str, n: int, sep: str, where: str) -> list[str]:
    """Options `{marker}1: a{sep}{marker}2: b ...` of `text`; each marker must occur once."""
    for i in range(1, n + 1):
        count = text.count(f"{marker}{i}: ")
        if count != 1:
            raise ClozeParseError(f"{where}: option marker '{marker}{i}: ' occurs {count} times (expected once)")
    found = [int(k) for k in re.findall(rf"{marker}(\d+): ", text)]
    if found != list(range(1, n + 1)):
        raise ClozeParseError(f"{where}: option markers {found} are not {marker}1..{marker}{n} of the answer format")
    if not text.startswith(f"{marker}1: "):
        raise ClozeParseError(f"{where}: options do not start with '{marker}1: '")
    out, rest = [], text[len(f"{marker}1: "):]
    for i in range(2, n + 1):
        head, found, rest = rest.partition(f"{sep}{marker}{i}: ")
        if not found:
            raise ClozeParseError(f"{where}: no '{sep!r}{marker}{i}: ' separator")
        out.append(head)
    return out + [rest]


def parse_record(task: str, record: dict, where: str = "") -> tuple[str, list[str], int]:
    """(question, options, gold index) recovered from an LLM-Adapters record's instruction.

    The question is the text between the task's fixed head and its options (WinoGrande: the
    sentence with its `_`; HellaSwag: `{activity_label}: {ctx}`); the gold comes from `answer`
    (`true/false`, `solutionK`, `answerK`, `optionK`, `endingK`), checked against `output`.
    The instruction is re-rendered from the parse and must equal the original: anything the
    parse would lose or shift is a ClozeParseError naming `where`.
    """
    where = where or f"{task} record"
    if task not in CLOZE_TASKS:
        raise ValueError(f"unknown cloze task {task!r}; choose from {list(CLOZE_TASKS)}")
    ins, answer = record.get("instruction"), str(record.get("answer", ""))
    if not isinstance(ins, str) or record.get("input"):
        raise ClozeParseError(f"{where}: expected an instruction and an empty input, got {str(record)[:200]}")
    if record.get("output") not in (None, "", f"the correct answer is {answer}"):
        raise ClozeParseError(f"{where}: output {record.get('output')!r} disagrees with answer {answer!r}")
    head = {"boolq": _BOOLQ_HEAD, "piqa": _PIQA_HEAD, "winogrande": _WINO_HEAD,
            "hellaswag": _HS_HEAD}.get(task, _QA_HEAD)
    if not ins.startswith(head):
        raise ClozeParseError(f"{where}: instruction does not start with {head!r}: {ins[:120]!r}")
    body = ins[len(head):]
    if task == "boolq":
        tail = "\n\nAnswer format: true/false"
        if not body.endswith(tail) or answer not in ("true", "false"):
            raise ClozeParseError(f"{where}: not a true/false question: {ins[-80:]!r} answer {answer!r}")
        question, options, gold = body[:-len(tail)], list(BOOLQ_CHOICES), BOOLQ_CHOICES.index(
            "yes" if answer == "true" else "no")
    else:
        if task == "winogrande":
            m = re.fullmatch(r"(.*)\n\n(Option1: .*) Answer format: option1/option2", body, re.S)
            marker, sep, word, n = "Option", " ", "option", 2
        elif task == "piqa":
            m = re.fullmatch(r"(.*?)\n\n(Solution1: .*)\n\nAnswer format: solution1/solution2", body, re.S)
            marker, sep, word, n = "Solution", "\n\n", "solution", 2
        else:
            m = re.fullmatch(r"(.*?)\n\n((?:Answer|Ending)1: .*)\n\nAnswer format: ((?:answer|ending)1(?:/\w+)*)",
                             body, re.S)
            marker, word = ("Ending", "ending") if task == "hellaswag" else ("Answer", "answer")
            sep = " "
            n = len(m.group(3).split("/")) if m else 0
            if m and m.group(3) != "/".join(f"{word}{i}" for i in range(1, n + 1)):
                raise ClozeParseError(f"{where}: answer format {m.group(3)!r} is not {word}1/../{word}{n}")
        if not m:
            raise ClozeParseError(f"{where}: instruction does not match the {task} template: {ins[:200]!r}")
        question = m.group(1)
        options = _split_options(m.group(2), marker, n, sep, where)
        gm = re.fullmatch(rf"{word}(\d+)", answer)
        if not gm or not 1 <= int(gm.group(1)) <= n:
            raise ClozeParseError(f"{where}: answer {answer!r} is not one of {word}1..{word}{n}")
        gold = int(gm.group(1)) - 1
    if task != "boolq" and _render(task, question, options) != ins:
        raise ClozeParseError(f"{where}: the parse does not re-render to the instruction (ambiguous split)")
    if task == "winogrande" and question.count("_") != 1:
        raise ClozeParseError(f"{where}: the sentence has {question.count('_')} blanks '_' (expected one)")
    return question, options, gold


# ---------------------------------------------------------------- docs (contexts, continuations)
def hellaswag_preprocess(text: str) -> str:
    """lm-eval `hellaswag/utils.py` preprocess."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _qa_doc(task, doc_id, context, choices, gold) -> ClozeDoc:
    choices = tuple(choices)
    return ClozeDoc(task, doc_id, (context,) * len(choices),
                    tuple(TARGET_DELIMITER + c for c in choices), choices, gold)


def doc_from_parse(task: str, doc_id: int, question: str, options: list[str], gold: int) -> ClozeDoc:
    """The cloze doc of a parsed LLM-Adapters record (see the module docstring's table)."""
    if task == "winogrande":
        idx = question.index("_")
        rest = question[idx + 1:].strip()
        contexts = tuple(question[:idx] + o for o in options)
        return ClozeDoc(task, doc_id, contexts, (TARGET_DELIMITER + rest,) * len(options), contexts, gold)
    if task == "hellaswag":
        return _qa_doc(task, doc_id, hellaswag_preprocess(question), [hellaswag_preprocess(e) for e in options], gold)
    return _qa_doc(task, doc_id, f"Question: {question}\nAnswer:", options, gold)


def doc_from_hellaswag_native(doc_id: int, doc: dict) -> ClozeDoc:
    """lm-eval's hellaswag process_docs on one HF-format record."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return _qa_doc("hellaswag", doc_id, hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
                   [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]))


def doc_from_record(task: str, doc_id: int, record: dict, where: str = "") -> ClozeDoc:
    return doc_from_parse(task, doc_id, *parse_record(task, record, where or f"{task} record {doc_id}"))


@dataclasses.dataclass(frozen=True)
class ClozeTarget:
    """A training example under the cloze protocol: learn `target` after `prompt`."""

    task: str
    prompt: str
    target: str
    options: tuple[str, ...]
    gold: int


def training_target(task: str, record: dict, where: str = "",
                    hellaswag_docs: dict[str, dict] | None = None) -> ClozeTarget:
    """(prompt, target) of an LLM-Adapters training record: the gold option's (context,
    continuation) exactly as the scorer scores it. Unparseable records raise ClozeParseError."""
    question, options, gold = parse_record(task, record, where)
    if task == "hellaswag" and hellaswag_docs is not None:
        native = hellaswag_docs.get(record["instruction"])
        if native is None:
            raise ClozeParseError(f"{where or 'hellaswag record'}: no native HellaSwag doc has this instruction")
        doc = doc_from_hellaswag_native(0, native)
        if doc.gold != gold:
            raise ClozeParseError(f"{where}: native label {doc.gold} differs from the record's answer {gold}")
    else:
        doc = doc_from_parse(task, 0, question, options, gold)
    return ClozeTarget(task, doc.contexts[gold], doc.continuations[gold], doc.choices, gold)


def task_of_instruction(record: dict) -> str | None:
    """The cloze task whose template a mixture record has, by its instruction head. SIQA, ARC-Easy,
    ARC-Challenge and OpenBookQA share one LLM-Adapters template, one parse and one cloze prompt:
    all four are returned as "ARC-Easy" (a prepared set does not record each record's source)."""
    ins = record.get("instruction", "")
    for head, task in ((_BOOLQ_HEAD, "boolq"), (_PIQA_HEAD, "piqa"), (_WINO_HEAD, "winogrande"),
                       (_HS_HEAD, "hellaswag"), (_QA_HEAD, "ARC-Easy")):
        if ins.startswith(head):
            return task
    return None


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval HFLM `_encode_pair` (causal): (context tokens, continuation tokens)."""
    if not context:
        raise ValueError("empty context: lm-eval would condition on the prefix token; not used by cloze tasks")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    bos = tokenizer.bos_token
    kwargs = {"add_special_tokens": False} if bos and context.startswith(bos) else {}
    whole = tokenizer.encode(context + continuation, **kwargs)
    ctx = tokenizer.encode(context, **kwargs)
    return ctx, whole[len(ctx):]


# ---------------------------------------------------------------- metrics
def pick(values) -> int:
    """numpy argmax semantics: the first maximum."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def choice_nll(lls, gold: int) -> float:
    m = max(lls)
    return -(lls[gold] - m - math.log(sum(math.exp(x - m) for x in lls)))


def example_record(doc: ClozeDoc, lls: list[float], ntok: list[int], **extra) -> dict:
    chars = [len(c) for c in doc.choices]
    pa = pick(lls)
    pn = pick([ll / c for ll, c in zip(lls, chars)])
    return {"task": doc.task, "doc_id": doc.doc_id, "gold": doc.gold, "contexts": list(doc.contexts),
            "continuations": list(doc.continuations), "choices": list(doc.choices),
            "loglikelihoods": [float(x) for x in lls], "tokens": ntok, "chars": chars,
            "bytes": [len(c.encode("utf-8")) for c in doc.choices],
            "pred_acc": pa, "pred_acc_norm": pn, "acc": int(pa == doc.gold), "acc_norm": int(pn == doc.gold),
            "choice_nll": choice_nll(lls, doc.gold), **extra}


def summarize(rows: list[dict]) -> dict:
    """acc, acc_norm, mean choice NLL and n of per-example records."""
    n = len(rows)
    return {"n": n, "acc": sum(r["acc"] for r in rows) / n, "acc_norm": sum(r["acc_norm"] for r in rows) / n,
            "choice_nll": sum(r["choice_nll"] for r in rows) / n}


# ---------------------------------------------------------------- scoring
def _sequences(tokenizer, doc: ClozeDoc):
    seqs, starts = [], []
    for ctx, cont in doc.requests:
        c, k = encode_pair(tokenizer, ctx, cont)
        if not k:
            raise ValueError(f"{doc.task} doc {doc.doc_id}: continuation {cont!r} has no tokens")
        seqs.append(c + k)
        starts.append(len(c))
    return seqs, starts


def unique_tokens(seqs: list[list[int]]) -> int:
    """Distinct token positions of an example: nodes of the trie of its option sequences."""
    return len({tuple(s[:i + 1]) for s in seqs for i in range(len(s))})


def _shared_prefix(seqs) -> int:
    n = min(len(s) for s in seqs) - 1  # every option keeps >= 1 token after the prefix
    p = 0
    while p < n and all(s[p] == seqs[0][p] for s in seqs):
        p += 1
    if p == 0:
        raise ValueError("the options' token sequences share no first token; the scorer needs a shared prefix")
    return p


def naive_loglikelihoods(model, tokenizer, doc: ClozeDoc) -> tuple[list[float], list[int]]:
    """Reference: one full forward per option, LM head on every position (what lm-eval computes)."""
    import torch

    lls, ntok = [], []
    for seq, start in zip(*_sequences(tokenizer, doc)):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0].float()
        logp = torch.log_softmax(logits[start - 1:len(seq) - 1], -1)
        lls.append(float(logp.gather(1, torch.tensor(seq[start:]).unsqueeze(1)).double().sum()))
        ntok.append(len(seq) - start)
    return lls, ntok


class ClozeScorer:
    """Scores ClozeDocs; see the module docstring. Each example is packed into one row: its
    shared prefix once, then every option's remaining tokens (less its last), with a block mask
    (an option attends to the prefix and to itself, causally) and position ids restarting after
    the prefix for each option; `batch_examples` rows of similar length run in one forward."""

    def __init__(self, model, tokenizer, batch_examples: int = 8):
        self.model, self.tok = model, tokenizer
        self.batch_examples = int(batch_examples)
        self.body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.head = model.get_output_embeddings()
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_len = getattr(model.config, "max_position_embeddings", None)
        self.window = sliding_window(model.config)
        self.stats = {"forwarded_tokens": 0, "padded_tokens": 0, "head_positions": 0, "unique_tokens": 0,
                      "attention_pairs": 0}

    def score(self, docs: list[ClozeDoc]) -> list[dict]:
        """One record per doc, in the order given. Docs are encoded once, sorted by packed length
        (so a batch pads little) and scored `batch_examples` at a time."""
        items = []
        for doc in docs:
            seqs, starts = _sequences(self.tok, doc)
            if self.max_len and max(len(s) for s in seqs) > self.max_len:
                raise ValueError(f"{doc.task} doc {doc.doc_id}: {max(len(s) for s in seqs)} tokens exceed the "
                                 f"model's {self.max_len} positions (lm-eval would left-truncate)")
            p = _shared_prefix(seqs)
            items.append((doc, seqs, starts, p, p + sum(len(s) - 1 - p for s in seqs)))
        order = sorted(range(len(items)), key=lambda k: items[k][4])
        out = [None] * len(items)
        for b in range(0, len(order), self.batch_examples):
            idx = order[b:b + self.batch_examples]
            for k, row in zip(idx, self._score_batch([items[k] for k in idx])):
                out[k] = row
        return out

    def _score_batch(self, items):
        import torch

        dev = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        tmax = max(it[4] for it in items)
        ids = torch.full((len(items), tmax), self.pad, dtype=torch.long)
        pos = torch.zeros((len(items), tmax), dtype=torch.long)
        allow = torch.zeros((len(items), tmax, tmax), dtype=torch.bool)
        heads = {}  # (row, packed index) -> head slot
        want = []   # (example, option, head slot, target token)
        for e, (doc, seqs, starts, p, t) in enumerate(items):
            ids[e, :p] = torch.tensor(seqs[0][:p])
            pos[e, :p] = torch.arange(p)
            allow[e, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
            off = p
            for i, (s, st) in enumerate(zip(seqs, starts)):
                n = len(s) - 1 - p
                if n:
                    ids[e, off:off + n] = torch.tensor(s[p:len(s) - 1])
                    pos[e, off:off + n] = torch.arange(p, p + n)
                    allow[e, off:off + n, :p] = True
                    allow[e, off:off + n, off:off + n] = torch.ones(n, n, dtype=torch.bool).tril()
                for g in range(st - 1, len(s) - 1):  # hidden at global position g predicts s[g + 1]
                    key = (e, g if g < p else off + g - p)
                    want.append((e, i, heads.setdefault(key, len(heads)), s[g + 1]))
                off += n
            for q in range(t, tmax):  # padding rows attend to themselves only (ignored)
                allow[e, q, q] = True
        mask = _additive(allow, dtype)[:, None].to(dev)
        if self.window is not None:  # sliding-window layers (Gemma 3): one mask per layer type
            near = (pos[:, :, None] - pos[:, None, :]) < self.window  # by each token's own position
            mask = {"full_attention": mask, "sliding_attention": _additive(allow & near, dtype)[:, None].to(dev)}
        with torch.no_grad():
            hid = self.body(input_ids=ids.to(dev), attention_mask=mask,
                            position_ids=pos.to(dev), use_cache=False).last_hidden_state
            keys = list(heads)
            rows_h = hid[torch.tensor([k[0] for k in keys]), torch.tensor([k[1] for k in keys])]
            logp = torch.log_softmax(self.head(rows_h).float(), -1)
            vals = logp[torch.tensor([w[2] for w in want]), torch.tensor([w[3] for w in want])].tolist()
        out_rows = []
        lls = [[0.0] * len(it[1]) for it in items]
        for (e, i, _, _), v in zip(want, vals):
            lls[e][i] += v
        for e, (doc, seqs, starts, p, t) in enumerate(items):
            uniq = unique_tokens(seqs)
            self.stats["unique_tokens"] += uniq
            self.stats["forwarded_tokens"] += t
            self.stats["attention_pairs"] += int(allow[e, :t, :t].sum())
            out_rows.append(example_record(doc, lls[e], [len(s) - st for s, st in zip(seqs, starts)],
                                           unique_tokens=uniq, forwarded_tokens=t))
        self.stats["padded_tokens"] += len(items) * tmax
        self.stats["head_positions"] += len(heads)
        return out_rows


def _additive(allow, dtype):
    import torch

    return torch.zeros(allow.shape, dtype=dtype).masked_fill_(~allow, torch.finfo(dtype).min)


def sliding_window(config) -> int | None:
    """The window of a model whose layers include sliding-window attention (Gemma 3: `layer_types`
    with "sliding_attention"), else None. The packed scorer hands such a model one mask per layer
    type, the sliding one keeping a key only when query position - key position < window (as
    transformers' `sliding_window_overlay`); a custom 4D mask alone would bypass the window."""
    types = getattr(config, "layer_types", None) or ()
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" not in types:
        return None
    if not window:
        raise ValueError(f"{type(config).__name__}: sliding_attention layers without a sliding_window")
    return int(window)


def non_embedding_params(model) -> int:
    """Parameters of the decoder body less the input embedding (the LM head is counted apart)."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    emb = body.get_input_embeddings().weight
    return sum(p.numel() for p in body.parameters()) - emb.numel()
