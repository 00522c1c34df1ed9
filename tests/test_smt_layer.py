"""SparseLinear exactness against a dense nn.Linear, saved activations, frozen weights, errors."""
import pytest
import torch
from torch import nn

import smt

torch.set_num_threads(1)

# (out_features, in_features, block_size, blocks): square, rectangular, GQA k/v (192 x 576)
SHAPES = [
    (64, 64, 16, [(0, 1), (3, 3), (1, 1), (2, 0)]),
    (48, 96, 16, [(2, 5), (0, 5), (1, 0)]),          # shared column 5: distinct slices < blocks
    (192, 576, 64, [(0, 8), (2, 0), (1, 4), (2, 8)]),
    (32, 64, 32, [(0, 1)]),
    (48, 96, 16, [(1, 0), (0, 2), (2, 4)]),           # distinct sorted columns: no re-gather
]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
       torch.float16: dict(rtol=1e-2, atol=1e-2)}


def _pair(out_f, in_f, bias, dtype, seed=0):
    torch.manual_seed(seed)
    dense = nn.Linear(in_f, out_f, bias=bias).to(dtype)
    ref = nn.Linear(in_f, out_f, bias=bias).to(dtype)
    ref.load_state_dict(dense.state_dict())
    return dense, ref


def _close(a, b, dtype):
    scale = max(b.abs().max().item(), 1.0)
    torch.testing.assert_close(a.float() / scale, b.float() / scale, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lead", [(), (7,), (2, 5), (2, 3, 4)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}l{s[2]}")
def test_gradients_match_dense(shape, lead, bias, dtype):
    out_f, in_f, l, blocks = shape
    lin, ref = _pair(out_f, in_f, bias, dtype)
    sl = smt.SparseLinear.from_linear(lin, block_size=l, blocks=blocks)
    x = torch.randn(*lead, in_f, dtype=dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = sl(xa), ref(xb)
    assert ya.shape == yb.shape and ya.dtype == yb.dtype
    _close(ya, yb, dtype)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    _close(xa.grad, xb.grad, dtype)
    W = ref.weight.grad
    assert sl.blocks.grad.shape == (len(blocks), l, l)
    for i, (r, c) in enumerate(blocks):
        _close(sl.blocks.grad[i], W[r * l:(r + 1) * l, c * l:(c + 1) * l], dtype)
    assert sl.weight.grad is None and (sl.bias is None or sl.bias.grad is None)


def test_fp32_exactness_is_tight_and_input_may_be_noncontiguous():
    lin, ref = _pair(48, 96, True, torch.float32, seed=3)
    sl = smt.SparseLinear.from_linear(lin, 16, [(1, 2), (0, 0), (2, 2)])
    x = torch.randn(96, 6, 2).permute(2, 1, 0)       # (2, 6, 96), non-contiguous
    xa, xb = x.clone().requires_grad_(), x.detach().clone().requires_grad_()
    ya, yb = sl(xa), ref(xb)
    ya.transpose(0, 1).square().sum().backward()     # also a non-contiguous output gradient
    yb.transpose(0, 1).square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-6)
    for i, (r, c) in enumerate(sl.block_indices):
        torch.testing.assert_close(sl.blocks.grad[i], ref.weight.grad[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16],
                                   rtol=1e-6, atol=1e-6)


