"""Warm-up gradient scoring and global top-k block selection.

Differences from the authors' code (HectorHHZ/Sparse_Matrix_Tuning, ``smt_helper.py``):

* Strategy names. The authors' helper called ``mean_abs`` computes ``grad.mean().abs()``
  (|mean| of the block) and the one called ``abs_mean`` computes ``grad.abs().mean()``.
  Here the names say what they compute: ``mean_abs`` = mean of |G| (the paper, appendix
  B; our default) and ``abs_mean`` = |mean of G| (what the authors' default
  ``calculate_strategy="mean_abs"`` actually ranks by). ``l1`` and ``l2`` match theirs.
* Ties. Their min-heap breaks score ties by comparing ``((module, layer), row, col)``
  tuples; here ties go to the earlier module (model order), then the smaller row, then
  the smaller column, so the result does not depend on module naming.
* Budget. They take the number of blocks ``n`` directly and hard-code ``l = 256``; here
  ``n = floor(budget * total_params / l**2)`` for a fractional budget (or ``budget`` itself
  when it is an int) and ``l`` is configurable.
* Quotas. They select MLP and attention blocks in separate calls with separate ``n``;
  here one call splits ``n`` over groups by share (see ``SMTConfig.quotas``).
* Their ``norm_dist`` per-matrix selection is not implemented.
The warm-up gradients are summed (not averaged) in fp32, as in their ``get_warmup_grads``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .config import SMTConfig, name_matches
from .layer import _check_divisible
from .plan import SelectionPlan


def count_parameters(model: nn.Module) -> int:
    """Total parameter count, each shared (tied) parameter counted once."""
    return sum(p.numel() for p in model.parameters())


def find_target_modules(model: nn.Module, patterns: list) -> dict:
    """``{name: nn.Linear}`` for every Linear module matching one of ``patterns``, in model order.

    Raises ValueError naming any pattern that matches no nn.Linear module.
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    found = {n: m for n, m in linears.items() if any(name_matches(n, p) for p in patterns)}
    for p in patterns:
        if not any(name_matches(n, p) for n in linears):
            kinds = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ValueError(f"target module {p!r} matches no nn.Linear in the model; "
                             f"Linear names available: {kinds[:20]} (or use 're:<regex on the full name>')")
    return found


