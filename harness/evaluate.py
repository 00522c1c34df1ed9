"""Evaluation through lm-eval with the LLM-Adapters protocol.

Each test task is defined once in `harness.tasks` (suite, answer rule, label words, generation
length), from which its lm-eval task file `harness/tasks/llm_adapters_<task>.yaml` is generated: the
dataset comes from `harness.data.load_test_set`, the prompt is the LLM-Adapters evaluation
prompt, generation is greedy (or beam search) with batched, left-padded inputs, and the answer
is extracted from the generated response (the text after `### Response:`, cut at a further
`### Response:` as LLM-Adapters' `split("### Response:")[1]` does):

* commonsense: the first match of the task's label pattern (true/false, solution1/2,
  answer1..5, ending1..4, option1/2), as in LLM-Adapters `commonsense_evaluate.py`;
* arithmetic: the last number of the response after removing commas, correct when within
  1e-3 of the label, as in LLM-Adapters `evaluate.py`;
* AQuA: the option letter. LLM-Adapters takes the first character in A-E anywhere, so that
  "Answer: C" yields "A"; here (a deliberate, recorded deviation) the letter must stand alone:
  "answer is (C)" / "answer is C" first, else the first "(C)", else the first standalone C.

A response with no match counts as wrong and as an extraction failure. Per task the output
also records the label prior (accuracy of always answering the most frequent label of the
examples evaluated), the distribution of predictions and a `degenerate` flag (one answer for
>= 90 % of the examples), so that a model which always says one label is seen as such. Predictions do not
depend on the batch size (tested for greedy and beam search; see `BeamSafeHFLM`).
"""
from __future__ import annotations

import json
import math
import pathlib
import re
import time
from collections import Counter

from lm_eval.models.huggingface import HFLM

from harness import forgetting, stats
from harness.data import load_cloze_docs, locate_test_set, resolve_data_root
from harness.prompts import EVAL_BOUNDARY_NOTE, RESPONSE_MARKER, boundary_trim
from harness.records import REPO_ROOT, atomic_write_json, atomic_write_text, read_record
from harness.tasks import TASK_PREFIX, TASKS, TASKS_DIR, get_task

NUMBER_TOLERANCE = 1e-3
DEGENERATE_SHARE = stats.DEGENERATE_SHARE
NO_PREDICTION = "<none>"
_AQUA_PATTERNS = [r"(?i:answer is):?\s*\(?([A-E])\b", r"\(([A-E])\)", r"\b([A-E])\b"]
PROTOCOL_NOTES = [
    "LLM-Adapters evaluation prompt; response = generated text up to a further '### Response:', stripped",
    "commonsense: first match of the label pattern; math: last number within 1e-3",
    "AQuA: standalone option letter ('answer is X', then '(X)', then a lone X), not the first A-E "
    "character as in LLM-Adapters (which reads the 'A' of 'Answer')",
    "beam search runs without lm-eval's stop-sequence criteria (not beam-aware in lm-eval 0.4, so "
    "batch-size dependent); the text is still cut at the stop sequence",
]


def response_text(generation: str) -> str:
    """The response part of a generated continuation, as LLM-Adapters splits it."""
    return generation.split(RESPONSE_MARKER)[0].strip()


