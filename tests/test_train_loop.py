"""The one training loop: every method overfits a tiny set, resume is exact, failures are recorded."""
import json
import math

import pytest
import torch

import baselines
import harness.checkpoint as checkpoint_mod
import harness.step as step_mod
import harness.train as train_mod
import harness.train_data as train_data
from harness.models import load_model
from harness.step import DivergedError
from harness.train import train
from conftest import make_tiny_env, tiny_run_cfg
from harness.run_config import as_run_config

torch.set_num_threads(1)
LR = {"full_ft": 3e-3, "lora": 5e-2, "dora": 5e-2, "smt": 5e-2, "vera": 5e-2}




def die_after_checkpoint(monkeypatch, at_step):
    """Interrupt the run (KeyboardInterrupt, as SIGINT/SIGTERM do) once, right after its checkpoint of
    at_step is complete (harness.checkpoint's last fault point, "saved"); later runs go through.
    Returns the real save_checkpoint (for callers that put it back)."""
    real_fault, fired = checkpoint_mod.fault_point, []

    def fault(point, step):
        real_fault(point, step)
        if point == "saved" and step == at_step and not fired:
            fired.append(step)
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_mod, "fault_point", fault)
    return checkpoint_mod.save_checkpoint


def make_cfg(env, name, steps=12, **train):
    return tiny_run_cfg(env, name, LR[name], smt_warmup=3, deviations=["tiny test run"], max_steps=steps, **train)


def batch_loss(model, tok, env):
    from harness.prompts import tokenize_example
    from harness.train_data import collate
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
    method = baselines.get_method(name)(as_run_config(make_cfg(tiny_env, name)))
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
    die_after_checkpoint(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "record.json").read_text())["run_info"]["status"] == "interrupted"
    resumed = train(cfg, tmp_path / "cut")
    assert resumed["train_info"]["resumed_from_step"] == 8
    attempts = resumed["run_info"]["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted", "ok"]
    assert attempts[-1]["resumed_from_step"] == 8 and attempts[-1]["fresh_start_reason"] is None
    assert resumed["run_info"]["fingerprint"] == full["run_info"]["fingerprint"]
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
    from harness.run_config import RunConfigError

    cfg = make_cfg(tiny_env, "lora")
    cfg["method"]["name"] = "nope"  # bad input: refused before any work, naming the key; nothing ran, no record
    with pytest.raises(RunConfigError, match=r"method.name: no method 'nope'"):
        train(cfg, tmp_path / "a")
    assert not (tmp_path / "a" / "record.json").exists()
    cfg = make_cfg(tiny_env, "lora")
    cfg["dataset"]["path"] = str(tmp_path / "none.json")
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        train(cfg, tmp_path / "b")
    rec = json.loads((tmp_path / "b" / "record.json").read_text())
    assert rec["run_info"]["status"] == "failed" and rec["meta_info"]["packages"]["torch"]


def test_smt_warmup_lr_applies_to_the_warmup_only(tiny_env, tmp_path):
    cfg = make_cfg(tiny_env, "smt", steps=6)
    cfg["method"]["warmup_lr"] = 1e-4
    curve = train(cfg, tmp_path)["train_info"]["loss_curve"]
    warm = [c["lr"] for c in curve if c.get("phase") == "warmup"]
    main = [c["lr"] for c in curve if c.get("phase") != "warmup"]
    assert len(warm) == 3 and max(warm) <= 1e-4 and max(main) > 1e-3


# ---- the schedule in the record is the config's ----------------------------------------------
def expected_lr(peak, index, total, warmup):
    """lr of the optimizer step with 0-based index `index`: linear warm-up from 0, linear decay to 0."""
    if index < warmup:
        return peak * index / warmup
    return peak * (total - index) / (total - warmup)


