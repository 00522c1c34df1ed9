"""SMT in a transformers Trainer (smt.integrations.SMTCallback) against the harness's own SMT run.

examples/trainer_smt.py trains the tiny random LLaMA (tests/conftest.py) with Trainer + the callback on
the harness's batches; harness.train.train trains the same run config. Checked: the same plan (identical
blocks), the same loss and learning rate at every step within LOSS_TOL, for a full-FT warm-up, a
gradient-only warm-up, gradient accumulation 2, and 2 processes (torchrun, gloo) against 1; a checkpoint
saved mid-training (on_save) restores via load_smt to the outputs the model had then.

LOSS_TOL = 1e-4 (absolute, per logged step). Measured: <= 2.3e-6 on this CPU. What differs between the
two loops, all at float32 rounding level: the harness logs round(loss, 6) (+-5e-7); the harness computes
the loss with the LM head on the answer positions only (harness.loss, logits_to_keep) and the Trainer
with the full head (the same numbers, another summation order); the Trainer sums loss / grad_accum per
micro-batch for its log. A real difference in the plan, the data order, the schedule or the optimizer
moves the loss by far more: the plants in the report (one warm-up step too few, no optimizer rebuild,
no block-gradient sync under DDP, grad_only updating the weights) fail with diffs of 1e-2 and more.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
LOSS_TOL = 1e-4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from conftest import make_tiny_env
    return make_tiny_env(tmp_path_factory.mktemp("trainer_smt"))


def _cfg(env, **train):
    """tiny_run_cfg's SMT run with a 2 % budget (8 of the 64 Q/K/V blocks) and 3 warm-up steps: a
    selection that depends on the warm-up (measured: 2 warm-up steps instead of 3 choose other blocks;
    at tiny_run_cfg's 5 % they choose the same, every K and V block of layer 0)."""
    from conftest import tiny_run_cfg
    mode = train.pop("warmup_mode", "full_ft")
    cfg = tiny_run_cfg(env, "smt", 5e-2, smt_warmup=3, method={"warmup_mode": mode}, **train)
    cfg["budget"] = 0.02
    return cfg


@pytest.fixture()
def sums(monkeypatch):
    """The summed warm-up gradients every GradientScorer.select() sees (harness and Trainer alike)."""
    import smt.scoring
    real, seen = smt.scoring.GradientScorer.select, []

    def select(self):
        plan = real(self)           # all-reduces first under several processes
        seen.append({k: v.clone() for k, v in self._acc.items()})
        return plan

    monkeypatch.setattr(smt.scoring.GradientScorer, "select", select)
    return seen


def _harness(cfg, out):
    import smt
    from harness.train import train
    torch.set_num_threads(1)
    rec = train(cfg, out)
    plan = smt.SelectionPlan.from_json(pathlib.Path(out) / "plan.json")
    return rec["train_info"]["loss_curve"], {k: v for k, v in plan.blocks.items() if v}


def _assert_same(trainer_res, harness_curve, harness_plan, what, grad_only=False):
    a, b = trainer_res["loss_curve"], harness_curve
    as_lists = lambda plan: {k: [list(blk) for blk in v] for k, v in plan.items()}  # noqa: E731 (JSON: lists)
    assert as_lists(trainer_res["plan"]) == as_lists(harness_plan), f"{what}: Trainer + SMTCallback selected other blocks than the harness"
    assert [p["step"] for p in a] == [p["step"] for p in b], f"{what}: logged steps differ"
    assert [p.get("phase") for p in a] == [p.get("phase") for p in b], f"{what}: warm-up phase differs"
    for x, y in zip(a, b):
        if grad_only and x.get("phase") == "warmup":
            continue      # no update: the harness logs lr 0, the Trainer its scheduler's (unused) value
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-9, abs=1e-12), f"{what}: lr at step {x['step']}: {x} vs {y}"
    diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
    print(what, json.dumps({"max_loss_diff": diff, "final_trainer": a[-1]["loss"], "final_harness": b[-1]["loss"]}))
    assert diff <= LOSS_TOL, f"{what}: loss curves differ by {diff:.2e} > {LOSS_TOL}:\n{a}\n{b}"
    return diff


