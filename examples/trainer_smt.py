"""SMT in a Hugging Face Trainer: the tiny random LLaMA on the parity toy task, three lines of integration.

    python examples/trainer_smt.py --out /tmp/trainer_smt            # train with Trainer + SMTCallback
    python examples/trainer_smt.py --out /tmp/trainer_smt --compare  # ... and the harness's own SMT run

`train_with_trainer(run_cfg, out_dir)` trains a resolved harness run config (docs/ARCHITECTURE.md)
with `transformers.Trainer` instead of `harness.train.train`, on the SAME batches:

* data: the harness's tokenization and held-out split (`harness.train_data.load_data`), and its
  micro-batch order (`harness.train_data.EpochBatches`, the sampler `batch_stream` uses) laid out as
  one flat list that the Trainer reads sequentially (`train_sampling_strategy="sequential"`);
  under several processes accelerate deals the micro-batches round robin to the ranks, in the
  Trainer and in the harness alike; padding by the harness's `collate`;
* optimizer and schedule: AdamW (`optim="adamw_torch"`, the harness's `torch.optim.AdamW`), the
  train section's betas, weight decay, clipping, linear schedule with the same lr warm-up (the
  Trainer's `get_linear_schedule_with_warmup` is the harness's `lr_lambda`);
* loss: each micro-batch's mean over its answer tokens divided by grad_accum, the harness's
  `TrainStep` (`trainer.model_accepts_loss_kwargs = False`; transformers' default instead weights
  every token of the accumulated batch equally, a different, also valid, loss under grad_accum > 1).

Only linear schedules are translated (the harness's "constant" ramps differently from transformers').
With train.weight_decay > 0 the two differ by design: the Trainer exempts biases and norms from the
decay, the harness decays every trainable parameter (the tiny config has no decay).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def smt_config_of(run_cfg: dict):
    """The smt.SMTConfig a harness run config asks for (what baselines.smt_method.SMT builds)."""
    import smt
    m, placement = run_cfg["method"], run_cfg.get("placement") or {}
    return smt.SMTConfig(block_size=m["block_size"], budget=run_cfg["budget"],
                         target_modules=list(placement.get("target_modules") or ["q_proj", "k_proj", "v_proj"]),
                         quotas=placement.get("quotas"), strategy=m.get("scoring", "mean_abs"),
                         warmup_steps=m["warmup_steps"], warmup_mode=m.get("warmup_mode", "full_ft"))


def harness_order(examples: list, run_cfg: dict, total_steps: int, world: int = 1) -> list:
    """The harness's micro-batches of steps 0..total_steps, flattened: reading it sequentially in
    micro-batches of train.micro_batch_size gives batch_stream's batches."""
    from harness.train_data import EpochBatches
    t = run_cfg["train"]
    bs = t["micro_batch_size"]
    per_step = t.get("grad_accum", 1) * world
    order = []
    for k, idx in enumerate(EpochBatches(len(examples), bs, int(run_cfg.get("seed", 0)), 0, total_steps * per_step)):
        if len(idx) != bs:
            raise ValueError(f"micro-batch {k} holds {len(idx)} examples, not {bs}: the training set "
                             f"({len(examples)} examples) must be a multiple of train.micro_batch_size for "
                             "a flat sequential list to reproduce the harness's batches")
        order += idx
    return [examples[i] for i in order]


def train_with_trainer(run_cfg: dict, out_dir, save_steps: int | None = None, callbacks=()) -> dict:
    """Train run_cfg's SMT run with Trainer + SMTCallback (checkpoints every save_steps; further
    `callbacks` run after SMTCallback); returns {loss_curve, plan, trainer, callback}."""
    import torch
    from transformers import Trainer, TrainingArguments

    from harness.models import load_model
    from harness.run_config import as_run_config
    from harness.train_data import collate, load_data, total_steps
    from smt.integrations import SMTCallback

    t, m = run_cfg["train"], run_cfg["method"]
    if t.get("lr_scheduler", "linear") != "linear":
        raise ValueError("this example translates only train.lr_scheduler: linear")
    torch.manual_seed(int(run_cfg.get("seed", 0)))
    model, tok = load_model(run_cfg["model"]["path"], run_cfg["model"].get("dtype", "float32"), "cpu")
    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    run = as_run_config(run_cfg)  # the harness's typed run config (its JSON form is run_cfg)
    data = load_data(run, tok)
    steps = total_steps(run, len(data.train), world)
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=t["micro_batch_size"],
        gradient_accumulation_steps=t.get("grad_accum", 1),
        learning_rate=m.get("warmup_lr") or m["lr"],              # the full-FT warm-up's lr
        lr_scheduler_type="linear", warmup_steps=t.get("warmup_steps", 0), weight_decay=t.get("weight_decay", 0.0),
        adam_beta1=t.get("adam_betas", [0.9, 0.999])[0], adam_beta2=t.get("adam_betas", [0.9, 0.999])[1],
        max_grad_norm=t.get("max_grad_norm") or 0.0, optim="adamw_torch", train_sampling_strategy="sequential",
        logging_steps=1, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        report_to="none", use_cpu=True, seed=int(run_cfg.get("seed", 0)),
        dataloader_num_workers=0, disable_tqdm=True, ddp_backend="gloo" if world > 1 else None,
        ddp_find_unused_parameters=False)   # DDP as the harness builds it (every weight trains in the warm-up)
    train = harness_order(data.train, run_cfg, steps, world)

    # ---- the integration: three lines --------------------------------------------------------
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate(tok.pad_token_id))
    callback = SMTCallback(smt_config_of(run_cfg), lr=m["lr"]).attach(trainer)
    trainer.model_accepts_loss_kwargs = False   # the harness's per-micro-batch mean (see the module docstring)
    for cb in callbacks:
        trainer.add_callback(cb)
    trainer.train()
    # -------------------------------------------------------------------------------------------

    warm = callback.config.warmup_steps
    curve = [{"step": h["step"], "loss": h["loss"], "lr": h["learning_rate"],
              **({"phase": "warmup"} if h["step"] <= warm else {})}
             for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    return {"loss_curve": curve, "plan": {k: v for k, v in callback.plan.blocks.items() if v},
            "trainer": trainer, "callback": callback}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="working directory (tiny model, data, Trainer output)")
    p.add_argument("--compare", action="store_true", help="also run harness.train.train and compare")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup-mode", default="full_ft", choices=["full_ft", "grad_only"])
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_env, tiny_run_cfg   # the tiny random LLaMA + parity set the tests use

    out = pathlib.Path(a.out)
    env = make_tiny_env(out / "env")
    cfg = tiny_run_cfg(env, "smt", 5e-2, grad_accum=a.grad_accum, method={"warmup_mode": a.warmup_mode})
    res = train_with_trainer(cfg, out / "trainer", save_steps=5)
    print(json.dumps({"plan": res["plan"], "loss_curve": res["loss_curve"]}))
    if a.compare:
        from harness.train import train
        import smt
        rec = train(cfg, out / "harness")
        plan = {k: v for k, v in smt.SelectionPlan.from_json(out / "harness" / "plan.json").blocks.items() if v}
        diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(res["loss_curve"], rec["train_info"]["loss_curve"]))
        print(json.dumps({"same_plan": plan == res["plan"], "max_loss_diff": diff}))


if __name__ == "__main__":
    main()
