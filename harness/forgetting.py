"""Forgetting: mean token loss on held-out text outside the fine-tuning domain, before and after.

The metric is the one huggingface/peft's `method_comparison` records (MetaMathQA/run.py,
`calculate_mean_per_token_loss`; `forgetting = wiki_loss_after - wiki_loss_before`): the raw
text is tokenized as the tokenizer does by default (BOS where it adds one), truncated to 768
tokens, and every next-token cross-entropy of every text is pooled into ONE mean over tokens (not
a mean of per-text means, which would weigh a short text like a long one). peft reads 100
Wikipedia articles; this project has no network at run time, so the text comes from the offline
data mirror (pinned by SHA-256, `harness.data.FILES`), from the suite the run was NOT trained on,
and disjoint from both training mixtures (`tests/test_forgetting.py` checks that on the mirror):

* runs trained for the commonsense suite: `gsm8k_test`, GSM8K test problems with their
  reference solutions (`grade-school-math/test.jsonl`, question + newline + answer, the
  original format), the first 100 whose question is not in `math_data.json` (LLM-Adapters'
  math training file holds 1 055 of the 1 319 test questions, so those are skipped; GSM8K
  *train* is a math training source and is not used);
* runs trained for the math suite: `arc_challenge_test`, ARC-Challenge test questions with the
  correct answer's text (`llm-adapters/dataset/ARC-Challenge/test.json`, question + space +
  answer, the LLM-Adapters template removed), the first 100 (the commonsense mixture reads
  ARC-Challenge *train*).

Where the numbers are computed (evaluation stage, never the training loop):

* the base model's value once per (model, text): `write_base` -> `<results>/forgetting/<model>/
  <text>.json` (rule `forgetting_base`);
* each run's value after fine-tuning: `write_after` -> `<run>/eval/forgetting.json`, called by
  `harness.evaluate.evaluate_run` on the model it evaluates (base + delta merged);
* forgetting = after - base, joined by the report (`run_value`), which checks that both were
  measured on the same text (its SHA-256), protocol and model weights. A run evaluated before
  this metric existed has no eval/forgetting.json and its delta is not kept, so its value cannot
  be recomputed: the report says "not measured", never a number.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re

from harness.records import atomic_write_json, read_json

FILE = "forgetting.json"  # the run's value, next to eval/<suite>.json
N_TEXTS = 100  # as peft's get_wiki_small(num_samples=100)
MAX_LENGTH = 768  # as peft's calculate_mean_per_token_loss(max_length=768)
BATCH_SIZE = 8
PROTOCOL = {"metric": "mean next-token cross-entropy over all tokens of all texts (pooled)",
            "n_texts": N_TEXTS, "max_length": MAX_LENGTH, "special_tokens": "tokenizer default",
            "reference": "huggingface/peft method_comparison/MetaMathQA/run.py calculate_mean_per_token_loss"}
NOT_MEASURED = "not measured"
NOTE_NOT_MEASURED = ("not measured: the run was evaluated before the forgetting metric existed and its delta "
                     "is not kept (git-ignored), so its loss after fine-tuning cannot be recomputed")


def _norm(text: str) -> str:
    return " ".join(text.split())


def _gsm8k_texts(path: pathlib.Path, data_root) -> list[str]:
    from harness.data import fetch_file

    math_data = json.loads(pathlib.Path(fetch_file("llm-adapters/ft-training_set/math_data.json", data_root)["path"])
                           .read_text())
    trained = _norm("\n".join(r["instruction"] + "\n" + r.get("input", "") for r in math_data))
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        if _norm(doc["question"])[:60] in trained:
            continue
        out.append(doc["question"] + "\n" + doc["answer"])
        if len(out) == N_TEXTS:
            break
    return out


_ARC = re.compile(r"question:\s*(?P<q>.*?)\s*\n\s*\nAnswer1:(?P<opts>.*?)\n\s*\nAnswer format", re.S)


def _arc_texts(path: pathlib.Path, data_root) -> list[str]:
    out = []
    for rec in json.loads(path.read_text())[:N_TEXTS]:
        m = _ARC.search(rec["instruction"])
        if not m:
            raise ValueError(f"{path}: an ARC-Challenge record not in the LLM-Adapters template: "
                             f"{rec['instruction'][:120]!r}; replace the file with the upstream one")
        options = re.split(r"\s*Answer\d+:\s*", "Answer1:" + m.group("opts"))[1:]
        k = int(rec["answer"].removeprefix("answer")) - 1
        out.append(f"{m.group('q')} {options[k].strip()}")
    return out


@dataclasses.dataclass(frozen=True)
class HeldOutText:
    name: str
    relpath: str  # under the data root; pinned in harness.data.FILES
    description: str
    reader: callable


TEXTS = {
    "gsm8k_test": HeldOutText("gsm8k_test", "grade-school-math/test.jsonl",
                              "GSM8K test problems + reference solutions (openai/grade-school-math test.jsonl; "
                              "the first 100 not in LLM-Adapters math_data.json)", _gsm8k_texts),
    "arc_challenge_test": HeldOutText("arc_challenge_test", "llm-adapters/dataset/ARC-Challenge/test.json",
                                      "ARC-Challenge test questions + correct answer (LLM-Adapters test.json, "
                                      "first 100, template removed)", _arc_texts),
}
SUITE_TEXT = {"commonsense": "gsm8k_test", "math": "arc_challenge_test"}  # training suite -> the other one's text


def text_for_suite(suite: str) -> str:
    """The held-out text of runs trained (and evaluated) on `suite`."""
    if suite not in SUITE_TEXT:
        raise ValueError(f"no held-out forgetting text for suite {suite!r}; add one to harness.forgetting.SUITE_TEXT "
                         f"(known: {', '.join(SUITE_TEXT)})")
    return SUITE_TEXT[suite]


def load_texts(name: str, data_root) -> tuple[list[str], dict]:
    """(texts, source) of held-out text `name`: the file fetched from the mirror (or downloaded) and
    checked against its pinned SHA-256; source has relpath, sha256 and the texts' own SHA-256."""
    from harness.data import fetch_file

    if name not in TEXTS:
        raise ValueError(f"unknown forgetting text {name!r}; known: {', '.join(TEXTS)}")
    spec = TEXTS[name]
    entry = fetch_file(spec.relpath, data_root)  # raises naming the file and the fix
    texts = spec.reader(pathlib.Path(entry["path"]), data_root)
    if len(texts) != N_TEXTS:
        raise ValueError(f"{entry['path']}: {len(texts)} held-out texts, expected {N_TEXTS}")
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    return texts, {"text": name, "description": spec.description, "relpath": spec.relpath,
                   "source_sha256": entry["sha256"], "texts_sha256": digest, "n_texts": len(texts)}


