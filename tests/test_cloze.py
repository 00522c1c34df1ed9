"""The cloze protocol (harness/cloze.py): docs recovered from the mirror's LLM-Adapters records and
equal to lm-eval's own task definitions, training targets of the default mixture, lm-eval's
tokenization at the context/continuation boundary, and the packed scorer equal to a naive
per-option forward and to lm-eval's own evaluation of the generated YAMLs."""
import importlib.util
import math

import pytest
import torch
from conftest import MIRROR, needs_mirror

from harness import cloze
from harness.cloze import (CLOZE_TASKS, ClozeDoc, ClozeParseError, ClozeScorer, encode_pair,
                           naive_loglikelihoods, parse_record, training_target)
from harness.data import hellaswag_native_by_instruction, load_cloze_docs
from harness.tasks import cloze as cloze_tasks

# fp32 forward; sums in float64. Packed/masked attention changes summation order only.
ATOL, RTOL = 1e-4, 1e-6


def _close(a, b):
    return all(abs(x - y) <= ATOL + RTOL * abs(y) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.fixture(scope="module")
def tiny():
    from harness.models import _tiny_model

    model, tok = _tiny_model({"seed": 0})
    return model.eval(), tok


# ------------------------------------------------------------------ parsing and docs
@needs_mirror
@pytest.mark.parametrize("task", CLOZE_TASKS)
def test_every_mirror_record_parses(task):
    """Every test record (the evaluated head and the carved tail) and every mirror training
    record of the task parses, re-renders to its instruction and keeps its answer."""
    from harness.data import COMMONSENSE_MIRROR_SOURCES, hellaswag_record, read_records

    files = [f"llm-adapters/dataset/{task}/test.json"]
    if task in COMMONSENSE_MIRROR_SOURCES:
        files.append(f"llm-adapters/dataset/{task}/train.json")
    if task == "hellaswag":
        files = ["hellaswag/validation.jsonl"]
    total = 0
    for rel in files:
        records = read_records(MIRROR / rel)
        if task == "hellaswag":
            records = [hellaswag_record(r) for r in records]
        for i, rec in enumerate(records):
            question, options, gold = parse_record(task, rec, f"{rel} {i}")
            word = {"boolq": None, "piqa": "solution", "winogrande": "option", "hellaswag": "ending"}.get(task, "answer")
            assert rec["answer"] == (("true" if gold == 1 else "false") if word is None else f"{word}{gold + 1}")
        total += len(records)
    assert total >= 500


@needs_mirror
def test_docs_are_lm_evals_on_known_records():
    """Spot checks against the raw records: options and gold as the datasets have them."""
    piqa = load_cloze_docs("piqa", MIRROR, limit=2)
    assert piqa[1].contexts[0] == "Question: dresser\nAnswer:"
    assert piqa[1].continuations == (" replace drawer with bobby pin ", " finish, woodgrain with  bobby pin ")
    assert piqa[1].gold == 1
    boolq = load_cloze_docs("boolq", MIRROR, limit=2)
    assert boolq[0].requests == [("Question: does ethanol take more energy make that produces?\nAnswer:", " no"),
                                 ("Question: does ethanol take more energy make that produces?\nAnswer:", " yes")]
    assert [d.gold for d in boolq] == [0, 1]  # false, true
    wino = load_cloze_docs("winogrande", MIRROR, limit=1)[0]
    assert wino.contexts == ("Sarah was a much better surgeon than Maria so Sarah",
                             "Sarah was a much better surgeon than Maria so Maria")
    assert wino.continuations == (" always got the easier cases.",) * 2 and wino.gold == 1
    arc = load_cloze_docs("ARC-Challenge", MIRROR, limit=1)[0]
    assert arc.choices[2] == "Planetary days will become shorter." and arc.gold == 2
    obqa = load_cloze_docs("openbookqa", MIRROR, limit=1)[0]
    assert obqa.contexts[0].startswith("Question: A person wants") and obqa.contexts[0].endswith("to\nAnswer:")
    assert len(load_cloze_docs("social_i_qa", MIRROR, limit=100)) == 100


def _lm_eval_module(rel):
    import lm_eval

    path = importlib.util.find_spec("lm_eval").submodule_search_locations[0] + f"/tasks/{rel}"
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_")[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert lm_eval
    return mod


@needs_mirror
def test_hellaswag_and_winogrande_are_lm_evals_own_functions():
    """HellaSwag docs = lm-eval's hellaswag/utils.py process_docs on the native records;
    WinoGrande docs = lm-eval's preprocess_winogrande on the sentence/options/answer."""
    import datasets

    from harness.data import read_records

    native = read_records(MIRROR / "hellaswag/validation.jsonl")[:50]
    theirs = _lm_eval_module("hellaswag/utils.py").process_docs(datasets.Dataset.from_list(native))
    ours = load_cloze_docs("hellaswag", MIRROR, limit=50)
    for mine, ref in zip(ours, theirs):
        assert mine.contexts[0] == ref["query"] and list(mine.choices) == ref["choices"] and mine.gold == ref["gold"]
    wg = _lm_eval_module("winogrande/preprocess_winogrande.py")
    for i, rec in enumerate(read_records(MIRROR / "llm-adapters/dataset/winogrande/test.json")[:200]):
        sentence, (o1, o2), gold = parse_record("winogrande", rec)
        doc = {"sentence": sentence, "option1": o1, "option2": o2, "answer": str(gold + 1)}
        mine = cloze.doc_from_record("winogrande", i, rec)
        assert list(mine.contexts) == wg.doc_to_choice(doc) and mine.gold == wg.doc_to_text(doc)
        assert mine.continuations == (" " + wg.doc_to_target(doc),) * 2


@pytest.mark.parametrize("record, match", [
    ({"instruction": "Please choose the correct solution to the question: q\n\nSolution1: a\n\nSolution2: b\n\n"
                     "Answer format: solution1/solution2", "input": "", "output": "the correct answer is solution3",
      "answer": "solution3"}, "not one of solution1"),
    ({"instruction": "Please choose the correct solution to the question: q\n\nSolution1: a Solution2: x\n\n"
                     "Solution2: b\n\nAnswer format: solution1/solution2", "input": "", "output": "",
      "answer": "solution1"}, "occurs 2 times"),
    ({"instruction": "Please choose the correct solution to the question: q\n\nSolution1: a\n\nSolution2: b",
      "input": "", "output": "", "answer": "solution1"}, "does not match"),
    ({"instruction": "Please choose the correct solution to the question: q\n\nSolution1: a\n\nSolution2: b\n\n"
                     "Answer format: solution1/solution2", "input": "", "output": "the correct answer is solution2",
      "answer": "solution1"}, "disagrees"),
    ({"instruction": "Something else", "input": "", "output": "", "answer": "solution1"}, "does not start"),
])
def test_unparseable_records_are_errors_naming_them(record, match):
    with pytest.raises(ClozeParseError, match=match) as err:
        training_target("piqa", record, "mix.json record 7 (piqa)")
    assert "mix.json record 7" in str(err.value)
    if match != "does not start":  # a piqa template that does not parse: the prepared set refuses it, naming it
        from harness.data import DataError, cloze_records

        with pytest.raises(DataError, match="2 of 2 training records do not parse"):
            cloze_records([record, record], ["mix.json", "mix.json"], None)


def test_answer_format_must_count_the_options():
    rec = {"instruction": "Please choose the correct answer to the question: q\n\nAnswer1: a Answer2: b Answer3: c"
                          "\n\nAnswer format: answer1/answer2", "input": "", "output": "", "answer": "answer1"}
    with pytest.raises(ClozeParseError):
        parse_record("ARC-Easy", rec)


# ------------------------------------------------------------------ training targets
@needs_mirror
def test_training_targets_of_the_default_mixture(tmp_path):
    """Every record of the default mixture (600 per task, carved ones included) gives its
    options and gold back; the target is the gold option's scored continuation."""
    from harness.reports import load_config
    from harness.data import prepare_train_set, read_records

    cfg = load_config("config/config.yaml")
    spec = {k: v for k, v in cfg["datasets"]["commonsense"].items() if k != "suite"}
    meta = prepare_train_set(spec, MIRROR, tmp_path / "train.json", eval_limit=cfg["eval"]["commonsense"]["limit"])
    records = read_records(tmp_path / "train.json")
    from harness.data import cloze_records

    targets = cloze_records(records, ["mixture"] * len(records), MIRROR)  # what protocol: cloze trains on
    assert len(targets) == len(records) == meta["records"]
    by_task = {}
    for rec, tgt in zip(records, targets):
        c = tgt["cloze"]
        by_task[c["task"]] = by_task.get(c["task"], 0) + 1
        assert tgt["output"] == " " + (c["options"][c["gold"]] if c["task"] != "winogrande"
                                       else parse_record("winogrande", rec)[0].split("_", 1)[1].strip())
        assert rec["output"] == f"the correct answer is {rec['answer']}"
    kept = meta["records_by_source"]
    # SIQA, ARC-e, ARC-c and OBQA share one template (and one parse): task_of_instruction says ARC-Easy
    assert by_task["ARC-Easy"] == (kept["ARC-Easy"] + kept["ARC-Challenge"] + kept["openbookqa"]
                                   + kept["carve:social_i_qa"])
    for task, src in [("boolq", "boolq"), ("piqa", "carve:piqa"), ("winogrande", "carve:winogrande"), ("hellaswag", "carve:hellaswag")]:
        assert by_task[task] == kept[src] > 0


@needs_mirror
def test_hellaswag_training_target_is_the_evaluated_pair():
    """With the native docs a carved HellaSwag record's target is exactly lm-eval's (query,
    gold ending); without them only ctx_b's capital letter differs (the named deviation)."""
    from harness.data import hellaswag_record, read_records

    native = read_records(MIRROR / "hellaswag/validation.jsonl")[100:130]
    hs = hellaswag_native_by_instruction(MIRROR)
    for i, doc in enumerate(native):
        want = cloze.doc_from_hellaswag_native(i, doc)
        got = training_target("hellaswag", hellaswag_record(doc), hellaswag_docs=hs)
        assert (got.prompt, got.target) == (want.contexts[want.gold], want.continuations[want.gold])
        raw = training_target("hellaswag", hellaswag_record(doc))
        assert raw.target == got.target and raw.prompt.lower() == got.prompt.lower()


def test_training_tokens_mask_the_prompt(tiny):
    from harness.prompts import tokenize_cloze

    _, tok = tiny
    record = {"output": " yes it is", "cloze": {"prompt": "Question: q\nAnswer:"}}
    enc = tokenize_cloze(tok, record, cutoff_len=256)
    ctx, cont = encode_pair(tok, record["cloze"]["prompt"], record["output"])
    assert enc["input_ids"] == ctx + cont and enc["labels"] == [-100] * len(ctx) + cont
    assert tok.decode(cont) == " yes it is"


# ------------------------------------------------------------------ tokenization boundary
def _hflm(model, tok):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, batch_size=4)


