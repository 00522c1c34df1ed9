"""Training data of one run: the prepared set tokenized, the validation hold-out, the label-prior
validation loss, and the order of micro-batches (exactly resumable).

`load_data(run, tokenizer)` -> TrainData; `batch_stream(examples, run, pad_id, start, stop)` ->
the micro-batches of optimizer steps start..stop, the same for any start (exact resume);
`total_steps(run, n_examples)`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import random
import re
from collections import Counter

import torch

from harness.data import DataError, meta_path, read_records
from harness.prompts import tokenize_example
from harness.records import read_json

VAL_SPLIT_SEED = 0  # the held-out validation records depend on the dataset only, never on the run seed
log = logging.getLogger("harness.train")


@dataclasses.dataclass
class TrainData:
    """Tokenized examples of a prepared training set: `train` (what the loop trains on) and `val`
    (held out: train.val_records records chosen with VAL_SPLIT_SEED, never trained on)."""

    train: list
    val: list
    n_records: int
    n_dropped_no_answer: int
    val_indices: list  # indices (into the cleaned records) of the held-out records
    val_prior_loss: float | None = None  # the validation loss of a label-prior-only model


def has_answer(example: dict) -> bool:
    """Whether a tokenized example keeps at least one label token that carries a loss."""
    return any(label != -100 for label in example["labels"][1:])


def check_prepared_spec(path: pathlib.Path, spec: dict | None) -> None:
    """The prepared set at `path` must have been built from `spec` (its meta's `spec`).

    Prepared files live at resources/data/<dataset>/train.json whatever the config, and Snakemake
    keeps a file it did not make (or whose metadata it lost) as up to date: without this check a
    run would train on another config's data of the same dataset name and record it as its own.
    """
    meta_file = meta_path(path)
    if spec is None or not meta_file.is_file():
        return
    prepared = read_json(meta_file, "prepared training set meta").get("spec")
    if prepared is not None and prepared != spec:
        raise DataError(f"{path} was prepared from dataset spec {prepared}, but this run's config asks "
                        f"for {spec}; delete {path} (and its .meta.json) and rerun, or run snakemake with "
                        f"--forcerun {path}")


def load_data(run, tokenizer) -> TrainData:
    """Tokenize the run's (harness.run_config.RunConfig) prepared training set, drop examples with no answer token left after
    train.cutoff_len, and hold out train.val_records of them for validation.

    The prepared set is used whole: subsampling happens once, when it is prepared (datasets.
    <name>.max_records), never here.
    """
    path = pathlib.Path(run.dataset.path)
    if not path.is_file():
        raise FileNotFoundError(f"training set {path} not found; run the prepare_data step "
                                "(harness.data.prepare_train_set) first")
    try:
        records = read_records(path)
    except DataError:  # names the file and the fix already (modified, corrupt, miscounted)
        raise
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"training set {path} is not valid JSON ({err}); delete it and rerun the "
                         "prepare_data step") from err
    check_prepared_spec(path, run.dataset.spec)
    if not records:
        raise ValueError(f"training set {path} holds no records; check datasets.<name> in the config "
                         "and rerun the prepare_data step")
    t = run.train
    tokenized = [tokenize_example(tokenizer, r, t.cutoff_len, t.train_on_inputs, t.add_eos_token)
                 for r in records]
    answered = [i for i, e in enumerate(tokenized) if has_answer(e)]
    kept, kept_records = [tokenized[i] for i in answered], [records[i] for i in answered]
    dropped = len(tokenized) - len(kept)
    if dropped:
        log.warning("%s: dropped %d of %d examples whose answer is cut off entirely by train.cutoff_len=%d",
                    path, dropped, len(tokenized), t.cutoff_len)
    if not kept:
        raise ValueError(f"training set {path}: none of its {len(records)} examples keeps an answer token "
                         f"after truncation to train.cutoff_len={t.cutoff_len} tokens (the prompts are "
                         "longer); raise train.cutoff_len or set train.train_on_inputs: true")
    n_val = t.val_records
    if n_val and n_val >= len(kept):
        raise ValueError(f"train.val_records={n_val} leaves no training example: {path} keeps {len(kept)} "
                         "examples with an answer; lower train.val_records or prepare more records")
    held = sorted(random.Random(VAL_SPLIT_SEED).sample(range(len(kept)), n_val)) if n_val else []
    held_set = set(held)
    prior = prior_val_loss([r for i, r in enumerate(kept_records) if i not in held_set],
                           [kept_records[i] for i in held], [kept[i] for i in held])
    return TrainData(train=[e for i, e in enumerate(kept) if i not in held_set], val=[kept[i] for i in held],
                     n_records=len(records), n_dropped_no_answer=dropped, val_indices=held,
                     val_prior_loss=prior)


_ANSWER = re.compile(r"the correct answer is (\S+?)\.?\s*$", re.I)
_FORMAT = re.compile(r"Answer format: ?([\w/ ]+)")


def prior_val_loss(train_records: list, val_records: list, val_examples: list) -> float | None:
    """The validation loss of a model that knows nothing but the label prior: every template
    token and EOS predicted with certainty, the label drawn from the training frequencies of its
    answer format ("solution1/solution2", "true/false", ...). Token-weighted like the validation
    loss itself, so a run whose validation loss stays at or above this value has learned the
    format and the label shares, nothing about the questions. None for sets whose answers are not
    "the correct answer is <label>" (arithmetic) or when nothing is held out."""
    def key(record):
        answer, fmt = _ANSWER.search(str(record.get("output", ""))), _FORMAT.search(str(record.get("instruction", "")))
        return (fmt.group(1).strip() if fmt else None, answer.group(1).lower()) if answer else None

    if not val_records or any(key(r) is None for r in val_records):
        return None
    counts: dict = {}
    for r in train_records:
        k = key(r)
        if k is not None:
            counts.setdefault(k[0], Counter())[k[1]] += 1
    total = 0.0
    for r in val_records:
        fmt, label = key(r)
        seen = counts.get(fmt, Counter())
        n_labels = max(len(seen), len(fmt.split("/")) if fmt else 1)
        # add-one smoothing over the format's labels: a label never seen in training is not infinite
        total -= math.log((seen[label] + 1) / (sum(seen.values()) + n_labels))
    tokens = sum(sum(1 for x in e["labels"] if x != -100) for e in val_examples)
    return round(total / max(tokens, 1), 6)


def load_examples(run, tokenizer) -> list[dict]:
    """The training examples of load_data (no-answer examples dropped, validation held out)."""
    return load_data(run, tokenizer).train


class EpochBatches(torch.utils.data.Sampler):
    """Micro-batch index lists from global micro-batch `start` to `stop`; epoch e is a fixed
    permutation seeded by (seed, e), so any position can be resumed exactly."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int):
        self.n, self.bs, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.per_epoch = math.ceil(n / batch_size)

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for k in range(self.start, self.stop):
            epoch, i = divmod(k, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            yield perm[i * self.bs:(i + 1) * self.bs].tolist()


def collate(pad_id: int):
    """Right-pad input_ids with pad_id, attention_mask with 0, labels with -100."""
    def fn(batch):
        width = max(len(b["input_ids"]) for b in batch)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for b in batch:
            pad = width - len(b["input_ids"])
            out["input_ids"].append(list(b["input_ids"]) + [pad_id] * pad)
            out["attention_mask"].append(list(b["attention_mask"]) + [0] * pad)
            out["labels"].append(list(b["labels"]) + [-100] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
    return fn


def batch_stream(examples: list, run, pad_id: int, start_step: int, total_steps: int,
                 accelerator=None):
    """Iterator over the micro-batches of optimizer steps start_step..total_steps (grad_accum x
    processes micro-batches per step), identical for any start_step (exact resume)."""
    t, seed = run.train, run.seed
    per_step = t.grad_accum * (accelerator.num_processes if accelerator else 1)
    sampler = EpochBatches(len(examples), t.micro_batch_size, seed, start_step * per_step,
                           total_steps * per_step)
    # its own generator: iterating must not draw from torch's global RNG (exact resume)
    loader = torch.utils.data.DataLoader(examples, batch_sampler=sampler, collate_fn=collate(pad_id),
                                         generator=torch.Generator().manual_seed(seed))
    return iter(accelerator.prepare(loader) if accelerator else loader)



def total_steps(run, n_examples: int, n_proc: int = 1) -> int:
    """train.max_steps, else ceil(epochs * micro-batches per epoch / (grad_accum * processes))."""
    t = run.train
    if t.max_steps:
        return int(t.max_steps)
    if not t.epochs:
        raise ValueError("set train.max_steps or train.epochs")
    per_epoch = math.ceil(n_examples / t.micro_batch_size) / (t.grad_accum * n_proc)
    return max(1, math.ceil(t.epochs * per_epoch))
