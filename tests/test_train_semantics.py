"""The training loop's promises, each checked against what a run really did (and able to fail).

Every test trains a tiny random LLaMA through the public `harness.train.train(run_cfg, out_dir)`
and reads the record it writes (and, where needed, the saved delta through the method's
load/merge, as evaluation does). The mutants these kill are listed in tools/mutants.yaml.
"""
import json
import shutil
import math

import pytest
import torch

import baselines
from harness.models import load_model, prepare_model
from harness.prompts import tokenize_example
from harness.train import train
from harness.run_config import as_run_config

torch.set_num_threads(1)
CUTOFF = 320


def _record(instruction, output):
    return {"instruction": instruction, "input": "", "output": output, "answer": ""}


# equal-length outputs (same number of answer tokens: byte tokenizer), different prompt lengths
VARIED = [_record("Is " + "x" * k + f" long? n{k}", f"the correct answer is option{1 + k % 2}")
          for k in (1, 5, 9, 13, 17, 21)]
SAME = [_record("Is one plus one two? Answer format: true/false", "the correct answer is true")] * 4
# ten records with clearly different losses on the base model (the order of training shows in the loss curve)
DISTINCT = [_record(f"Record {i}: say {w}", w) for i, w in
            enumerate(["a", "b", "zz", "9", "!!", "ok", "no", "yes", "42", "x y"])]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("bite_env")
    shutil.copytree(tiny_model_dir, root / "model")
    for name, recs in (("varied", VARIED), ("same", SAME), ("distinct", DISTINCT)):
        (root / f"{name}.json").write_text(json.dumps(recs))
    return root


def cfg(env, name="lora", data="varied", steps=4, lr=0.01, method=None, **train):
    m = {"name": name, "lr": lr, **(method or {})}
    if name == "smt":
        m = {"block_size": 16, "warmup_steps": 2, "warmup_mode": "full_ft", "scoring": "mean_abs", **m}
    t = {"max_steps": steps, "epochs": None, "micro_batch_size": 2, "grad_accum": 1, "lr_scheduler": "linear",
         "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": None, "cutoff_len": CUTOFF,
         "train_on_inputs": False, "add_eos_token": True, "checkpoint_every": None,
         "log_every": 1}
    t.update(train)
    return {"run_id": f"bite/{name}", "model": {"name": "tiny", "path": str(env / "model"), "dtype": "float32",
                                                "device": "cpu"},
            "dataset": {"name": data, "path": str(env / f"{data}.json")}, "method": m,
            "budget": None if name == "full_ft" else 0.05,
            "placement": {"name": "qkv", "target_modules": ["q_proj", "k_proj", "v_proj"], "quotas": None},
            "seed": 0, "train": t, "deviations": []}


def trained_state(env, run_cfg, run_dir) -> dict:
    """The trained weights as evaluation sees them: base + the saved delta, merged."""
    base, _ = load_model(env / "model", "float32", "cpu")
    method = baselines.get_method(run_cfg["method"]["name"])(as_run_config(run_cfg))
    model = method.merge(method.load(base, run_dir / "delta"))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def linear(total, warmup):
    return lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))


def assert_schedule(lrs, peak, f, first_index):
    """lrs follow peak * f(step) with the step counted from first_index: either the lr each
    optimizer step used (f(i)) or the one after it (f(i + 1)); both conventions are accepted,
    consistently over the whole curve."""
    during = [peak * f(first_index + i) for i in range(len(lrs))]
    after = [peak * f(first_index + i + 1) for i in range(len(lrs))]
    assert lrs == pytest.approx(during, abs=1e-12) or lrs == pytest.approx(after, abs=1e-12), \
        f"lr curve {lrs} is neither {during} (lr used by each step) nor {after} (lr after it)"


def test_linear_schedule_warms_up_then_decays_to_zero(env, tmp_path):
    rec = train(cfg(env, steps=6, warmup_steps=2), tmp_path)
    curve = rec["train_info"]["loss_curve"]
    assert [c["step"] for c in curve] == [1, 2, 3, 4, 5, 6]
    assert_schedule([c["lr"] for c in curve], 0.01, linear(6, 2), 0)