def extract_answer(task: str, text: str) -> str | float | None:
    """The answer in a response: a label string, a number (float) or an option letter; None if none."""
    spec = get_task(task)
    text = text.strip()
    if spec.answer == "label":
        found = re.findall(spec.label_pattern, text)
        return found[0] if found else None
    if spec.answer == "letter":
        for pattern in _AQUA_PATTERNS:
            match = re.search(pattern, text)
            if match:
                return match.group(1)
        return None
    numbers = re.findall(r"-?\d+\.?\d*", text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def is_correct(task: str, pred, label) -> bool:
    """Whether an extracted prediction matches the label (numbers: within 1e-3)."""
    spec = get_task(task)
    if pred is None:
        return False
    if spec.answer == "number":
        value = float(label)
        return math.isfinite(pred) and abs(value - float(pred)) <= NUMBER_TOLERANCE
    return pred == label


def answer_key(task: str, value) -> str:
    """A prediction or label as a string key for counting (numbers as repr(float); None: '<none>')."""
    if value is None:
        return NO_PREDICTION
    if get_task(task).answer == "number":
        try:
            return repr(float(value))
        except ValueError:
            return str(value)
    return str(value)


def score(task: str, generation: str) -> dict:
    """Response, prediction and failure flag for one generated continuation (no label needed)."""
    response = response_text(generation)
    pred = extract_answer(task, response)
    return {"response": response, "prediction": pred, "extraction_failure": pred is None}


def task_summary(task: str, rows: list[dict]) -> dict:
    """Per-task numbers of the evaluation output from the task's prediction rows.

    rows: {label, prediction, extraction_failure, correct} per example. Returns accuracy, n,
    correct, extraction_failures, ci95 (Wilson), label_prior (accuracy of always answering the
    most frequent label of these examples), prior_label, label_counts, prediction_counts,
    top_prediction, top_prediction_share and degenerate (top share >= DEGENERATE_SHARE).
    """
    if not rows:
        raise ValueError(f"{task}: no predictions")
    n = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    prior = stats.label_prior([answer_key(task, r["label"]) for r in rows])
    # the constant predictor is scored with the task's own rule (numbers: within 1e-3)
    prior_value = float(prior["prior_label"]) if get_task(task).answer == "number" else prior["prior_label"]
    prior_acc = sum(is_correct(task, prior_value, r["label"]) for r in rows) / n
    preds = Counter(answer_key(task, r["prediction"]) for r in rows)
    top = min(preds, key=lambda k: (-preds[k], k))
    lo, hi = stats.wilson(correct, n)
    return {"accuracy": correct / n, "n": n, "correct": correct,
            "extraction_failures": sum(bool(r["extraction_failure"]) for r in rows),
            "ci95": [lo, hi], "label_prior": prior_acc, "prior_label": prior["prior_label"],
            "label_counts": prior["label_counts"], "prediction_counts": dict(sorted(preds.items())),
            "top_prediction": top, "top_prediction_share": preds[top] / n,
            "degenerate": preds[top] / n >= DEGENERATE_SHARE}


class BeamSafeHFLM(HFLM):
    """lm-eval's HFLM, except that beam search ignores lm-eval's stop-sequence criteria.

    lm-eval 0.4's MultiTokenEOSCriteria tracks `batch_size` rows, but beam search carries
    batch_size * num_beams rows, so every beam of the batch stops when the first rows meet a
    stop string: predictions then depend on the batch size. Without it, beam search runs to
    EOS or max_new_tokens for each example (as in LLM-Adapters) and lm-eval still cuts the
    text at the stop sequence. Greedy decoding keeps the criteria (correct there, and faster).
    """

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        if int(generation_kwargs.get("num_beams", 1)) > 1:
            stop = []
        return super()._model_generate(context, max_length, stop, **generation_kwargs)


def task_manager(data_root, limit, trim: int = 0):
    """An lm-eval TaskManager over the local task definitions, with the data root, limit and the
    prompt's boundary trim (harness.prompts.boundary_trim)."""
    from lm_eval.tasks import TaskManager

    root = None if data_root is None else str(data_root)
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                       metadata={"data_root": root, "limit": limit, "trim": trim})


def _gen_kwargs(eval_cfg: dict) -> dict:
    beams = int(eval_cfg.get("num_beams", 1))
    kwargs = {"do_sample": False, "num_beams": beams, "max_gen_toks": int(eval_cfg.get("max_new_tokens", 32))}
    penalty = float(eval_cfg.get("repetition_penalty", 1.0))
    if penalty != 1.0:  # the authors' evaluation uses 1.1 (paper.yaml); 1.0 is generate()'s default
        kwargs["repetition_penalty"] = penalty
    return kwargs


