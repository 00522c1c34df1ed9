"""Data: the data root (offline mirror or checksummed download), training sets, test sets.

Everything is in the LLM-Adapters record format: `instruction`, `input`, `output`, `answer`.

Data root. A directory laid out like the upstream repositories (e.g. `../shared/data`):
`llm-adapters/dataset/<task>/{train,test}.json`, `llm-adapters/ft-training_set/*.json`,
`grade-school-math/{train,test}.jsonl`, `hellaswag/validation.jsonl`. Resolution, in order:
the environment variable SMT_DATA_ROOT (a path, or `download`), then the config's `data_root`
(relative paths are taken from the repository root), and with neither (`data_root: null`) the
files are downloaded from the upstream URLs below, at pinned commits, into the cache
SMT_DATA_CACHE (default `$XDG_CACHE_HOME/smt-bench/data`, i.e. `~/.cache/smt-bench/data`).
A root that does not exist, or holds none of the folders above, is an error naming where it
looked and how to fix it.

Content, not location. Jobs depend on what the files hold: `source_checksums(spec, root)`
(the files a training-set spec reads) and `test_set_checksums(tasks, root)` (the test sets)
give sha256 sums, cached by (path, size, mtime) in a JSON file, for Snakemake params; moving
the mirror to another directory changes nothing, changing a file's bytes changes its sum.

Prepared files. `prepare_train_set` writes `train.json` and `train.json.meta.json` (sources
with their sha256, counts, records dropped, the output's sha256). `read_records` verifies a
file against the sha256 in its `.meta.json` when there is one, and `load_train_set` insists on
it; a corrupt or modified file is an error naming the file and the fix.

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

# no torch here: the Snakemake DAG imports this module to compute the data checksums of its jobs
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

from harness.records import atomic_write, atomic_write_json, sha256_file  # noqa: E402  (torch-free, like this module)
from harness.records import read_json as _read_json  # noqa: E402

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

# the test tasks and the paper's suites (Tables 2 and 5) are defined once, in harness.tasks
from harness import cloze  # noqa: E402  (parsing and scoring only; the files are read here)
from harness.tasks import COMMONSENSE_TASKS, MATH_TASKS, SUITES  # noqa: E402
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
           "laid out like the upstream repositories (e.g. ../shared/data), or set SMT_DATA_ROOT=download "
           "(or data_root: null) to download from upstream.")
# top-level folders of a data root; a root holding none of them is not a data mirror
ROOT_LAYOUT = ("llm-adapters", "grade-school-math", "hellaswag")


class DataError(ValueError):
    """A data file is corrupt, modified or inconsistent; the message names the file and the fix."""


def resolve_data_root(configured: str | None) -> pathlib.Path | None:
    """The data root to use: SMT_DATA_ROOT if set, else `configured`; None means download.

    A relative path is taken from the repository root. The strings "download" and "" mean
    None. A root that is not a directory, or holds none of ROOT_LAYOUT's folders, is a
    FileNotFoundError naming where it looked, where the value came from, and the fix.
    """
    env = os.environ.get("SMT_DATA_ROOT")
    value, source = (env, "environment variable SMT_DATA_ROOT") if env else (configured, "config data_root")
    if value is None or str(value) in ("", "download"):
        return None
    root = pathlib.Path(value).expanduser()
    if not root.is_absolute():
        root = REPO_ROOT / root
    looked = f"looked at {os.path.normpath(root)} ({source}={str(value)!r}"
    looked += ")" if env else "; SMT_DATA_ROOT is not set)"
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {looked}. {_HOW_TO}")
    if not any((root / d).is_dir() for d in ROOT_LAYOUT):
        raise FileNotFoundError(f"data root {root} is not a data mirror: it holds none of "
                                f"{', '.join(d + '/' for d in ROOT_LAYOUT)} ({looked}). {_HOW_TO}")
    return root.resolve()


def download_cache() -> pathlib.Path:
    """Where downloaded files go: SMT_DATA_CACHE, else $XDG_CACHE_HOME/smt-bench/data
    (default ~/.cache/smt-bench/data)."""
    if os.environ.get("SMT_DATA_CACHE"):
        return pathlib.Path(os.environ["SMT_DATA_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return pathlib.Path(xdg).expanduser() / "smt-bench" / "data"


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


def read_json(path, what: str = "file"):
    """harness.records.read_json for data files: a corrupt one is a DataError naming it and the fix."""
    return _read_json(path, what, error=DataError)


def meta_path(path) -> pathlib.Path:
    """The `.meta.json` written beside a prepared file."""
    return pathlib.Path(f"{path}.meta.json")


def verify_prepared(path, meta: dict | None = None) -> dict:
    """Check a prepared file against the sha256 (and record count) in its `.meta.json`.

    Returns the meta. A missing meta, a meta without sha256 or a mismatch is a DataError
    naming the file and the fix (delete it and rerun prepare_data).
    """
    path = pathlib.Path(path)
    fix = (f"delete {path} and {meta_path(path).name} and rerun the prepare_data step "
           "(snakemake rebuilds them)")
    if meta is None:
        if not meta_path(path).is_file():
            raise DataError(f"{path} has no {meta_path(path).name} (its checksums); it was not written by "
                            f"harness.data.prepare_train_set or the meta was lost: {fix}")
        meta = read_json(meta_path(path), "prepared-data meta")
    if not isinstance(meta, dict) or not meta.get("sha256"):
        raise DataError(f"{meta_path(path)} holds no sha256 for {path}: {fix}")
    digest = sha256_file(path)
    if digest != meta["sha256"]:
        raise DataError(f"{path} was modified or is corrupt: sha256 {digest}, its meta {meta_path(path)} "
                        f"records {meta['sha256']}: {fix}")
    return meta


def read_records(path, verify: bool = True) -> list[dict]:
    """Records of a .json (list) or .jsonl file.

    If `<path>.meta.json` exists (a prepared file) and `verify`, the file is first checked
    against the sha256 it records. Invalid JSON is a DataError naming the file (and the line,
    for .jsonl).
    """
    path = pathlib.Path(path)
    if verify and meta_path(path).is_file():
        verify_prepared(path)
    if path.suffix != ".jsonl":
        records = read_json(path, "data file")
        if not isinstance(records, list):
            raise DataError(f"data file {path} holds a JSON {type(records).__name__}, not a list of records")
        return records
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"data file {path}, line {number}, is not valid JSON ({err}); the file "
                                    "is corrupt: replace it with the upstream file") from err
    return records


def load_train_set(path) -> tuple[list[dict], dict]:
    """A prepared training set and its meta, verified against the meta's sha256 and count.

    What the training loop reads: a file without its meta, modified since it was prepared,
    or not holding the records the meta counts, is a DataError naming the file and the fix.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training set {path} not found; run the prepare_data step "
                                "(harness.data.prepare_train_set) first")
    meta = verify_prepared(path)
    records = read_records(path, verify=False)
    if len(records) != meta.get("records"):
        raise DataError(f"{path} holds {len(records)} records, its meta counts {meta.get('records')}: "
                        f"delete {path} and rerun the prepare_data step")
    check_records(records, str(path))
    return records, meta


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


