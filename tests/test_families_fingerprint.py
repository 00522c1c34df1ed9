"""The run fingerprint's inputs that are not in the run config (issue 31, item 4): the model's
small files (config, tokenizer) and the prepared training set, each by CONTENT, not location.

tests/test_fingerprint_keys.py varies every key of the run config against a fixed `meta`; here
`meta` is computed as a training job computes it (harness.records.meta_info on the model and
training-set paths, then fingerprint_inputs), on copies of the tiny model and of a training set
that are moved, or changed in one file: a moved model or data file must resume (same
fingerprint); a changed config.json, tokenizer file or training record must start afresh.
"""
import json
import shutil

import pytest

from conftest import parity_records, tiny_run_cfg
from harness.records import fingerprint, fingerprint_inputs, meta_info


def fp_of(run_cfg, model_dir, data_file):
    """The fingerprint harness.train computes for run_cfg trained from model_dir on data_file."""
    run_cfg = {**run_cfg, "model": {**run_cfg["model"], "path": str(model_dir)},
               "dataset": {**run_cfg["dataset"], "path": str(data_file)}}
    return fingerprint(fingerprint_inputs(run_cfg, meta_info(model_dir, data_file), 1))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A model copy and a training set in one place, and the same bytes in another."""
    root = tmp_path_factory.mktemp("fp_world")
    for where in ("a", "b"):
        shutil.copytree(tiny_model_dir, root / where / "model")
        (root / where / "train.json").write_text(json.dumps(parity_records()))
    run_cfg = tiny_run_cfg(root / "a", "lora", 1e-3)
    return root, run_cfg, fp_of(run_cfg, root / "a" / "model", root / "a" / "train.json")


def test_a_moved_model_and_training_set_keep_the_fingerprint(world):
    root, run_cfg, base = world
    assert fp_of(run_cfg, root / "b" / "model", root / "b" / "train.json") == base
    assert fp_of(run_cfg, root / "b" / "model", root / "a" / "train.json") == base


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json",
                                  "generation_config.json"])
def test_a_changed_model_config_or_tokenizer_file_changes_the_fingerprint(world, tmp_path, name):
    """The weights' checksums come from prepared.json; these files are hashed as they are now: a
    changed tokenizer or architecture file trains something else, even with the same weights."""
    root, run_cfg, base = world
    model = tmp_path / "model"
    shutil.copytree(root / "a" / "model", model)
    assert (model / name).is_file(), sorted(p.name for p in model.iterdir())
    doc = json.loads((model / name).read_text())
    doc["_changed_by_the_test"] = 1  # valid JSON, other content
    (model / name).write_text(json.dumps(doc))
    assert fp_of(run_cfg, model, root / "a" / "train.json") != base, name


def test_changed_training_records_at_the_same_path_change_the_fingerprint(world, tmp_path):
    root, run_cfg, base = world
    data = tmp_path / "train.json"
    records = parity_records()
    data.write_text(json.dumps(records))
    assert fp_of(run_cfg, root / "a" / "model", data) == base  # same bytes elsewhere: same run
    records[1]["instruction"] += " "  # one record, one character
    data.write_text(json.dumps(records))
    assert fp_of(run_cfg, root / "a" / "model", data) != base
