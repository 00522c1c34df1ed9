"""The one training loop: every method overfits a tiny set, resume is exact, failures are recorded."""
import json

import pytest
import torch

import baselines
import harness.train as train_mod
from harness.models import load_model, prepare_model
from harness.train import DivergedError, train

torch.set_num_threads(1)
LR = {"full_ft": 3e-3, "lora": 5e-2, "dora": 5e-2, "smt": 5e-2, "vera": 5e-2}


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("env")
    prepare_model({"source": "tiny", "seed": 0}, root / "model")
    records = [{"instruction": f"Is {a} plus {b} even? Answer format: true/false", "input": "",
                "output": f"the correct answer is {str((a + b) % 2 == 0).lower()}", "answer": ""}
               for a, b in [(1, 2), (2, 2), (3, 5), (4, 1), (6, 6), (7, 2), (8, 1), (9, 9)]]
    (root / "train.json").write_text(json.dumps(records))
    return root


def make_cfg(env, name, steps=12, **train):
    method = {"name": name, "lr": LR[name]}
    if name == "smt":
        method.update(block_size=16, warmup_steps=3, warmup_mode="full_ft", scoring="mean_abs")
    return {"run_id": f"tiny/{name}", "model": {"name": "tiny", "path": str(env / "model"), "dtype": "float32",
                                                "device": "cpu"},
            "dataset": {"name": "toy", "path": str(env / "train.json")}, "method": method,
            "budget": None if name == "full_ft" else 0.05,
            "placement": {"name": "qkv", "target_modules": ["q_proj", "k_proj", "v_proj"], "quotas": None},
            "seed": 0,
            "train": {"max_steps": steps, "epochs": None, "micro_batch_size": 4, "grad_accum": 1,
                      "lr_scheduler": "linear", "warmup_steps": 2, "weight_decay": 0.0, "max_grad_norm": 1.0,
                      "cutoff_len": 320, "train_on_inputs": False, "add_eos_token": True,
                      "checkpoint_every": None, "threads": 1, "max_train_records": None, "log_every": 1,
                      **train},
            "deviations": ["tiny test run"]}