def test_full_ft_matches_a_hand_written_adamw_loop(env, tmp_path):
    """Identical records: every batch is the same, so the run must equal this plain loop exactly:
    AdamW with weight decay, linear warm-up/decay, clipping to max_grad_norm, zero_grad."""
    steps, lr, wd, clip, warmup = 4, 3e-3, 0.1, 0.5, 1
    run_cfg = cfg(env, "full_ft", data="same", steps=steps, lr=lr, weight_decay=wd, max_grad_norm=clip,
                  warmup_steps=warmup)
    rec = train(run_cfg, tmp_path)
    got = trained_state(env, run_cfg, tmp_path)

    model, tok = load_model(env / "model", "float32", "cpu")
    ex = tokenize_example(tok, SAME[0], CUTOFF, False, True)
    batch = {k: torch.tensor([ex[k]] * 2) for k in ("input_ids", "attention_mask", "labels")}
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    f, norms, losses = linear(steps, warmup), [], []
    model.train()
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * f(s)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, clip)))
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert max(norms) > clip, "the test needs clipping to bind"
    assert [c["loss"] for c in rec["train_info"]["loss_curve"]] == pytest.approx(losses, rel=1e-4)
    want = model.state_dict()
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    moved = max(float((want[k] - v).abs().max()) for k, v in load_model(env / "model", "float32", "cpu")[0]
                .state_dict().items())
    assert moved > 1e-3 and worst < 1e-5, f"trained weights differ from the reference loop by {worst}"


def test_grad_accum_2_equals_a_twice_larger_micro_batch(env, tmp_path):
    a = train(cfg(env, "full_ft", steps=3, lr=1e-3, micro_batch_size=2, grad_accum=1), tmp_path / "a")["train_info"]
    b = train(cfg(env, "full_ft", steps=3, lr=1e-3, micro_batch_size=1, grad_accum=2), tmp_path / "b")["train_info"]
    assert [c["loss"] for c in a["loss_curve"]] == pytest.approx([c["loss"] for c in b["loss_curve"]], rel=1e-4)
    # 3 steps x 2 examples = the 6 records once: the tokens are theirs, padding excluded
    _, tok = load_model(env / "model", "float32", "cpu")
    n_tokens = sum(len(tokenize_example(tok, r, CUTOFF, False, True)["input_ids"]) for r in VARIED)
    assert a["tokens"] == b["tokens"] == n_tokens
    assert a["steps"] == b["steps"] == 3


@pytest.mark.parametrize("epochs,micro,accum,steps", [(2, 4, 1, 4), (2, 2, 2, 3), (1.25, 4, 1, 3), (0.5, 1, 1, 3)])
def test_epochs_set_the_number_of_steps(env, tmp_path, epochs, micro, accum, steps):
    # 6 records: ceil(6 / micro) micro-batches per epoch, grad_accum of them per step, rounded up
    assert steps == math.ceil(epochs * math.ceil(6 / micro) / accum)
    info = train(cfg(env, max_steps=None, epochs=epochs, micro_batch_size=micro, grad_accum=accum),
                 tmp_path)["train_info"]
    assert info["steps"] == steps and len(info["loss_curve"]) == steps


def test_clipping_bounds_the_update(env, tmp_path):
    """One AdamW step moves a weight by lr * g / (|g| + eps): about lr unclipped, almost nothing
    when the gradient is clipped to a norm far below eps."""
    base = {k: v.clone() for k, v in load_model(env / "model", "float32", "cpu")[0].state_dict().items()}
    lr = 1e-2

    def moved(**train_kw):
        run_cfg = cfg(env, "full_ft", data="same", steps=1, lr=lr, **train_kw)
        out = tmp_path / str(train_kw.get("max_grad_norm"))
        train(run_cfg, out)
        state = trained_state(env, run_cfg, out)
        return max(float((state[k] - base[k]).abs().max()) for k in base)

    assert moved(max_grad_norm=None) > 0.5 * lr
    assert moved(max_grad_norm=1e-12) < 1e-3 * lr


def _example_losses(env):
    from harness.train_data import collate
    model, tok = load_model(env / "model", "float32", "cpu")
    out = []
    with torch.no_grad():
        for r in DISTINCT:
            batch = collate(tok.pad_token_id)([tokenize_example(tok, r, CUTOFF, False, True)])
            out.append(model(**batch).loss.item())
    return out


def _seen(curve, losses):
    """Which record each (single-example, lr ~ 0) step trained on, from its loss."""
    seen = []
    for c in curve:
        dist = [abs(c["loss"] - x) for x in losses]
        best = min(range(len(losses)), key=dist.__getitem__)
        assert dist[best] < 1e-4, (c, losses)
        seen.append(best)
    return seen


