"""Functions the cloze lm-eval task YAMLs point to (`!function cloze_utils.<name>`).

The data root and limit reach `load_docs` through lm-eval task metadata, as for the generative
tasks (harness/tasks/utils.py): `TaskManager(include_path="harness/tasks/cloze",
metadata={"data_root": ..., "limit": ...})`.
"""
from __future__ import annotations


def load_docs(task: str, data_root: str | None = None, limit: int | None = None, **_metadata) -> dict:
    """{"test": datasets.Dataset} of the cloze docs of `task` (harness.data.load_cloze_docs):
    query (the context; empty for WinoGrande), choices (lm-eval doc_to_choice strings), gold,
    target (WinoGrande: the continuation without its delimiter)."""
    import datasets

    from harness.data import load_cloze_docs, resolve_data_root

    docs = load_cloze_docs(task, resolve_data_root(data_root), limit=limit)
    return {"test": datasets.Dataset.from_list([d.lm_eval_doc() for d in docs])}