def batch_loss(model, tok, env):
    from harness.prompts import tokenize_example
    from harness.train import collate
    recs = json.loads((env / "train.json").read_text())
    batch = collate(tok.pad_token_id)([tokenize_example(tok, r, 320, False, True) for r in recs])
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.parametrize("name", ["full_ft", "lora", "dora", "smt", "vera"])
def test_method_trains_and_delta_reloads(tiny_env, tmp_path, monkeypatch, name):
    cls, trained = baselines.get_method(name), {}
    real_save = cls.save

    def save_and_measure(self, model, out_dir):  # the loss of the model exactly as training left it
        model.eval()
        trained["loss"] = batch_loss(model, load_model(tiny_env / "model", "float32", "cpu")[1], tiny_env)
        return real_save(self, model, out_dir)

    monkeypatch.setattr(cls, "save", save_and_measure)
    rec = train(make_cfg(tiny_env, name), tmp_path)
    info = rec["train_info"]
    assert rec["run_info"]["status"] == "ok"
    assert json.loads((tmp_path / "record.json").read_text())["run_info"]["status"] == "ok"
    assert info["steps"] == 12 and len(info["loss_curve"]) == 12
    assert info["final_loss"] < 0.85 * info["first_loss"], info["loss_curve"]
    assert info["adapter_bytes"] > 0 and info["tokens"] > 0
    assert 0 < rec["run_info"]["budget_reached"] <= 1
    if name == "smt":
        assert (tmp_path / "plan.json").is_file() and info["plan_summary"]["n_blocks"] > 0
    # the saved delta, loaded on a fresh base and merged, carries the learning
    base, tok = load_model(tiny_env / "model", "float32", "cpu")
    base_loss = batch_loss(base, tok, tiny_env)
    method = baselines.get_method(name)(make_cfg(tiny_env, name))
    tuned = method.merge(method.load(base, tmp_path / "delta"))
    assert type(tuned).__name__ == "LlamaForCausalLM"
    reloaded = batch_loss(tuned, tok, tiny_env)
    assert reloaded < 0.9 * base_loss
    # ... and reproduces the trained model (SMT: including what its full-FT warm-up changed)
    assert reloaded == pytest.approx(trained["loss"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", ["lora", "smt"])
def test_resume_matches_uninterrupted(tiny_env, tmp_path, monkeypatch, name):
    cfg = make_cfg(tiny_env, name, steps=10, checkpoint_every=4)
    full = train(cfg, tmp_path / "full")
    real_save = train_mod.save_checkpoint

    def save_then_die(out_dir, model, opt, sched, state):
        path = real_save(out_dir, model, opt, sched, state)
        if state["step"] == 8:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "record.json").read_text())["run_info"]["status"] == "interrupted"
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    resumed = train(cfg, tmp_path / "cut")
    assert resumed["train_info"]["resumed_from_step"] == 8
    assert resumed["train_info"]["loss_curve"] == full["train_info"]["loss_curve"]
    for delta in ("adapter_model.safetensors", "smt_delta.safetensors"):
        if (tmp_path / "full" / "delta" / delta).is_file():
            from safetensors.torch import load_file
            x, y = load_file(tmp_path / "full" / "delta" / delta), load_file(tmp_path / "cut" / "delta" / delta)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_nonfinite_loss_is_diverged(tiny_env, tmp_path):
    model, tok = load_model(tiny_env / "model", "float32", "cpu")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "bad")
    tok.save_pretrained(tmp_path / "bad")
    cfg = make_cfg(tiny_env, "lora")
    cfg["model"]["path"] = str(tmp_path / "bad")
    with pytest.raises(DivergedError, match="non-finite loss"):
        train(cfg, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "record.json").read_text())["run_info"]
    assert info["status"] == "diverged" and "non-finite" in info["error"]


def test_unknown_method_and_missing_data_are_recorded(tiny_env, tmp_path):
    cfg = make_cfg(tiny_env, "lora")
    cfg["method"]["name"] = "nope"
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        train(cfg, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "record.json").read_text())["run_info"]["status"] == "failed"
    cfg = make_cfg(tiny_env, "lora")
    cfg["dataset"]["path"] = str(tmp_path / "none.json")
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        train(cfg, tmp_path / "b")
    rec = json.loads((tmp_path / "b" / "record.json").read_text())
    assert rec["run_info"]["status"] == "failed" and rec["meta_info"]["packages"]["torch"]


@pytest.mark.parametrize("name", ["smt", "lora"])
def test_profile_step_writes_timing(tiny_env, tmp_path, name):
    from harness.profile import profile_step
    out = profile_step(make_cfg(tiny_env, name), 2, tmp_path / "p.json", warmup_iters=1)
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["method"] == name and len(saved["step_seconds"]) == 2
    assert out["step_seconds_mean"] > 0 and out["peak_memory_bytes"] > 0
    if name == "smt":
        assert 0 < saved["budget_reached"] <= 0.05
    else:
        assert abs(saved["budget_reached"] - 0.05) < 0.02
    from harness.report import table1_frame  # the profile JSON is what Table 1 reads
    row = table1_frame([saved]).iloc[0]
    assert row["Time/step (s)"] == f"{saved['step_seconds_mean']:.3f}" and row["Peak memory (MB)"] > 0


def test_smt_warmup_lr_applies_to_the_warmup_only(tiny_env, tmp_path):
    cfg = make_cfg(tiny_env, "smt", steps=6)
    cfg["method"]["warmup_lr"] = 1e-4
    curve = train(cfg, tmp_path)["train_info"]["loss_curve"]
    warm = [c["lr"] for c in curve if c.get("phase") == "warmup"]
    main = [c["lr"] for c in curve if c.get("phase") != "warmup"]
    assert len(warm) == 3 and max(warm) <= 1e-4 and max(main) > 1e-3