def test_lr_in_the_record_follows_the_schedule(tiny_env, tmp_path):
    cfg = make_cfg(tiny_env, "lora", steps=8, warmup_steps=3)
    curve = train(cfg, tmp_path)["train_info"]["loss_curve"]
    assert [c["step"] for c in curve] == list(range(1, 9))
    got = [c["lr"] for c in curve]
    want = [expected_lr(LR["lora"], s - 1, 8, 3) for s in range(1, 9)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert got[0] == 0.0 and max(got) == pytest.approx(LR["lora"]) and got[-1] > 0


def test_smt_main_phase_continues_the_schedule_after_its_warmup(tiny_env, tmp_path):
    cfg = make_cfg(tiny_env, "smt", steps=9, warmup_steps=2)
    cfg["method"]["warmup_lr"] = 1e-3
    curve = train(cfg, tmp_path)["train_info"]["loss_curve"]
    warm = [c for c in curve if c.get("phase") == "warmup"]
    main = [c for c in curve if c.get("phase") != "warmup"]
    assert [c["step"] for c in warm] == [1, 2, 3] and [c["step"] for c in main] == list(range(4, 10))
    assert [c["lr"] for c in warm] == pytest.approx([expected_lr(1e-3, s - 1, 9, 2) for s in (1, 2, 3)])
    assert [c["lr"] for c in main] == pytest.approx([expected_lr(LR["smt"], s - 1, 9, 2) for s in range(4, 10)])


# ---- clean data and validation ---------------------------------------------------------------
def test_examples_without_an_answer_are_dropped_and_counted(tiny_env, tmp_path):
    recs = json.loads((tiny_env / "train.json").read_text())
    long = [{"instruction": "why? " * 80, "input": "", "output": "the correct answer is true", "answer": ""}] * 3
    (tmp_path / "mixed.json").write_text(json.dumps(recs + long))
    cfg = make_cfg(tiny_env, "lora", steps=3, cutoff_len=320)
    cfg["dataset"]["path"] = str(tmp_path / "mixed.json")
    info = train(cfg, tmp_path / "run")["train_info"]
    assert info["n_records"] == 11 and info["n_dropped_no_answer"] == 3 and info["n_examples"] == 8
    (tmp_path / "none.json").write_text(json.dumps(long))
    cfg["dataset"]["path"] = str(tmp_path / "none.json")
    with pytest.raises(ValueError, match=r"none\.json.*cutoff_len=320.*raise train\.cutoff_len"):
        train(cfg, tmp_path / "empty")
    rec = json.loads((tmp_path / "empty" / "record.json").read_text())
    assert rec["run_info"]["status"] == "failed" and "cutoff_len=320" in rec["run_info"]["error"]


def heldout(env, n):
    """The records the loop must hold out: Random(0) over the cleaned set (all records keep an answer here)."""
    import random
    recs = json.loads((env / "train.json").read_text())
    return [recs[i] for i in sorted(random.Random(0).sample(range(len(recs)), n))]


def records_loss(model, tok, recs):
    """Token-weighted mean loss of HF's own forward over recs, one record at a time."""
    from harness.prompts import tokenize_example
    from harness.train_data import collate
    total = count = 0
    with torch.no_grad():
        for r in recs:
            b = collate(tok.pad_token_id)([tokenize_example(tok, r, 320, False, True)])
            n = int((b["labels"][:, 1:] != -100).sum())
            total, count = total + model(**b).loss.item() * n, count + n
    return total / count


@pytest.mark.parametrize("name", ["lora", "smt"])
def test_validation_loss_on_held_out_records(tiny_env, tmp_path, monkeypatch, name):
    seen = []
    real_stream = train_mod.batch_stream

    def spy(examples, *a, **k):
        seen.extend(tuple(e["input_ids"]) for e in examples)
        return real_stream(examples, *a, **k)

    monkeypatch.setattr(train_mod, "batch_stream", spy)
    cfg = make_cfg(tiny_env, name, steps=7, val_records=2, val_every=3)
    cfg["seed"] = 5  # the held-out records do not depend on the run seed
    info = train(cfg, tmp_path)["train_info"]
    assert info["n_val_examples"] == 2 and info["n_examples"] == 6
    val = info["val_curve"]
    warm = 3 if name == "smt" else 0
    assert [v["step"] for v in val] == ([0] if warm else []) + [warm] + [s for s in (3, 6) if s > warm] + [7]
    assert info["final_val_loss"] == val[-1]["val_loss"] and all(math.isfinite(v["val_loss"]) for v in val)
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    # computed on exactly the held-out records, with the untrained model at step 0 ...
    base, tok = load_model(tiny_env / "model", "float32", "cpu")
    assert val[0]["val_loss"] == pytest.approx(records_loss(base, tok, heldout(tiny_env, 2)), rel=1e-4)
    # ... which training never saw
    from harness.prompts import tokenize_example
    held_ids = {tuple(tokenize_example(tok, r, 320, False, True)["input_ids"]) for r in heldout(tiny_env, 2)}
    assert seen and not held_ids & set(seen) and len(set(seen)) == 6


def test_val_every_null_validates_only_before_the_first_and_after_the_last_step(tiny_env, tmp_path):
    """The schema says val_every null: only before the first and after the last step, whatever
    checkpoint_every is (a fallback to checkpoint_every validated every 2 steps here)."""
    cfg = make_cfg(tiny_env, "lora", steps=6, val_records=2, val_every=None, checkpoint_every=2)
    info = train(cfg, tmp_path / "null")["train_info"]
    assert [v["step"] for v in info["val_curve"]] == [0, 6] and info["val_every"] is None
    cfg = make_cfg(tiny_env, "lora", steps=6, val_records=2, val_every=4, checkpoint_every=2)
    info = train(cfg, tmp_path / "four")["train_info"]
    assert [v["step"] for v in info["val_curve"]] == [0, 4, 6] and info["val_every"] == 4


def test_zero_shot_run_records_the_base_model_and_evaluates_it_unchanged(tiny_env, tmp_path):
    """The zero-shot reference goes through the same train job: a record (ok, nothing trained)
    with the base model's validation loss at step 0, and a delta that evaluation loads as the
    base model itself."""
    from harness.evaluate import trained_model

    cfg = tiny_run_cfg(tiny_env, "zero_shot", 0.0, val_records=2, max_steps=7)
    cfg.update(budget=0.0, placement={"name": "none", "target_modules": [], "quotas": None})
    rec = train(cfg, tmp_path)
    info = rec["train_info"]
    assert rec["run_info"]["status"] == "ok" and rec["run_info"]["budget_reached"] == 0.0
    assert info["steps"] == 0 and info["loss_curve"] == [] and info["trainable_params"] == 0
    base, tok = load_model(tiny_env / "model", "float32", "cpu")
    assert info["val_curve"] == [{"step": 0, "val_loss": info["final_val_loss"]}]
    assert info["final_val_loss"] == pytest.approx(records_loss(base, tok, heldout(tiny_env, 2)), rel=1e-4)
    model, _ = trained_model(cfg, tmp_path / "delta")
    want = dict(base.named_parameters())
    assert all(torch.equal(p, want[k]) for k, p in model.named_parameters())
    # a zero-shot record over another method's delta is refused, not evaluated as the base model
    lora_dir = tmp_path / "lora"
    train(make_cfg(tiny_env, "lora", steps=2), lora_dir)
    with pytest.raises(FileNotFoundError, match="not written by a zero-shot run"):
        trained_model(cfg, lora_dir / "delta")


def test_validation_off_by_default(tiny_env, tmp_path):
    info = train(make_cfg(tiny_env, "lora", steps=2), tmp_path)["train_info"]
    assert info["val_curve"] == [] and info["final_val_loss"] is None and info["n_val_examples"] == 0


# ---- the loss: LM head on answer positions only, same number as transformers' ---------------
def _method_model(env, name):
    """The tiny model with method `name` applied and its trainable parameters perturbed."""
    model, tok = load_model(env / "model", "float32", "cpu")
    cfg = make_cfg(env, name)
    method = baselines.get_method(name)(as_run_config(cfg))
    batch = _batch(tok)
    if method.warmup_steps:  # SMT: select blocks from one gradient
        for p in model.parameters():
            p.requires_grad_(True)
        method.begin_warmup(model)
        model(**batch).loss.backward()
        method.after_warmup_backward(model)
        model.zero_grad(set_to_none=True)
    method.apply(model)
    model = getattr(method, "peft_model", None) or model
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model, batch


def _batch(tok):
    from harness.prompts import tokenize_example
    from harness.train_data import collate
    recs = [{"instruction": f"Is {a} odd?{' really' * a} Answer format: true/false", "input": "",
             "output": f"the correct answer is {str(a % 2 == 1).lower()}", "answer": ""} for a in (1, 4, 7)]
    return collate(tok.pad_token_id)([tokenize_example(tok, r, 320, False, True) for r in recs])


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("name", ["full_ft", "lora", "dora", "vera", "smt"])
def test_answer_only_loss_equals_transformers_loss(tiny_env, name):
    from harness.loss import causal_lm_loss, loss_route
    model, batch = _method_model(tiny_env, name)
    model.train()  # dropout off in the test config? force determinism: eval for the comparison
    model.eval()
    ref = model(**batch)
    ref.loss.backward()
    ref_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    assert loss_route(model) == "keep"
    n_answer = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < n_answer < batch["labels"].numel() / 3  # most positions carry no loss
    for route in ("keep", "decoder", "full"):
        loss = causal_lm_loss(model, batch, route=route)
        assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-6, abs=1e-6), route
        loss.backward()
        grads = _grads(model)
        model.zero_grad(set_to_none=True)
        assert grads.keys() == ref_grads.keys() and grads
        for k in grads:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6, msg=f"{route} {k}")
    total = causal_lm_loss(model, batch, reduction="sum")
    assert total.item() == pytest.approx(ref.loss.item() * n_answer, rel=1e-5)


