"""SparseLinear against a dense nn.Linear over GENERATED block patterns (a property test).

tests/test_smt_layer.py checks a few hand-picked shapes; this module generates the patterns
instead, so that a bug that only shows for one family of column layouts cannot hide:

* every non-empty subset of a 2 x 3 block grid in EVERY order (1 956 patterns: sorted,
  unsorted, repeated columns, one block, all blocks, each permutation of each);
* every non-empty subset of a 3 x 3 grid in sorted, reversed and one seeded shuffled order;
* seeded random patterns on a rectangular 4 x 6 grid (GQA-like k/v shapes), with bias, with
  several leading input dimensions.

For each pattern, in fp32, the output, the INPUT gradient and every block's gradient must equal
the dense layer's to a tight tolerance. The classifier below asserts that each family of column
layouts the layer treats differently (distinct sorted columns: no re-gather; distinct UNSORTED
columns; repeated columns) really occurs among the generated patterns, so shrinking the
generator cannot silently drop one.
"""
import itertools
import random

import pytest
import torch
from torch import nn

import smt

torch.set_num_threads(1)
TOL = dict(rtol=1e-5, atol=1e-6)  # fp32; the dense and block gradients differ only in summation order


def family(blocks) -> str:
    cols = [c for _, c in blocks]
    if len(set(cols)) < len(cols):
        return "repeated"
    return "sorted" if cols == sorted(cols) else "unsorted"


def all_orders(n_rows, n_cols):
    """Every non-empty subset of the grid in every order."""
    grid = [(r, c) for r in range(n_rows) for c in range(n_cols)]
    for k in range(1, len(grid) + 1):
        for subset in itertools.combinations(grid, k):
            yield from itertools.permutations(subset)


def three_orders(n_rows, n_cols, seed=0):
    """Every non-empty subset in sorted, reversed and one seeded shuffled order."""
    rng = random.Random(seed)
    grid = [(r, c) for r in range(n_rows) for c in range(n_cols)]
    for k in range(1, len(grid) + 1):
        for subset in itertools.combinations(grid, k):
            shuffled = list(subset)
            rng.shuffle(shuffled)
            yield from dict.fromkeys([subset, subset[::-1], tuple(shuffled)])


def random_patterns(n_rows, n_cols, count, seed=0):
    rng = random.Random(seed)
    grid = [(r, c) for r in range(n_rows) for c in range(n_cols)]
    for _ in range(count):
        yield tuple(rng.sample(grid, rng.randint(1, len(grid))))


def check_against_dense(blocks, out_f, in_f, l, lead=(3,), bias=False, seed=0):
    """Assert output, input gradient and block gradients equal the dense layer's (fp32)."""
    torch.manual_seed(seed)
    dense = nn.Linear(in_f, out_f, bias=bias)
    ref = nn.Linear(in_f, out_f, bias=bias)
    ref.load_state_dict(dense.state_dict())
    sl = smt.SparseLinear.from_linear(dense, block_size=l, blocks=list(blocks))
    x = torch.randn(*lead, in_f)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = sl(xa), ref(xb)
    torch.testing.assert_close(ya, yb, **TOL)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    where = f"blocks {list(blocks)} ({family(blocks)} columns)"
    torch.testing.assert_close(xa.grad, xb.grad, **TOL, msg=lambda m: f"input gradient, {where}: {m}")
    W = ref.weight.grad
    assert sl.blocks.grad.shape == (len(blocks), l, l), where
    for i, (r, c) in enumerate(blocks):
        torch.testing.assert_close(sl.blocks.grad[i], W[r * l:(r + 1) * l, c * l:(c + 1) * l], **TOL,
                                   msg=lambda m: f"block {i} {(r, c)} gradient, {where}: {m}")


# ---- the named bug (issue 22, 1): distinct but unsorted columns -------------------------------

@pytest.mark.parametrize("blocks", [[(0, 1), (1, 0)], [(1, 2), (0, 0), (2, 1)], [(0, 3), (1, 1)]])
def test_distinct_unsorted_columns_match_dense(blocks):
    """Blocks whose columns are distinct but not sorted (22 modules of one committed SMT plan):
    skipping the re-gather there would take each block's gradient from another input column."""
    assert family(blocks) == "unsorted"
    check_against_dense(blocks, out_f=48, in_f=64, l=16)


# ---- the general form: generated patterns -----------------------------------------------------

def test_every_subset_of_a_2x3_grid_in_every_order_matches_dense():
    patterns = list(all_orders(2, 3))
    assert len(patterns) == 1956
    seen = {family(p) for p in patterns}
    assert seen == {"sorted", "unsorted", "repeated"}
    assert any(len(p) == 1 for p in patterns) and any(len(p) == 6 for p in patterns)
    for p in patterns:
        check_against_dense(p, out_f=4, in_f=6, l=2, lead=(2,))


@pytest.mark.parametrize("bias", [False, True])
def test_every_subset_of_a_3x3_grid_sorted_reversed_shuffled_matches_dense(bias):
    patterns = list(three_orders(3, 3, seed=int(bias)))
    assert {family(p) for p in patterns} == {"sorted", "unsorted", "repeated"}
    for p in patterns:
        check_against_dense(p, out_f=6, in_f=6, l=2, lead=(2, 2), bias=bias)


@pytest.mark.parametrize("lead", [(), (5,), (2, 3, 2)])
def test_random_patterns_on_a_rectangular_grid_match_dense(lead):
    patterns = list(random_patterns(4, 6, 60, seed=len(lead)))
    assert {family(p) for p in patterns} >= {"unsorted", "repeated"}
    for i, p in enumerate(patterns):
        check_against_dense(p, out_f=16, in_f=24, l=4, lead=lead, bias=i % 2 == 0, seed=i)


def test_distinct_unsorted_columns_also_with_noncontiguous_input():
    torch.manual_seed(1)
    dense, ref = nn.Linear(64, 48), nn.Linear(64, 48)
    ref.load_state_dict(dense.state_dict())
    blocks = [(2, 3), (0, 1), (1, 0)]
    sl = smt.SparseLinear.from_linear(dense, 16, blocks)
    x = torch.randn(64, 5, 2).permute(2, 1, 0)                  # (2, 5, 64), non-contiguous
    xa, xb = x.clone().requires_grad_(), x.detach().clone().requires_grad_()
    sl(xa).pow(2).sum().backward()
    ref(xb).pow(2).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    for i, (r, c) in enumerate(blocks):
        torch.testing.assert_close(sl.blocks.grad[i], ref.weight.grad[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16],
                                   **TOL)
