"""apply / train / save / load / merge on a tiny random-init LLaMA built from a config."""
import copy

import pytest
import torch
from torch import nn

import smt

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 97, (2, 10), generator=g)


def _select(model, **kw):
    cfg = smt.SMTConfig(**{"block_size": 16, "budget": 0.05, "warmup_steps": 2, "warmup_mode": "grad_only", **kw})
    scorer = smt.GradientScorer(model, cfg)
    for step in range(cfg.warmup_steps):
        ids = _batch(step)
        model(input_ids=ids, labels=ids).loss.backward()
        scorer.accumulate()
        model.zero_grad()
    return scorer.select()


def test_block_gradients_equal_dense_model_gradients(base):
    plan = _select(copy.deepcopy(base), budget=12)
    dense, sparse = copy.deepcopy(base), smt.apply_smt(copy.deepcopy(base), plan)
    ids = _batch(7)
    dense(input_ids=ids, labels=ids).loss.backward()
    sparse(input_ids=ids, labels=ids).loss.backward()
    dense_grads = dict(dense.named_parameters())
    for name, m in smt.sparse_modules(sparse).items():
        W = dense_grads[f"{name}.weight"].grad
        for i, (r, c) in enumerate(m.block_indices):
            torch.testing.assert_close(m.blocks.grad[i], W[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16],
                                       rtol=1e-5, atol=1e-6)


