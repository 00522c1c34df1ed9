"""Data root, checksums, downloads, training-set builders and test-set loaders on the mirror."""
import io
import json
import os
import pathlib
import shutil
import urllib.request

import pytest

from harness import data

COUNTS = {"boolq": 3270, "piqa": 1838, "social_i_qa": 1954, "hellaswag": 10042, "winogrande": 1267,
          "ARC-Easy": 2376, "ARC-Challenge": 1172, "openbookqa": 500, "gsm8k": 1319, "SVAMP": 1000,
          "AddSub": 395, "MultiArith": 600, "SingleEq": 508, "AQuA": 254, "mawps": 238}


@pytest.fixture()
def root(data_root):
    """The mirror (tests/conftest.py: SMT_DATA_ROOT or ../shared/data; skipped with the reason if absent)."""
    return data.resolve_data_root(str(data_root))


def test_every_test_set_loads_with_the_documented_count(root):
    for task, n in COUNTS.items():
        records = data.load_test_set(task, root)
        assert len(records) == n, task
        assert set(data.RECORD_KEYS) <= set(records[0])
    assert data.load_test_set("boolq", root, limit=5) == data.load_test_set("boolq", root)[:5]


def test_hellaswag_is_converted_with_the_llm_adapters_template(root):
    rec = data.load_test_set("hellaswag", root, limit=1)[0]
    assert rec["instruction"] == (
        "Please choose the correct ending to complete the given sentence: Roof shingle removal: "
        "A man is sitting on a roof. he\n\nEnding1: is using wrap to wrap a pair of skis. Ending2: is "
        "ripping level tiles off. Ending3: is holding a rubik's cube. Ending4: starts pulling up "
        "roofing on a roof.\n\nAnswer format: ending1/ending2/ending3/ending4")
    assert rec["answer"] == "ending4" and rec["output"] == "the correct answer is ending4"


def test_gsm8k_conversion_agrees_with_the_llm_adapters_test_set(root):
    native = data.read_records(root / "grade-school-math/test.jsonl")
    converted = {r["instruction"].strip(): r for r in map(data.gsm8k_record, native)}
    for ref in data.load_test_set("gsm8k", root):
        mine = converted[ref["instruction"].strip()]
        assert float(mine["answer"]) == float(ref["answer"])
        assert mine["output"].endswith(f"\nThe answer is {mine['answer']}.") and "<<" not in mine["output"]


def test_commonsense_mirror_is_checksummed_seeded_and_cut(root, tmp_path):
    spec = {"name": "commonsense_mirror", "max_records": 300, "seed": 1}
    meta = data.prepare_train_set(spec, root, tmp_path / "a.json")
    assert [s["source"] for s in meta["sources"]] == data.COMMONSENSE_MIRROR_SOURCES
    assert [s["records"] for s in meta["sources"]] == [9427, 2251, 1119, 4957]
    assert all(s["pinned"] and s["sha256"] == data.FILES[s["relpath"]][1] for s in meta["sources"])
    assert json.loads((tmp_path / "a.json.meta.json").read_text()) == meta
    records = json.loads((tmp_path / "a.json").read_text())
    assert meta["records"] == len(records) == 300
    again = data.prepare_train_set(spec, root, tmp_path / "b.json")
    assert again["sha256"] == meta["sha256"]
    other = data.prepare_train_set({**spec, "seed": 2}, root, tmp_path / "c.json")
    assert other["sha256"] != meta["sha256"]


def test_math_mirror_sources_can_be_picked(root, tmp_path):
    meta = data.prepare_train_set({"name": "math_mirror", "sources": ["gsm8k_train"], "seed": 0},
                                  root, tmp_path / "m.json")
    assert meta["records"] == 7473 and meta["sources"][0]["relpath"] == "grade-school-math/train.jsonl"
    with pytest.raises(ValueError, match="choose from"):
        data.prepare_train_set({"name": "math_mirror", "sources": ["svamp"]}, root, tmp_path / "x.json")
    with pytest.raises(ValueError, match="unknown training set"):
        data.prepare_train_set({"name": "alpaca"}, root, tmp_path / "x.json")