def mean_token_loss(model, tokenizer, texts: list[str], batch_size: int = BATCH_SIZE,
                    max_length: int = MAX_LENGTH) -> dict:
    """Pooled mean next-token loss over every token of `texts` (each truncated to max_length
    tokens): {"mean_token_loss", "loss_sum", "n_tokens"}. Right-padded batches; a padded position
    is neither a prediction nor a target."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    encoded = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, seq in enumerate(chunk):
                ids[i, :len(seq)] = torch.tensor(seq)
                mask[i, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                       ids[:, 1:].reshape(-1).to(device), reduction="none")
            keep = mask[:, 1:].reshape(-1).to(device).bool()
            total += float(losses[keep].double().sum())
            count += int(keep.sum())
    if count == 0:
        raise ValueError("the held-out texts have no token to predict (each is one token or empty)")
    return {"mean_token_loss": total / count, "loss_sum": total, "n_tokens": count}


def measure(model, tokenizer, name: str, data_root) -> dict:
    texts, source = load_texts(name, data_root)
    return {**source, "protocol": PROTOCOL, **mean_token_loss(model, tokenizer, texts)}


def _weights(model_checksums: dict | None) -> dict:
    return dict((model_checksums or {}).get("files_sha256") or {})


def write_base(model_dir, model_cfg: dict, name: str, data_root, out_path) -> dict:
    """The base model's loss on text `name` (once per model): `<results>/forgetting/<model>/<name>.json`."""
    from harness.models import load_model
    from harness.records import model_checksums

    load_texts(name, data_root)  # the text verified before the model load
    model, tok = load_model(model_dir, model_cfg.get("dtype", "auto"), model_cfg.get("device", "auto"))
    out = {"model": model_cfg.get("name"), "stage": "base", "model_files_sha256": _weights(model_checksums(model_dir)),
           **measure(model, tok, name, data_root)}
    atomic_write_json(out_path, out)
    return out


def check_text(suite: str, data_root) -> None:
    """Before the evaluate job's model load: the suite's held-out text exists and is intact. A suite
    of no paper table (e.g. a test's "mini") has none and is not measured; every suite of
    harness.tasks.SUITES has one (tests/test_forgetting.py)."""
    if suite in SUITE_TEXT:
        load_texts(text_for_suite(suite), data_root)


def write_after(model, tokenizer, suite: str, record: dict, data_root, out_dir) -> dict | None:
    """The evaluated model's (base + delta) loss on its suite's held-out text: `<out_dir>/forgetting.json`."""
    if suite not in SUITE_TEXT:
        return None
    info = record["run_info"]
    out = {"run_id": info["run_id"], "stage": "after fine-tuning", "fingerprint": info.get("fingerprint"),
           "model_files_sha256": _weights(record.get("meta_info", {}).get("model_checksums")),
           **measure(model, tokenizer, text_for_suite(suite), data_root)}
    atomic_write_json(pathlib.Path(out_dir) / FILE, out)
    return out


