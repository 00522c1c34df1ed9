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

import torch

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


def atomic_write_json(path, obj) -> pathlib.Path:
    """Write obj as indented JSON to path through a temporary file and rename (no torn files)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


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


def meta_info(model_path=None, data_path=None) -> dict:
    """Environment of a run: git sha + dirty flag, package versions, torch config, device, checksums."""
    status = _git("status", "--porcelain")
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
    """Checksums of a prepared model (from its prepared.json, else hashed now)."""
    path = pathlib.Path(model_path)
    marker = path / "prepared.json"
    if marker.is_file():
        prepared = json.loads(marker.read_text())
        return {k: prepared[k] for k in ("files_sha256", "gguf_sha256", "source") if k in prepared}
    return {"files_sha256": {w.name: sha256_file(w) for w in sorted(path.glob("*.safetensors"))}}


def data_checksums(data_path) -> dict:
    """sha256 of the training JSON plus the checksums listed in its <path>.meta.json, if present."""
    path = pathlib.Path(data_path)
    out = {"train_sha256": sha256_file(path) if path.is_file() else None}
    meta = path.with_name(path.name + ".meta.json")
    if not meta.is_file():
        meta = path.with_suffix(".meta.json")
    if meta.is_file():
        out["meta"] = json.loads(meta.read_text())
    return out


def new_record(run_cfg: dict) -> dict:
    """A fresh record for run_cfg with status 'running' and empty train/eval sections."""
    return {
        "run_info": {
            "run_id": run_cfg.get("run_id"),
            "config": run_cfg,
            "method": run_cfg["method"]["name"],
            "budget_asked": run_cfg.get("budget"),
            "budget_reached": None,
            "seed": run_cfg.get("seed"),
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "status": "running",
            "error": None,
            "deviations": run_cfg.get("deviations", []),
        },
        "train_info": {},
        "eval": {},
        "meta_info": meta_info(run_cfg.get("model", {}).get("path"), run_cfg.get("dataset", {}).get("path")),
    }


def write_record(out_dir, record: dict) -> pathlib.Path:
    """Write record to out_dir/record.json atomically."""
    return atomic_write_json(pathlib.Path(out_dir) / "record.json", record)


def file_sizes(path) -> dict[str, int]:
    """Size in bytes of every file under path, keyed by its path relative to path."""
    path = pathlib.Path(path)
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