PAIRS = [("Question: q\nAnswer:", " yes"), ("Question: q\nAnswer: ", "yes"), ("Answer:  ", " x"),
         ("ends in a word", "s continues it"), ("Sarah was so Maria", " always got it.")]


def test_encode_pair_is_lm_evals(tiny):
    model, tok = tiny
    lm = _hflm(model, tok)
    for ctx, cont in PAIRS:
        assert encode_pair(tok, ctx, cont) == lm._encode_pair(ctx, cont)


def _smollm2():
    from harness.models import _smollm2_model

    try:
        model, tok, _ = _smollm2_model()
    except FileNotFoundError as err:
        pytest.skip(f"SmolLM2 wheel not installed ({err})")
    return model.eval(), tok


@pytest.fixture(scope="module")
def smollm2():
    return _smollm2()


@pytest.mark.slow
def test_encode_pair_is_lm_evals_on_smollm2_bpe(smollm2):
    """A BPE merges across the boundary (' word' + 's' -> ' words'): lm-eval keeps the context's own
    tokens and scores whole[len(context tokens):], so the merged token is not scored and the
    scored sequence is not the tokenization of the whole string. encode_pair does the same."""
    model, tok = smollm2
    lm = _hflm(model, tok)
    for ctx, cont in PAIRS:
        assert encode_pair(tok, ctx, cont) == lm._encode_pair(ctx, cont)
    ctx, cont = encode_pair(tok, "ends in a word", "s continues it")
    whole = tok.encode("ends in a words continues it")
    assert ctx == tok.encode("ends in a word") and cont == whole[len(ctx):] and ctx + cont != whole
    assert encode_pair(tok, "Question: q\nAnswer: ", "yes") == encode_pair(tok, "Question: q\nAnswer:", " yes")


