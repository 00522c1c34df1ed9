"""Data: the data root (offline mirror or checksummed download), training sets, test sets.

Everything is in the LLM-Adapters record format: `instruction`, `input`, `output`, `answer`.

Data root. A directory laid out like the upstream repositories (e.g. `../shared/data`):
`llm-adapters/dataset/<task>/{train,test}.json`, `llm-adapters/ft-training_set/*.json`,
`grade-school-math/{train,test}.jsonl`, `hellaswag/validation.jsonl`. It is set by the
environment variable SMT_DATA_ROOT (wins) or by the config's `data_root` (relative paths are
taken from the repository root). With neither, files are downloaded from the upstream URLs
below into SMT_DATA_CACHE (default `~/.cache/smt-bench/data`).

Every public function takes `data_root` as configured (a path, or None for download) and
resolves it with `resolve_data_root`, so SMT_DATA_ROOT applies everywhere.

Checksums. Every file of the offline mirror has its sha256 pinned in `FILES`; a mismatch is an
error. Files with no pinned checksum (commonsense_170k.json, math_10k.json, the upstream
HellaSwag test set) are accepted with a warning, and their sha256 is recorded.
"""
from __future__ import annotations

import json
import os
import pathlib
import random
import re
import urllib.request
import warnings

from harness.records import REPO_ROOT, atomic_write_json, sha256_file

LLM_ADAPTERS_COMMIT = "816657208af4db747803f87ba40a4c71383fed7a"
GSM8K_COMMIT = "3101c7d5072418e28b9008a6636bde82a006892c"
_LA = f"https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/{LLM_ADAPTERS_COMMIT}/"
_GSM = f"https://raw.githubusercontent.com/openai/grade-school-math/{GSM8K_COMMIT}/grade_school_math/data/"

# relative path -> (upstream URL or None if the file only exists in the mirror, pinned sha256 or None)
FILES: dict[str, tuple[str | None, str | None]] = {
    "llm-adapters/dataset/boolq/train.json": (_LA + "dataset/boolq/train.json", "5ccbaceebaddc69765e1c4a363632196b81851d303696672165ab59ec4e48c83"),
    "llm-adapters/dataset/boolq/test.json": (_LA + "dataset/boolq/test.json", "89df2397cbca81dc31adcc6f7f5b635821aa0565aafde46725b2b4bd39b4dfa9"),
    "llm-adapters/dataset/piqa/test.json": (_LA + "dataset/piqa/test.json", "3860d11b9b42e590b6b4bbc1643214d373ed0b0d4ac62fcc7bdceb8e044ad141"),
    "llm-adapters/dataset/social_i_qa/test.json": (_LA + "dataset/social_i_qa/test.json", "71543f41127451945379d106ffedaef502f1c8770dff6d2f543aca85e3080b1d"),
    "llm-adapters/dataset/hellaswag/test.json": (_LA + "dataset/hellaswag/test.json", None),
    "llm-adapters/dataset/winogrande/test.json": (_LA + "dataset/winogrande/test.json", "6946f5209e7114c65c6d04f8f644c5a061af20d730b1cfe158fff3dc44076fb9"),
    "llm-adapters/dataset/ARC-Easy/train.json": (_LA + "dataset/ARC-Easy/train.json", "6a06cece3dec32f4fb1c1b0fc29dab14be7cf3053b417290dbc6cd845359f5ff"),
    "llm-adapters/dataset/ARC-Easy/test.json": (_LA + "dataset/ARC-Easy/test.json", "3f32a84716ca6d57d38728bf80cc8117aecd17445c2cf29a68b571b810eb82dc"),
    "llm-adapters/dataset/ARC-Challenge/train.json": (_LA + "dataset/ARC-Challenge/train.json", "a9debff28aafed86a08211dc3584a3b6cb38edca8c56bb34cd5002ed54aeebfb"),
    "llm-adapters/dataset/ARC-Challenge/test.json": (_LA + "dataset/ARC-Challenge/test.json", "4a89ce368ae01a71d268d9851686738b2a0a1d84271116bab49a1dd2b48ecad7"),
    "llm-adapters/dataset/openbookqa/train.json": (_LA + "dataset/openbookqa/train.json", "a1e094eeea01f70c0baa880f37497b26700ae99b243927b9c529984de9b1fe90"),
    "llm-adapters/dataset/openbookqa/test.json": (_LA + "dataset/openbookqa/test.json", "8479930f7b8a26052c78250280b5465a4016ca7fc806af440d0f37e243f3099e"),
    "llm-adapters/dataset/gsm8k/test.json": (_LA + "dataset/gsm8k/test.json", "2cc616a1e0b23ea1df29370476365cde71c4e0aa823fb06cc194c5a8a9381abe"),
    "llm-adapters/dataset/SVAMP/test.json": (_LA + "dataset/SVAMP/test.json", "ffed015784f738f317c5603177861d044c4fc94e09211d78b25e96d46c656e2c"),
    "llm-adapters/dataset/AddSub/test.json": (_LA + "dataset/AddSub/test.json", "62a8662b1ad40879953c4df0e61883a749d03aa3fc5e71f1cdb842b816e139ff"),
    "llm-adapters/dataset/MultiArith/test.json": (_LA + "dataset/MultiArith/test.json", "a40f426807c8a563802c2a5b66bda3bcd1eba9c099038fd1199f0dd57de5fd28"),
    "llm-adapters/dataset/SingleEq/test.json": (_LA + "dataset/SingleEq/test.json", "712b15edb851c97aab42a5de106d94008f94d917366c92537ed5400a8aacb207"),
    "llm-adapters/dataset/AQuA/test.json": (_LA + "dataset/AQuA/test.json", "de677f5f0139340009eb01f17c0db781b4161912cd1f4efa77292f2fcf3478ee"),
    "llm-adapters/dataset/mawps/test.json": (_LA + "dataset/mawps/test.json", "c1a708979cbf2b3df9ac4020baacf3e8e73fcf089e1de7dd1b305b810bfaa15f"),
    "llm-adapters/ft-training_set/math_data.json": (_LA + "ft-training_set/math_data.json", "1d06633b4db748b7cfa38f2891f8d7b17b3636717b3188dd382045b94cf999a7"),
    "llm-adapters/ft-training_set/commonsense_170k.json": (_LA + "ft-training_set/commonsense_170k.json", None),
    "llm-adapters/ft-training_set/math_10k.json": (_LA + "ft-training_set/math_10k.json", None),
    "grade-school-math/train.jsonl": (_GSM + "train.jsonl", "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
    "grade-school-math/test.jsonl": (_GSM + "test.jsonl", "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"),
    # HF `hellaswag` validation split exported from Arrow (see the mirror's SOURCES.md); no upstream URL
    "hellaswag/validation.jsonl": (None, "5beba6d84769892c7ee13859caee702a34c5b1178c11add46f08c84bb1fa9d01"),
}

COMMONSENSE_TASKS = ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy",
                     "ARC-Challenge", "openbookqa"]
