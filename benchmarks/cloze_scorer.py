"""Cloze scorer cost and zero-shot accuracy (harness/cloze.py), per commonsense task.

For each task, the first `--n` test examples (the records the project evaluates): acc, acc_norm
and mean choice NLL of the model; seconds per example; the FLOP ratio
(2 N (forwarded + padding tokens) + 2 d V (LM-head positions)) / (2 N unique tokens), N the
non-embedding parameters; the wall ratio against a throughput floor measured in the same
process just before and after the task (s/token of a plain decoder forward of a 4 x 128 batch,
no LM head) times the unique tokens; and, for the first `--exact` examples, the largest
|difference| of an option's log-likelihood from a naive full forward per option.

Usage (SmolLM2-135M-Instruct prepared once with harness.models.prepare_model):
    OMP_NUM_THREADS=1 python benchmarks/cloze_scorer.py --model /tmp/cloze-smollm2 \
        --data-root ../shared/data --n 100 --exact 5 --out /tmp/cloze.json
Writes the summary (--out) and the per-example records (--out with .jsonl).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # runnable from a checkout, uninstalled
from harness.cloze import (CLOZE_TASKS, ClozeScorer, naive_loglikelihoods, non_embedding_params,  # noqa: E402
                           summarize)
from harness.data import load_cloze_docs  # noqa: E402
from harness.models import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a prepared model directory")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--exact", type=int, default=0, help="examples per task checked against a naive forward")
    ap.add_argument("--batch", type=int, default=8, help="ClozeScorer batch_examples")
    ap.add_argument("--tasks", default=",".join(CLOZE_TASKS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, dtype="float32", device="cpu")
    model.eval()
    body = model.get_decoder()
    n_ne, d, vocab = non_embedding_params(model), model.config.hidden_size, model.config.vocab_size

    def floor_rate() -> float:
        x = torch.full((4, 128), 100)
        with torch.no_grad():
            t0 = time.perf_counter()
            body(input_ids=x, use_cache=False)
            body(input_ids=x, use_cache=False)
        return (time.perf_counter() - t0) / (2 * 4 * 128)

    floor_rate()  # warm-up
    summary, records = {"model": args.model, "non_embedding_params": n_ne, "threads": args.threads,
                        "batch_examples": args.batch, "tasks": {}}, []
    for task in args.tasks.split(","):
        docs = load_cloze_docs(task, args.data_root, limit=args.n)
        before = floor_rate()
        scorer = ClozeScorer(model, tok, batch_examples=args.batch)
        t0 = time.perf_counter()
        rows = scorer.score(docs)
        wall = time.perf_counter() - t0
        rate = (before + floor_rate()) / 2
        st = scorer.stats
        worst = 0.0
        for doc, row in list(zip(docs, rows))[:args.exact]:
            ref, _ = naive_loglikelihoods(model, tok, doc)
            worst = max(worst, max(abs(a - b) for a, b in zip(ref, row["loglikelihoods"])))
        prior = max(sum(doc.gold == k for doc in docs) for k in range(len(docs[0].choices))) / len(docs)
        summary["tasks"][task] = {
            **summarize(rows), "label_prior": prior, "s_per_example": wall / len(rows),
            "unique_tokens_per_example": st["unique_tokens"] / len(rows),
            "flop_ratio": (2 * n_ne * st["padded_tokens"] + 2 * d * vocab * st["head_positions"])
            / (2 * n_ne * st["unique_tokens"]),
            "wall_vs_throughput_floor": wall / (rate * st["unique_tokens"]), "floor_ms_per_token": rate * 1e3,
            "exact_checked": min(args.exact, len(rows)), "max_abs_diff_vs_naive": worst, **st}
        print(task, json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                for k, v in summary["tasks"][task].items()}), flush=True)
        records += rows
    out = pathlib.Path(args.out)
    out.write_text(json.dumps(summary, indent=1))
    with open(out.with_suffix(".jsonl"), "w") as handle:
        for row in records:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