# ------------------------------------------------------------------ scorer
SYNTHETIC = [
    ClozeDoc("piqa", 0, ("Question: shared start?\nAnswer:",) * 3,
             (" the cat sat", " the cat ran away", " a dog"), ("the cat sat", "the cat ran away", "a dog"), 1),
    ClozeDoc("boolq", 1, ("Question: one token?\nAnswer:",) * 2, (" no", " yes"), ("no", "yes"), 0),
    ClozeDoc("piqa", 2, ("Context with space ",) * 2, ("same", "same"), ("same", "same"), 1),
    ClozeDoc("winogrande", 3, ("Tom gave Ann the cup because Tom", "Tom gave Ann the cup because Ann"),
             (" was thirsty.",) * 2, ("Tom gave Ann the cup because Tom", "Tom gave Ann the cup because Ann"), 0),
]


def _check_against_naive(model, tok, docs, batch):
    rows = ClozeScorer(model, tok, batch_examples=batch).score(docs)
    for doc, row in zip(docs, rows):
        ref, ntok = naive_loglikelihoods(model, tok, doc)
        assert _close(row["loglikelihoods"], ref), (doc.task, doc.doc_id, row["loglikelihoods"], ref)
        assert row["tokens"] == ntok and row["doc_id"] == doc.doc_id
    return rows