MATH_TASKS = ["gsm8k", "SVAMP", "AddSub", "MultiArith", "SingleEq", "AQuA", "mawps"]
# the paper's suites (Tables 2 and 5); mawps is loadable but not part of Table 5
SUITES = {"commonsense": COMMONSENSE_TASKS,
          "math": ["gsm8k", "SingleEq", "SVAMP", "MultiArith", "AddSub", "AQuA"]}
# test-set files per task, in order of preference; the first one present (mirror) or
# downloadable (no mirror) is used
_TEST_FILES = {t: [f"llm-adapters/dataset/{t}/test.json"] for t in COMMONSENSE_TASKS + MATH_TASKS}
_TEST_FILES["hellaswag"] = ["llm-adapters/dataset/hellaswag/test.json", "hellaswag/validation.jsonl"]
_TEST_FILES["gsm8k"] = ["llm-adapters/dataset/gsm8k/test.json", "grade-school-math/test.jsonl"]
COMMONSENSE_MIRROR_SOURCES = ["boolq", "ARC-Easy", "ARC-Challenge", "openbookqa"]
MATH_MIRROR_SOURCES = ["math_data", "gsm8k_train"]
TRAIN_SETS = ["commonsense_170k", "math_10k", "commonsense_mirror", "math_mirror"]
RECORD_KEYS = ("instruction", "input", "output", "answer")
_HOW_TO = ("Set the environment variable SMT_DATA_ROOT (or `data_root` in the config) to a directory "
           "laid out like the upstream repositories (e.g. ../shared/data), or set data_root to null "
           "to download from upstream.")


def resolve_data_root(configured: str | None) -> pathlib.Path | None:
    """The data root to use: SMT_DATA_ROOT if set, else `configured`; None means download.

    A relative `configured` path is taken from the repository root. The strings "download"
    and "" mean None. A root that does not exist is an error.
    """
    value = os.environ.get("SMT_DATA_ROOT") or configured
    if value in (None, "", "download"):
        return None
    root = pathlib.Path(value).expanduser()
    if not root.is_absolute():
        root = REPO_ROOT / root
    if not root.is_dir():
        source = "SMT_DATA_ROOT" if os.environ.get("SMT_DATA_ROOT") else "config data_root"
        raise FileNotFoundError(f"data root {root} ({source}={value!r}) is not a directory. {_HOW_TO}")
    return root.resolve()


