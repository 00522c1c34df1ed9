"""Prepared training sets: shuffled before the cut, verified against their meta, clear errors
for corrupt files, content checksums for the DAG, and the carve of test sets (issue 12)."""
import json
import pathlib

import pytest

from harness import data

CS_SOURCES = {"boolq": 9427, "ARC-Easy": 2251, "ARC-Challenge": 1119, "openbookqa": 4957}


def _source_of(record, pools):
    return next(name for name, keys in pools.items() if (record["instruction"], record["output"]) in keys)


def _counts_by_source(records, data_root) -> dict:
    """How many of `records` come from each mirror train set."""
    pools = {t: {(r["instruction"], r["output"]) for r in
                 data.read_records(data_root / f"llm-adapters/dataset/{t}/train.json")} for t in CS_SOURCES}
    counts = {t: 0 for t in CS_SOURCES}
    for rec in records:
        counts[_source_of(rec, pools)] += 1
    return counts


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_a_300_record_subset_mixes_every_source_in_proportion(data_root, tmp_path, seed):
    meta = data.prepare_train_set({"name": "commonsense_mirror", "max_records": 300, "seed": seed},
                                  data_root, tmp_path / "t.json")
    records = json.loads((tmp_path / "t.json").read_text())
    counts = _counts_by_source(records, data_root)
    total = sum(CS_SOURCES.values())
    for task, n in CS_SOURCES.items():
        expected = 300 * n / total
        sd = (300 * n / total * (1 - n / total)) ** 0.5
        assert abs(counts[task] - expected) <= 4 * sd + 1, (task, counts, expected)
    assert meta["records_by_source"] == counts
    assert [s["kept"] for s in meta["sources"]] == [counts[t] for t in CS_SOURCES]


def test_max_per_source_balances_the_mixture(data_root, tmp_path):
    """max_per_source samples each source down before the mixture: BoolQ no longer dominates."""
    spec = {"name": "commonsense_mirror", "max_records": None, "seed": 3, "max_per_source": 200}
    meta = data.prepare_train_set(spec, data_root, tmp_path / "t.json")
    records = json.loads((tmp_path / "t.json").read_text())
    counts = _counts_by_source(records, data_root)
    assert counts == {t: 200 for t in CS_SOURCES} == meta["records_by_source"]
    assert [(s["records"], s["sampled"]) for s in meta["sources"]] == [(n, 200) for n in CS_SOURCES.values()]
    again = data.prepare_train_set(spec, data_root, tmp_path / "u.json")
    assert again["sha256"] == meta["sha256"]  # the sample is seeded
    other = data.prepare_train_set({**spec, "seed": 4}, data_root, tmp_path / "v.json")
    assert other["sha256"] != meta["sha256"]
    # not the first 200 of each file: a sample over the whole source
    boolq = data.read_records(data_root / "llm-adapters/dataset/boolq/train.json")
    head = {(r["instruction"], r["output"]) for r in boolq[:200]}
    assert len(head & {(r["instruction"], r["output"]) for r in records}) < 50


def test_prepared_file_is_verified_against_its_meta(data_root, tmp_path):
    out = tmp_path / "train.json"
    meta = data.prepare_train_set({"name": "commonsense_mirror", "max_records": 20, "seed": 0}, data_root, out)
    records, loaded = data.load_train_set(out)
    assert len(records) == 20 and loaded == meta and data.read_records(out) == records
    edited = records[:]
    edited[3] = {**edited[3], "output": "the correct answer is false" if "true" in edited[3]["output"] else "x"}
    out.write_text(json.dumps(edited, indent=1))
    for reader in (data.load_train_set, data.read_records):
        with pytest.raises(data.DataError) as err:
            reader(out)
        assert str(out) in str(err.value) and "was modified or is corrupt" in str(err.value)
        assert "delete" in str(err.value) and "prepare_data" in str(err.value)
    out.write_text(json.dumps(records, indent=2))  # a valid file, other bytes: still not what was prepared
    with pytest.raises(data.DataError, match="was modified"):
        data.load_train_set(out)
    data.meta_path(out).unlink()
    with pytest.raises(data.DataError, match=r"has no train\.json\.meta\.json"):
        data.load_train_set(out)
    assert data.read_records(out) == records  # a plain file (no meta) is read as it is


def test_corrupt_json_names_the_file(data_root, tmp_path):
    out = tmp_path / "train.json"
    data.prepare_train_set({"name": "commonsense_mirror", "max_records": 5, "seed": 0}, data_root, out)
    meta = data.meta_path(out)
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(data.DataError) as err:
        data.load_train_set(out)
    assert str(meta) in str(err.value) and "not valid JSON" in str(err.value)
    plain = tmp_path / "plain.json"
    plain.write_text('[{"instruction": "a", "input": ""')
    with pytest.raises(data.DataError, match=f"{plain}.*not valid JSON"):
        data.read_records(plain)
    lines = tmp_path / "x.jsonl"
    lines.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(data.DataError, match=f"{lines}, line 2"):
        data.read_records(lines)
    root = tmp_path / "mirror"
    (root / "llm-adapters/dataset/boolq").mkdir(parents=True)
    (root / "llm-adapters/dataset/boolq/test.json").write_text("[{")
    with pytest.raises(data.DataError, match="boolq/test.json"):
        data.read_records(root / "llm-adapters/dataset/boolq/test.json")