def check_carve(spec: dict, eval_limit) -> None:
    """A carve (training records taken from test sets) must leave the evaluated head alone.

    Evaluation uses the first `eval_limit` records of each test set (None: all of them); the
    carve takes records from index `carve.offset` on, so it needs offset >= eval_limit.
    """
    carve = spec.get("carve")
    if not carve:
        return
    offset = carve.get("offset")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 1:
        raise ValueError(f"dataset {spec.get('name')!r}: carve.offset must be a positive integer (the number "
                         f"of test records reserved for evaluation), got {offset!r}")
    if eval_limit is None:
        raise ValueError(f"dataset {spec.get('name')!r}: carve takes training records from the test sets, "
                         "but the suite evaluates whole test sets (eval.<suite>.limit: null); set "
                         f"eval.<suite>.limit <= carve.offset ({offset}) or remove carve")
    if int(eval_limit) > offset:
        raise ValueError(f"dataset {spec.get('name')!r}: carve.offset {offset} is below eval.<suite>.limit "
                         f"{eval_limit}: carved training records would be evaluated; set carve.offset >= "
                         f"{eval_limit}")


def _carve_tasks(spec: dict) -> list[str]:
    carve = spec.get("carve") or {}
    tasks = list(carve.get("tasks", []))
    unknown = [t for t in tasks if t not in _TEST_FILES]
    if unknown or not tasks and carve:
        raise ValueError(f"dataset {spec.get('name')!r}: carve.tasks {unknown or tasks} must be a non-empty "
                         f"list of test tasks from {COMMONSENSE_TASKS + MATH_TASKS}")
    return tasks