def test_missing_data_root_and_missing_file_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("SMT_DATA_ROOT", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        data.resolve_data_root(str(tmp_path / "nowhere"))
    assert f"looked at {tmp_path / 'nowhere'}" in str(err.value) and "config data_root" in str(err.value)
    assert "SMT_DATA_ROOT is not set" in str(err.value) and "SMT_DATA_ROOT=download" in str(err.value)
    with pytest.raises(FileNotFoundError, match="not a data mirror: it holds none of llm-adapters/"):
        data.resolve_data_root(str(tmp_path))  # exists, but empty
    monkeypatch.setenv("SMT_DATA_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="environment variable SMT_DATA_ROOT"):
        data.resolve_data_root("../shared/data")
    monkeypatch.setenv("SMT_DATA_ROOT", "download")
    assert data.resolve_data_root("../shared/data") is None
    (tmp_path / "llm-adapters").mkdir()
    monkeypatch.setenv("SMT_DATA_ROOT", str(tmp_path))
    root = data.resolve_data_root("ignored/because/env/wins")
    assert root == tmp_path.resolve()
    with pytest.raises(FileNotFoundError) as err:
        data.load_test_set("piqa", root)
    message = str(err.value)
    assert str(tmp_path / "llm-adapters/dataset/piqa/test.json") in message
    assert "raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/" in message and "SMT_DATA_ROOT" in message
    with pytest.raises(FileNotFoundError, match="math_10k.json"):
        data.prepare_train_set({"name": "math_10k"}, root, tmp_path / "t.json")
    with pytest.raises(ValueError, match="unknown test task"):
        data.load_test_set("mmlu", root)


def test_checksum_mismatch_is_an_error_and_unpinned_files_warn(tmp_path, root):
    rel = "llm-adapters/dataset/AQuA/test.json"
    (tmp_path / rel).parent.mkdir(parents=True)
    records = data.load_test_set("AQuA", root)
    (tmp_path / rel).write_text(json.dumps(records[:3]))
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.load_test_set("AQuA", tmp_path)
    big = tmp_path / "llm-adapters/ft-training_set/commonsense_170k.json"
    big.parent.mkdir(parents=True)
    shutil.copy(root / "llm-adapters/dataset/openbookqa/train.json", big)
    with pytest.warns(UserWarning, match="no pinned checksum"):
        meta = data.prepare_train_set({"name": "commonsense_170k", "seed": 0}, tmp_path, tmp_path / "t.json")
    assert meta["sources"][0]["sha256"] == data.FILES["llm-adapters/dataset/openbookqa/train.json"][1]
    assert meta["sources"][0]["pinned"] is False and meta["records"] == 4957


def test_download_mode_fetches_verifies_and_caches(tmp_path, monkeypatch, root):
    monkeypatch.delenv("SMT_DATA_ROOT", raising=False)
    monkeypatch.setenv("SMT_DATA_CACHE", str(tmp_path))
    served = []

    def fake_urlopen(url, timeout):
        served.append(url)
        rel = url.split(f"{data.LLM_ADAPTERS_COMMIT}/")[1]
        return io.BytesIO((root / "llm-adapters" / rel).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert data.resolve_data_root(None) is None
    assert len(data.load_test_set("mawps", None)) == 238
    assert len(data.load_test_set("mawps", None)) == 238
    assert served == [data.FILES["llm-adapters/dataset/mawps/test.json"][0]]
    assert (tmp_path / "llm-adapters/dataset/mawps/test.json").is_file()

    def offline(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="could not download https://raw.githubusercontent.com"):
        data.load_test_set("SVAMP", None)


def test_gsm8k_falls_back_to_the_native_test_set(tmp_path, root):
    (tmp_path / "grade-school-math").mkdir()
    shutil.copy(root / "grade-school-math/test.jsonl", tmp_path / "grade-school-math/test.jsonl")
    native = data.load_test_set("gsm8k", tmp_path, limit=3)
    assert data.locate_test_set("gsm8k", tmp_path)["relpath"] == "grade-school-math/test.jsonl"
    assert native[0]["instruction"].startswith("Janet’s ducks lay 16 eggs") and native[0]["answer"] == "18"