def download_cache() -> pathlib.Path:
    """Where downloaded files go: SMT_DATA_CACHE or ~/.cache/smt-bench/data."""
    return pathlib.Path(os.environ.get("SMT_DATA_CACHE", "~/.cache/smt-bench/data")).expanduser()


def _as_root(data_root) -> pathlib.Path | None:
    """`data_root` as given to the public functions (configured value or resolved path), resolved."""
    return resolve_data_root(None if data_root is None else str(data_root))


def _download(url: str, dest: pathlib.Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(f"could not download {url} to {dest}: {err}. {_HOW_TO}") from err
    tmp.replace(dest)


def verify_file(relpath: str, path: pathlib.Path) -> dict:
    """sha256 of `path` checked against the pinned value for `relpath`; returns a source entry."""
    digest = sha256_file(path)
    pinned = FILES.get(relpath, (None, None))[1]
    if pinned is not None and digest != pinned:
        raise ValueError(f"checksum mismatch for {path}: sha256 {digest}, expected {pinned} "
                         f"(the file differs from upstream {relpath}); replace it with the upstream file")
    if pinned is None:
        warnings.warn(f"{relpath} has no pinned checksum; accepted with sha256 {digest} (recorded)")
    return {"relpath": relpath, "path": str(path), "sha256": digest, "pinned": pinned is not None,
            "url": FILES.get(relpath, (None, None))[0]}


def fetch_file(relpath: str, data_root) -> dict:
    """Locate (mirror) or download (data_root None) one upstream file and verify its checksum.

    Returns {"relpath", "path", "sha256", "pinned", "url"}. A missing file raises
    FileNotFoundError naming the path looked at, the upstream URL and how to set the data root.
    """
    if relpath not in FILES:
        raise KeyError(f"unknown data file {relpath}; known: {sorted(FILES)}")
    url = FILES[relpath][0]
    root = _as_root(data_root)
    path = (root if root is not None else download_cache()) / relpath
    if not path.is_file():
        if root is not None:
            raise FileNotFoundError(f"{relpath} not found: looked at {path} (data root {root}). "
                                    f"Upstream: {url or 'none (mirror-only file)'}. {_HOW_TO}")
        if url is None:
            raise FileNotFoundError(f"{relpath} has no upstream URL (mirror-only) and is not in the "
                                    f"download cache {path}. {_HOW_TO}")
        _download(url, path)
    return verify_file(relpath, path)


def _first_available(relpaths: list[str], data_root) -> str:
    """The first of `relpaths` present under the root (mirror) or with a URL (download)."""
    root = _as_root(data_root)
    for rel in relpaths:
        if root is not None and (root / rel).is_file():
            return rel
        if root is None and ((download_cache() / rel).is_file() or FILES[rel][0]):
            return rel
    return relpaths[0]  # fetch_file raises the error that says where it looked


def read_records(path) -> list[dict]:
    """Records of a .json (list) or .jsonl file."""
    path = pathlib.Path(path)
    with open(path, encoding="utf-8") as handle:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in handle if line.strip()]
        return json.load(handle)


def check_records(records: list[dict], where: str) -> list[dict]:
    """Raise if a record lacks one of the LLM-Adapters keys."""
    for i, rec in enumerate(records):
        missing = [k for k in RECORD_KEYS if k not in rec]
        if missing:
            raise ValueError(f"{where}: record {i} lacks {missing} (LLM-Adapters format needs {RECORD_KEYS})")
    return records


def hellaswag_record(doc: dict) -> dict:
    """One HF-format HellaSwag record (ctx, activity_label, endings, label) in LLM-Adapters form.

    Template of LLM-Adapters `dataset/hellaswag`: "Please choose the correct ending to complete
    the given sentence: {activity_label}: {ctx}\\n\\nEnding1: .. Ending2: .. Ending3: .. Ending4: ..
    \\n\\nAnswer format: ending1/ending2/ending3/ending4"; answer `ending{label+1}`.
    """
    endings = " ".join(f"Ending{i + 1}: {e}" for i, e in enumerate(doc["endings"]))
    answer = f"ending{int(doc['label']) + 1}"
    instruction = (f"Please choose the correct ending to complete the given sentence: "
                   f"{doc['activity_label']}: {doc['ctx']}\n\n{endings}\n\n"
                   f"Answer format: ending1/ending2/ending3/ending4")
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}",
            "answer": answer}


def _gsm8k_number(text: str) -> str:
    return text.strip().replace(",", "")


