"""Functions the local lm-eval task YAMLs point to (`!function utils.<name>`).

The data root and limit reach `load_docs` through lm-eval task metadata
(`TaskManager(metadata={"data_root": ..., "limit": ...})` or `--metadata` on the CLI); with
no data_root, SMT_DATA_ROOT or a download is used (see harness.data.resolve_data_root).
From the command line (with the project installed, `pip install -e .`):

    lm_eval --model hf --model_args pretrained=resources/models/smollm2-135m \
        --include_path harness/tasks --tasks llm_adapters_commonsense \
        --metadata '{"data_root": "../shared/data", "limit": 50}'

Tags `llm_adapters_commonsense` and `llm_adapters_math` name the two suites.
"""
from __future__ import annotations


def load_docs(task: str, data_root: str | None = None, limit: int | None = None, trim: int = 0,
              **_metadata) -> dict:
    """{"test": datasets.Dataset} of the LLM-Adapters test set of `task`, each doc with its id and
    the number of trailing prompt characters to drop (`trim`, harness.prompts.boundary_trim)."""
    import datasets

    from harness.data import load_test_set, resolve_data_root

    records = load_test_set(task, resolve_data_root(data_root), limit=limit)
    docs = [{"id": i, "task": task, "instruction": r["instruction"], "input": r.get("input") or "",
             "answer": str(r["answer"]), "trim": int(trim)} for i, r in enumerate(records)]
    return {"test": datasets.Dataset.from_list(docs)}


def doc_to_text(doc: dict) -> str:
    """The LLM-Adapters evaluation prompt of a doc, its end matched to training (prompts.eval_context)."""
    from harness.prompts import eval_context

    return eval_context(doc["instruction"], doc["input"], doc.get("trim", 0))


def process_results(doc: dict, results: list[str]) -> dict:
    """acc and extraction_failure of one generated continuation."""
    from harness.evaluate import is_correct, score

    scored = score(doc["task"], results[0])
    return {"acc": float(is_correct(doc["task"], scored["prediction"], doc["answer"])),
            "extraction_failure": float(scored["extraction_failure"])}
