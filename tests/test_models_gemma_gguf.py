"""The gemma3-270m source end to end on a tiny Gemma 3 GGUF written here with the `gguf` package
(llama.cpp's tensor names, its +1 on Gemma's norm weights, a sentencepiece vocabulary): cut into
four chunks that stand in for the chunk packages, prepare_model assembles them, checks the pinned
SHA-256, converts the GGUF (transformers' loader: the same as for the 270M file) and writes the
prepared directory, whose model gives the logits of the model the GGUF was written from and whose
tokenizer comes from the GGUF (BOS added, as Gemma's). No 270M download needed."""
import hashlib

import numpy as np
import pytest
import torch

from harness import models as hm
from harness.models import load_model, prepare_model

gguf = pytest.importorskip("gguf")
torch.set_num_threads(1)

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
PIECES = ["\u2581", *"abcdefghijklmnopqrstuvwxyz?.:", "\u2581t", "he", "\u2581the", "\u2581a", "er"]
# What transformers' GGUF loader cannot read from a Gemma 3 file it takes from Gemma3TextConfig's
# defaults (query_pre_attn_scalar 256, five sliding layers per full one); the reference model has them.
CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
          "head_dim": 32, "intermediate_size": 128, "sliding_window": 8, "query_pre_attn_scalar": 256,
          "layer_types": ["sliding_attention", "sliding_attention"], "max_position_embeddings": 512,
          "vocab_size": len(SPECIALS) + len(PIECES), "rms_norm_eps": 1e-6, "initializer_range": 0.2,
          "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
          "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}


def write_tiny_gemma3_gguf(path):
    """A random Gemma 3 written as llama.cpp's convert_hf_to_gguf writes one (F32 tensors);
    returns the model it was written from."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**CONFIG)).eval()
    with torch.no_grad():  # norm weights away from 0, so that the +1 / -1 round trip shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(0, 0.3)
    c = model.config
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(1000000.0)
    w.add_sliding_window(c.sliding_window)
    w.add_tokenizer_model("llama")
    w.add_token_list(SPECIALS + PIECES)
    w.add_token_scores([0.0] * 4 + [-float(i) for i in range(len(PIECES))])
    w.add_token_types([3] * 4 + [1] * len(PIECES))  # control, then normal
    w.add_pad_token_id(0)
    w.add_eos_token_id(1)
    w.add_bos_token_id(2)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, c.num_hidden_layers)
    for name, p in model.named_parameters():
        if name == "lm_head.weight":
            continue  # tied
        base, suffix = name.rsplit(".", 1)
        data = p.detach().numpy().astype(np.float32)
        if "norm" in base:
            data = data + 1  # llama.cpp stores Gemma's (1 + w) norm weights
        w.add_tensor(f"{names.get_name(base)}.{suffix}", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    model = write_tiny_gemma3_gguf(root / "tiny.gguf")
    data = (root / "tiny.gguf").read_bytes()
    chunks = []
    for i in range(4):
        chunk = root / f"tiny.gguf.part{i:02d}"
        chunk.write_bytes(data[i * len(data) // 4:(i + 1) * len(data) // 4])
        chunks.append(chunk)
    return model, chunks, hashlib.sha256(data).hexdigest()


def test_prepare_converts_the_assembled_gguf_to_the_model_it_holds(tiny_gguf, tmp_path, monkeypatch):
    reference, chunks, sha = tiny_gguf
    monkeypatch.setattr(hm, "gemma3_chunk_paths", lambda: chunks)
    monkeypatch.setattr(hm, "GEMMA3_GGUF_SHA256", sha)
    info = prepare_model({"source": "gemma3-270m"}, tmp_path / "m")
    assert info["gguf_sha256"] == sha and info["n_params"] == sum(p.numel() for p in reference.parameters())
    assert not list(tmp_path.glob("*.gguf*"))  # the assembled file is not kept
    model, tok = load_model(tmp_path / "m", "float32", "cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM" and not hasattr(model.config, "quantization_config")
    assert model.config.num_key_value_heads == 1 and model.config.sliding_window == 8
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ids = tok("the cat: a hat?").input_ids
    assert ids[0] == tok.bos_token_id == 2 and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "the cat: a hat?"
    x = torch.tensor([ids * 3])  # longer than the window
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, reference(input_ids=x).logits, rtol=1e-5, atol=1e-5)


def test_a_planted_wrong_pin_stops_before_conversion(tiny_gguf, tmp_path, monkeypatch):
    _, chunks, sha = tiny_gguf
    monkeypatch.setattr(hm, "gemma3_chunk_paths", lambda: chunks)
    monkeypatch.setattr(hm, "GEMMA3_GGUF_SHA256", sha[:-1] + ("0" if sha[-1] != "0" else "1"))
    with pytest.raises(ValueError, match=f"has sha256 {sha}, expected"):
        prepare_model({"source": "gemma3-270m"}, tmp_path / "m")
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob("*.gguf*"))
