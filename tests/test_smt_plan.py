"""SelectionPlan: JSON round trip, summary shares, layer map, validation."""
import pytest

import smt

SHAPES = {f"model.layers.{i}.self_attn.{t}": (64 if t == "q_proj" else 32, 64)
          for i in range(3) for t in ("q_proj", "k_proj", "v_proj")}
BLOCKS = {"model.layers.0.self_attn.q_proj": [(3, 1), (0, 0)], "model.layers.0.self_attn.v_proj": [(1, 2)],
          "model.layers.2.self_attn.v_proj": [(0, 0), (1, 3), (0, 3)]}


def _plan():
    return smt.SelectionPlan(16, SHAPES, BLOCKS, total_params=10_000, meta={"budget": 0.1, "strategy": "mean_abs"})


def test_json_round_trip_string_and_file(tmp_path):
    plan = _plan()
    again = smt.SelectionPlan.from_json(plan.to_json())
    assert again == plan and again.blocks == plan.blocks and again.meta == plan.meta
    path = tmp_path / "plan.json"
    plan.to_json(path)
    assert smt.SelectionPlan.from_json(path) == plan
    assert smt.SelectionPlan.from_json(str(path)) == plan
    assert plan.blocks["model.layers.0.self_attn.q_proj"] == [(0, 0), (3, 1)]     # sorted
    assert plan.blocks["model.layers.1.self_attn.k_proj"] == []


def test_counts_summary_and_shares():
    plan = _plan()
    assert plan.n_blocks == 6 and plan.trainable_params == 6 * 256
    assert plan.budget_reached == pytest.approx(1536 / 10_000)
    s = plan.summary()
    assert s["budget_asked"] == 0.1 and s["n_modules"] == 9 and s["n_modules_with_blocks"] == 3
    q, k, v = (s["per_type"][t] for t in ("q_proj", "k_proj", "v_proj"))
    assert (q["blocks"], k["blocks"], v["blocks"]) == (2, 0, 4)
    assert (q["share"], k["share"], v["share"]) == pytest.approx((2 / 6, 0.0, 4 / 6))
    assert v["fraction_of_type"] == pytest.approx(4 * 256 / (3 * 32 * 64))
    assert plan.counts()["model.layers.2.self_attn.v_proj"] == 3


def test_layer_map():
    m = _plan().layer_map()
    assert m["layers"] == [0, 1, 2] and m["types"] == ["q_proj", "k_proj", "v_proj"]
    assert m["counts"] == [[2, 0, 1], [0, 0, 0], [0, 0, 3]]
    odd = smt.SelectionPlan(8, {"lm_head": (16, 16), "h.1.attn": (8, 8)}, {"lm_head": [(0, 1)]}, 100)
    assert odd.layer_map() == {"layers": [1, None], "types": ["lm_head", "attn"], "counts": [[0, 0], [1, 0]]}


@pytest.mark.parametrize("blocks,match", [
    ({"model.layers.0.self_attn.k_proj": [(2, 0)]}, "outside"),
    ({"model.layers.0.self_attn.k_proj": [(0, 0), (0, 0)]}, "repeated"),
    ({"nope": [(0, 0)]}, "without a shape"),
])
def test_invalid_plans(blocks, match):
    with pytest.raises(ValueError, match=match):
        smt.SelectionPlan(16, SHAPES, blocks, 100)


def test_not_a_plan():
    with pytest.raises(ValueError, match="not an SMT selection plan"):
        smt.SelectionPlan.from_json('{"block_size": 4}')
