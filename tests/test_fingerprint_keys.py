"""The run fingerprint covers EVERY key of the resolved run config that affects training.

The keys are not listed by hand: they are enumerated from `harness.config.resolve_run` of every
run id of config/test.yaml and config/config.yaml (the JSON form of each RunConfig, what the job
receives and the fingerprint hashes), so a key added to the config tomorrow is checked without
editing this file. Threads are not in a run config at all (the job's argument).
Changing a key must change `harness.records.fingerprint` (and so start the run afresh instead of
resuming its checkpoint) unless the key is on NOT_TRAINING below, where every entry says why it
does not change what is trained; for those, a change must NOT change the fingerprint (a moved
file, another thread count, a renamed description resume the run).
"""
import copy
import json
import pathlib

import pytest

import harness.checkpoint as checkpoint_mod
from harness import config as hc
from harness import reports
from harness.reports.targets import table1
from harness.checkpoint import CKPT_DIR, CKPT_FILE
from harness.records import fingerprint, fingerprint_inputs, read_attempts
from harness.train import train
from test_train_loop import make_cfg
from test_train_records import die_after_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ["config/test.yaml", "config/config.yaml"]

# The deliberately excluded keys (dotted paths into the resolved run config). Each must say why
# changing it does not change what is trained; anything not here must change the fingerprint.
NOT_TRAINING = {
    "run_id": "identity: each of its parts is fingerprinted on its own (model and data content, "
              "method, budget, placement modules, seed)",
    "config_name": "a description of the config, not a setting",
    "deviations": "descriptions of how the run differs from the paper (copied into the record)",
    "model.path": "a location: the model's content is fingerprinted by its checksums",
    "model.name": "a name: the model's content is fingerprinted by its checksums",
    "dataset.path": "a location: the training set's content is fingerprinted by its sha256",
    "dataset.name": "a name: the training set's content is fingerprinted by its sha256",
    "placement.name": "a name: the modules it selects are placement.target_modules / placement.quotas",
    "train.checkpoint_every": "how often progress is saved; resuming replays the same batches and RNG",
    "train.keep_checkpoints": "whether checkpoints are deleted after a successful run",
}
# Keys that name a file whose CONTENT is fingerprinted instead of its location.
CONTENT_PATHS = {"method.plan_path"}

META = {"model_checksums": {"files_sha256": {"model.safetensors": "m" * 64}, "other_sha256": {}},
        "data_checksums": {"train_sha256": "d" * 64}}


def resolved_runs():
    """(config file, run id, resolved run config as the train job sees it) of every run."""
    out = []
    for path in CONFIGS:
        cfg = reports.load_config(hc.load_layered(REPO / path))
        ids = sorted({r for t in reports.configured(cfg) if t != "table1" for r in reports.expand_runs(cfg, t)}
                     | {hc.profile_run_id(cfg, m, meth) for m, meth in table1.profiles(cfg, cfg["experiments"]["table1"])})
        for rid in ids:
            run_cfg = hc.resolve_run(cfg, rid).to_json()  # what the train job receives
            assert "threads" not in run_cfg["train"]  # an execution resource: the job's argument
            out.append((path, rid, run_cfg))
    return out


RUNS = resolved_runs()


def leaves(d, prefix=""):
    """Dotted paths of every leaf (non-dict value, or empty dict) of a nested dict."""
    for key, value in d.items():
        where = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            yield from leaves(value, where)
        else:
            yield where


def get(d, path):
    for key in path.split("."):
        d = d[key]
    return d


