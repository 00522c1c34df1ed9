"""Shared fixtures. `data_root`: the offline data mirror, or a skip that says why.

The mirror is found the way the harness finds it: the environment variable SMT_DATA_ROOT,
else `../shared/data` relative to the repository (the layout the default config assumes).
Tests that need it take the fixture; without a mirror they are skipped with the reason and
the fix, never failed, so a clean clone anywhere on disk passes the README's test command.
"""
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def find_data_root() -> tuple[pathlib.Path, str]:
    """(candidate mirror, where the candidate came from)."""
    env = os.environ.get("SMT_DATA_ROOT")
    if env and env != "download":
        path = pathlib.Path(env).expanduser()
        return (path if path.is_absolute() else REPO_ROOT / path), "SMT_DATA_ROOT"
    return REPO_ROOT.parent / "shared" / "data", "the default ../shared/data next to the repository"


@pytest.fixture()
def data_root(monkeypatch) -> pathlib.Path:
    """The resolved offline data mirror; SMT_DATA_ROOT is then unset for the test, so the
    functions under test use exactly the root they are given."""
    root, source = find_data_root()
    if not (root / "llm-adapters").is_dir():
        pytest.skip(f"offline data mirror not found at {root} ({source}); set SMT_DATA_ROOT to a copy "
                    "of the mirror to run this test")
    monkeypatch.delenv("SMT_DATA_ROOT", raising=False)
    return root.resolve()


# For module-level use (`from conftest import MIRROR, needs_mirror`): the same resolution.
MIRROR, MIRROR_SOURCE = find_data_root()
needs_mirror = pytest.mark.skipif(
    not (MIRROR / "llm-adapters").is_dir(),
    reason=f"offline data mirror not found at {MIRROR} ({MIRROR_SOURCE}); set SMT_DATA_ROOT to a copy of the mirror")


# A tiny random LLaMA and a toy parity task ("Is a plus b even?"), the world most training tests
# run in: seconds per run, and a label that a few steps can start to learn.
PARITY_PAIRS = [(1, 2), (2, 2), (3, 5), (4, 1), (6, 6), (7, 2), (8, 1), (9, 9)]


def parity_records(pairs=PARITY_PAIRS) -> list[dict]:
    """LLM-Adapters records asking whether a + b is even, answered true/false."""
    return [{"instruction": f"Is {a} plus {b} even? Answer format: true/false", "input": "",
             "output": f"the correct answer is {str((a + b) % 2 == 0).lower()}", "answer": ""}
            for a, b in pairs]


def make_tiny_env(root, pairs=PARITY_PAIRS, model_dir=None) -> pathlib.Path:
    """root/model (tiny random LLaMA, seed 0; a copy of model_dir when given) and root/train.json
    (parity records); returns root."""
    import json
    import shutil

    from harness.models import prepare_model

    root = pathlib.Path(root)
    if model_dir is not None:
        shutil.copytree(model_dir, root / "model")
    else:
        prepare_model({"source": "tiny", "seed": 0}, root / "model")
    (root / "train.json").write_text(json.dumps(parity_records(pairs)))
    return root


def tiny_llama(seed: int = 0):
    """An in-memory tiny random LLaMA (hidden 64, 2 layers, 4 heads, 2 KV heads, MLP 128,
    vocabulary 260): the model of the method and selection tests that need no tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=128, vocab_size=260))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """The prepared tiny random LLaMA (harness.models source `tiny`, seed 0), once per session;
    read-only for the tests that share it."""
    from harness.models import prepare_model

    path = tmp_path_factory.mktemp("tiny_model") / "model"
    prepare_model({"source": "tiny", "seed": 0}, path)
    return path


@pytest.fixture(scope="session")
def tiny_env(tmp_path_factory, tiny_model_dir) -> pathlib.Path:
    """make_tiny_env once per session: model/ and train.json (the parity records)."""
    return make_tiny_env(tmp_path_factory.mktemp("tiny_env"), model_dir=tiny_model_dir)


def tiny_run_cfg(env, name, lr, *, run_id=None, smt_warmup=2, deviations=(), method=None, **train) -> dict:
    """A resolved run_cfg (docs/ARCHITECTURE.md) training method `name` on make_tiny_env's model
    and parity set: Q/K/V placement, budget 5 % (full FT: all), seed 0; SMT with 16 x 16 blocks and
    `smt_warmup` full-FT warm-up steps. `method` adds method keys, `train` overrides train keys."""
    spec = {"name": name, "lr": lr}
    if name == "smt":
        spec.update(block_size=16, warmup_steps=smt_warmup, warmup_mode="full_ft", scoring="mean_abs")
    spec.update(method or {})
    env = pathlib.Path(env)
    return {"run_id": run_id or f"tiny/{name}",
            "model": {"name": "tiny", "path": str(env / "model"), "dtype": "float32", "device": "cpu"},
            "dataset": {"name": "toy", "path": str(env / "train.json")}, "method": spec,
            "budget": None if name == "full_ft" else 0.05,
            "placement": {"name": "qkv", "target_modules": ["q_proj", "k_proj", "v_proj"], "quotas": None},
            "seed": 0,
            "train": {"max_steps": 10, "epochs": None, "micro_batch_size": 4, "grad_accum": 1,
                      "lr_scheduler": "linear", "warmup_steps": 2, "weight_decay": 0.0, "max_grad_norm": 1.0,
                      "cutoff_len": 320, "train_on_inputs": False, "add_eos_token": True,
                      "checkpoint_every": None, "log_every": 1, **train},
            "deviations": list(deviations)}


def run_cfg(method: dict, **parts) -> dict:
    """The JSON form of a harness.run_config.RunConfig for tests that need only some of its parts
    (a method built on its own, no training): `method` as given, every other part a placeholder
    unless given (model/dataset paths that are never read, seed 0, schema-default train)."""
    name = method["name"]
    return {"run_id": parts.pop("run_id", f"test/{name}"),
            "model": parts.pop("model", {"name": "tiny", "path": "-", "dtype": "float32", "device": "cpu"}),
            "dataset": parts.pop("dataset", {"name": "toy", "path": "-"}),
            "method": method, "budget": parts.pop("budget", None if name == "full_ft" else 0.05),
            "placement": parts.pop("placement", {"name": "qkv", "target_modules": ["q_proj", "k_proj", "v_proj"],
                                                 "quotas": None}),
            "seed": parts.pop("seed", 0), "train": parts.pop("train", {}), **parts}
