"""Apply a SelectionPlan to a model, merge it back, and save/load the small delta."""
from __future__ import annotations

import json
import pathlib
from typing import Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .layer import SparseLinear
from .plan import SelectionPlan

DELTA_FILE = "smt_delta.safetensors"


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def sparse_modules(model: nn.Module) -> dict:
    """``{name: SparseLinear}`` for every SparseLinear in ``model``, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}


def apply_smt(model: nn.Module, plan: SelectionPlan) -> nn.Module:
    """Make ``model`` an SMT model, in place, and return it.

    Every parameter is frozen; each plan module with blocks is replaced by a SparseLinear
    (reusing its weight, no copy), so afterwards only the ``blocks`` parameters require
    grad. Plan modules without blocks stay frozen nn.Linear. The plan is kept as
    ``model.smt_plan``. Raises ValueError if a plan module is missing, not an nn.Linear,
    or has another shape.
    """
    mods = dict(model.named_modules())
    for name, shape in plan.shapes.items():
        m = mods.get(name)
        if m is None:
            raise ValueError(f"plan module {name} is not in the model; was the plan made on another model?")
        if not isinstance(m, nn.Linear):
            hint = " (apply_smt was already called)" if isinstance(m, SparseLinear) else ""
            raise ValueError(f"plan module {name} is a {type(m).__name__}, not an nn.Linear{hint}")
        if tuple(m.weight.shape) != tuple(shape):
            raise ValueError(f"plan module {name} has shape {tuple(shape)} but the model's weight is "
                             f"{tuple(m.weight.shape)}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, blocks in plan.blocks.items():
        if blocks:
            _replace(model, name, SparseLinear.from_linear(mods[name], plan.block_size, blocks))
    model.smt_plan = plan
    return model


def merge_smt(model: nn.Module) -> nn.Module:
    """Replace every SparseLinear by a plain nn.Linear holding the trained weight, in place.

    The weights keep ``requires_grad=False``; returns ``model``.
    """
    for name, m in sparse_modules(model).items():
        _replace(model, name, m.to_linear())
    if hasattr(model, "smt_plan"):
        del model.smt_plan
    return model


def _plan_of(model: nn.Module, sparse: dict) -> SelectionPlan:
    """The model's plan, or one rebuilt from its SparseLinear modules (then holding only them)."""
    plan = getattr(model, "smt_plan", None)
    if plan is None:
        blocks_params = sum(m.blocks.numel() for m in sparse.values())
        total = sum(p.numel() for p in model.parameters()) - blocks_params
        l = {m.block_size for m in sparse.values()}
        if len(l) != 1:
            raise ValueError(f"SparseLinear modules use different block sizes {sorted(l)}; one delta needs one size")
        return SelectionPlan(l.pop(), {n: (m.out_features, m.in_features) for n, m in sparse.items()},
                             {n: m.block_indices for n, m in sparse.items()}, total)
    for n, m in sparse.items():
        if sorted(m.block_indices) != plan.blocks.get(n):
            raise ValueError(f"SparseLinear {n} does not match model.smt_plan; delete model.smt_plan to save "
                             "the modules as they are")
    return plan


def _delta_file(path: Union[str, pathlib.Path]) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.suffix == ".safetensors" else path / DELTA_FILE


def save_smt(model: nn.Module, path: Union[str, pathlib.Path]) -> pathlib.Path:
    """Save the SMT delta (plan + trained blocks) as one safetensors file; returns its path.

    ``path`` is a ``*.safetensors`` file or a directory (then ``<path>/smt_delta.safetensors``).
    Tensors are named ``<module>.blocks`` (blocks in the plan's sorted order); the plan JSON
    is stored in the file's metadata under ``smt_plan``. The delta holds the trained blocks
    only: it reproduces the model on top of the weights ``apply_smt`` saw (after a
    ``full_ft`` warm-up those differ from the original base model everywhere).
    """
    sparse = sparse_modules(model)
    if not sparse:
        raise ValueError("the model has no SparseLinear modules; call smt.apply_smt(model, plan) first")
    plan = _plan_of(model, sparse)
    tensors = {}
    for name, m in sparse.items():
        idx = m.block_indices
        order = sorted(range(len(idx)), key=idx.__getitem__)
        tensors[f"{name}.blocks"] = m.blocks.detach()[order].cpu().contiguous()
    out = _delta_file(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"format": "smt-delta/1", "smt_plan": json.dumps(plan.to_dict())})
    return out


def load_smt(model: nn.Module, path: Union[str, pathlib.Path], merge: bool = False) -> nn.Module:
    """Apply a saved delta to a fresh copy of the base model, in place, and return it.

    ``path`` is what :func:`save_smt` returned or its directory. The model gets SparseLinear
    modules holding the saved blocks (ready to train further), or plain nn.Linear modules
    with the trained weights when ``merge=True``.
    """
    file = _delta_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"no SMT delta at {file}; pass the file save_smt returned or its directory")
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "smt-delta/1":
            raise ValueError(f"{file} is not an SMT delta (metadata format={meta.get('format')!r})")
        plan = SelectionPlan.from_dict(json.loads(meta["smt_plan"]))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    apply_smt(model, plan)
    sparse = sparse_modules(model)
    expected = {f"{n}.blocks" for n in sparse}
    if expected != set(tensors):
        raise ValueError(f"{file} does not match its plan: missing {sorted(expected - set(tensors))}, "
                         f"unexpected {sorted(set(tensors) - expected)}")
    with torch.no_grad():
        for name, m in sparse.items():
            t = tensors[f"{name}.blocks"]
            if t.shape != m.blocks.shape:
                raise ValueError(f"{file}: {name}.blocks has shape {tuple(t.shape)}, expected {tuple(m.blocks.shape)}")
            m.blocks.copy_(t)
            m.sync_()
    return merge_smt(model) if merge else model