def _predictions(task: str, samples: list[dict]) -> list[dict]:
    rows = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        doc, generation = sample["doc"], sample["resps"][0][0]
        scored = score(task, generation)
        rows.append({"id": doc["id"], "label": doc["answer"], "generated": generation,
                     "prediction": scored["prediction"], "extraction_failure": scored["extraction_failure"],
                     "correct": is_correct(task, scored["prediction"], doc["answer"])})
    return rows


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def check_eval_cfg(eval_cfg: dict) -> list[str]:
    """The task list of eval_cfg, each task known; a clear error otherwise."""
    tasks = list(eval_cfg.get("tasks") or [])
    if not tasks:
        raise ValueError("eval_cfg['tasks'] is empty; list test tasks, e.g. harness.data.SUITES['commonsense']")
    for task in tasks:
        get_task(task)
    return tasks


def evaluate_model(model, tokenizer, eval_cfg: dict, out_dir, data_root=None, annotations: dict | None = None) -> dict:
    """Evaluate an in-memory model on eval_cfg["tasks"] through lm-eval; write predictions.

    eval_cfg: suite, tasks, limit (first n records of each test set), batch_size,
    max_new_tokens, num_beams (a `data_root` key, if any, is used when the argument is None;
    the data root is where the data is, not what is evaluated, so it is not part of the result).
    Writes `<out_dir>/<task>.predictions.jsonl` (one line per example: id, label, generated
    text, prediction, extraction_failure, correct) and then `<out_dir>/<suite>.json` (the
    returned dict: status "ok" and per task the numbers of `task_summary`, test_file and
    test_sha256), each atomically.
    """
    import lm_eval

    tasks = check_eval_cfg(eval_cfg)
    data_root = resolve_data_root(eval_cfg.get("data_root") if data_root is None else str(data_root))
    if eval_cfg.get("protocol", "generative") == "cloze":
        return evaluate_cloze(model, tokenizer, eval_cfg, out_dir, data_root, annotations)
    eval_cfg = {k: v for k, v in eval_cfg.items() if k != "data_root"}
    if eval_cfg.get("start"):
        raise ValueError(f"eval_cfg of suite {eval_cfg.get('suite')!r}: a validation split (start) is scored "
                         "under protocol cloze only; set protocol: cloze for experiments.lr_sweep")
    limit = eval_cfg.get("limit")
    start = time.time()
    model.eval()
    lm = BeamSafeHFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(eval_cfg.get("batch_size", 8)))
    trim = boundary_trim(tokenizer)
    output = lm_eval.simple_evaluate(
        model=lm, tasks=[TASK_PREFIX + t for t in tasks], task_manager=task_manager(data_root, limit, trim),
        gen_kwargs=_gen_kwargs(eval_cfg), log_samples=True, bootstrap_iters=0)
    out_dir = pathlib.Path(out_dir)
    per_task, predictions = {}, {}
    for task in tasks:
        rows = _predictions(task, output["samples"][TASK_PREFIX + task])
        summary = task_summary(task, rows)
        reported = output["results"][TASK_PREFIX + task]["acc,none"]
        if abs(reported - summary["accuracy"]) > 1e-9:
            raise RuntimeError(f"{task}: lm-eval accuracy {reported} differs from the predictions' "
                               f"{summary['accuracy']}")
        source = locate_test_set(task, data_root)
        per_task[task] = {**summary, "test_file": source["relpath"], "test_sha256": source["sha256"]}
        predictions[task] = rows
    suite = eval_cfg.get("suite") or "eval"
    result = {
        "suite": suite, "status": "ok", "tasks": per_task,
        "average": sum(t["accuracy"] for t in per_task.values()) / len(per_task),
        "eval_seconds": round(time.time() - start, 2),
        "eval_cfg": _jsonable(eval_cfg), "protocol": PROTOCOL_NOTES, "prompt_trim": trim,
        "deviations": [EVAL_BOUNDARY_NOTE] if trim else [],
        "lm_eval": {"version": lm_eval.__version__, "config": _jsonable(output.get("configs", {}))},
        **(annotations or {}),
    }
    for task, rows in predictions.items():  # predictions first, the suite file (the job's output) last
        atomic_write_text(out_dir / f"{task}.predictions.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    atomic_write_json(out_dir / f"{suite}.json", result)
    return result


CLOZE_NOTE = ("evaluation: cloze scoring (lm-eval's multiple_choice): every option's text scored by its summed "
              "log-likelihood after the question, the pick by the declared primary metric (primary_metric: "
              "acc_norm, log-likelihood per character of the option, lm-eval's definition; or acc) counted as "
              "correct, acc, acc_norm and the choice NLL recorded beside it; instead of LLM-Adapters' generated "
              "'the correct answer is <label>' (the paper's protocol)")


def cloze_task_summary(task: str, rows: list[dict]) -> dict:
    """task_summary's numbers for cloze predictions (labels and predictions are option indices),
    plus acc, acc_norm and the mean choice NLL (nats)."""
    if not rows:
        raise ValueError(f"{task}: no predictions")
    n = len(rows)
    prior = stats.label_prior([r["label"] for r in rows])
    preds = Counter(r["prediction"] for r in rows)
    top = min(preds, key=lambda k: (-preds[k], k))
    correct = sum(bool(r["correct"]) for r in rows)
    lo, hi = stats.wilson(correct, n)
    return {"accuracy": correct / n, "n": n, "correct": correct, "extraction_failures": 0, "ci95": [lo, hi],
            "label_prior": sum(r["label"] == prior["prior_label"] for r in rows) / n,
            "prior_label": prior["prior_label"], "label_counts": prior["label_counts"],
            "prediction_counts": dict(sorted(preds.items())), "top_prediction": top,
            "top_prediction_share": preds[top] / n, "degenerate": preds[top] / n >= DEGENERATE_SHARE,
            "acc": sum(r["acc"] for r in rows) / n, "acc_norm": sum(r["acc_norm"] for r in rows) / n,
            "choice_nll": sum(r["choice_nll"] for r in rows) / n}


def evaluate_cloze(model, tokenizer, eval_cfg: dict, out_dir, data_root, annotations: dict | None = None) -> dict:
    """The cloze protocol (harness.cloze): the first `limit` examples of each task as cloze docs,
    every option scored by harness.cloze.ClozeScorer (exact against a per-option forward and
    lm-eval's own loglikelihood, tests/test_cloze.py). Writes `<task>.predictions.jsonl` (the
    scorer's record per example plus id, label and prediction (option indices), correct =
    acc_norm) and `<suite>.json`, as evaluate_model does for the generative protocol."""
    import torch

    from harness import cloze

    metric = eval_cfg.get("metric", "acc_norm")  # the declared primary endpoint (config primary_metric)
    if metric not in ("acc_norm", "acc"):
        raise ValueError(f"eval_cfg metric {metric!r}: the cloze protocol counts acc_norm or acc as correct")
    start = time.time()
    model.eval()
    scorer = cloze.ClozeScorer(model, tokenizer, batch_examples=int(eval_cfg.get("batch_size", 8)))
    out_dir = pathlib.Path(out_dir)
    per_task, predictions, deviations = {}, {}, [CLOZE_NOTE]
    with torch.no_grad():
        for task in check_eval_cfg(eval_cfg):
            docs = load_cloze_docs(task, data_root, eval_cfg.get("limit"), (eval_cfg.get("start") or {}).get(task, 0))
            rows = [{"id": r["doc_id"], "label": str(r["gold"]), "prediction": str(r[f"pred_{metric}"]),
                     "extraction_failure": False, "correct": bool(r[metric]), **r} for r in scorer.score(docs)]
            source = locate_test_set(task, data_root)
            per_task[task] = {**cloze_task_summary(task, rows), "test_file": source["relpath"],
                              "test_sha256": source["sha256"]}
            predictions[task] = rows
            if task in cloze.DEVIATIONS:
                deviations.append(f"cloze prompt, {task}: {cloze.DEVIATIONS[task]}")
    suite = eval_cfg.get("suite") or "eval"
    result = {"suite": suite, "status": "ok", "protocol_name": "cloze", "tasks": per_task,
              "average": sum(t["accuracy"] for t in per_task.values()) / len(per_task),
              "average_acc": sum(t["acc"] for t in per_task.values()) / len(per_task),
              "average_choice_nll": sum(t["choice_nll"] for t in per_task.values()) / len(per_task),
              "eval_seconds": round(time.time() - start, 2), "eval_cfg": _jsonable(eval_cfg),
              "protocol": {"name": "cloze", "metric": metric, "scorer": dict(scorer.stats)},
              "prompt_trim": 0, "deviations": deviations, **(annotations or {})}
    for task, rows in predictions.items():  # predictions first, the suite file (the job's output) last
        atomic_write_text(out_dir / f"{task}.predictions.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    atomic_write_json(out_dir / f"{suite}.json", result)
    return result


def skipped_result(suite: str, record: dict) -> dict:
    """The evaluation output of a run that has nothing to evaluate (status not ok)."""
    info = record["run_info"]
    reason = f"run status {info.get('status')}"
    if info.get("error"):
        reason += f": {info['error']}"
    return {"suite": suite, "status": "skipped", "reason": reason, "tasks": {}}


def evaluate_run(run_dir, eval_cfg: dict, out_dir, data_root=None, annotations: dict | None = None) -> dict:
    """Evaluate one run (base model + its delta) and write `<out_dir>/<suite>.json` + predictions.

    Reads run_dir/record.json (never writes it: the record is the train job's output). A run
    whose status is not "ok" gets the "skipped" output (`skipped_result`) instead of an error,
    so tables show it as failed/diverged. Otherwise loads the prepared base model with
    `harness.models.load_model` (run_info.config.model.path; a relative path is taken from the
    repository root), applies the method's delta from run_dir/delta, merges it, and evaluates
    with `evaluate_model`. Everything is validated before any output is written.
    """
    run_dir = pathlib.Path(run_dir)
    record = read_record(run_dir / "record.json")
    tasks = check_eval_cfg(eval_cfg)
    suite = eval_cfg.get("suite") or "eval"
    out_dir = pathlib.Path(out_dir)
    if record["run_info"]["status"] != "ok":
        result = skipped_result(suite, record)
        atomic_write_json(out_dir / f"{suite}.json", result)
        return result
    from harness.run_config import RunConfig, RunConfigError

    try:
        run = RunConfig.from_json(record["run_info"].get("config"))
    except (RunConfigError, ValueError) as err:
        raise ValueError(f"{run_dir / 'record.json'}: run_info.config is not a run config ({err}); "
                         "train the run again") from None
    delta_dir = run_dir / "delta"
    if not delta_dir.is_dir():
        raise FileNotFoundError(f"{delta_dir} not found although {run_dir / 'record.json'} says status ok; "
                                f"train the run again")
    for task in tasks:  # every test file present and verified before the (slow) model load
        locate_test_set(task, resolve_data_root(eval_cfg.get("data_root") if data_root is None else str(data_root)))
    root = resolve_data_root(eval_cfg.get("data_root") if data_root is None else str(data_root))
    validation = eval_cfg.get("split") == "validation"  # experiments.lr_sweep's split: no forgetting there
    if not validation:
        forgetting.check_text(suite, root)
    model, tokenizer = trained_model(run, delta_dir)
    if not validation:
        forgetting.write_after(model, tokenizer, suite, record, root, out_dir)  # eval/forgetting.json
    return evaluate_model(model, tokenizer, eval_cfg, out_dir, data_root=data_root, annotations=annotations)


def trained_model(run, delta_dir) -> tuple:
    """(base model with the run's delta merged, tokenizer): the prepared model of run.model (a
    RunConfig or its JSON form; a relative path is taken from the repository root) and the
    method's delta from delta_dir."""
    from baselines import get_method
    from harness.models import load_model
    from harness.run_config import as_run_config

    run = as_run_config(run)
    model_path = pathlib.Path(run.model.path)
    model_path = model_path if model_path.is_absolute() else REPO_ROOT / model_path
    model, tokenizer = load_model(model_path, run.model.dtype, run.model.device)
    method = get_method(run.method.name)(run)
    return method.merge(method.load(model, delta_dir)), tokenizer
