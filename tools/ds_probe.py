"""Probe: SMT warm-up + selection + sparse steps under the current launcher (single / DDP / DeepSpeed).

torchrun --nproc_per_node 2 tools/ds_probe.py OUT.json [--deepspeed] [--accum N]
"""
import json, os, sys, pathlib, time
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import torch
import smt
from harness import launch
from harness.models import _tiny_model

out, args = sys.argv[1], sys.argv[2:]
if "--deepspeed" in args:
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
accum = int(args[args.index("--accum") + 1]) if "--accum" in args else 1
torch.set_num_threads(1)
world = int(os.environ.get("WORLD_SIZE", 1))
from harness.run_config import RunConfig
run = RunConfig.from_json({"run_id": "probe/smt", "method": {"name": "smt"},
                           "model": {"name": "tiny", "path": "-", "device": "cpu", "dtype": "float32"},
                           "dataset": {"name": "none", "path": "-"},
                           "train": {"micro_batch_size": 2, "grad_accum": accum, "max_grad_norm": 1.0}})
class M: name, warmup_steps, warmup_mode = "smt", 2, "full_ft"
acc = launch.build_accelerator(run, M())
model, tok = _tiny_model({"seed": 0})
g = torch.Generator().manual_seed(0)
data = torch.randint(4, 200, (64, 16), generator=g)
def batch(k):
    x = data[2 * k:2 * k + 2]
    return {"input_ids": x, "labels": x}
cfg = smt.SMTConfig(block_size=16, budget=6, target_modules=["q_proj", "k_proj", "v_proj"], warmup_steps=2)
scorer = smt.GradientScorer(model, cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
launch.select_phase(acc, "warmup")
pm, popt = acc.prepare(model, opt)
losses, k0 = [], 0
rank = acc.process_index
per_step = accum * world
def run_steps(pm, popt, n, start, hook=None):
    out = []
    for s in range(n):
        ls = []
        for i in range(accum):
            k = (start + s) * per_step + i * world + rank  # accelerate's shard order: rank r takes every world-th batch
            with launch.micro_batch(acc, pm, i, accum) as backward:
                loss = pm(**batch(k)).loss
                backward(loss)
            ls.append(loss.detach())
        if hook:
            grads_none.append(all(m.weight.grad is None for m in scorer.modules.values()))
            hook()
        if not launch.is_deepspeed(acc):
            if run.train.max_grad_norm:
                acc.clip_grad_norm_([p for p in pm.parameters() if p.requires_grad], 1.0)
            popt.step()
        launch.zero_grad(acc, pm)
        l = torch.stack(ls).mean()
        out.append(acc.reduce(l, "mean").item())
    return out
t0 = time.time()
grads_none = []
losses += run_steps(pm, popt, 2, 0, scorer.accumulate)
plan = scorer.select()
model = acc.unwrap_model(pm)
smt.apply_smt(model, plan)
launch.select_phase(acc, "train")
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
pm, popt = acc.prepare(model, opt)
losses += run_steps(pm, popt, 3, 2)
res = {"rank": rank, "world": world, "engine": launch.describe(acc), "losses": losses,
       "plan": {k: v for k, v in plan.blocks.items() if v}, "grad_none_after_backward": grads_none,
       "seconds": time.time() - t0}
pathlib.Path(f"{out}.{rank}").write_text(json.dumps(res))
print(json.dumps(res))