def test_answer_only_loss_through_accelerate_and_ddp(tiny_env, tmp_path):
    import torch.distributed as dist
    from accelerate import Accelerator

    from harness.loss import causal_lm_loss, loss_route
    model, batch = _method_model(tiny_env, "lora")
    model.eval()
    ref = model(**batch).loss.item()
    prepared = Accelerator(cpu=True).prepare(model)
    assert causal_lm_loss(prepared, batch).item() == pytest.approx(ref, rel=1e-6)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        assert loss_route(ddp) == "keep"
        loss = causal_lm_loss(ddp, batch)
        assert loss.item() == pytest.approx(ref, rel=1e-6)
        loss.backward()  # through DDP's reducer
        assert any(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()


def _mc(label, fmt="solution1/solution2"):
    return {"instruction": f"Pick one. Answer format: {fmt}", "input": "",
            "output": f"the correct answer is {label}"}


def test_prior_val_loss_is_the_label_frequencies_cross_entropy_per_answer_token():
    train_records = [_mc("solution1")] * 3 + [_mc("solution2")] + [_mc("true", "true/false")] * 2
    val_records = [_mc("solution1"), _mc("solution2"), _mc("false", "true/false")]
    val_examples = [{"labels": [-100, -100, 5, 6, 7]}, {"labels": [-100, 5, 6, 7, 8]}, {"labels": [9, 9]}]
    got = train_data.prior_val_loss(train_records, val_records, val_examples)
    # add-one smoothed frequencies per answer format: solution1 4/6, solution2 2/6, false 1/4
    want = -(math.log(4 / 6) + math.log(2 / 6) + math.log(1 / 4)) / (3 + 4 + 2)
    assert got == pytest.approx(want, abs=1e-6)
    # the same label under another answer format has its own prior
    other = train_data.prior_val_loss(train_records + [_mc("solution2", "solution1/solution2/solution3")] * 9,
                                     val_records, val_examples)
    assert other == pytest.approx(want, abs=1e-6)
    # arithmetic answers (a rationale) have no label prior; nothing held out: none either
    assert train_data.prior_val_loss(train_records, [{"instruction": "2+2?", "output": "4"}], val_examples[:1]) is None
    assert train_data.prior_val_loss(train_records, [], []) is None


def test_prior_val_loss_is_recorded(tiny_env, tmp_path):
    info = train(make_cfg(tiny_env, "lora", steps=2, val_records=2), tmp_path)["train_info"]
    assert info["val_prior_loss"] > 0  # parity records answer "the correct answer is true/false"


# The loss and validation curves of two tiny runs, pinned exactly (recorded before the loop was
# restructured, issue 30 item 4; torch 2.x on CPU, one thread). A change of what a step computes, of
# the data order or of the order of random draws (LoRA's init, dropout, the batch order) moves them:
# then the change needs TRAIN_CODE_VERSION bumped, and these values re-pinned, deliberately.
PINNED = {
    "smt": ([6.720246, 6.89036, 3.559816, 2.398409, 1.957567, 1.656974, 1.421301, 1.256717, 1.082318],
            [(0, 6.770325), (3, 2.397421), (6, 1.424177), (9, 1.073243)]),
    "lora": ([6.720246, 6.89036, 5.549147, 4.996997, 4.259736, 3.786588, 3.465243, 3.200516, 2.86843],
             [(0, 6.770325), (3, 5.03527), (6, 3.460752), (9, 2.684525)]),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_a_tiny_runs_curves_are_pinned_exactly(tiny_env, tmp_path, name):
    cfg = tiny_run_cfg(tiny_env, name, LR[name], smt_warmup=3, max_steps=9, val_records=2, val_every=3,
                       checkpoint_every=3)
    info = train(cfg, tmp_path)["train_info"]
    losses, val = PINNED[name]
    assert [p["loss"] for p in info["loss_curve"]] == losses
    assert [(v["step"], v["val_loss"]) for v in info["val_curve"]] == val