def _carve(spec: dict, data_root) -> tuple[list[dict], list[str], list[dict], int]:
    """Training records cut from test sets at index >= carve.offset (disjoint from evaluation).

    Returns (records, source label per record, provenance per task, records dropped because
    their prompt equals one of the reserved (evaluated) records).
    """
    carve = spec.get("carve") or {}
    offset = int(carve.get("offset", 0))
    cap = carve.get("max_per_task")
    records, labels, provenance, dropped = [], [], [], 0
    for task in _carve_tasks(spec):
        entry = locate_test_set(task, data_root)
        convert = _NATIVE_CONVERTERS.get(entry["relpath"], lambda r: r)
        every = check_records([convert(r) for r in read_records(entry["path"])], entry["relpath"])
        if len(every) <= offset:
            raise ValueError(f"carve: {entry['path']} holds {len(every)} records, none beyond the reserved "
                             f"offset {offset}; lower carve.offset (>= eval limit) or drop {task} from carve.tasks")
        reserved = {(r["instruction"], r["input"]) for r in every[:offset]}
        stop = len(every) if cap is None else min(len(every), offset + int(cap))
        taken = [r for r in every[offset:stop] if (r["instruction"], r["input"]) not in reserved]
        dropped += (stop - offset) - len(taken)
        records += taken
        labels += [f"carve:{task}"] * len(taken)
        provenance.append({**entry, "task": task, "test_records": len(every), "reserved_head": offset,
                           "index_start": offset, "index_stop": stop, "records": len(taken),
                           "dropped_same_prompt_as_reserved": (stop - offset) - len(taken)})
    return records, labels, provenance, dropped


def prepare_train_set(spec: dict, data_root, out_path, eval_limit=None) -> dict:
    """Build a training set in LLM-Adapters JSON at out_path, plus `<out_path>.meta.json`.

    spec: {"name": one of TRAIN_SETS, "max_records": int | None, "seed": int,
    "sources": [...] (mirror sets only), "shuffle": bool (default True),
    "carve": {"tasks": [...], "offset": int, "max_per_task": int | None} (optional),
    "max_per_source": int | None (a seeded sample of at most this many records per mirror
    source, before the mixture is cut, so that a long set such as BoolQ does not dominate)}.

    Records of all sources (and, with `carve`, the records of each listed test set from index
    `carve.offset` on: evaluation reads the first `eval.<suite>.limit` records, so they never
    overlap; `eval_limit` is checked against the offset when given) are concatenated; records
    with an empty `output` are dropped (counted); the rest are shuffled with `seed` and then
    cut to `max_records`, so a subset mixes every source in proportion. This is the one place
    that subsamples training data. Returns the meta dict: sources (path, sha256, pinned,
    records read, records kept), carved (provenance), records, dropped, output sha256.
    """
    if eval_limit is not None:
        check_carve(spec, eval_limit)
    records, labels, sources = [], [], []
    for label, relpath, convert in _train_sources(spec):
        entry = fetch_file(relpath, data_root)
        raw = read_records(entry["path"])
        part = check_records([convert(r) for r in raw], relpath)
        read = len(part)
        if spec.get("max_per_source") is not None and len(part) > int(spec["max_per_source"]):
            pick = sorted(random.Random(f"{spec.get('seed', 0)}:{label}").sample(range(len(part)),
                                                                            int(spec["max_per_source"])))
            part = [part[i] for i in pick]
        records += part
        labels += [label] * len(part)
        sources.append({**entry, "source": label, "records": read, "sampled": len(part)})
    carved, carve_dropped = [], 0
    if spec.get("carve"):
        extra, extra_labels, carved, carve_dropped = _carve(spec, data_root)
        records += extra
        labels += extra_labels
    keep = [i for i, r in enumerate(records) if str(r.get("output") or "").strip()]
    dropped = {"empty_output": len(records) - len(keep), "carve_same_prompt_as_evaluated": carve_dropped}
    records, labels = [records[i] for i in keep], [labels[i] for i in keep]
    seed = int(spec.get("seed", 0))
    order = list(range(len(records)))
    if spec.get("shuffle", True):
        random.Random(seed).shuffle(order)
    limit = spec.get("max_records")
    if limit is not None:
        order = order[:int(limit)]
    records, labels = [records[i] for i in order], [labels[i] for i in order]
    if not records:
        raise ValueError(f"training set {spec['name']!r} is empty after dropping records without an answer "
                         f"({dropped}); check its sources")
    if spec.get("protocol") == "cloze":
        records = cloze_records(records, labels, data_root)
    kept = {lab: labels.count(lab) for lab in dict.fromkeys(labels)}
    for src in sources:
        src["kept"] = kept.get(src["source"], 0)
    for prov in carved:
        prov["kept"] = kept.get(f"carve:{prov['task']}", 0)
    out_path = pathlib.Path(out_path)
    # these exact bytes (indent 1, UTF-8, no final newline) are the train_sha256 the records' fingerprints hold
    atomic_write(out_path, lambda handle: json.dump(records, handle, ensure_ascii=False, indent=1))
    root = _as_root(data_root)
    meta = {"name": spec["name"], "spec": dict(spec), "data_root": str(root) if root else "download",
            "sources": sources, "carved": carved, "eval_limit": eval_limit, "records": len(records),
            "records_by_source": kept, "dropped": dropped, "seed": seed, "max_records": limit,
            "path": str(out_path), "sha256": sha256_file(out_path)}
    atomic_write_json(meta_path(out_path), meta)
    return meta


