"""Evaluation through lm-eval with the LLM-Adapters protocol.

Each test task is a local lm-eval task (`harness/tasks/llm_adapters_<task>.yaml`): the
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

A response with no match counts as wrong and as an extraction failure. Predictions do not
depend on the batch size (tested for greedy and beam search; see `BeamSafeHFLM`).
"""
from __future__ import annotations

import json
import math
import pathlib
import re
import time

from lm_eval.models.huggingface import HFLM

from harness.data import COMMONSENSE_TASKS, MATH_TASKS, locate_test_set, resolve_data_root
from harness.prompts import RESPONSE_MARKER
from harness.records import REPO_ROOT, atomic_write_json

TASKS_DIR = pathlib.Path(__file__).resolve().parent / "tasks"
TASK_PREFIX = "llm_adapters_"
LABEL_PATTERNS = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}
NUMBER_TOLERANCE = 1e-3
_AQUA_PATTERNS = [r"(?i:answer is):?\s*\(?([A-E])\b", r"\(([A-E])\)", r"\b([A-E])\b"]
PROTOCOL_NOTES = [
    "LLM-Adapters evaluation prompt; response = generated text up to a further '### Response:', stripped",
    "commonsense: first match of the label pattern; math: last number within 1e-3",
    "AQuA: standalone option letter ('answer is X', then '(X)', then a lone X), not the first A-E "
    "character as in LLM-Adapters (which reads the 'A' of 'Answer')",
    "beam search runs without lm-eval's stop-sequence criteria (not beam-aware in lm-eval 0.4, so "
    "batch-size dependent); the text is still cut at the stop sequence",
]


def _check_task(task: str) -> None:
    if task not in COMMONSENSE_TASKS + MATH_TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {COMMONSENSE_TASKS + MATH_TASKS}")


def response_text(generation: str) -> str:
    """The response part of a generated continuation, as LLM-Adapters splits it."""
    return generation.split(RESPONSE_MARKER)[0].strip()


def extract_answer(task: str, text: str) -> str | float | None:
    """The answer in a response: a label string, a number (float) or an option letter; None if none."""
    _check_task(task)
    text = text.strip()
    if task in LABEL_PATTERNS:
        found = re.findall(LABEL_PATTERNS[task], text)
        return found[0] if found else None
    if task == "AQuA":
        for pattern in _AQUA_PATTERNS:
            match = re.search(pattern, text)
            if match:
                return match.group(1)
        return None
    numbers = re.findall(r"-?\d+\.?\d*", text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def is_correct(task: str, pred, label) -> bool:
    """Whether an extracted prediction matches the label (numbers: within 1e-3)."""
    _check_task(task)
    if pred is None:
        return False
    if task in MATH_TASKS and task != "AQuA":
        value = float(label)
        return math.isfinite(pred) and abs(value - float(pred)) <= NUMBER_TOLERANCE
    return pred == label


def score(task: str, generation: str) -> dict:
    """Response, prediction and failure flag for one generated continuation (no label needed)."""
    response = response_text(generation)
    pred = extract_answer(task, response)
    return {"response": response, "prediction": pred, "extraction_failure": pred is None}


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


def task_manager(data_root, limit):
    """An lm-eval TaskManager over the local task definitions, with the data root and limit."""
    from lm_eval.tasks import TaskManager

    root = None if data_root is None else str(data_root)
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                       metadata={"data_root": root, "limit": limit})


def _gen_kwargs(eval_cfg: dict) -> dict:
    beams = int(eval_cfg.get("num_beams", 1))
    return {"do_sample": False, "num_beams": beams, "max_gen_toks": int(eval_cfg.get("max_new_tokens", 32))}


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