def test_each_epoch_sees_every_record_once_in_a_seeded_order(env, tmp_path):
    losses = _example_losses(env)
    assert min(abs(a - b) for i, a in enumerate(losses) for b in losses[i + 1:]) > 1e-3
    n = len(DISTINCT)

    def order(seed, name):
        run_cfg = cfg(env, "full_ft", data="distinct", steps=2 * n, lr=1e-12, micro_batch_size=1)
        run_cfg["seed"] = seed
        return _seen(train(run_cfg, tmp_path / name)["train_info"]["loss_curve"], losses)

    s0 = order(0, "s0")
    first, second = s0[:n], s0[n:]
    assert sorted(first) == sorted(second) == list(range(n)), s0  # without replacement, whole epochs
    assert first != list(range(n)), "records must be shuffled"
    assert first != second, "each epoch needs its own permutation"
    assert order(0, "again") == s0
    assert order(1, "s1") != s0


def test_grad_only_warmup_leaves_every_weight_bit_identical(env, tmp_path, monkeypatch):
    """grad_only: the warm-up only scores; the trained model differs from the base in the
    selected blocks and nowhere else (full_ft warm-up, by contrast, moves other weights)."""
    import smt

    cls, seen = baselines.get_method("smt"), {}
    real_save = cls.save

    def capture(self, model, out_dir):
        seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["blocks"] = {n: (m.block_size, m.block_indices) for n, m in smt.sparse_modules(model).items()}
        return real_save(self, model, out_dir)

    monkeypatch.setattr(cls, "save", capture)
    base = load_model(env / "model", "float32", "cpu")[0].state_dict()

    def changed_outside_blocks(mode, out):
        train(cfg(env, "smt", steps=4, lr=0.05, method={"warmup_mode": mode, "warmup_steps": 2}), out)
        state, blocks = seen["state"], seen["blocks"]
        assert blocks, "SMT selected no block"
        inside = 0
        diff_outside = 0.0
        for name, value in base.items():
            got = state[name]
            mask = torch.ones_like(value, dtype=torch.bool)
            mod = name[:-len(".weight")] if name.endswith(".weight") else None
            if mod in blocks:
                l, idx = blocks[mod]
                for r, c in idx:
                    mask[r * l:(r + 1) * l, c * l:(c + 1) * l] = False
                inside += int((got[~mask] != value[~mask]).sum())
            diff_outside = max(diff_outside, float((got[mask] - value[mask]).abs().max()) if mask.any() else 0.0)
        assert inside > 0, "the selected blocks must train"
        return diff_outside

    assert changed_outside_blocks("grad_only", tmp_path / "g") == 0.0
    assert changed_outside_blocks("full_ft", tmp_path / "f") > 0.0


def test_record_counts_what_ran(env, tmp_path):
    rec = train(cfg(env, "lora", steps=3, micro_batch_size=2, log_every=2), tmp_path)
    info = rec["train_info"]
    # log_every 2 over 3 steps: step 2 and the last step
    assert [c["step"] for c in info["loss_curve"]] == [2, 3]
    delta = tmp_path / "delta"
    on_disk = {str(p.relative_to(delta)): p.stat().st_size for p in delta.rglob("*") if p.is_file()}
    assert sum(info["adapter_files"].values()) == info["adapter_bytes"] == sum(on_disk.values())
    assert {pathlib_name(k) for k in info["adapter_files"]} == {pathlib_name(k) for k in on_disk}
    assert info["trainable_params"] / info["total_params"] == pytest.approx(rec["run_info"]["budget_reached"])
    assert info["n_examples"] == len(VARIED)


def pathlib_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def test_record_fields_match_what_ran(env, tmp_path):
    import hashlib
    import subprocess

    from harness import records

    run_cfg = cfg(env, "lora", steps=2)
    run_cfg["deviations"] = ["bite: a deliberate deviation"]
    rec = train(run_cfg, tmp_path)
    assert "bite: a deliberate deviation" in rec["run_info"]["deviations"]
    assert rec["run_info"]["status"] == "ok" and rec["run_info"]["config"]["method"]["lr"] == 0.01
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    meta = rec["meta_info"]
    assert meta["data_checksums"]["train_sha256"] == sha(env / "varied.json")
    assert meta["model_checksums"]["files_sha256"]["model.safetensors"] == sha(env / "model" / "model.safetensors")
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=records.REPO_ROOT, capture_output=True, text=True)
    assert meta["git_sha"] == (git.stdout.strip() if git.returncode == 0 else None)
    on_disk = json.loads((tmp_path / "record.json").read_text())
    assert on_disk["train_info"]["loss_curve"] == rec["train_info"]["loss_curve"]