@pytest.mark.parametrize("mode,accum", [("full_ft", 1), ("grad_only", 1), ("full_ft", 2), ("grad_only", 2)])
def test_trainer_matches_harness(env, tmp_path, sums, mode, accum):
    from trainer_smt import train_with_trainer
    torch.set_num_threads(1)
    micro = 2 if accum > 1 else 4       # accum 2: two micro-batches of 2 (their answer-token counts differ)
    cfg = _cfg(env, warmup_mode=mode, grad_accum=accum, micro_batch_size=micro)
    res = train_with_trainer(cfg, tmp_path / "trainer")
    assert res["callback"].warmup_accumulated == cfg["method"]["warmup_steps"]
    curve, plan = _harness(cfg, tmp_path / "harness")
    assert len(sums) == 2
    for k, ref in sums[1].items():   # the same warm-up gradient sums (float32 summation order aside)
        torch.testing.assert_close(sums[0][k], ref, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, k=k: f"warm-up gradient sum of {k}: Trainer != harness: {m}")
    _assert_same(res, curve, plan, f"{mode} grad_accum {accum}", grad_only=mode == "grad_only")


def test_grad_only_warmup_leaves_weights_and_full_ft_changes_them(env, tmp_path):
    """grad_only: after the warm-up every weight outside the blocks is the base's; full_ft: not."""
    from harness.models import load_model
    from trainer_smt import train_with_trainer
    torch.set_num_threads(1)
    base, _ = load_model(env / "model", "float32", "cpu")
    base_sd = base.state_dict()
    for mode, same in (("grad_only", True), ("full_ft", False)):
        res = train_with_trainer(_cfg(env, warmup_mode=mode), tmp_path / mode)
        sd = res["trainer"].model.state_dict()
        kept = [k for k in base_sd if "_proj" not in k]   # untouched by the blocks (norms, embeddings, head)
        assert all(torch.equal(sd[k], base_sd[k]) for k in kept) is same, mode


def test_mid_training_checkpoint_restores_via_load_smt(env, tmp_path):
    """checkpoint-5/smt (saved by on_save at step 5 of 10) reproduces the model's outputs at step 5."""
    import smt
    from harness.models import load_model
    from harness.prompts import tokenize_example
    from harness.train_data import collate
    from smt.integrations import load_smt_checkpoint
    from transformers import TrainerCallback
    import trainer_smt

    recs = json.loads((env / "train.json").read_text())[:3]
    _, tok = load_model(env / "model", "float32", "cpu")
    batch = collate(tok.pad_token_id)([tokenize_example(tok, r, 320, False, True) for r in recs])

    def logits(model):
        was = model.training
        model.eval()
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        model.train(was)
        return out

    seen = {}

    class Probe(TrainerCallback):       # added after SMTCallback: runs after it in on_save
        def on_save(self, args, state, control, model=None, **kw):
            seen[state.global_step] = logits(model)

    for mode in ("full_ft", "grad_only"):
        seen.clear()
        out = tmp_path / mode
        trainer_smt.train_with_trainer(_cfg(env, warmup_mode=mode), out, save_steps=5, callbacks=[Probe()])
        assert sorted(seen) == [5, 10]
        moved = (seen[5] - seen[10]).abs().max().item()
        assert moved > 1e-3, "the logits at step 5 and 10 are the same: nothing trained in between"
        ckpt = out / "checkpoint-5" / "smt"
        assert (ckpt / "smt_delta.safetensors").is_file()
        assert (ckpt / "warmup_weights.pt").is_file() is (mode == "full_ft")
        restored = load_smt_checkpoint(load_model(env / "model", "float32", "cpu")[0], ckpt)
        torch.testing.assert_close(logits(restored), seen[5], rtol=0, atol=1e-6)
        merged = load_smt_checkpoint(load_model(env / "model", "float32", "cpu")[0], ckpt, merge=True)
        torch.testing.assert_close(logits(merged), seen[5], rtol=0, atol=1e-6)
        if mode == "full_ft":     # the delta alone sits on the post-warm-up weights, not on the base
            with pytest.raises(ValueError, match="trained on another base model"):
                smt.load_smt(load_model(env / "model", "float32", "cpu")[0], ckpt)
        else:                     # grad_only: the base is the original model; smt.load_smt alone restores
            plain = smt.load_smt(load_model(env / "model", "float32", "cpu")[0], ckpt)
            torch.testing.assert_close(logits(plain), seen[5], rtol=0, atol=1e-6)
        print(mode, "checkpoint-5 restored; logits at step 5 and 10 differ by", moved)


