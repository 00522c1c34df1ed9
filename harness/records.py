"""Run records (record.json): creation, environment metadata, checksums, atomic writes."""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import tempfile
import traceback

PACKAGES = ["torch", "transformers", "peft", "accelerate", "datasets", "lm_eval", "tokenizers",
            "safetensors", "snakemake", "numpy"]
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path, write, binary: bool = False) -> pathlib.Path:
    """The project's one atomic writer: `write(handle)` fills a temporary file beside `path` (text,
    UTF-8; `binary`: bytes), which then replaces `path` by a rename, so a reader never sees a torn
    file; on an error the temporary file is removed and `path` is left as it was."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as handle:
            write(handle)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> pathlib.Path:
    """`text` written to path atomically (atomic_write)."""
    return atomic_write(path, lambda handle: handle.write(text))


def atomic_write_json(path, obj) -> pathlib.Path:
    """obj as indented JSON (and a final newline) written to path atomically (atomic_write)."""
    def write(handle):
        json.dump(obj, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")

    return atomic_write(path, write)


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(name: str) -> str | None:
    dist = {"lm_eval": "lm-eval"}.get(name, name)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


OUTPUT_DIRS = ("results", "figures")


def meta_info(model_path=None, data_path=None) -> dict:
    """Environment of a run: git sha + dirty flag, package versions, torch config, device, checksums."""
    import torch

    # dirty = the code differs from git_sha; the study's own outputs (results/, figures/, written
    # while it runs) are not code, else every record of a running study would say dirty
    status = _git("status", "--porcelain", "--", ".", *(f":(exclude){d}" for d in OUTPUT_DIRS))
    cuda = torch.cuda.is_available()
    info = {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_config": {"threads": torch.get_num_threads(), "cuda": torch.version.cuda,
                         "cudnn": torch.backends.cudnn.version() if cuda else None,
                         "deterministic": torch.are_deterministic_algorithms_enabled()},
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
        "model_checksums": model_checksums(model_path) if model_path else None,
        "data_checksums": data_checksums(data_path) if data_path else None,
    }
    return info


def model_checksums(model_path) -> dict:
    """Checksums of a prepared model: weights (from its prepared.json, else hashed now) and the
    small files that also shape training (config, tokenizer), hashed now."""
    path = pathlib.Path(model_path)
    marker = path / "prepared.json"
    if marker.is_file():
        prepared = read_json(marker, "prepared model marker")
        out = {k: prepared[k] for k in ("files_sha256", "gguf_sha256", "source") if k in prepared}
    else:
        out = {"files_sha256": {w.name: sha256_file(w) for w in sorted(path.glob("*.safetensors"))}}
    small = [p for p in sorted(path.glob("*")) if p.is_file() and p.name != "prepared.json"
             and p.suffix in (".json", ".txt", ".model", ".jinja")]
    out["other_sha256"] = {p.name: sha256_file(p) for p in small}
    return out


def data_checksums(data_path) -> dict:
    """sha256 of the training JSON plus the checksums listed in its <path>.meta.json, if present."""
    path = pathlib.Path(data_path)
    out = {"train_sha256": sha256_file(path) if path.is_file() else None}
    meta = path.with_name(path.name + ".meta.json")
    if not meta.is_file():
        meta = path.with_suffix(".meta.json")
    if meta.is_file():
        out["meta"] = read_json(meta, "prepared training set metadata")
    return out


def read_json(path, what: str = "JSON file", error: type = ValueError):
    """Parse a JSON file: the project's one JSON reader. A missing file is FileNotFoundError; a
    corrupt, truncated, non-UTF-8 or unreadable one raises `error` (a ValueError subclass: data
    files raise harness.data.DataError); every message names the file and the fix."""
    path = pathlib.Path(path)
    fix = "delete it and rerun the step that writes it"
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found; run the step that writes it") from None
    except json.JSONDecodeError as err:
        raise error(f"{what} {path} is not valid JSON ({err}); it is corrupt or truncated: {fix}") from err
    except UnicodeDecodeError as err:
        raise error(f"{what} {path} is not UTF-8 text ({err}); it is corrupt: {fix}") from err
    except OSError as err:
        raise error(f"{what} {path} cannot be read ({type(err).__name__}: {err}); {fix}") from err


def read_record(path) -> dict:
    """A run record (record.json): the project's one record reader. A missing, corrupt or non-record
    file is an error naming it and the fix."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the run first")
    record = read_json(path, "run record")
    if not isinstance(record, dict) or not isinstance(record.get("run_info"), dict) \
            or "status" not in record["run_info"]:
        raise ValueError(f"{path} is not a run record (no run_info.status); delete the run "
                         f"directory {path.parent} and train the run again")
    return record


# ---- run fingerprint: what determines training -----------------------------------------------
# Keys of a resolved run_cfg that do not change what is trained: identity and descriptions,
# where files live, execution resources and how often progress is saved.
_NOT_TRAINING = ("run_id", "config_name", "deviations")
_NOT_TRAINING_PARTS = {"model": ("path", "name"), "dataset": ("path", "name"), "placement": ("name",),
                       # threads: not in a RunConfig any more, but in the configs of older records
                       "train": ("threads", "checkpoint_every", "keep_checkpoints")}