def block_scores(grad: torch.Tensor, block_size: int, strategy: str = "mean_abs") -> torch.Tensor:
    """Score every ``l x l`` block of a 2-D (summed) gradient; returns an (R, C) fp32 tensor.

    Strategies: ``mean_abs`` mean(|G|), ``abs_mean`` |mean(G)|, ``l1`` sum(|G|), ``l2`` sqrt(sum(G^2)).
    """
    o, i = grad.shape
    l = block_size
    g = grad.detach().float().reshape(o // l, l, i // l, l)
    if strategy == "mean_abs":
        return g.abs().mean(dim=(1, 3))
    if strategy == "abs_mean":
        return g.mean(dim=(1, 3)).abs()
    if strategy == "l1":
        return g.abs().sum(dim=(1, 3))
    if strategy == "l2":
        return g.square().sum(dim=(1, 3)).sqrt()
    raise ValueError(f"unknown strategy {strategy!r}; use mean_abs, abs_mean, l1 or l2")


def n_blocks_for_budget(budget, total_params: int, block_size: int) -> int:
    """Blocks for a budget: an int budget is a block count; a float is ``floor(budget * total / l**2)``."""
    if isinstance(budget, int) and not isinstance(budget, bool):
        return budget
    return math.floor(budget * total_params / block_size ** 2)


def split_quota(n: int, shares: list) -> list:
    """Split ``n`` into integer parts proportional to ``shares`` (summing to ``n`` exactly):
    floors first, then one extra block each by largest fractional part, ties to the earlier group."""
    raw = [n * s for s in shares]
    parts = [math.floor(x) for x in raw]
    order = sorted(range(len(shares)), key=lambda k: (-(raw[k] - parts[k]), k))
    for k in order[: n - sum(parts)]:
        parts[k] += 1
    return parts


def resolve_groups(capacity: dict, n_blocks: int, quotas: Optional[dict]) -> dict:
    """``{group: (module_names, n_group_blocks)}`` for ``quotas`` (one group ``"all"`` if None).

    ``capacity`` maps module name -> its number of blocks, in model order. Raises ValueError
    if a module is in no group or in two, a group matches no module, or a group (or the
    whole selection) asks for more blocks than its modules hold.
    """
    names = list(capacity)
    if quotas is None:
        groups = {"all": (names, n_blocks)}
    else:
        counts = split_quota(n_blocks, [q["share"] for q in quotas.values()])
        groups = {}
        for (g, q), k in zip(quotas.items(), counts):
            members = [n for n in names if any(name_matches(n, p) for p in q["modules"])]
            if not members:
                raise ValueError(f"quota group {g!r} (modules {q['modules']}) matches none of the target modules")
            groups[g] = (members, k)
        for n in names:
            owners = [g for g, (m, _) in groups.items() if n in m]
            if len(owners) != 1:
                raise ValueError(f"target module {n} is in {len(owners)} quota groups {owners}; "
                                 "each target module must be in exactly one group")
    for g, (members, k) in groups.items():
        cap = sum(capacity[n] for n in members)
        if k > cap:
            where = "the target modules" if quotas is None else f"quota group {g!r}"
            raise ValueError(f"the budget asks for {k} blocks in {where}, which hold only {cap} blocks; "
                             "lower the budget (or the group's share) or add target modules")
    return groups


def select_blocks(scores: dict, n_blocks: int, quotas: Optional[dict] = None) -> dict:
    """Global top-k selection.

    Args:
        scores: ``{module_name: (R, C) block scores}`` in model order.
        n_blocks: total number of blocks to select.
        quotas: optional ``SMTConfig.quotas``; then each group gets its share of
            ``n_blocks`` and is filled by top-k over its own modules.
    Returns ``{module_name: sorted [(row, col), ...]}`` for every module in ``scores``.
    Order: higher score first; ties go to the earlier module, then row, then column.
    """
    out = {name: [] for name in scores}
    for name, s in scores.items():
        if not torch.isfinite(s).all():
            raise ValueError(f"non-finite block scores in {name} (NaN/inf gradients during the warm-up); "
                             "lower the learning rate, check the loss, or use warmup_mode='grad_only'")
    groups = resolve_groups({n: s.numel() for n, s in scores.items()}, n_blocks, quotas)
    for members, k in groups.values():
        if k == 0:
            continue
        flat = torch.cat([scores[n].reshape(-1).float().cpu() for n in members])
        top = torch.sort(flat, descending=True, stable=True).indices[:k]
        sizes = torch.tensor([scores[n].numel() for n in members])
        starts = torch.cumsum(sizes, 0) - sizes
        owner = torch.searchsorted(starts, top, right=True) - 1
        for j, idx in zip(owner.tolist(), top.tolist()):
            name = members[j]
            local = idx - int(starts[j])
            ncols = scores[name].shape[1]
            out[name].append((local // ncols, local % ncols))
    return {n: sorted(b) for n, b in out.items()}


class GradientScorer:
    """Accumulates warm-up gradients of the target weights and selects the blocks.

    Usage: build it before the warm-up, call :meth:`accumulate` once per warm-up step after
    the backward (with gradient accumulation: after the last micro-batch) and before
    ``optimizer.zero_grad()``; in ``full_ft`` mode the caller also steps its optimizer, in
    ``grad_only`` mode it does not; then :meth:`select`. The target weights must require
    grad during the warm-up.

    How gradients are captured: the constructor puts a hook on every target weight that
    receives each gradient as the backward produces it (before it is added to ``.grad``)
    and sums it, in fp32, into a per-step buffer; :meth:`accumulate` adds that buffer to the
    running sum. So scoring does not depend on ``.grad`` surviving the backward: under
    DeepSpeed ZeRO-2 (which moves gradients into its own partitioned buffers and leaves
    ``param.grad`` None) and under DDP (which replaces ``.grad`` by the all-reduced mean) the
    hook still sees the full local gradient of every micro-batch. If no backward reached
    the hooks since the last :meth:`accumulate` (``.grad`` set by hand), the current
    ``.grad`` is read instead. In one process the sums are bit-identical to summing
    ``.grad`` after each step (fp32 weights; bf16 weights are summed in fp32 per
    micro-batch, not in bf16).

    Several processes (``torch.distributed`` initialised, world size > 1): every rank
    sums its own micro-batches; :meth:`scores` / :meth:`select` (collectives: call them on
    every rank) all-reduce the sums and divide by the world size, which is the gradient
    DDP or ZeRO-2 averages and so the same sum one process gets over the same global
    batch; the plan rank 0 selects is then broadcast, so every rank holds the same plan.

    Note: ``full_ft`` warm-up steps change every weight of the
    model, so a saved SMT delta reproduces the trained model only on top of the
    post-warm-up weights; restore the pre-warm-up weights before ``apply_smt`` (the warm-up
    then only chooses the blocks) or keep the post-warm-up model as the base. All configuration errors (block size, budget, targets,
    quotas) are raised by the constructor, before any work. The scorer holds only the
    modules and its fp32 accumulators (on the CPU with ``cfg.accumulate_on_cpu``), never a
    gradient; :meth:`select` removes the hooks; drop the scorer after it to free the accumulators.
    """

    def __init__(self, model: nn.Module, cfg: SMTConfig):
        cfg.validate()
        self.cfg = cfg
        self.modules = find_target_modules(model, cfg.target_modules)
        l = cfg.block_size
        for name, m in self.modules.items():
            _check_divisible(name, tuple(m.weight.shape), l)
        self.shapes = {n: tuple(m.weight.shape) for n, m in self.modules.items()}
        self.total_params = count_parameters(model)
        self.n_blocks = n_blocks_for_budget(cfg.budget, self.total_params, l)
        if self.n_blocks < 1:
            raise ValueError(f"budget {cfg.budget} of {self.total_params} parameters is less than one "
                             f"{l}x{l} block ({l * l} parameters); raise the budget or lower block_size")
        capacity = {n: (o // l) * (i // l) for n, (o, i) in self.shapes.items()}
        self.groups = resolve_groups(capacity, self.n_blocks, cfg.quotas)
        self._acc = {}
        self._step = {}          # fp32 sums of the gradients the hooks saw since the last accumulate()
        self._synced = False
        self.steps = 0
        self._handles = [m.weight.register_hook(self._hook(name)) for name, m in self.modules.items()]

    def _device(self, w: torch.Tensor) -> torch.device:
        return torch.device("cpu") if self.cfg.accumulate_on_cpu else w.device

    def _hook(self, name: str):
        def hook(grad):
            buf = self._step.get(name)
            if buf is None:
                w = self.modules[name].weight
                buf = self._step[name] = torch.zeros(w.shape, dtype=torch.float32, device=self._device(w))
            buf.add_(grad.detach().to(buf.device))
            return None
        return hook

    def remove_hooks(self) -> None:
        """Detach the gradient hooks from the model (select() does this)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def accumulate(self) -> None:
        """Add this step's gradient of every target weight to its fp32 sum.

        The gradient is what the hooks saw since the last call (every micro-batch), or, when
        no backward reached them, the current ``.grad``. A target weight the loss did not
        reach adds zero; if no target weight has a gradient at all, this raises
        (accumulate() was called at the wrong time).
        """
        if self._synced:
            raise RuntimeError("accumulate() after scores()/select(): the sums were already combined")
        if self._step:
            grads, self._step = self._step, {}
        else:
            grads = {name: m.weight.grad for name, m in self.modules.items()}
            if all(g is None for g in grads.values()):
                raise RuntimeError("no target weight has a .grad (and no backward reached the hooks): target weights must require grad during the "
                                   "warm-up, and accumulate() must run after loss.backward() (before zero_grad())")
        for name in self.modules:
            acc = self._acc.get(name)
            if acc is None:
                w = self.modules[name].weight
                acc = self._acc[name] = torch.zeros(w.shape, dtype=torch.float32, device=self._device(w))
            g = grads.get(name)
            if g is not None:
                acc.add_(g.detach().to(acc.device))
        self.steps += 1

    def _sync(self) -> None:
        """Across processes: all-reduce the sums and divide by the world size (once)."""
        dist = _world()
        if self._synced or dist is None:
            return                       # one process: nothing to combine, accumulating may go on
        world = dist.get_world_size()
        steps = torch.tensor([self.steps, -self.steps], dtype=torch.float64)
        dist.all_reduce(steps, op=dist.ReduceOp.MIN)
        lo, hi = int(steps[0]), -int(steps[1])
        if lo != hi:
            raise RuntimeError(f"ranks accumulated between {lo} and {hi} warm-up steps (rank {dist.get_rank()}: "
                               f"{self.steps}); every rank must call accumulate() equally often")
        for name in self.modules:
            acc = self._acc[name]
            dev = _reduce_device(dist, acc)
            buf = acc if acc.device == dev else acc.to(dev)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)
            if buf is not acc:
                acc.copy_(buf)
        self._synced = True

    def scores(self) -> dict:
        """``{module_name: (R, C) fp32 block scores}`` of the gradients summed so far (all ranks)."""
        if self.steps == 0:
            raise RuntimeError("GradientScorer has no gradients yet: call accumulate() after each warm-up backward")
        self._sync()
        return {n: block_scores(self._acc[n], self.cfg.block_size, self.cfg.strategy) for n in self.modules}

    def select(self) -> SelectionPlan:
        """Select the top blocks (honouring quotas) and return the SelectionPlan (the same on every rank)."""
        cfg = self.cfg
        blocks = select_blocks(self.scores(), self.n_blocks, cfg.quotas)
        dist = _world()
        if dist is not None:                 # rank 0's plan everywhere (ties could differ only by rounding)
            box = [blocks]
            dist.broadcast_object_list(box, src=0)
            blocks = box[0]
        self.remove_hooks()
        meta = {"budget": cfg.budget, "n_blocks_asked": self.n_blocks, "strategy": cfg.strategy,
                "warmup_mode": cfg.warmup_mode, "warmup_steps": self.steps,
                "target_modules": list(cfg.target_modules), "quotas": cfg.quotas,
                "group_blocks": {g: k for g, (_, k) in self.groups.items()},
                "world_size": dist.get_world_size() if dist is not None else 1}
        return SelectionPlan(cfg.block_size, self.shapes, blocks, self.total_params, meta)


def _world():
    """torch.distributed when initialised with more than one process, else None."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _reduce_device(dist, t: torch.Tensor) -> torch.device:
    """Where the process group can reduce ``t``: gloo reduces CPU tensors, nccl GPU tensors (an
    accumulator kept on the CPU with ``accumulate_on_cpu`` goes to this rank's GPU one at a time)."""
    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and t.device.type == "cpu":
        return torch.device("cuda", torch.cuda.current_device())
    if "nccl" not in backend and "gloo" in backend and t.device.type != "cpu":
        return torch.device("cpu")
    return t.device


def random_plan(model, cfg, seed: int) -> SelectionPlan:
    """A control plan: blocks drawn uniformly at random, no gradients, no warm-up.

    Same budget (``floor(budget * total / l**2)`` blocks), target modules and quotas as a
    gradient selection with ``cfg`` (an ``SMTConfig``), so it differs from one only in WHICH
    blocks: within each quota group the blocks are a uniform sample without replacement over
    all blocks of the group's modules, drawn with a ``torch.Generator`` seeded by ``seed``
    (the run seed). Raises the same errors as ``GradientScorer`` for a bad budget or quota.
    """
    cfg.validate()
    l = cfg.block_size
    modules = find_target_modules(model, cfg.target_modules)
    shapes = {}
    for name, m in modules.items():
        _check_divisible(name, tuple(m.weight.shape), l)
        shapes[name] = tuple(m.weight.shape)
    total = count_parameters(model)
    n = n_blocks_for_budget(cfg.budget, total, l)
    if n < 1:
        raise ValueError(f"budget {cfg.budget} of {total} parameters is less than one {l}x{l} block "
                         f"({l * l} parameters); raise the budget or lower block_size")
    capacity = {k: (o // l) * (i // l) for k, (o, i) in shapes.items()}
    groups = resolve_groups(capacity, n, cfg.quotas)
    gen = torch.Generator().manual_seed(int(seed))
    blocks = {k: [] for k in shapes}
    for members, k in groups.values():
        sizes = torch.tensor([capacity[m] for m in members])
        starts = torch.cumsum(sizes, 0) - sizes
        picks = torch.randperm(int(sizes.sum()), generator=gen)[:k]
        owner = torch.searchsorted(starts, picks, right=True) - 1
        for j, idx in zip(owner.tolist(), picks.tolist()):
            name = members[j]
            local, ncols = idx - int(starts[j]), shapes[name][1] // l
            blocks[name].append((local // ncols, local % ncols))
    meta = {"budget": cfg.budget, "n_blocks_asked": n, "selection": "random", "seed": int(seed),
            "strategy": None, "warmup_mode": None, "warmup_steps": 0,
            "target_modules": list(cfg.target_modules), "quotas": cfg.quotas,
            "group_blocks": {g: k for g, (_, k) in groups.items()}}
    return SelectionPlan(l, shapes, blocks, total, meta)