# ----------------------------------------------------------------------------------------------
# the report side: Table 2's column and the Pareto figure's axis (harness/reports/targets/table2.py and figure_pareto.py call these)

def base_path(results_dir, model: str, name: str) -> pathlib.Path:
    return pathlib.Path(results_dir) / "forgetting" / model / f"{name}.json"


def _results_dir(run) -> pathlib.Path:
    """<results> of a run: its record is <results>/runs/<model>/<dataset>/<method>/<b>/<placement>/<s>/record.json."""
    return run.path.parent.parents[len(run.run_id.split("/"))]


def run_value(run) -> dict | None:
    """{"before", "after", "forgetting", "text", "n_tokens"} of a harness.reports.runs.Run, or None when not
    measured (no eval/forgetting.json). A file that does not match its run, or a base value
    measured on other text, protocol or weights, is an error naming both files."""
    after_path = run.path.parent / "eval" / FILE
    if not after_path.is_file():
        return None
    after = read_json(after_path, "the evaluate job's forgetting measurement")
    if after.get("run_id") != run.run_id or after.get("fingerprint") != run.info.get("fingerprint"):
        raise ValueError(f"{after_path} belongs to another run or training ({after.get('run_id')}, fingerprint "
                         f"{after.get('fingerprint')}); delete it and evaluate {run.run_id} again")
    base_file = base_path(_results_dir(run), run.model, after["text"])
    base = read_json(base_file, "the base model's forgetting measurement (rule forgetting_base)")
    for key in ("texts_sha256", "protocol", "n_tokens", "model_files_sha256"):
        if base.get(key) != after.get(key):
            raise ValueError(f"{base_file} and {after_path} differ in {key} ({base.get(key)!r} vs {after.get(key)!r}): "
                             f"not the same text or model; rebuild {base_file} (snakemake forgetting_base target)")
    return {"before": base["mean_token_loss"], "after": after["mean_token_loss"],
            "forgetting": after["mean_token_loss"] - base["mean_token_loss"], "text": after["text"],
            "n_tokens": after["n_tokens"], "base_file": str(base_file)}


def fmt_group(runs: list) -> str:
    """Table cell: forgetting (after - base) as the mean over the group's seeds with the range, the
    measured share when some seeds were not measured, NOT_MEASURED when none was."""
    vals = [run_value(r) for r in runs]
    got = [v["forgetting"] for v in vals if v is not None]
    if not got:
        return NOT_MEASURED
    mean = sum(got) / len(got)
    text = f"{mean:+.4f}" if len(got) == 1 else f"{mean:+.4f} ({min(got):+.4f}–{max(got):+.4f})"
    return text if len(got) == len(runs) else f"{text} ({len(got)}/{len(runs)} seeds measured)"


def table_note(runs: list) -> str | None:
    """The footnote explaining the column: text, tokens and the base value of each model."""
    vals = [v for v in (run_value(r) for r in runs) if v is not None]
    bases = {}
    for r, v in ((r, run_value(r)) for r in runs):
        if v is not None:
            bases[(r.model, v["text"])] = (v["before"], v["n_tokens"])
    if not bases:
        return None
    where = "; ".join(f"{m} on {t}: {b:.4f} over {n} tokens" for (m, t), (b, n) in bases.items())
    texts = "; ".join(f"{t}: {TEXTS[t].description}" for t in dict.fromkeys(v["text"] for v in vals))
    return (f"forgetting: mean token loss on held-out text outside the training domain after fine-tuning minus "
            f"the base model's (as peft's method_comparison; lower is better, 0 = unchanged). Base model: {where}. "
            f"Text: {texts}")


def add_table_column(rows: list[dict], notes) -> None:
    """Table 2's hook: a "forgetting" cell on every row with runs (its `_group`), and the footnotes."""
    runs = []
    for row in rows:
        group = row.get("_group")
        if group is None:
            continue
        usable = group.ok
        cell = fmt_group(usable) if usable else "n/a"
        if cell.startswith(NOT_MEASURED) or "seeds measured" in cell:
            cell += " " + notes.mark(NOTE_NOT_MEASURED)
        row["forgetting"] = cell
        runs += usable
    note = table_note(runs)
    if note:
        notes.mark(note)


def pareto_columns(run) -> dict:
    v = run_value(run)
    return {"forgetting": None if v is None else v["forgetting"]}


PARETO_AXIS = ("forgetting", "forgetting (Δ mean token loss, held-out text)", False)


def pareto_caption(frame) -> str:
    if "forgetting" not in frame or not len(frame):
        return ""
    missing = int(frame["forgetting"].isna().sum())
    return ("; forgetting: mean token loss on held-out text outside the training domain after minus before "
            "fine-tuning (as peft's method_comparison)"
            + (f", {missing} of {len(frame)} runs not measured (evaluated before the metric existed, delta not kept)"
               " and not drawn there" if missing else ""))
