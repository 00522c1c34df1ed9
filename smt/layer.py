"""SparseLinear: an nn.Linear whose only trainable part is a dense (m, l, l) tensor of blocks.

The frozen weight ``W`` always holds the current block values (they are written into it
with one indexed copy at every forward and by :meth:`SparseLinear.sync_`), so the forward
is one dense matmul ``y = x W^T + b``. The autograd function saves only the distinct
``l``-wide input column slices the selected blocks read, and its backward returns the full
input gradient ``dy W`` plus the gradients of the selected blocks only, computed as one
batched matmul over the blocks.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _write_blocks(weight: torch.Tensor, blocks: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
    """Copy ``blocks`` (m, l, l) into ``weight`` at block coordinates (rows, cols), in place, untracked."""
    l = blocks.shape[-1]
    out_f, in_f = weight.shape
    w4 = weight.data.view(out_f // l, l, in_f // l, l)
    w4[rows, :, cols, :] = blocks.detach().to(weight.dtype)


def _read_blocks(weight: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, l: int) -> torch.Tensor:
    """Return a copy of the (m, l, l) blocks of ``weight`` at block coordinates (rows, cols)."""
    out_f, in_f = weight.shape
    return weight.detach().view(out_f // l, l, in_f // l, l)[rows, :, cols, :].clone()


class SparseLinearFunction(torch.autograd.Function):
    """``y = x W_eff^T + b`` with gradients for ``x`` (full) and the selected blocks only.

    Inputs: ``x`` (..., in), ``blocks`` (m, l, l), ``weight`` (out, in; frozen, overwritten
    in place with ``blocks``), ``bias`` (out,) or None, ``rows``/``cols`` (m,) block
    coordinates, ``ucols`` (u,) the distinct block columns, ``inv`` (m,) the position of each
    block's column in ``ucols`` (None when ``ucols`` equals ``cols``). Saved for backward:
    only ``x``'s ``ucols`` column slices, as one (u, N, l) tensor.
    """

    @staticmethod
    def forward(ctx, x, blocks, weight, bias, rows, cols, ucols, inv):
        l = blocks.shape[-1]
        _write_blocks(weight, blocks, rows, cols)
        out = F.linear(x, weight, bias)
        ctx.x_shape, ctx.x_dtype, ctx.block_dtype = x.shape, x.dtype, blocks.dtype
        ctx.weight, ctx.rows, ctx.inv = weight, rows, inv
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, weight.shape[1] // l, l)               # (N, C, l), a view when x is contiguous
            xs = x2.transpose(0, 1).index_select(0, ucols)            # (u, N, l): only needed columns
            # under autocast (fp32 x, bf16 out) backward multiplies in out's dtype: cast the saved columns
            # once here (the same rounding, so bit-identical gradients) and keep half the bytes
            ctx.save_for_backward(xs if xs.dtype == out.dtype else xs.to(out.dtype))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        weight = ctx.weight
        out_f = weight.shape[0]
        g2 = grad_out.reshape(-1, out_f)                              # (N, out)
        grad_x = grad_blocks = None
        if ctx.needs_input_grad[0]:
            grad_x = (g2 @ weight.to(g2.dtype)).view(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            (xs,) = ctx.saved_tensors
            l = xs.shape[-1]
            g_sel = g2.reshape(-1, out_f // l, l).transpose(0, 1).index_select(0, ctx.rows)   # (m, N, l)
            x_sel = xs if ctx.inv is None else xs.index_select(0, ctx.inv)            # (m, N, l)
            grad_blocks = torch.bmm(g_sel.transpose(1, 2), x_sel.to(g_sel.dtype)).to(ctx.block_dtype)
        return grad_x, grad_blocks, None, None, None, None, None, None


class SparseLinear(nn.Module):
    """A linear layer with a frozen weight and one trainable ``(m, l, l)`` tensor of blocks.

    Block ``i`` sits at rows ``rows[i]*l : (rows[i]+1)*l`` and columns
    ``cols[i]*l : (cols[i]+1)*l`` of the ``(out_features, in_features)`` weight. Works for
    inputs of any rank >= 1 (last dim = in_features), with or without bias, in any floating
    dtype and on any device. Build it with :meth:`from_linear`.

    Attributes: ``weight`` (frozen Parameter, always holds the current blocks after a
    forward or :meth:`sync_`), ``bias`` (frozen or None), ``blocks`` (trainable Parameter),
    ``block_size``, ``block_indices`` (list of (row, col) in block units).
    """

    def __init__(self, weight: nn.Parameter, bias: Optional[nn.Parameter], block_size: int,
                 blocks: Sequence[Sequence[int]]):
        super().__init__()
        out_f, in_f = weight.shape
        l = int(block_size)
        _check_divisible("SparseLinear", (out_f, in_f), l)
        idx = _check_blocks(blocks, out_f // l, in_f // l)
        if not weight.is_contiguous():
            weight = nn.Parameter(weight.detach().contiguous())
        weight.requires_grad_(False)
        if bias is not None:
            bias.requires_grad_(False)
        self.in_features, self.out_features, self.block_size = in_f, out_f, l
        self.weight, self.bias = weight, bias
        dev = weight.device
        rows = torch.tensor([r for r, _ in idx], dtype=torch.long, device=dev)
        cols = torch.tensor([c for _, c in idx], dtype=torch.long, device=dev)
        ucols, inv = torch.unique(cols, sorted=True, return_inverse=True)
        self.register_buffer("block_rows", rows, persistent=False)
        self.register_buffer("block_cols", cols, persistent=False)
        self.register_buffer("block_ucols", ucols, persistent=False)
        self.register_buffer("block_inv", inv, persistent=False)
        self._cols_unique_sorted = ucols.numel() == cols.numel() and bool(torch.equal(ucols, cols))
        self.blocks = nn.Parameter(_read_blocks(weight, rows, cols, l))

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int, blocks: Iterable[Sequence[int]]) -> "SparseLinear":
        """Wrap ``linear`` (its weight and bias are reused, not copied, and frozen).

        ``blocks`` lists (row, col) block coordinates in units of ``block_size``; their
        order is the order of ``self.blocks``. Raises ValueError if ``block_size`` does not
        divide the weight, if a block is out of range or repeated, or if the list is empty.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias, block_size, list(blocks))

    @property
    def block_indices(self) -> list:
        """The (row, col) block coordinates, in the order of ``self.blocks``."""
        return list(zip(self.block_rows.tolist(), self.block_cols.tolist()))

    @torch.no_grad()
    def sync_(self) -> None:
        """Write the current block values into the frozen weight."""
        _write_blocks(self.weight, self.blocks, self.block_rows, self.block_cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad:
            raise RuntimeError("SparseLinear.weight must stay frozen (requires_grad=False); "
                               "only SparseLinear.blocks is trainable")
        if not torch.is_grad_enabled():
            self.sync_()
            return F.linear(x, self.weight, self.bias)
        inv = None if self._cols_unique_sorted else self.block_inv
        return SparseLinearFunction.apply(x, self.blocks, self.weight, self.bias, self.block_rows,
                                          self.block_cols, self.block_ucols, inv)

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding the trained weight (the same tensor, synced) and bias."""
        self.sync_()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, block_size={self.block_size}, n_blocks={self.blocks.shape[0]}")


def divisors_of_both(shape: Sequence[int]) -> list:
    """Block sizes that divide every dimension of ``shape``."""
    g = math.gcd(*shape)
    return [d for d in range(1, g + 1) if g % d == 0]


def _check_divisible(name: str, shape: Sequence[int], l: int) -> None:
    if l < 1 or shape[0] % l or shape[1] % l:
        ok = divisors_of_both(shape)
        raise ValueError(f"block size {l} does not divide weight {name} of shape {tuple(shape)}; "
                         f"block sizes that divide it: {ok}")


def block_coordinate(value, block) -> int:
    """``value`` as an int block coordinate; a float (even 1.0), bool or other non-integer is
    a ValueError naming ``block`` (never silently truncated: (0.5, 0) is not (0, 0))."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"block {block!r}: coordinate {value!r} ({type(value).__name__}) is not an integer; "
                         "block coordinates are integer (row, col) indices in units of the block size")
    return int(value)


def _check_blocks(blocks, n_rows: int, n_cols: int) -> list:
    idx = []
    for b in blocks:
        if isinstance(b, (str, bytes)) or not hasattr(b, "__len__") or len(b) != 2:
            raise ValueError(f"each block must be a (row, col) pair, got {b!r}")
        r, c = block_coordinate(b[0], b), block_coordinate(b[1], b)
        if not (0 <= r < n_rows and 0 <= c < n_cols):
            raise ValueError(f"block {(r, c)} is outside the {n_rows} x {n_cols} block grid "
                             f"(rows 0..{n_rows - 1}, cols 0..{n_cols - 1})")
        idx.append((r, c))
    if not idx:
        raise ValueError("SparseLinear needs at least one block; leave a module without blocks as nn.Linear")
    if len(set(idx)) != len(idx):
        raise ValueError(f"repeated blocks in {idx}")
    return idx