def load_cloze_docs(task: str, data_root, limit: int | None = None, start: int = 0) -> list[cloze.ClozeDoc]:
    """The cloze docs of the records the project evaluates: `limit` records of the task's test
    file (`harness.data.load_test_set`, same file and order) from index `start` on (0: the
    evaluated head; the validation split of experiments.lr_sweep starts beyond it and beyond any
    records carved for training, harness.config.eval_cfg). Doc ids are indices into the file.
    HellaSwag from the HF-format validation file uses its native fields (lm-eval exact); every
    other file is parsed."""
    entry = locate_test_set(task, data_root)
    raw = read_records(entry["path"])
    start = int(start)
    stop = len(raw) if limit is None else start + int(limit)
    if stop > len(raw) or start < 0:
        raise ValueError(f"{entry['path']} ({task}) has {len(raw)} records; records {start}..{stop - 1} were asked "
                         "for: lower the limit (eval.<suite>.limit or experiments.lr_sweep.validation.limit)")
    if entry["relpath"] == "hellaswag/validation.jsonl":
        return [cloze.doc_from_hellaswag_native(i, raw[i]) for i in range(start, stop)]
    return [cloze.doc_from_record(task, i, raw[i], f"{entry['path']} record {i} ({task})") for i in range(start, stop)]


def hellaswag_native_by_instruction(data_root) -> dict[str, dict]:
    """{LLM-Adapters instruction (harness.data.hellaswag_record): native HF doc} for HellaSwag, so
    training targets of carved records can use lm-eval's exact query (capitalized ctx_b)."""
    out = {}
    for doc in read_records(fetch_file("hellaswag/validation.jsonl", data_root)["path"]):
        out.setdefault(hellaswag_record(doc)["instruction"], doc)
    return out


def cloze_records(records: list[dict], labels: list[str], data_root) -> list[dict]:
    """The records as cloze training targets (harness.cloze.training_target): each keeps its
    LLM-Adapters keys (instruction, input, answer as they were) with `output` replaced by the gold
    option's text as the scorer scores it, and a `cloze` entry {task, prompt, gold, options}; the
    loss is then on the option text after the cloze prompt (harness.prompts.tokenize_example).
    A record that does not parse is a DataError naming it: nothing is dropped silently."""
    hellaswag = None
    if any(cloze.task_of_instruction(r) == "hellaswag" for r in records):
        hellaswag = hellaswag_native_by_instruction(data_root)  # lm-eval's exact HellaSwag query
    out, failures = [], []
    for i, (rec, label) in enumerate(zip(records, labels)):
        task = cloze.task_of_instruction(rec)
        if task is None:
            failures.append(f"record {i} ({label}): no commonsense task template in its instruction")
            continue
        try:
            t = cloze.training_target(task, rec, f"record {i} ({label})",
                                      hellaswag if task == "hellaswag" else None)
        except cloze.ClozeParseError as err:
            failures.append(str(err))
            continue
        out.append({**rec, "output": t.target,
                    "cloze": {"task": t.task, "prompt": t.prompt, "gold": t.gold, "options": list(t.options)}})
    if failures:
        raise DataError(f"protocol cloze: {len(failures)} of {len(records)} training records do not parse into "
                        f"question and options (first: {failures[0]}); fix the record or the parser in "
                        "harness/cloze.py, or use protocol: generative")
    return out