def test_readme_usage_with_trainer_defaults(env, tmp_path):
    """The README's lines in a Trainer left at its defaults (random sampler, its default optimizer,
    token-weighted loss, checkpoints): the warm-up trains every weight, then only the blocks move,
    and every checkpoint holds a delta that restores the model saved beside it."""
    import smt
    from harness.models import load_model
    from harness.train_data import collate, load_data
    from smt.integrations import SMTCallback, load_smt_checkpoint
    from transformers import Trainer, TrainingArguments
    from conftest import tiny_run_cfg
    torch.set_num_threads(1)
    model, tok = load_model(env / "model", "float32", "cpu")
    from harness.run_config import RunConfig
    data = load_data(RunConfig.from_json(tiny_run_cfg(env, "smt", 5e-2)), tok).train
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, learning_rate=1e-2, use_cpu=True, report_to="none",
                             save_steps=3, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate(tok.pad_token_id))
    cb = SMTCallback(smt.SMTConfig(block_size=16, budget=0.02, warmup_steps=2), lr=5e-2).attach(trainer)
    base = {k: v.clone() for k, v in load_model(env / "model", "float32", "cpu")[0].state_dict().items()}
    trainer.train()
    assert cb.plan is not None and sum(len(v) for v in cb.plan.blocks.values()) == 8
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    blocks = {id(p) for n, p in trainer.model.named_parameters() if n.endswith(".blocks")}
    assert in_opt == blocks and all(p.requires_grad == (id(p) in blocks) for p in trainer.model.parameters())
    warm = torch.load(tmp_path / "checkpoint-3" / "smt" / "warmup_weights.pt", weights_only=True)
    sd = trainer.model.state_dict()
    norm = "model.norm.weight"            # not a target: moved in the warm-up, frozen after it
    assert not torch.equal(warm[norm], base[norm]) and torch.equal(sd[norm], warm[norm])
    for step in (3, 6):
        restored = load_smt_checkpoint(load_model(env / "model", "float32", "cpu")[0],
                                       tmp_path / f"checkpoint-{step}" / "smt", merge=True)
        assert restored is not None
    final = load_smt_checkpoint(load_model(env / "model", "float32", "cpu")[0], tmp_path / "checkpoint-6" / "smt",
                                merge=True).state_dict()
    for k, v in trainer.model.state_dict().items():
        if not k.endswith(".blocks"):
            torch.testing.assert_close(final[k], v, rtol=0, atol=0, msg=k)