def gsm8k_record(doc: dict) -> dict:
    """One GSM8K record (question, answer with `#### N`) as an LLM-Adapters training record.

    The rationale keeps the lines before `####` with the calculator annotations `<<...>>`
    removed; the output is "rationale\\nThe answer is N." as in math_data.json / math_10k.
    """
    rationale, _, final = doc["answer"].rpartition("####")
    rationale = re.sub(r"<<[^>]*>>", "", rationale).strip()
    number = _gsm8k_number(final)
    return {"instruction": doc["question"], "input": "",
            "output": f"{rationale}\nThe answer is {number}.", "answer": number}


_NATIVE_CONVERTERS = {"hellaswag/validation.jsonl": hellaswag_record, "grade-school-math/test.jsonl": gsm8k_record}


def _train_sources(spec: dict) -> list[tuple[str, str, callable]]:
    """(label, relpath, converter) for each source of a training-set spec."""
    name = spec["name"]
    identity = lambda r: r  # noqa: E731
    if name in ("commonsense_170k", "math_10k"):
        return [(name, f"llm-adapters/ft-training_set/{name}.json", identity)]
    if name == "commonsense_mirror":
        picked = spec.get("sources", COMMONSENSE_MIRROR_SOURCES)
        unknown = set(picked) - set(COMMONSENSE_MIRROR_SOURCES)
        if unknown:
            raise ValueError(f"commonsense_mirror sources {sorted(unknown)} unknown; choose from "
                             f"{COMMONSENSE_MIRROR_SOURCES} (the mirror holds no other train sets)")
        return [(t, f"llm-adapters/dataset/{t}/train.json", identity) for t in picked]
    if name == "math_mirror":
        table = {"math_data": ("llm-adapters/ft-training_set/math_data.json", identity),
                 "gsm8k_train": ("grade-school-math/train.jsonl", gsm8k_record)}
        picked = spec.get("sources", MATH_MIRROR_SOURCES)
        unknown = set(picked) - set(table)
        if unknown:
            raise ValueError(f"math_mirror sources {sorted(unknown)} unknown; choose from {sorted(table)}")
        return [(s, *table[s]) for s in picked]
    raise ValueError(f"unknown training set {name!r}; choose one of {TRAIN_SETS}")


def prepare_train_set(spec: dict, data_root, out_path) -> dict:
    """Build a training set in LLM-Adapters JSON at out_path, plus `<out_path>.meta.json`.

    spec: {"name": one of TRAIN_SETS, "max_records": int | None, "seed": int,
    "sources": [...] (mirror sets only), "shuffle": bool (default True)}. Records of all
    sources are concatenated, shuffled with `seed`, then cut to `max_records`. Returns the meta
    dict: sources (path, sha256, pinned, records), record count, output sha256.
    """
    records, sources = [], []
    for label, relpath, convert in _train_sources(spec):
        entry = fetch_file(relpath, data_root)
        raw = read_records(entry["path"])
        part = check_records([convert(r) for r in raw], relpath)
        records += part
        sources.append({**entry, "source": label, "records": len(part)})
    seed = int(spec.get("seed", 0))
    if spec.get("shuffle", True):
        random.Random(seed).shuffle(records)
    limit = spec.get("max_records")
    if limit is not None:
        records = records[:int(limit)]
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(records, handle, ensure_ascii=False, indent=1)
    root = _as_root(data_root)
    meta = {"name": spec["name"], "spec": dict(spec), "data_root": str(root) if root else "download",
            "sources": sources, "records": len(records), "seed": seed, "max_records": limit,
            "path": str(out_path), "sha256": sha256_file(out_path)}
    atomic_write_json(pathlib.Path(f"{out_path}.meta.json"), meta)
    return meta


def locate_test_set(task: str, data_root) -> dict:
    """The verified file entry (relpath, path, sha256, pinned, url) a task's test set comes from."""
    if task not in _TEST_FILES:
        raise ValueError(f"unknown test task {task!r}; choose from {COMMONSENSE_TASKS + MATH_TASKS}")
    return fetch_file(_first_available(_TEST_FILES[task], data_root), data_root)


def load_test_set(task: str, data_root, limit: int | None = None) -> list[dict]:
    """The test set of `task` as LLM-Adapters records, in file order.

    The LLM-Adapters file is used when present; otherwise HellaSwag comes from the HF-format
    `hellaswag/validation.jsonl` (converted with `hellaswag_record`) and GSM8K from
    `grade-school-math/test.jsonl` (converted with `gsm8k_record`). `limit` keeps the first
    `limit` records (deterministic, no sampling).
    """
    entry = locate_test_set(task, data_root)
    convert = _NATIVE_CONVERTERS.get(entry["relpath"], lambda r: r)
    records = check_records([convert(r) for r in read_records(entry["path"])], entry["relpath"])
    return records if limit is None else records[:int(limit)]