def test_apply_train_save_load_merge_reproduce_outputs(base, tmp_path):
    model = copy.deepcopy(base)
    plan = _select(model)
    assert plan.n_blocks == int(0.05 * smt.count_parameters(base) / 256)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    smt.apply_smt(model, plan)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".blocks") for n in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == plan.trainable_params
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(3):
        ids = _batch(10 + step)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    ids = _batch(99)
    with torch.no_grad():
        out = model(input_ids=ids).logits
        assert not torch.allclose(out, base(input_ids=ids).logits)
    path = smt.save_smt(model, tmp_path / "delta")
    assert path.name == "smt_delta.safetensors" and path.stat().st_size < 4 * plan.trainable_params + 8192
    loaded = smt.load_smt(copy.deepcopy(base), tmp_path / "delta").eval()
    assert loaded.smt_plan == plan
    merged_fresh = smt.load_smt(copy.deepcopy(base), path, merge=True).eval()
    smt.merge_smt(model)
    assert not smt.sparse_modules(model) and not hasattr(model, "smt_plan")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, out)
        assert torch.equal(merged_fresh(input_ids=ids).logits, out)
        assert torch.equal(model(input_ids=ids).logits, out)
    after = dict(model.named_parameters())
    for name, w0 in before.items():
        mod = name.rsplit(".", 1)[0]
        if plan.blocks.get(mod):
            mask = torch.zeros_like(w0, dtype=torch.bool)
            for r, c in plan.blocks[mod]:
                mask[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = True
            assert torch.equal(after[name].detach()[~mask], w0[~mask])
            assert not torch.equal(after[name].detach()[mask], w0[mask])
        else:
            assert torch.equal(after[name].detach(), w0), name


def test_quota_split_between_mlp_and_attention(base):
    targets = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    quotas = {"mlp": {"modules": ["gate_proj", "up_proj", "down_proj"], "share": 0.25},
              "attn": {"modules": ["q_proj", "k_proj", "v_proj"], "share": 0.75}}
    plan = _select(copy.deepcopy(base), budget=20, target_modules=targets, quotas=quotas)
    per_type = plan.summary()["per_type"]
    assert sum(per_type[t]["blocks"] for t in targets[3:]) == 5
    assert sum(per_type[t]["blocks"] for t in targets[:3]) == 15
    assert plan.meta["group_blocks"] == {"mlp": 5, "attn": 15}
    assert plan.layer_map()["types"] == targets


def test_full_ft_warmup_steps_the_model_and_still_selects(base):
    model = copy.deepcopy(base)
    cfg = smt.SMTConfig(block_size=16, budget=8, warmup_steps=2)
    scorer = smt.GradientScorer(model, cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        ids = _batch(step)
        model(input_ids=ids, labels=ids).loss.backward()
        scorer.accumulate()
        opt.step()
        opt.zero_grad()
    plan = scorer.select()
    assert plan.n_blocks == 8 and plan.meta["warmup_mode"] == "full_ft"
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_manual_sparse_linear_save_load_without_plan(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
    fresh = copy.deepcopy(model)
    model[0] = smt.SparseLinear.from_linear(model[0], 8, [(3, 1), (0, 2)])   # unsorted on purpose
    with torch.no_grad():
        model[0].blocks.normal_()
    x = torch.randn(4, 32)
    out = model(x)
    smt.save_smt(model, tmp_path / "d.safetensors")
    smt.load_smt(fresh, tmp_path / "d.safetensors")
    assert torch.equal(fresh(x), out)


def test_errors(base, tmp_path):
    plan = _select(copy.deepcopy(base), budget=4)
    model = smt.apply_smt(copy.deepcopy(base), plan)
    with pytest.raises(ValueError, match="apply_smt was already called"):
        smt.apply_smt(model, plan)
    other = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    with pytest.raises(ValueError, match="has shape .* but the model's weight is"):
        smt.apply_smt(other, plan)
    with pytest.raises(ValueError, match="not in the model"):
        smt.apply_smt(nn.Sequential(nn.Linear(4, 4)), plan)
    with pytest.raises(ValueError, match="call smt.apply_smt"):
        smt.save_smt(copy.deepcopy(base), tmp_path)
    with pytest.raises(FileNotFoundError, match="no SMT delta"):
        smt.load_smt(copy.deepcopy(base), tmp_path / "missing")
    path = smt.save_smt(model, tmp_path)
    with pytest.raises(ValueError, match="has shape"):
        smt.load_smt(other, path)


def _trained_delta(base, tmp_path):
    plan = _select(copy.deepcopy(base), budget=6)
    model = smt.apply_smt(copy.deepcopy(base), plan)
    with torch.no_grad():
        for m in smt.sparse_modules(model).values():
            m.blocks.add_(torch.randn_like(m.blocks))
    return plan, model, smt.save_smt(model, tmp_path)


def test_load_smt_refuses_another_base_of_the_same_shape(base, tmp_path):
    plan, model, path = _trained_delta(base, tmp_path)
    ids = _batch(9)
    assert torch.equal(smt.load_smt(copy.deepcopy(base), path)(ids).logits, model(ids).logits)
    torch.manual_seed(123)
    other = transformers.LlamaForCausalLM(base.config).eval()   # same architecture, other weights
    with pytest.raises(ValueError) as err:
        smt.load_smt(copy.deepcopy(other), path)
    message = str(err.value)
    assert str(path) in message and "another base model" in message and "allow_base_mismatch=True" in message
    assert "weights of the targeted modules differ" in message
    forced = smt.load_smt(copy.deepcopy(other), path, allow_base_mismatch=True)
    assert len(smt.sparse_modules(forced)) == len(smt.sparse_modules(model))
    # one weight outside the blocks of one targeted module is enough ...
    name = next(n for n, b in plan.blocks.items() if b)
    l = plan.block_size
    r, c = plan.blocks[name][0]
    nudged = copy.deepcopy(base)
    weight = nudged.get_submodule(name).weight
    free = next((i, j) for i in range(weight.shape[0] // l) for j in range(weight.shape[1] // l)
                if (i, j) not in plan.blocks[name])
    with torch.no_grad():
        weight[free[0] * l, free[1] * l] += 1e-3
    with pytest.raises(ValueError, match="another base model"):
        smt.load_smt(nudged, path)
    # ... while the weights under the blocks (which the delta overwrites) do not identify the base
    under = copy.deepcopy(base)
    with torch.no_grad():
        under.get_submodule(name).weight[r * l:(r + 1) * l, c * l:(c + 1) * l] += 1.0
    torch.testing.assert_close(smt.load_smt(under, path)(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_load_smt_refuses_a_deeper_model_and_names_the_dtype(base, tmp_path):
    _, _, path = _trained_delta(base, tmp_path)
    cfg = copy.deepcopy(base.config)
    cfg.num_hidden_layers = 3
    torch.manual_seed(0)
    deeper = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # the first two layers (and everything else shared) exactly the base's
        for name, p in base.named_parameters():
            deeper.get_parameter(name).copy_(p)
    with pytest.raises(ValueError, match=r"has 2 layers, this model 3.*parameter names or shapes differ"):
        smt.load_smt(deeper, path)
    with pytest.raises(ValueError, match=r"base was float32, this model is bfloat16"):
        smt.load_smt(copy.deepcopy(base).to(torch.bfloat16), path)


def test_truncated_or_corrupt_delta_names_the_file(base, tmp_path):
    _, _, path = _trained_delta(base, tmp_path)
    raw = path.read_bytes()
    for label, damaged in [("truncated", raw[: len(raw) // 2]), ("header", b"\x08" + raw[1:]),
                           ("empty", b""), ("garbage", b"not a safetensors file at all")]:
        bad = tmp_path / f"{label}.safetensors"
        bad.write_bytes(damaged)
        with pytest.raises(ValueError) as err:
            smt.load_smt(copy.deepcopy(base), bad)
        assert str(bad) in str(err.value) and "truncated or corrupt" in str(err.value), label
