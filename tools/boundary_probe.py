"""Greedy answers of one trained run with the evaluation prompt as LLM-Adapters writes it and
less its last space (harness.prompts.boundary_trim): the measurement behind README's
"The evaluation prompt's last token".

    python tools/boundary_probe.py results/runs/smollm2-135m/commonsense/smt/b4.91/qkv/s0 16 ../shared/data
"""
import collections
import json
import pathlib
import sys

import torch

from harness.data import load_test_set, resolve_data_root
from harness.evaluate import is_correct, score, trained_model
from harness.prompts import eval_context


def main(run_dir: str, n: int = 16, data_root: str | None = None, tasks=("boolq", "piqa", "ARC-Easy")):
    torch.set_num_threads(1)
    run = pathlib.Path(run_dir)
    cfg = json.loads((run / "record.json").read_text())["run_info"]["config"]
    model, tok = trained_model(cfg, run / "delta")
    model.eval()
    root = resolve_data_root(data_root)
    for task in tasks:
        docs = load_test_set(task, root, limit=n)
        for trim, name in [(0, "as LLM-Adapters (16 spaces)"), (1, "less its last space")]:
            enc = tok([eval_context(d["instruction"], d.get("input"), trim) for d in docs], return_tensors="pt",
                      padding=True)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
            gens = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            scored = [score(task, g) for g in gens]
            acc = sum(is_correct(task, s["prediction"], str(d["answer"])) for s, d in zip(scored, docs)) / n
            fails = sum(s["extraction_failure"] for s in scored)
            top = collections.Counter(g[:32] for g in gens).most_common(2)
            print(f"{task:9s} {name:28s} extraction failures {fails}/{n}, accuracy {acc:.2f}, top {top}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 16, sys.argv[3] if len(sys.argv) > 3 else None)