def test_saves_only_distinct_input_column_slices():
    lin, _ = _pair(48, 96, False, torch.float32)
    blocks = [(2, 5), (0, 5), (1, 0)]               # columns {0, 5}
    sl = smt.SparseLinear.from_linear(lin, 16, blocks)
    x = torch.randn(3, 4, 96, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = sl(x)
    assert len(packed) == 1
    saved = packed[0]
    assert saved.shape == (2, 12, 16)               # (distinct columns, tokens, l)
    x2 = x.detach().reshape(12, 96)
    torch.testing.assert_close(saved[0], x2[:, 0:16], rtol=0, atol=0)
    torch.testing.assert_close(saved[1], x2[:, 80:96], rtol=0, atol=0)
    assert [t.shape for t in y.grad_fn.saved_tensors] == [(2, 12, 16)]


def test_nothing_saved_when_blocks_frozen_and_no_graph_under_no_grad():
    lin, ref = _pair(32, 64, False, torch.float32)
    sl = smt.SparseLinear.from_linear(lin, 16, [(0, 1)])
    sl.blocks.requires_grad_(False)
    x = torch.randn(5, 64, requires_grad=True)
    y = sl(x)
    assert y.grad_fn.saved_tensors == ()
    y.sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    ref(ref_x).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    with torch.no_grad():
        assert sl(x).grad_fn is None


def test_unselected_weights_bit_identical_after_adamw():
    lin, _ = _pair(64, 128, True, torch.float32)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    blocks = [(0, 3), (2, 1), (3, 3)]
    sl = smt.SparseLinear.from_linear(lin, 16, blocks)
    opt = torch.optim.AdamW(sl.parameters(), lr=1e-2, weight_decay=0.1)
    assert [p for g in opt.param_groups for p in g["params"] if p.requires_grad] == [sl.blocks]
    for _ in range(4):
        sl(torch.randn(2, 8, 128)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    sl.sync_()
    w = sl.weight.detach()
    mask = torch.zeros_like(w, dtype=torch.bool)
    for r, c in blocks:
        mask[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = True
    assert torch.equal(w[~mask], w0[~mask])
    assert torch.equal(sl.bias.detach(), b0)
    assert not torch.equal(w[mask], w0[mask])
    for i, (r, c) in enumerate(blocks):
        assert torch.equal(w[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16], sl.blocks.detach()[i])


def test_forward_uses_current_blocks_and_to_linear():
    lin, ref = _pair(32, 64, True, torch.float32)
    sl = smt.SparseLinear.from_linear(lin, 16, [(1, 2)])
    with torch.no_grad():
        sl.blocks.add_(1.0)
        ref.weight[16:32, 32:48] += 1.0
    x = torch.randn(3, 64)
    torch.testing.assert_close(sl(x), ref(x))
    plain = sl.to_linear()
    assert type(plain) is nn.Linear and plain.weight is sl.weight
    torch.testing.assert_close(plain(x), ref(x))


@pytest.mark.parametrize("blocks,match", [
    ([], "at least one block"),
    ([(0, 0), (0, 0)], "repeated"),
    ([(2, 0)], "outside"),
    ([(0, 0, 1)], "pair"),
])
def test_block_list_errors(blocks, match):
    with pytest.raises(ValueError, match=match):
        smt.SparseLinear.from_linear(nn.Linear(64, 32), 16, blocks)


def test_block_size_must_divide_and_says_which_sizes_do():
    with pytest.raises(ValueError, match=r"block size 40 does not divide .*\(192, 576\).*\[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 192\]"):
        smt.SparseLinear.from_linear(nn.Linear(576, 192), 40, [(0, 0)])
    with pytest.raises(TypeError, match="nn.Linear"):
        smt.SparseLinear.from_linear(nn.Conv1d(4, 4, 1), 2, [(0, 0)])


def test_unfrozen_weight_is_rejected():
    sl = smt.SparseLinear.from_linear(nn.Linear(32, 32), 16, [(0, 0)])
    sl.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="frozen"):
        sl(torch.randn(2, 32))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_dense(dtype):
    lin, ref = _pair(192, 576, True, dtype)
    lin, ref = lin.cuda(), ref.cuda()
    sl = smt.SparseLinear.from_linear(lin, 64, [(0, 8), (2, 0), (1, 4)])
    x = torch.randn(2, 9, 576, dtype=dtype, device="cuda")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = sl(xa), ref(xb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    _close(ya, yb, dtype)
    _close(xa.grad, xb.grad, dtype)
    for i, (r, c) in enumerate(sl.block_indices):
        _close(sl.blocks.grad[i], ref.weight.grad[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64], dtype)


def test_cpu_autocast_bf16_matches_dense():
    lin, ref = _pair(64, 64, True, torch.float32)
    sl = smt.SparseLinear.from_linear(lin, 16, [(0, 1), (2, 2)])
    x = torch.randn(3, 5, 64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = sl(xa), ref(xb)
    assert ya.dtype == yb.dtype == torch.bfloat16
    ya.float().sum().backward()
    yb.float().sum().backward()
    assert xa.grad.dtype == torch.float32 and sl.blocks.grad.dtype == torch.float32
    _close(xa.grad, xb.grad, torch.bfloat16)
    for i, (r, c) in enumerate(sl.block_indices):
        _close(sl.blocks.grad[i], ref.weight.grad[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16], torch.bfloat16)


@pytest.mark.parametrize("block", [(0.5, 0), (1.0, 0), (0, 1.5), (True, 0), (0, False), ("1", 0), (None, 0),
                                   (torch.tensor(0.5), 0)])
def test_non_integer_block_coordinates_are_refused_naming_the_block(block):
    with pytest.raises(ValueError) as err:
        smt.SparseLinear.from_linear(nn.Linear(64, 32), 16, [(0, 1), block])
    assert f"block {block!r}" in str(err.value) and "not an integer" in str(err.value)


@pytest.mark.parametrize("block", [(-1, 0), (0, -1), (2, 0), (0, 4)])
def test_negative_or_out_of_range_blocks_are_refused_naming_the_block(block):
    with pytest.raises(ValueError, match=rf"block \({block[0]}, {block[1]}\) is outside the 2 x 4 block grid"):
        smt.SparseLinear.from_linear(nn.Linear(64, 32), 16, [block])


def test_integer_like_coordinates_are_accepted():
    import numpy as np

    sl = smt.SparseLinear.from_linear(nn.Linear(64, 32), 16, [(np.int64(1), 3), (torch.tensor(0), np.int32(2))])
    assert sl.block_indices == [(1, 3), (0, 2)] and all(type(v) is int for b in sl.block_indices for v in b)


def test_a_plan_with_non_integer_blocks_is_refused_naming_the_block():
    with pytest.raises(ValueError, match=r"block \(0\.5, 0\).*not an integer"):
        smt.SelectionPlan(16, {"q": (32, 64)}, {"q": [(0.5, 0)]}, 10_000)
    d = smt.SelectionPlan(16, {"q": (32, 64)}, {"q": [(1, 3)]}, 10_000).to_dict()
    d["modules"]["q"]["blocks"] = [[1.0, 3]]
    with pytest.raises(ValueError, match=r"block \(1\.0, 3\)"):
        smt.SelectionPlan.from_dict(d)


def test_autocast_saves_the_columns_in_the_compute_dtype_with_identical_gradients():
    """Under bf16 autocast (fp32 weights and input) the saved columns are bf16, not fp32: half the
    bytes, and the block gradients bit-identical to casting the fp32 columns in the backward."""
    lin, _ = _pair(64, 64, True, torch.float32)
    blocks = [(0, 1), (2, 2), (3, 1)]
    sl = smt.SparseLinear.from_linear(lin, 16, blocks)
    x = torch.randn(3, 5, 64, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = sl(x)
    assert y.dtype == torch.bfloat16 and [t.dtype for t in packed] == [torch.bfloat16]
    assert packed[0].shape == (2, 15, 16)                    # columns {1, 2}
    g = torch.randn_like(y)
    y.backward(g)
    x2 = x.detach().reshape(15, 64)
    g2 = g.reshape(15, 64)
    for i, (r, c) in enumerate(blocks):                      # g^T x in bf16, fp32 x cast to bf16 first
        want = (g2[:, r * 16:(r + 1) * 16].t() @ x2[:, c * 16:(c + 1) * 16].to(torch.bfloat16)).float()
        assert torch.equal(sl.blocks.grad[i], want), (r, c)
