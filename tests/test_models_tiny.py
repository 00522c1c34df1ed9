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


def test_corrupt_marker_names_the_file(tmp_path):
    spec = {"source": "tiny", "config": {"hidden_size": 32, "intermediate_size": 64}, "seed": 3}
    prepare_model(spec, tmp_path / "m")
    marker = tmp_path / "m" / "prepared.json"
    marker.write_text(marker.read_text()[:30])
    with pytest.raises(ValueError) as err:
        prepare_model(spec, tmp_path / "m")
    assert str(marker) in str(err.value) and "not valid JSON" in str(err.value)


def test_a_path_source_is_identified_by_content_not_location(tmp_path):
    import shutil

    from harness.models import content_spec, source_checksum

    spec = {"source": "tiny", "config": {"hidden_size": 32, "intermediate_size": 64}, "seed": 3}
    prepare_model(spec, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    here, there = {"source": "path", "path": str(tmp_path / "a")}, {"source": "path", "path": str(tmp_path / "elsewhere/b")}
    assert content_spec(here) == content_spec(there) == {"source": "path"}
    cache = tmp_path / "cache.json"
    assert source_checksum(here, cache) == source_checksum(there, cache)
    assert "model.safetensors" in source_checksum(here, cache)
    # a moved source with the same content is not re-prepared (the marker is reused)
    info = prepare_model(here, tmp_path / "p")
    assert prepare_model(there, tmp_path / "p") == info
    weights = tmp_path / "elsewhere/b/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")
    assert source_checksum(there, cache) != source_checksum(here, cache)
    assert source_checksum({"source": "path", "path": str(tmp_path / "none")})["missing"]
    assert source_checksum(spec) is None
    assert prepare_model(there, tmp_path / "p")["source_sha256"] != info["source_sha256"]  # new content: redone
