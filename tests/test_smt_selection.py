"""SMT core promises the other smt tests leave open: budgets over tied weights, sums over warm-up
steps, quota ties, layer indices, name matching, the valid budget range."""
import pytest
import torch
from torch import nn

import smt


class Tied(nn.Module):
    """Embedding tied to the output head, two linear 'q_proj' layers in a 'layers' list."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 32)
        self.layers = nn.ModuleList([nn.ModuleDict({"q_proj": nn.Linear(32, 32, bias=False)}) for _ in range(2)])
        self.head = nn.Linear(32, 16, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        for layer in self.layers:
            h = torch.tanh(layer["q_proj"](h))
        return self.head(h)


def _backward(model, seed):
    torch.manual_seed(seed)
    ids = torch.randint(0, 16, (4, 5))
    loss = nn.functional.cross_entropy(model(ids).reshape(-1, 16), torch.randint(0, 16, (20,)))
    model.zero_grad()
    loss.backward()


def test_scorer_budget_counts_tied_weights_once():
    torch.manual_seed(0)
    model = Tied()
    total = 16 * 32 + 2 * 32 * 32  # the tied embedding/head once
    assert smt.count_parameters(model) == total
    # budget: just under 3 blocks of 8x8 of the unique total; counting the tie twice would give 4
    cfg = smt.SMTConfig(block_size=8, budget=3.5 * 64 / total, target_modules=["q_proj"], warmup_steps=1)
    scorer = smt.GradientScorer(model, cfg)
    _backward(model, 0)
    scorer.accumulate()
    plan = scorer.select()
    assert plan.total_params == total and plan.n_blocks == 3
    assert plan.budget_reached == pytest.approx(3 * 64 / total)


def test_scores_are_of_the_gradients_summed_over_all_warmup_steps():
    torch.manual_seed(0)
    model = Tied()
    cfg = smt.SMTConfig(block_size=8, budget=2, target_modules=["q_proj"], warmup_steps=3, strategy="abs_mean")
    scorer = smt.GradientScorer(model, cfg)
    total = {}
    for step in range(3):
        _backward(model, step)
        for i, layer in enumerate(model.layers):
            g = layer["q_proj"].weight.grad.clone()
            total[f"layers.{i}.q_proj"] = total.get(f"layers.{i}.q_proj", 0) + g
        scorer.accumulate()
    scores = scorer.scores()
    for name, g in total.items():
        want = g.reshape(4, 8, 4, 8).mean(dim=(1, 3)).abs()
        torch.testing.assert_close(scores[name], want, rtol=1e-5, atol=1e-8)


def test_mean_abs_is_the_mean_of_absolute_values():
    g = torch.tensor([[1.0, -1.0], [2.0, -2.0]])
    assert smt.block_scores(g, 2, "mean_abs").item() == pytest.approx(1.5)
    assert smt.block_scores(g, 2, "abs_mean").item() == pytest.approx(0.0)
    assert smt.block_scores(g, 2, "l1").item() == pytest.approx(6.0)


def test_selection_takes_the_highest_scores():
    scores = {"a": torch.tensor([[0.1, 0.9], [0.5, 0.2]]), "b": torch.tensor([[0.8, 0.0]])}
    assert smt.select_blocks(scores, 3) == {"a": [(0, 1), (1, 0)], "b": [(0, 0)]}


def test_quota_remainders_go_to_the_earlier_group_on_ties():
    assert smt.split_quota(1, [0.5, 0.5]) == [1, 0]
    assert smt.split_quota(5, [0.5, 0.5]) == [3, 2]
    assert smt.split_quota(2, [1 / 3, 1 / 3, 1 / 3]) == [1, 1, 0]


def test_fraction_budget_never_exceeds_the_ask():
    assert smt.n_blocks_for_budget(0.5, 1000, 10) == 5
    assert smt.n_blocks_for_budget(0.59, 1000, 10) == 5
    assert smt.n_blocks_for_budget(7, 1000, 10) == 7


def test_layer_index_is_the_last_number_and_summaries_share_the_trainable_params():
    assert smt.layer_index("model.layers.3.mlp.experts.7.up_proj") == 7
    assert smt.layer_index("lm_head") is None
    shapes = {"model.layers.0.self_attn.q_proj": (32, 32), "model.layers.0.self_attn.v_proj": (32, 32)}
    plan = smt.SelectionPlan(16, shapes, {"model.layers.0.self_attn.q_proj": [(0, 0)],
                                          "model.layers.0.self_attn.v_proj": [(0, 1), (1, 1), (1, 0)]}, 10000)
    per_type = plan.summary()["per_type"]
    assert per_type["q_proj"]["share"] == pytest.approx(0.25) and per_type["v_proj"]["share"] == pytest.approx(0.75)
    assert per_type["v_proj"]["fraction_of_type"] == pytest.approx(0.75)


@pytest.mark.parametrize("name,pattern,ok", [
    ("model.layers.0.self_attn.q_proj", "q_proj", True),
    ("model.layers.0.self_attn.xq_proj", "q_proj", False),
    ("model.layers.0.self_attn.q_proj.extra", "q_proj", False),
])
def test_plain_names_match_the_last_component_exactly(name, pattern, ok):
    assert smt.name_matches(name, pattern) is ok


@pytest.mark.parametrize("budget", [1.0, 0.0, -0.1, 1.5])
def test_fraction_budgets_outside_0_1_are_refused(budget):
    with pytest.raises(ValueError, match="budget"):
        smt.SMTConfig(budget=budget)


def test_merged_and_reloaded_models_carry_the_trained_blocks(tmp_path):
    """Blocks changed after the last forward: merging, saving and loading must still carry them
    (the frozen weight is only a cache of the blocks)."""
    torch.manual_seed(0)
    model = Tied()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    dense["layers.1.q_proj.weight"][16:24, 8:16] += 1.0  # block (2, 1) of 8x8, +1 everywhere
    reference = Tied()
    reference.load_state_dict(dense)
    ids = torch.arange(10).reshape(2, 5)
    with torch.no_grad():
        want = reference(ids)
    shapes = {f"layers.{i}.q_proj": (32, 32) for i in range(2)}
    plan = smt.SelectionPlan(8, shapes, {"layers.1.q_proj": [(2, 1)]}, smt.count_parameters(model))
    smt.apply_smt(model, plan)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["layers.1.q_proj.blocks"]
    with torch.no_grad():
        model.layers[1]["q_proj"].blocks.add_(1.0)  # no forward after this
    smt.save_smt(model, tmp_path)
    torch.manual_seed(0)
    reloaded = smt.load_smt(Tied(), tmp_path)
    # right after loading, the state dict already holds the trained weight
    torch.testing.assert_close(reloaded.state_dict()["layers.1.q_proj.weight"], dense["layers.1.q_proj.weight"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), want)
    merged = smt.merge_smt(model)
    torch.testing.assert_close(merged.state_dict()["layers.1.q_proj.weight"], dense["layers.1.q_proj.weight"])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), want)


def test_an_empty_plan_has_zero_shares():
    plan = smt.SelectionPlan(16, {"model.layers.0.self_attn.q_proj": (32, 32)}, {}, 1000)
    t = plan.summary()["per_type"]["q_proj"]
    assert (t["share"], t["fraction_of_type"], plan.budget_reached) == (0.0, 0.0, 0.0)


def test_an_inference_forward_uses_blocks_changed_since_the_last_forward():
    torch.manual_seed(0)
    model = Tied()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    dense["layers.0.q_proj.weight"][0:8, 24:32] -= 0.5
    reference = Tied()
    reference.load_state_dict(dense)
    ids = torch.arange(10).reshape(2, 5)
    shapes = {f"layers.{i}.q_proj": (32, 32) for i in range(2)}
    smt.apply_smt(model, smt.SelectionPlan(8, shapes, {"layers.0.q_proj": [(0, 3)]}, smt.count_parameters(model)))
    with torch.no_grad():
        model(ids)  # an earlier forward wrote the old blocks into the weight
        model.layers[0]["q_proj"].blocks.sub_(0.5)  # an optimizer step, no forward since
        torch.testing.assert_close(model(ids), reference(ids))