def test_scorer_equals_naive_forward_synthetic(tiny):
    model, tok = tiny
    for batch in (1, 3):
        rows = _check_against_naive(model, tok, SYNTHETIC, batch)
    assert rows[2]["loglikelihoods"][0] == pytest.approx(rows[2]["loglikelihoods"][1], abs=1e-5)
    assert rows[2]["pred_acc"] == 0  # ties go to the first option, as numpy argmax


@needs_mirror
def test_scorer_equals_naive_forward_on_every_task(tiny):
    model, tok = tiny
    docs = [d for t in CLOZE_TASKS for d in load_cloze_docs(t, MIRROR, limit=4)]
    rows = _check_against_naive(model, tok, docs, 5)
    single = ClozeScorer(model, tok, batch_examples=1).score(docs)
    assert [r["pred_acc"] for r in rows] == [r["pred_acc"] for r in single]


@pytest.mark.slow
@needs_mirror
def test_scorer_equals_naive_forward_on_smollm2(smollm2):
    model, tok = smollm2
    torch.set_num_threads(1)
    docs = [d for t in CLOZE_TASKS for d in load_cloze_docs(t, MIRROR, limit=2)]
    rows = _check_against_naive(model, tok, docs, 4)
    assert all(r["unique_tokens"] >= r["forwarded_tokens"] for r in rows)


def test_record_fields_and_metrics():
    doc = ClozeDoc("ARC-Easy", 5, ("Q",) * 3, (" a", " bbbb", " cc"), ("a", "bbbb", "cc"), 1)
    lls = [-2.0, -4.0, -3.5]
    row = cloze.example_record(doc, lls, [1, 2, 1])
    assert row["pred_acc"] == 0 and row["acc"] == 0
    assert row["pred_acc_norm"] == 1 and row["acc_norm"] == 1  # -4/4 > -2/1 > -3.5/2
    assert row["chars"] == [1, 4, 2] and row["bytes"] == [1, 4, 2]
    want = -(-4.0 - math.log(sum(math.exp(x) for x in lls)))
    assert row["choice_nll"] == pytest.approx(want, abs=1e-12)
    summary = cloze.summarize([row, {**row, "acc": 1, "acc_norm": 0, "choice_nll": 0.0}])
    assert summary == {"n": 2, "acc": 0.5, "acc_norm": 0.5, "choice_nll": pytest.approx(want / 2)}


# ------------------------------------------------------------------ lm-eval on the generated YAMLs
def test_yamls_are_generated():
    for task in CLOZE_TASKS:
        path = cloze_tasks.CLOZE_DIR / f"{cloze_tasks.lm_eval_name(task)}.yaml"
        assert path.read_text() == cloze_tasks.task_yaml(task), f"{path} is stale: run python -m harness.tasks.cloze"


@needs_mirror
def test_lm_eval_on_the_yamls_gives_the_scorers_loglikelihoods(tiny):
    """lm-eval's own simple_evaluate (HFLM, the generated YAMLs) on the tiny model: the same
    per-option log-likelihoods, picks, acc and acc_norm as ClozeScorer."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    model, tok = tiny
    limit = 3
    tm = TaskManager(include_path=str(cloze_tasks.CLOZE_DIR), include_defaults=False,
                     metadata={"data_root": str(MIRROR), "limit": limit})
    out = lm_eval.simple_evaluate(model=_hflm(model, tok), tasks=[cloze_tasks.lm_eval_name(t) for t in CLOZE_TASKS],
                                  task_manager=tm, log_samples=True, limit=limit, bootstrap_iters=0)
    scorer = ClozeScorer(model, tok, batch_examples=4)
    for task in CLOZE_TASKS:
        docs = load_cloze_docs(task, MIRROR, limit=limit)
        rows = scorer.score(docs)
        samples = sorted(out["samples"][cloze_tasks.lm_eval_name(task)], key=lambda s: s["doc_id"])
        assert len(samples) == limit
        for row, sample in zip(rows, samples):
            theirs = [float(r[0]) for r in sample["filtered_resps"]]
            assert _close(row["loglikelihoods"], theirs), (task, row["loglikelihoods"], theirs)
            assert row["acc"] == sample["acc"] and row["acc_norm"] == sample["acc_norm"], task
