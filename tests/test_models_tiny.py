"""Model sources: the tiny tokenizer/model, prepare_model caching, clear errors."""
import json

import pytest
import torch

from harness.models import load_model, prepare_model, resolve_dtype, tiny_tokenizer

torch.set_num_threads(1)


def test_tiny_tokenizer_roundtrip_bytes():
    tok = tiny_tokenizer()
    text = "### Response:\n the correct answer is true é€"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(tok) == 260 and max(ids) < 260
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_prepare_tiny_then_load(tmp_path):
    spec = {"source": "tiny", "config": {"hidden_size": 32, "intermediate_size": 64}, "seed": 3}
    info = prepare_model(spec, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "prepared.json").read_text())["files_sha256"] == info["files_sha256"]
    model, tok = load_model(tmp_path / "m", "float32", "cpu")
    assert model.config.hidden_size == 32 and tok.padding_side == "left" and tok.pad_token_id is not None
    assert sum(p.numel() for p in model.parameters()) == info["n_params"]
    # same spec: not rebuilt (the marker is reused as is)
    assert prepare_model(spec, tmp_path / "m")["prepare_seconds"] == info["prepare_seconds"]
    # same seed gives the same weights
    again = prepare_model(spec, tmp_path / "m2")
    assert again["files_sha256"] == info["files_sha256"]


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown model source"):
        prepare_model({"source": "nowhere"}, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="prepare_model"):
        load_model(tmp_path / "missing", "float32", "cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float33", torch.device("cpu"))
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
