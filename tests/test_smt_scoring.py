"""Block scoring, selection against a brute-force reference, quotas, budget, scorer errors."""
import math

import pytest
import torch
from torch import nn

import smt

torch.set_num_threads(1)


def _brute_scores(g, l, strategy):
    R, C = g.shape[0] // l, g.shape[1] // l
    out = torch.empty(R, C)
    for r in range(R):
        for c in range(C):
            b = g[r * l:(r + 1) * l, c * l:(c + 1) * l].double()
            out[r, c] = {"mean_abs": lambda: b.abs().mean(), "abs_mean": lambda: b.mean().abs(),
                         "l1": lambda: b.abs().sum(), "l2": lambda: b.pow(2).sum().sqrt()}[strategy]()
    return out


def _brute_select(scores, k, names=None):
    names = names or list(scores)
    cand = [(-float(s[r, c]), names.index(n), r, c) for n, s in scores.items() if n in names
            for r in range(s.shape[0]) for c in range(s.shape[1])]
    out = {n: [] for n in scores}
    for _, i, r, c in sorted(cand)[:k]:
        out[names[i]].append((r, c))
    return {n: sorted(v) for n, v in out.items()}


@pytest.mark.parametrize("strategy", smt.config.STRATEGIES)
def test_block_scores_match_brute_force(strategy):
    torch.manual_seed(0)
    g = torch.randn(24, 40)
    torch.testing.assert_close(smt.block_scores(g, 8, strategy), _brute_scores(g, 8, strategy))


@pytest.mark.parametrize("strategy", smt.config.STRATEGIES)
@pytest.mark.parametrize("k", [1, 7, 20])
def test_selection_matches_brute_force(strategy, k):
    torch.manual_seed(1)
    grads = {"a.q_proj": torch.randn(16, 32), "a.k_proj": torch.randn(8, 32), "b.q_proj": torch.randn(16, 32)}
    scores = {n: smt.block_scores(g, 8, strategy) for n, g in grads.items()}
    got = smt.select_blocks(scores, k)
    assert got == _brute_select(scores, k)
    assert sum(len(v) for v in got.values()) == k


def test_ties_break_by_module_order_then_row_then_col():
    scores = {"m1": torch.tensor([[1.0, 2.0], [2.0, 2.0]]), "m0": torch.tensor([[2.0, 0.0], [2.0, 1.0]])}
    got = smt.select_blocks(scores, 5)
    assert got == {"m1": [(0, 1), (1, 0), (1, 1)], "m0": [(0, 0), (1, 0)]}
    assert got == _brute_select(scores, 5)


def test_quotas_respected_exactly_and_topk_inside_groups():
    torch.manual_seed(2)
    scores = {f"l{i}.{t}": torch.rand(3, 4) * (10 if t == "up_proj" else 1)
              for i in range(2) for t in ("q_proj", "v_proj", "up_proj")}
    quotas = {"mlp": {"modules": ["up_proj"], "share": 0.25}, "attn": {"modules": ["q_proj", "v_proj"], "share": 0.75}}
    got = smt.select_blocks(scores, 10, quotas)      # 2.5 -> 2 (+1 by fraction), 7.5 -> 7 (+0): mlp 3, attn 7
    n_mlp = sum(len(v) for n, v in got.items() if n.endswith("up_proj"))
    n_attn = sum(len(v) for n, v in got.items() if not n.endswith("up_proj"))
    assert (n_mlp, n_attn) == (3, 7)
    attn = [n for n in scores if not n.endswith("up_proj")]
    mlp = [n for n in scores if n.endswith("up_proj")]
    ref_attn = _brute_select({n: scores[n] for n in attn}, 7)
    ref_mlp = _brute_select({n: scores[n] for n in mlp}, 3)
    assert got == {n: (ref_attn | ref_mlp)[n] for n in scores}


@pytest.mark.parametrize("n,shares,expected", [
    (10, [0.25, 0.75], [3, 7]), (9, [1 / 3, 1 / 3, 1 / 3], [3, 3, 3]), (10, [1 / 3, 1 / 3, 1 / 3], [4, 3, 3]),
    (7, [0.5, 0.5], [4, 3]), (5, [0.0, 1.0], [0, 5])])
def test_split_quota(n, shares, expected):
    assert smt.split_quota(n, shares) == expected


def test_non_finite_scores_are_rejected():
    with pytest.raises(ValueError, match="non-finite block scores in bad"):
        smt.select_blocks({"ok": torch.ones(2, 2), "bad": torch.tensor([[1.0, float("nan")]])}, 1)