def test_example_script_runs_and_compares(tmp_path, capsys):
    """`python examples/trainer_smt.py --out DIR --compare` (its main) reports the same plan."""
    import trainer_smt
    torch.set_num_threads(1)
    trainer_smt.main(["--out", str(tmp_path), "--compare"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["same_plan"] is True and last["max_loss_diff"] <= LOSS_TOL, last
    assert (tmp_path / "trainer" / "checkpoint-5" / "smt" / "smt_delta.safetensors").is_file()


def test_callback_errors_are_clear(env, tmp_path):
    import smt
    from harness.models import load_model
    from harness.train_data import collate
    from smt.integrations import SMTCallback
    from transformers import Trainer, TrainingArguments
    model, tok = load_model(env / "model", "float32", "cpu")
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True)
    from harness.train_data import load_data
    from conftest import tiny_run_cfg
    from harness.run_config import RunConfig
    data = load_data(RunConfig.from_json(tiny_run_cfg(env, "smt", 5e-2)), tok).train
    cfg = smt.SMTConfig(block_size=16, budget=0.05, warmup_steps=2)
    tr = Trainer(model=model, args=args, train_dataset=data, data_collator=collate(tok.pad_token_id),
                 callbacks=[SMTCallback(cfg)])
    with pytest.raises(RuntimeError, match=r"attach\(trainer\)"):
        tr.train()
    tr = Trainer(model=load_model(env / "model", "float32", "cpu")[0], args=args, train_dataset=data,
                 data_collator=collate(tok.pad_token_id))
    SMTCallback(smt.SMTConfig(block_size=16, budget=0.05, warmup_steps=3)).attach(tr)
    with pytest.raises(ValueError, match="must be shorter than the run"):
        tr.train()
    with pytest.raises(TypeError, match="SMTConfig"):
        SMTCallback({"block_size": 16})


def test_get_smt_model_and_the_peft_registry(env):
    """get_smt_model: plan or gradient-only warm-up; peft refuses a name outside PeftType (README)."""
    import smt
    from harness.models import load_model
    from harness.prompts import tokenize_example
    from harness.train_data import collate
    from smt.integrations import get_smt_model
    model, tok = load_model(env / "model", "float32", "cpu")
    recs = json.loads((env / "train.json").read_text())
    batches = [collate(tok.pad_token_id)([tokenize_example(tok, r, 320, False, True) for r in recs[i:i + 4]])
               for i in (0, 4)]
    cfg = smt.SMTConfig(block_size=16, budget=0.05, warmup_steps=2, warmup_mode="grad_only")
    ref_model, _ = load_model(env / "model", "float32", "cpu")
    scorer = smt.GradientScorer(ref_model, cfg)
    for b in batches:
        ref_model(**b).loss.backward()
        scorer.accumulate()
        ref_model.zero_grad()
    ref_plan = scorer.select()
    got = get_smt_model(model, cfg, warmup_batches=iter(batches))
    assert got.smt_plan.blocks == ref_plan.blocks
    trainable = {n for n, p in got.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".blocks") for n in trainable)
    again = get_smt_model(load_model(env / "model", "float32", "cpu")[0], cfg, plan=ref_plan)
    assert again.smt_plan.blocks == ref_plan.blocks
    with pytest.raises(ValueError, match="needs a selection"):
        get_smt_model(load_model(env / "model", "float32", "cpu")[0], cfg)
    with pytest.raises(ValueError, match="ran out after 1"):
        get_smt_model(load_model(env / "model", "float32", "cpu")[0], cfg, warmup_batches=batches[:1])
    with pytest.raises(ValueError, match="grad_only"):
        get_smt_model(load_model(env / "model", "float32", "cpu")[0], smt.SMTConfig(block_size=16, budget=0.05),
                      warmup_batches=batches)
    from peft.config import PeftConfig
    from peft.utils.peft_types import register_peft_method
    with pytest.raises(ValueError, match="Unknown PEFT type SMT, please add an entry to peft.utils.peft_types.PeftType"):
        register_peft_method(name="smt", config_cls=PeftConfig, model_cls=None)


# ------------------------------------------------------------------------------- 2 processes
def worker(spec_path):
    """One rank of torchrun: train the spec's run with Trainer + SMTCallback, write rank<r>.json."""
    from trainer_smt import train_with_trainer
    torch.set_num_threads(1)
    spec = json.loads(pathlib.Path(spec_path).read_text())
    res = train_with_trainer(spec["run_cfg"], spec["out_dir"])
    rank = int(os.environ["RANK"])
    import torch.distributed as dist
    world = dist.get_world_size() if dist.is_initialized() else 1
    (pathlib.Path(spec["out_dir"]) / f"rank{rank}.json").write_text(json.dumps(
        {"plan": res["plan"], "loss_curve": res["loss_curve"], "world": world}))


@pytest.mark.slow
def test_two_processes_same_plan_on_every_rank_and_as_the_harness(env, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU), micro-batch 4 per rank, against the harness in one
    process with grad_accum 2 x micro-batch 4: the same global batches. Every rank holds the same plan,
    the harness's; the loss curve (the blocks' gradients averaged by SMTCallback, not DDP) matches."""
    cfg1 = _cfg(env, grad_accum=2)
    cfg2 = _cfg(env, grad_accum=1)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"run_cfg": cfg2, "out_dir": str(tmp_path / "ddp")}))
    envv = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(pathlib.Path(__file__)), "--worker", str(spec)], cwd=ROOT, env=envv,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"torchrun failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    r0, r1 = (json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["plan"] == r1["plan"], "the ranks selected different blocks"
    assert r0["loss_curve"] == r1["loss_curve"], "the ranks log different loss curves"
    curve, plan = _harness(cfg1, tmp_path / "harness")
    _assert_same(r0, curve, plan, "2 processes vs harness 1 process grad_accum 2")


if __name__ == "__main__" and "--worker" in sys.argv:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    worker(sys.argv[sys.argv.index("--worker") + 1])