def fingerprint_inputs(run_cfg: dict, meta: dict, code_version: int) -> dict:
    """Everything that determines a run's training, as one JSON-able dict.

    run_cfg: the run's JSON form (harness.run_config.RunConfig.to_json), without paths, threads
    and descriptive fields (`_NOT_TRAINING*`), a
    method `plan_path` replaced by the plan file's sha256, the model's checksums and the
    prepared training set's sha256 (from meta_info, so moving files changes nothing; changing
    their content does), and the training code's version (harness.train.TRAIN_CODE_VERSION).
    """
    cfg = {k: v for k, v in run_cfg.items() if k not in _NOT_TRAINING}
    for part, drop in _NOT_TRAINING_PARTS.items():
        if isinstance(cfg.get(part), dict):
            cfg[part] = {k: v for k, v in cfg[part].items() if k not in drop}
    method = dict(cfg.get("method") or {})
    if method.get("plan_path"):
        plan = pathlib.Path(method["plan_path"])
        method["plan_path"] = {"sha256": sha256_file(plan) if plan.is_file() else None}
    cfg["method"] = method
    model = dict(meta.get("model_checksums") or {})
    data = meta.get("data_checksums") or {}
    return {"run_cfg": cfg, "model": model, "data": {"train_sha256": data.get("train_sha256")},
            "code_version": code_version}


def fingerprint(inputs: dict) -> str:
    """sha256 (hex) of fingerprint_inputs' canonical JSON."""
    text = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_diff(old: dict | None, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprint_inputs dicts (for log messages)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [prefix or "<all>"] if old != new else []
    out = []
    for key in sorted(set(old) | set(new), key=str):
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in old or key not in new:
            out.append(where)
        elif old[key] != new[key]:
            out += fingerprint_diff(old[key], new[key], where) if isinstance(new[key], dict) else [where]
    return out


# ---- attempts history and failed runs --------------------------------------------------------
ATTEMPTS_FILE = "attempts.jsonl"


def append_attempt(out_dir, entry: dict) -> pathlib.Path:
    """Append one attempt (a JSON line) to out_dir/attempts.jsonl: the history no rerun erases."""
    path = pathlib.Path(out_dir) / ATTEMPTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path


def read_attempts(out_dir) -> list[dict]:
    """The attempts recorded in out_dir/attempts.jsonl (a torn last line is skipped)."""
    path = pathlib.Path(out_dir) / ATTEMPTS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def failed_runs(results_dir) -> list[dict]:
    """Runs under results_dir/runs whose record.json says failed, diverged or interrupted:
    [{run_id, status, error, record}], sorted by path. Unreadable records are listed as such."""
    out = []
    for path in sorted(pathlib.Path(results_dir).glob("runs/**/record.json")):
        try:
            info = read_record(path)["run_info"]
        except (ValueError, KeyError, TypeError) as err:
            out.append({"run_id": None, "status": "unreadable", "error": str(err), "record": str(path)})
            continue
        if info.get("status") != "ok":
            out.append({"run_id": info.get("run_id"), "status": info.get("status"), "error": info.get("error"),
                        "record": str(path)})
    return out


def failed_runs_report(results_dir) -> str:
    """Human-readable list of failed_runs and the command that retrains them ("" if none)."""
    runs = failed_runs(results_dir)
    if not runs:
        return ""
    lines = [f"{len(runs)} run(s) under {results_dir} did not finish ok (their records are kept and the "
             "tables show them as such):"]
    lines += [f"  {r['status']}: {r['run_id'] or r['record']}: {(r['error'] or '')[:200]}" for r in runs]
    paths = " ".join(r["record"] for r in runs)
    lines.append("To train them again (after fixing the cause, e.g. a lower method lr): "
                 f"snakemake --cores all <target> --forcerun {paths}   (or delete those record.json files). "
                 f"Each run's history of attempts is in its {ATTEMPTS_FILE}.")
    return "\n".join(lines)


def print_failed_runs(results_dir) -> None:
    """Print failed_runs_report to stderr (Snakemake's onstart); never raises."""
    import sys

    try:
        text = failed_runs_report(results_dir)
    except Exception:  # noqa: BLE001 - a listing must not stop the workflow
        text = "could not list failed runs:\n" + traceback.format_exc(limit=2)
    if text:
        print(text, file=sys.stderr)


def new_record(run) -> dict:
    """A fresh record for run (a harness.run_config.RunConfig) with status 'running' and empty
    train/eval sections; run_info.config is the run's JSON form (RunConfig.from_json reads it)."""
    return {
        "run_info": {
            "run_id": run.run_id,
            "config": run.to_json(),
            "method": run.method.name,
            "budget_asked": run.budget,
            "budget_reached": None,
            "seed": run.seed,
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "status": "running",
            "error": None,
            "deviations": list(run.deviations),
            "fingerprint": None,
            "attempts": [],
        },
        "train_info": {},
        "eval": {},
        "meta_info": meta_info(run.model.path, run.dataset.path),
    }


def write_record(out_dir, record: dict) -> pathlib.Path:
    """Write record to out_dir/record.json atomically."""
    return atomic_write_json(pathlib.Path(out_dir) / "record.json", record)


def file_sizes(path) -> dict[str, int]:
    """Size in bytes of every file under path, keyed by its path relative to path."""
    path = pathlib.Path(path)
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