class Toy(nn.Module):
    """A bare module with Linear children named like attention projections."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"q_proj": nn.Linear(32, 32, bias=False),
                                                   "v_proj": nn.Linear(32, 16, bias=False)}) for _ in range(2))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer["q_proj"](x))
            h = layer["v_proj"](x)
            x = x + h.repeat(1, 2)
        return self.head(h)


def _warmup(model, scorer, steps, step_opt):
    torch.manual_seed(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        model(torch.randn(6, 32)).pow(2).mean().backward()
        scorer.accumulate()
        if step_opt:
            opt.step()
        opt.zero_grad()


def test_scorer_sums_gradients_and_selects_brute_force_on_bare_module():
    torch.manual_seed(0)
    model = Toy()
    cfg = smt.SMTConfig(block_size=8, budget=5, target_modules=["q_proj", "v_proj"], warmup_steps=3,
                        warmup_mode="grad_only")
    scorer = smt.GradientScorer(model, cfg)
    assert scorer.n_blocks == 5 and list(scorer.modules) == ["layers.0.q_proj", "layers.0.v_proj",
                                                            "layers.1.q_proj", "layers.1.v_proj"]
    sums = {n: torch.zeros_like(m.weight) for n, m in scorer.modules.items()}
    torch.manual_seed(5)
    for _ in range(3):
        model(torch.randn(6, 32)).pow(2).mean().backward()
        scorer.accumulate()
        for n, m in scorer.modules.items():
            sums[n] += m.weight.grad
        model.zero_grad()
    for n in sums:
        torch.testing.assert_close(scorer._acc[n], sums[n])
    plan = scorer.select()
    ref = _brute_select({n: _brute_scores(g, 8, "mean_abs") for n, g in sums.items()}, 5)
    assert plan.blocks == ref and plan.n_blocks == 5
    assert plan.meta["warmup_steps"] == 3 and plan.meta["warmup_mode"] == "grad_only"


def test_fraction_budget_rounds_down_and_cpu_accumulator():
    model = Toy()
    total = smt.count_parameters(model)
    cfg = smt.SMTConfig(block_size=8, budget=0.1, target_modules=["q_proj"], accumulate_on_cpu=True)
    scorer = smt.GradientScorer(model, cfg)
    assert scorer.n_blocks == math.floor(0.1 * total / 64)
    _warmup(model, scorer, 2, step_opt=True)
    assert all(a.device.type == "cpu" and a.dtype == torch.float32 for a in scorer._acc.values())
    plan = scorer.select()
    assert plan.n_blocks == scorer.n_blocks and plan.budget_reached <= 0.1


def test_scorer_on_tied_embeddings_counts_them_once():
    emb = nn.Embedding(10, 32)
    model = nn.ModuleDict({"emb": emb, "q_proj": nn.Linear(32, 32), "lm_head": nn.Linear(32, 10, bias=False)})
    model["lm_head"].weight = emb.weight
    assert smt.count_parameters(model) == 320 + 32 * 32 + 32


def test_scorer_errors_before_any_work():
    model = Toy()
    with pytest.raises(ValueError, match=r"block size 12 does not divide weight layers.0.q_proj of shape \(32, 32\)"):
        smt.GradientScorer(model, smt.SMTConfig(block_size=12, budget=1, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="'k_proj' matches no nn.Linear"):
        smt.GradientScorer(model, smt.SMTConfig(block_size=8, budget=1, target_modules=["q_proj", "k_proj"]))
    with pytest.raises(ValueError, match="hold only 32 blocks"):
        smt.GradientScorer(model, smt.SMTConfig(block_size=8, budget=33, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="less than one"):
        smt.GradientScorer(model, smt.SMTConfig(block_size=8, budget=1e-4, target_modules=["q_proj"]))
    quotas = {"a": {"modules": ["q_proj"], "share": 0.5}, "b": {"modules": ["k_proj"], "share": 0.5}}
    with pytest.raises(ValueError, match="quota group 'b'.*matches none"):
        smt.GradientScorer(model, smt.SMTConfig(block_size=8, budget=4, target_modules=["q_proj", "v_proj"],
                                                quotas=quotas))
    quotas = {"a": {"modules": ["q_proj"], "share": 1.0}}
    with pytest.raises(ValueError, match="layers.0.v_proj is in 0 quota groups"):
        smt.GradientScorer(model, smt.SMTConfig(block_size=8, budget=4, target_modules=["q_proj", "v_proj"],
                                                quotas=quotas))
    quotas = {"a": {"modules": ["q_proj"], "share": 0.1}, "b": {"modules": ["v_proj"], "share": 0.9}}
    with pytest.raises(ValueError, match="quota group 'b', which hold only 16"):
        smt.GradientScorer(model, smt.SMTConfig(block_size=8, budget=20, target_modules=["q_proj", "v_proj"],
                                                quotas=quotas))


def test_scorer_usage_errors_and_regex_targets():
    model = Toy()
    scorer = smt.GradientScorer(model, smt.SMTConfig(block_size=8, budget=2, target_modules=["re:layers\\.1\\..*"]))
    assert list(scorer.modules) == ["layers.1.q_proj", "layers.1.v_proj"]
    with pytest.raises(RuntimeError, match="call accumulate"):
        scorer.select()
    with pytest.raises(RuntimeError, match="no target weight has a .grad"):
        scorer.accumulate()
    model.layers[1]["v_proj"].weight.grad = torch.ones(16, 32)
    scorer.accumulate()                              # a target without .grad counts as a zero gradient
    assert torch.equal(scorer._acc["layers.1.q_proj"], torch.zeros(32, 32))
    assert scorer.select().blocks["layers.1.v_proj"] == [(0, 0), (0, 1)]
    model.layers[1]["q_proj"].weight.grad = torch.full((32, 32), float("inf"))
    scorer.accumulate()
    with pytest.raises(ValueError, match="non-finite block scores in layers.1.q_proj"):
        scorer.select()