def changed(value):
    """A different value of the same kind (the fingerprint hashes values, so any change counts)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, list):
        return value + [value[-1]] if value else ["changed"]
    if isinstance(value, dict):
        return {"changed": 1}
    if value is None:
        return 1
    raise TypeError(f"no changed value for {value!r}")


def with_value(run_cfg, path, value):
    out = copy.deepcopy(run_cfg)
    *parents, last = path.split(".")
    d = out
    for key in parents:
        d = d[key]
    d[last] = value
    return out


def fp(run_cfg, meta=META):
    return fingerprint(fingerprint_inputs(run_cfg, meta, 1))


ALL_KEYS = sorted({k for _, _, c in RUNS for k in leaves(c)})


def test_the_enumeration_sees_every_section_and_the_allow_list_is_not_stale():
    assert len(RUNS) > 40
    for section in ("model", "dataset", "method", "placement", "train", "budget", "seed", "recipe"):
        assert any(k == section or k.startswith(section + ".") for k in ALL_KEYS), section
    for key in ("train.val_records", "train.max_steps", "method.lr", "dataset.spec.seed"):
        assert key in ALL_KEYS
    stale = [k for k in NOT_TRAINING if k not in ALL_KEYS]
    assert not stale, f"NOT_TRAINING lists keys no resolved run config has: {stale}"
    # every key naming a location or the thread count is excluded (or fingerprinted by content)
    located = [k for k in ALL_KEYS if k.rsplit(".", 1)[-1].endswith("path")]
    assert located and all(k in NOT_TRAINING or k in CONTENT_PATHS for k in located), located


@pytest.mark.parametrize("key", ALL_KEYS)
def test_every_key_that_affects_training_changes_the_fingerprint(key):
    """For every run that has `key`: a changed value changes the fingerprint, unless the key is
    on NOT_TRAINING (then it must not: a moved file or another thread count resumes)."""
    runs = [(p, rid, c) for p, rid, c in RUNS if key in set(leaves(c))]
    assert runs
    for path, rid, run_cfg in runs:
        base = fp(run_cfg)
        if key in CONTENT_PATHS:
            continue  # test_a_plan_path_is_fingerprinted_by_its_content
        new = fp(with_value(run_cfg, key, changed(get(run_cfg, key))))
        if key in NOT_TRAINING:
            assert new == base, f"{path} {rid}: changing {key} ({NOT_TRAINING[key]}) changed the fingerprint"
        else:
            assert new != base, (f"{path} {rid}: changing {key} does not change the run fingerprint, so a run "
                                 f"whose config changed only there would resume its old checkpoint; add it to "
                                 f"harness.records.fingerprint_inputs (or, if it truly does not affect "
                                 f"training, to NOT_TRAINING here with the reason)")


def test_model_and_data_content_and_code_version_change_the_fingerprint():
    _, _, run_cfg = RUNS[0]
    base = fp(run_cfg)
    assert fp(run_cfg, {**META, "data_checksums": {"train_sha256": "e" * 64}}) != base
    assert fp(run_cfg, {**META, "model_checksums": {"files_sha256": {"model.safetensors": "n" * 64}}}) != base
    assert fingerprint(fingerprint_inputs(run_cfg, META, 2)) != base


def test_a_plan_path_is_fingerprinted_by_its_content(tmp_path):
    _, _, run_cfg = next(r for r in RUNS if r[2]["method"]["name"] == "smt")
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text('{"plan": 1}')
    b.write_text('{"plan": 1}')
    c.write_text('{"plan": 2}')
    at = lambda p: fp(with_value(run_cfg, "method.plan_path", str(p)))  # noqa: E731
    assert at(a) == at(b) != at(c)


def test_a_run_whose_config_changed_only_in_val_records_starts_afresh(tiny_env, tmp_path, monkeypatch):
    """issue 22, 5: train.val_records left out of the fingerprint let such a run resume its old
    checkpoint. Kill after a checkpoint, change only val_records, rerun: a fresh start that says why."""
    old = make_cfg(tiny_env, "lora", steps=4, checkpoint_every=2)
    real = die_after_checkpoint(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(old, tmp_path / "run")
    assert (tmp_path / "run" / CKPT_DIR / CKPT_FILE).is_file()
    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", real)
    new = make_cfg(tiny_env, "lora", steps=4, checkpoint_every=2, val_records=2)
    rec = train(new, tmp_path / "run")
    attempt = rec["run_info"]["attempts"][-1]
    assert "resumed_from_step" not in rec["train_info"] and attempt["resumed_from_step"] is None
    assert "train.val_records" in attempt["fresh_start_reason"]
    assert [a["status"] for a in read_attempts(tmp_path / "run")] == ["interrupted", "ok"]
    assert json.loads((tmp_path / "run" / "record.json").read_text())["run_info"]["config"]["train"]["val_records"] == 2