def test_records_without_an_answer_are_dropped_and_counted(data_root, tmp_path):
    root = tmp_path / "mirror"
    big = root / "llm-adapters/ft-training_set/commonsense_170k.json"
    big.parent.mkdir(parents=True)
    recs = data.read_records(data_root / "llm-adapters/dataset/openbookqa/train.json")[:10]
    recs[2] = {**recs[2], "output": ""}
    recs[5] = {**recs[5], "output": "  "}
    big.write_text(json.dumps(recs))
    with pytest.warns(UserWarning, match="no pinned checksum"):
        meta = data.prepare_train_set({"name": "commonsense_170k", "seed": 0}, root, tmp_path / "t.json")
    assert meta["records"] == 8 and meta["dropped"]["empty_output"] == 2
    big.write_text(json.dumps([{**r, "output": ""} for r in recs]))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="empty after dropping"):
        data.prepare_train_set({"name": "commonsense_170k", "seed": 0}, root, tmp_path / "u.json")


def test_checksums_follow_content_not_location(data_root, tmp_path, monkeypatch):
    spec = {"name": "commonsense_mirror"}
    cache = tmp_path / "res/.checksum_cache.json"
    here = data.source_checksums(spec, data_root, cache)
    assert list(here) == [f"llm-adapters/dataset/{t}/train.json" for t in CS_SOURCES]
    assert all(here[k] == data.FILES[k][1] for k in here)
    moved = tmp_path / "moved"
    for rel in here:
        (moved / rel).parent.mkdir(parents=True, exist_ok=True)
        (moved / rel).write_bytes((data_root / rel).read_bytes())
    assert data.source_checksums(spec, moved, cache) == here
    calls = []
    real = data.sha256_file
    monkeypatch.setattr(data, "sha256_file", lambda p: calls.append(p) or real(p))
    data._CHECKSUM_CACHES.clear()  # a new process: the cache file alone must serve
    assert data.source_checksums(spec, moved, cache) == here and calls == []
    rel = "llm-adapters/dataset/boolq/train.json"
    (moved / rel).write_bytes((moved / rel).read_bytes() + b"\n")
    changed = data.source_checksums(spec, moved, cache)
    assert [k for k in here if changed[k] != here[k]] == [rel] and len(calls) == 1
    tests = data.test_set_checksums(["boolq", "hellaswag"], data_root, cache)
    assert tests == {"boolq": data.FILES["llm-adapters/dataset/boolq/test.json"][1],
                     "hellaswag": data.FILES["hellaswag/validation.jsonl"][1]}
    # download mode: pinned sums, or the commit-pinned URL; nothing is downloaded for the DAG
    assert data.test_set_checksums(["piqa"], None) == {"piqa": data.FILES["llm-adapters/dataset/piqa/test.json"][1]}
    assert data.source_checksums({"name": "commonsense_170k"}, None)["llm-adapters/ft-training_set/commonsense_170k.json"] \
        .startswith(f"upstream:https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/{data.LLM_ADAPTERS_COMMIT}/")


def test_download_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("SMT_DATA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.download_cache() == tmp_path / "smt-bench" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.download_cache() == pathlib.Path("~/.cache/smt-bench/data").expanduser()
    monkeypatch.setenv("SMT_DATA_CACHE", str(tmp_path / "c"))
    assert data.download_cache() == tmp_path / "c"


def test_carve_trains_on_test_sets_without_touching_the_evaluated_head(data_root, tmp_path):
    spec = {"name": "commonsense_mirror", "seed": 0, "sources": ["boolq"], "max_records": None,
            "carve": {"tasks": ["piqa", "winogrande", "hellaswag"], "offset": 100, "max_per_task": 50}}
    meta = data.prepare_train_set(spec, data_root, tmp_path / "t.json", eval_limit=100)
    records, _ = data.load_train_set(tmp_path / "t.json")
    assert meta["records"] == 9427 + 150 - meta["dropped"]["carve_same_prompt_as_evaluated"]
    for prov in meta["carved"]:
        head = data.load_test_set(prov["task"], data_root, limit=100)
        evaluated = {(r["instruction"], r["input"]) for r in head}
        mine = [r for r in records if (r["instruction"], r["input"]) in evaluated]
        assert mine == [], prov["task"]
        assert prov["index_start"] == prov["reserved_head"] == 100 and prov["index_stop"] == 150
        assert prov["sha256"] == data.locate_test_set(prov["task"], data_root)["sha256"]
        tail = data.load_test_set(prov["task"], data_root)[100:150]
        assert sum(r in records for r in tail) == prov["records"] == prov["kept"]
    assert set(meta["records_by_source"]) == {"boolq", "carve:piqa", "carve:winogrande", "carve:hellaswag"}
    files = data.spec_files(spec, data_root)
    assert files[1:] == ["llm-adapters/dataset/piqa/test.json", "llm-adapters/dataset/winogrande/test.json",
                         "hellaswag/validation.jsonl"]
    with pytest.raises(ValueError, match="offset 100 is below eval.<suite>.limit 101"):
        data.prepare_train_set(spec, data_root, tmp_path / "u.json", eval_limit=101)
    with pytest.raises(ValueError, match="evaluates whole test sets"):
        data.check_carve(spec, None)
    with pytest.raises(ValueError, match="carve.tasks"):
        data.prepare_train_set({**spec, "carve": {"tasks": ["mmlu"], "offset": 100}}, data_root, tmp_path / "v.json")
    data.check_carve({"name": "x"}, None)  # no carve: nothing to check