def evaluate_model(model, tokenizer, eval_cfg: dict, out_dir) -> dict:
    """Evaluate an in-memory model on eval_cfg["tasks"] through lm-eval; write predictions.

    eval_cfg: suite, tasks, data_root, limit (first n records of each test set), batch_size,
    max_new_tokens, num_beams. Writes `<out_dir>/<task>.predictions.jsonl` (one line per example:
    id, label, generated text, prediction, extraction_failure, correct) and `<out_dir>/<suite>.json`
    (the returned dict: per task accuracy, n, extraction_failures and the test file's sha256).
    """
    import lm_eval

    tasks = list(eval_cfg.get("tasks") or [])
    if not tasks:
        raise ValueError("eval_cfg['tasks'] is empty; list test tasks, e.g. harness.data.SUITES['commonsense']")
    for task in tasks:
        _check_task(task)
    data_root = resolve_data_root(eval_cfg.get("data_root"))
    limit = eval_cfg.get("limit")
    start = time.time()
    model.eval()
    lm = BeamSafeHFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(eval_cfg.get("batch_size", 8)))
    output = lm_eval.simple_evaluate(
        model=lm, tasks=[TASK_PREFIX + t for t in tasks], task_manager=task_manager(data_root, limit),
        gen_kwargs=_gen_kwargs(eval_cfg), log_samples=True, bootstrap_iters=0)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_task = {}
    for task in tasks:
        rows = _predictions(task, output["samples"][TASK_PREFIX + task])
        with open(out_dir / f"{task}.predictions.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        accuracy = sum(r["correct"] for r in rows) / len(rows)
        reported = output["results"][TASK_PREFIX + task]["acc,none"]
        if abs(reported - accuracy) > 1e-9:
            raise RuntimeError(f"{task}: lm-eval accuracy {reported} differs from the predictions' {accuracy}")
        source = locate_test_set(task, data_root)
        per_task[task] = {"accuracy": accuracy, "n": len(rows),
                          "extraction_failures": sum(r["extraction_failure"] for r in rows),
                          "test_file": source["relpath"], "sha256": source["sha256"]}
    result = {
        "suite": eval_cfg.get("suite"), "tasks": per_task,
        "average": sum(t["accuracy"] for t in per_task.values()) / len(per_task),
        "eval_seconds": round(time.time() - start, 2),
        "eval_cfg": _jsonable(eval_cfg), "protocol": PROTOCOL_NOTES,
        "lm_eval": {"version": lm_eval.__version__, "config": _jsonable(output.get("configs", {}))},
    }
    atomic_write_json(out_dir / f"{eval_cfg.get('suite') or 'eval'}.json", result)
    return result


def evaluate_run(run_dir, eval_cfg: dict, out_dir) -> dict:
    """Load a run's base model + delta, merge, evaluate, and merge the results into its record.

    Reads run_dir/record.json (run_info.config is the resolved run config), loads the prepared
    base model with `harness.models.load_model` (a relative model path is taken from the
    repository root), applies the method's delta from
    train_info.delta_dir (default run_dir/delta) and evaluates with `evaluate_model`. The
    results land in `<out_dir>/<suite>.json` and under record["eval"][<suite>].
    """
    from baselines import get_method
    from harness.models import load_model

    run_dir = pathlib.Path(run_dir)
    record_path = run_dir / "record.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} not found: train the run first")
    record = json.loads(record_path.read_text())
    status = record.get("run_info", {}).get("status")
    if status != "ok":
        raise RuntimeError(f"run {run_dir} has status {status!r}, not 'ok'; nothing to evaluate "
                           f"(error: {record.get('run_info', {}).get('error')})")
    run_cfg = record["run_info"]["config"]
    model_cfg = run_cfg["model"]
    model_path = pathlib.Path(model_cfg["path"])
    model_path = model_path if model_path.is_absolute() else REPO_ROOT / model_path
    model, tokenizer = load_model(model_path, model_cfg.get("dtype", "auto"), model_cfg.get("device", "auto"))
    method = get_method(run_cfg["method"]["name"])(run_cfg)
    delta_dir = record.get("train_info", {}).get("delta_dir") or run_dir / "delta"
    model = method.merge(method.load(model, delta_dir))
    result = evaluate_model(model, tokenizer, eval_cfg, out_dir)
    suite = eval_cfg.get("suite") or "eval"
    record.setdefault("eval", {})[suite] = {
        "tasks": result["tasks"], "average": result["average"], "eval_cfg": result["eval_cfg"],
        "eval_seconds": result["eval_seconds"],
        "results_file": str(pathlib.Path(out_dir) / f"{suite}.json")}
    atomic_write_json(record_path, record)
    return result