_CHECKSUM_CACHES: dict[str, dict] = {}


def cached_sha256(path, cache=None) -> str:
    """sha256 of a file, remembered in the JSON file `cache` by (resolved path, size, mtime_ns).

    With cache None it is computed. A changed size or mtime recomputes it; an unreadable
    cache is rebuilt (it is only a cache).
    """
    path = pathlib.Path(path).resolve()
    if cache is None:
        return sha256_file(path)
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    key = str(cache)
    table = _CHECKSUM_CACHES.get(key)
    if table is None:
        try:
            table = json.loads(pathlib.Path(cache).read_text())
            table = table if isinstance(table, dict) else {}
        except (OSError, ValueError):
            table = {}
        _CHECKSUM_CACHES[key] = table
    hit = table.get(str(path))
    if isinstance(hit, list) and len(hit) == 3 and hit[:2] == stamp:
        return hit[2]
    digest = sha256_file(path)
    table[str(path)] = [*stamp, digest]
    atomic_write_json(pathlib.Path(cache), table)
    return digest


def _content_checksum(relpath: str, data_root, cache=None) -> str:
    """The sha256 of what `relpath` holds: the mirror's file (cached by path, size, mtime), or in
    download mode the pinned sum (else "upstream:<url at a pinned commit>"). A missing mirror
    file raises the error of fetch_file, before any job runs."""
    root = _as_root(data_root)
    if root is not None:
        path = root / relpath
        if not path.is_file():
            fetch_file(relpath, root)  # raises, naming where it looked
        return cached_sha256(path, cache)
    url, pinned = FILES.get(relpath, (None, None))
    if pinned is not None:
        return pinned
    # no pinned sum: the upstream URL names a commit, so it identifies the content (no download
    # while the DAG is built; the job records the downloaded file's sha256 in its meta)
    if url is None:
        fetch_file(relpath, None)  # raises: a mirror-only file cannot be downloaded
    return f"upstream:{url}"


def spec_files(spec: dict, data_root) -> list[str]:
    """Relative paths of exactly the files a training-set spec reads."""
    files = [relpath for _, relpath, _ in _train_sources(spec)]
    files += [_first_available(_TEST_FILES[t], data_root) for t in _carve_tasks(spec)]
    return files


def source_checksums(spec: dict, data_root, cache=None) -> dict:
    """{relpath: sha256} of the files a training-set spec reads (for the prepare_data params)."""
    return {rel: _content_checksum(rel, data_root, cache) for rel in spec_files(spec, data_root)}


def dag_source_checksums(spec: dict, configured_root, cache=None) -> dict:
    """`source_checksums` with the data root resolved now (SMT_DATA_ROOT, then `configured_root`),
    for the prepare_data params. Without the data here (e.g. a dry run of a clone with no mirror)
    the DAG still builds: {"unavailable": <the error>}, and the job fails with that error."""
    try:
        return source_checksums(spec, resolve_data_root(configured_root), cache)
    except (OSError, ValueError) as err:
        return {"unavailable": str(err).splitlines()[0]}


def test_set_checksums(tasks, data_root, cache=None) -> dict:
    """{task: sha256} of the test-set file each task is evaluated on (for the evaluate params)."""
    out = {}
    for task in tasks:
        if task not in _TEST_FILES:
            raise ValueError(f"unknown test task {task!r}; choose from {COMMONSENSE_TASKS + MATH_TASKS}")
        out[task] = _content_checksum(_first_available(_TEST_FILES[task], data_root), data_root, cache)
    return out


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


test_set_checksums.__test__ = False  # a library function, not a pytest test
