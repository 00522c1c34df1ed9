"""Apply a SelectionPlan to a model, merge it back, and save/load the small delta."""
from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .layer import SparseLinear
from .plan import SelectionPlan

DELTA_FILE = "smt_delta.safetensors"
DELTA_FORMAT = "smt-delta/2"          # /2: with the base-model fingerprint; /1 (none) still loads


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def sparse_modules(model: nn.Module) -> dict:
    """``{name: SparseLinear}`` for every SparseLinear in ``model``, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}


def _check_plan_fits(model: nn.Module, plan: SelectionPlan) -> dict:
    """Every plan module is an nn.Linear of the plan's shape in ``model``; returns named_modules."""
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
    return mods


def apply_smt(model: nn.Module, plan: SelectionPlan) -> nn.Module:
    """Make ``model`` an SMT model, in place, and return it.

    Every parameter is frozen; each plan module with blocks is replaced by a SparseLinear
    (reusing its weight, no copy), so afterwards only the ``blocks`` parameters require
    grad. Plan modules without blocks stay frozen nn.Linear. The plan is kept as
    ``model.smt_plan``. Raises ValueError if a plan module is missing, not an nn.Linear,
    or has another shape.
    """
    mods = _check_plan_fits(model, plan)
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



def base_fingerprint(model: nn.Module, plan: SelectionPlan) -> dict:
    """A fingerprint of the base model a delta sits on, for :func:`load_smt` to check.

    ``sha256``: over every plan module (sorted by name) of its name, shape and float32 weight
    values with the regions of the plan's blocks zeroed (the delta overwrites those, so they
    do not identify the base). ``structure``: sha256 over the names and shapes of all the
    model's parameters (a deeper or otherwise different model differs). ``n_layers``: the
    config's ``num_hidden_layers`` when the model has one. ``dtype``: of the first plan weight.
    """
    mods = dict(model.named_modules())
    values = hashlib.sha256()
    l = plan.block_size
    dtype = None
    for name in sorted(plan.shapes):
        m = mods.get(name)
        if m is None or not hasattr(m, "weight"):
            raise ValueError(f"plan module {name} is not in the model; was the plan made on another model?")
        w = m.weight.detach()
        dtype = dtype or str(w.dtype).replace("torch.", "")
        w = w.to("cpu", torch.float32).clone()
        for r, c in plan.blocks.get(name, []):
            w[r * l:(r + 1) * l, c * l:(c + 1) * l] = 0
        values.update(f"{name}:{tuple(w.shape)}:".encode())
        values.update(w.contiguous().numpy().tobytes())
    structure = hashlib.sha256()
    for name, p in model.named_parameters():
        if name.endswith(".blocks") and isinstance(mods.get(name.rpartition(".")[0]), SparseLinear):
            continue  # SMT's own parameters: not part of the base
        structure.update(f"{name}:{tuple(p.shape)};".encode())
    config = getattr(model, "config", None)
    return {"sha256": values.hexdigest(), "structure": structure.hexdigest(),
            "n_layers": getattr(config, "num_hidden_layers", None), "dtype": dtype,
            "modules": len(plan.shapes)}


def _check_base(file: pathlib.Path, saved: dict, model: nn.Module, plan: SelectionPlan) -> None:
    """Refuse to put a delta on a base other than the one it was trained on."""
    now = base_fingerprint(model, plan)
    problems = []
    if saved.get("n_layers") != now["n_layers"]:
        problems.append(f"the delta's base has {saved.get('n_layers')} layers, this model {now['n_layers']}")
    if saved.get("structure") != now["structure"]:
        problems.append("the model's parameter names or shapes differ from the delta's base")
    if saved.get("sha256") != now["sha256"]:
        hint = ""
        if saved.get("dtype") != now["dtype"]:
            hint = f" (the delta's base was {saved.get('dtype')}, this model is {now['dtype']})"
        problems.append(f"the weights of the targeted modules differ from the delta's base{hint}")
    if problems:
        raise ValueError(f"{file} was trained on another base model: " + "; ".join(problems) + ". Load it "
                         "onto the base model it was trained on (after an SMT full_ft warm-up: with the "
                         "warm-up weights saved beside it loaded first), or pass allow_base_mismatch=True "
                         "to load it anyway.")


def _delta_file(path: Union[str, pathlib.Path]) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.suffix == ".safetensors" else path / DELTA_FILE


def save_smt(model: nn.Module, path: Union[str, pathlib.Path]) -> pathlib.Path:
    """Save the SMT delta (plan + trained blocks) as one safetensors file; returns its path.

    ``path`` is a ``*.safetensors`` file or a directory (then ``<path>/smt_delta.safetensors``).
    Tensors are named ``<module>.blocks`` (blocks in the plan's sorted order); the plan JSON
    is stored in the file's metadata under ``smt_plan``, and a fingerprint of the base model
    (:func:`base_fingerprint`) under ``base_fingerprint``. The delta holds the trained blocks
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
    fingerprint = base_fingerprint(model, plan)
    save_file(tensors, str(out), metadata={"format": DELTA_FORMAT, "smt_plan": json.dumps(plan.to_dict()),
                                           "base_fingerprint": json.dumps(fingerprint)})
    return out


def load_smt(model: nn.Module, path: Union[str, pathlib.Path], merge: bool = False,
             allow_base_mismatch: bool = False) -> nn.Module:
    """Apply a saved delta to a fresh copy of the base model, in place, and return it.

    ``path`` is what :func:`save_smt` returned or its directory. The model gets SparseLinear
    modules holding the saved blocks (ready to train further), or plain nn.Linear modules
    with the trained weights when ``merge=True``.

    The model must be the base the delta was trained on: its fingerprint (weights of the
    targeted modules outside the blocks, parameter names and shapes, layer count) is checked
    against the one saved, and a mismatch is a ValueError naming the file, unless
    ``allow_base_mismatch=True``. A truncated or corrupt file is a ValueError naming it.
    """
    file = _delta_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"no SMT delta at {file}; pass the file save_smt returned or its directory")
    fix = "it is truncated or corrupt: delete it and train the run again"
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"cannot read SMT delta {file} ({type(err).__name__}: {err}); {fix}") from err
    if meta.get("format") not in ("smt-delta/1", DELTA_FORMAT):
        raise ValueError(f"{file} is not an SMT delta (metadata format={meta.get('format')!r})")
    try:
        plan = SelectionPlan.from_dict(json.loads(meta["smt_plan"]))
        saved_base = json.loads(meta["base_fingerprint"]) if meta["format"] == DELTA_FORMAT else None
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"SMT delta {file} has unreadable metadata ({type(err).__name__}: {err}); {fix}") from err
    _check_plan_fits(model, plan)
    if saved_base is not None and not allow_base_mismatch:
        _check_base(file, saved_base, model, plan)
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
