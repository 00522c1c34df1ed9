"""The prepared device check (benchmarks/gpu_check.py) on the CPU at tiny shapes, as CI runs it.

The command runs in a subprocess from the worktree with deepspeed, lm_eval, snakemake, pandas and
jsonschema made unimportable (a sitecustomize that sets them to None in sys.modules, which the
pytest subprocess of the check inherits too); its JSON validates against the schema; the table
renders from it (and a missing or CPU JSON as "no GPU measurement yet"); the exactness checks
fail on wrong gradients, a wrong saved tensor and a weight written outside the blocks; the time
guard skips parts instead of overrunning.
"""
import copy
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check
from harness import gpu_table

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ("deepspeed", "lm_eval", "snakemake", "pandas", "jsonschema")
METHODS = ["floor", "smt", "lora", "dora", "full_ft"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(doc, out_dir, completed process) of one tiny run of the command with the packages blocked."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    block = tmp / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in BLOCKED))
    out = tmp / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(REPO)]), "OMP_NUM_THREADS": "1"}
    env.pop("SMT_CUDA_TEST_DEVICE", None)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), "--tiny"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / gpu_check.JSON_NAME).read_text()), out, proc


@pytest.fixture()
def doc(run):
    return copy.deepcopy(run[0])


def _schema_errors(d):
    import jsonschema

    return list(jsonschema.Draft202012Validator(gpu_check.load_schema()).iter_errors(d))


@pytest.mark.slow
def test_command_runs_without_deepspeed_lm_eval_snakemake_and_validates(run):
    doc, out, _ = run
    assert doc["format"] == gpu_check.FORMAT and doc["mode"] == "tiny" and doc["device"]["type"] == "cpu"
    for name in BLOCKED:                                  # the block took effect in the subprocess
        assert doc["importable"][name] is False, name
    assert doc["schema_errors"] == [] and _schema_errors(doc) == []
    assert doc["passed"] is True
    parts = doc["parts"]
    assert parts["exactness"]["status"] == "passed" and len(parts["exactness"]["checks"]) == 8
    # the CUDA tests were collected under the block (importable without those packages) and skipped
    py = parts["exactness"]["pytest"]
    assert py["status"].startswith("skipped:") and py["counts"]["skipped"] >= 7 and py["counts"]["errors"] == 0
    assert parts["layer"]["status"] == "measured" and len(parts["layer"]["cases"]) == 4
    assert {(c["out_features"], c["in_features"], c["block_frac"]) for c in parts["layer"]["cases"]} == \
        {(512, 512, 0.01), (512, 512, 0.05), (1376, 512, 0.01), (1376, 512, 0.05)}
    t1 = parts["table1"]
    assert t1["status"] == "measured" and t1["order"] == METHODS and t1["full_depth"] and t1["not_fitting"] == {}
    assert t1["config_validated"] is False               # jsonschema blocked: the strict YAML, unvalidated
    for name in METHODS:
        arm = t1["arms"][name]
        assert len(arm["step_seconds"]) == t1["settings"]["steps"] == 3 and arm["memory"]["param_bytes"] > 0
    assert t1["arms"]["smt"]["budget_reached"] <= 0.0084 < t1["arms"]["full_ft"]["budget_reached"]
    assert t1["method_settings"]["smt"]["selection"] == "random"
    assert t1["ratios"]["smt_over_lora"]["median"] > 0 and set(t1["ratios"]["goals"]) == {
        "smt_step_le_0.85_lora", "smt_step_le_0.60_dora", "smt_peak_below_lora"}
    assert (out / gpu_check.TABLE_NAME).is_file() and (out / "pytest_cuda.xml").is_file()


@pytest.mark.parametrize("path", [("device",), ("parts", "table1", "arms", "smt", "step"),
                                  ("parts", "layer", "cases", 0, "variants", "smt"),
                                  ("parts", "exactness", "checks", 0, "passed"), ("versions", "torch"),
                                  ("parts", "table1", "ratios")])
def test_schema_rejects_a_json_missing_a_key(doc, path):
    assert _schema_errors(doc) == []
    obj = doc
    for k in path[:-1]:
        obj = obj[k]
    del obj[path[-1]]
    assert _schema_errors(doc), path
    assert gpu_check.validate(doc), path                 # the check's own validator agrees


def test_schema_rejects_a_bad_status_and_too_few_steps(doc):
    doc["parts"]["layer"]["status"] = "fine"
    assert _schema_errors(doc)
    doc["parts"]["layer"]["status"] = "measured"
    doc["parts"]["table1"]["arms"]["lora"]["step_seconds"] = [1.0]
    assert _schema_errors(doc)


def _as_gpu(doc):
    doc["device"] = {"type": "cuda", "name": "Test GPU", "count": 1, "capability": "9.0", "memory_bytes": 80 * 2**30}
    return doc


def test_table_renders_every_figure_from_the_json(doc):
    md, rows = gpu_table.render(_as_gpu(doc))
    t1 = doc["parts"]["table1"]
    assert [r["Method"] for r in rows] == [t1["arms"][n]["label"] for n in METHODS]
    assert "SMOKE RUN" not in md and "Test GPU" in md
    for r, name in zip(rows, METHODS):
        arm = t1["arms"][name]
        assert r["Time/step (s)"] == f"{arm['step']['median']:.3f}"
        assert r["x Floor"] == f"{arm['ratio_to_floor']:.2f}"
        assert r["Saved act. (MB)"] == f"{arm['memory']['saved_activation_bytes'] / 2**20:,.0f}"
    smt_vs_lora = next(r for r in rows if r["Method"] == "LoRA")["SMT / this"]
    assert smt_vs_lora.startswith(f"{t1['ratios']['smt_over_lora']['median']:.2f}")
    for c in doc["parts"]["layer"]["cases"]:
        assert f"{c['smt_over_frozen']['median']:.3f} [" in md
    for c in doc["parts"]["exactness"]["checks"]:
        assert c["name"] in md


def test_a_method_that_did_not_fit_is_a_row_saying_why(doc):
    t1 = _as_gpu(doc)["parts"]["table1"]
    del t1["arms"]["full_ft"]
    t1["order"].remove("full_ft")
    t1["not_fitting"]["full_ft"] = "does not fit beside the other arms: needs ~60 GiB"
    _, rows = gpu_table.render(doc)
    assert rows[-1]["Method"] == "full_ft: not measured" and "needs ~60 GiB" in rows[-1]["Time/step (s)"]


def test_no_gpu_json_or_a_cpu_json_renders_as_no_gpu_measurement(tmp_path, run):
    prefix = tmp_path / "results" / "tables" / "table1"
    md_path, csv_path = gpu_table.write_beside(prefix)                 # no results/gpu/gpu_check.json
    assert md_path == prefix.with_name("table1_gpu.md") and gpu_table.NO_GPU in md_path.read_text()
    assert gpu_table.NO_GPU in csv_path.read_text()
    gpu = tmp_path / "results" / "gpu"
    gpu.mkdir()
    (gpu / "gpu_check.json").write_text(json.dumps(run[0]))            # the CPU smoke run is no GPU figure
    md_path, _ = gpu_table.write_beside(prefix)
    assert gpu_table.NO_GPU in md_path.read_text() and "smoke run" in md_path.read_text()
    assert "| SMT |" not in md_path.read_text()
    (gpu / "gpu_check.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="benchmarks.gpu_check"):
        gpu_table.write_beside(prefix)


def test_report_table1_writes_the_gpu_table_beside_the_cpu_one(tmp_path, run):
    from harness import reports as report

    prof = REPO / "results" / "generative" / "profile" / "smollm2-135m" / "table1.json"  # a committed CPU profile
    prefix = tmp_path / "results" / "tables" / "table1"
    report.make_table("table1", {"name": "t"}, [prof], prefix)
    assert gpu_table.NO_GPU in prefix.with_name("table1_gpu.md").read_text()
    (tmp_path / "results" / "gpu").mkdir()
    (tmp_path / "results" / "gpu" / "gpu_check.json").write_text(json.dumps(_as_gpu(copy.deepcopy(run[0]))))
    report.make_table("table1", {"name": "t"}, [prof], prefix)
    md = prefix.with_name("table1_gpu.md").read_text()
    assert "Test GPU" in md and gpu_table.NO_GPU not in md
    assert prefix.with_name("table1_gpu.csv").read_text().count("\n") == 3 + 1 + 5   # 3 comment lines, the header, 5 arms


# ---- the checks bite: wrong code makes them fail ------------------------------------------------

def test_exactness_checks_pass_on_correct_code():
    assert all(c["passed"] for c in gpu_check.exactness_checks("cpu", 16))


def test_exactness_checks_fail_on_slightly_wrong_block_gradients(monkeypatch):
    import smt.layer as layer

    backward = layer.SparseLinearFunction.backward

    def scaled(ctx, grad_out):
        out = list(backward(ctx, grad_out))
        out[1] = out[1] * (1 + 1e-3)                 # 0.1 % off: beyond fp32's tolerance, within bf16's
        return tuple(out)
    monkeypatch.setattr(layer.SparseLinearFunction, "backward", staticmethod(scaled))
    checks = {c["name"]: c for c in gpu_check.exactness_checks("cpu", 16)}
    assert not checks["gradients match dense (float32)"]["passed"]
    assert checks["gradients match dense (float32)"]["errors"]["block_grads"] > gpu_check.TOL["float32"]


def test_exactness_checks_fail_on_transposed_block_gradients(monkeypatch):
    import smt.layer as layer

    backward = layer.SparseLinearFunction.backward

    def transposed(ctx, grad_out):
        out = list(backward(ctx, grad_out))
        out[1] = out[1].transpose(1, 2)
        return tuple(out)
    monkeypatch.setattr(layer.SparseLinearFunction, "backward", staticmethod(transposed))
    failed = {c["name"] for c in gpu_check.exactness_checks("cpu", 16) if not c["passed"]}
    assert {"gradients match dense (float32)", "gradients match dense (bfloat16)",
            "gradients match dense (bf16 autocast, fp32 weights)"} <= failed


def test_exactness_checks_fail_when_the_whole_input_is_saved(monkeypatch):
    import smt.layer as layer

    forward = layer.SparseLinearFunction.forward

    def saves_all(ctx, x, blocks, weight, bias, rows, cols, ucols, inv):
        out = forward(ctx, x, blocks, weight, bias, rows, cols, ucols, inv)
        ctx.save_for_backward(x)                      # the dense layer's activation memory
        return out
    monkeypatch.setattr(layer.SparseLinearFunction, "forward", staticmethod(saves_all))
    checks = {c["name"]: c for c in gpu_check.exactness_checks("cpu", 16)}
    assert not checks["saved activations = the needed columns (float32)"]["passed"]


def test_exactness_checks_fail_when_a_frozen_weight_moves(monkeypatch):
    import smt.layer as layer

    write = layer._write_blocks

    def leaky(weight, blocks, rows, cols):
        write(weight, blocks, rows, cols)
        weight.data[0, -1] += 1.0                   # a frozen element: block (0, 7) is not selected
    monkeypatch.setattr(layer, "_write_blocks", leaky)
    checks = {c["name"]: c for c in gpu_check.exactness_checks("cpu", 16)}
    assert not checks["frozen weights bit-identical after AdamW (float32)"]["passed"]


# ---- the time guard -----------------------------------------------------------------------------

def test_time_guard_skips_parts_and_still_writes_a_valid_json(tmp_path):
    doc = gpu_check.main(["--out", str(tmp_path), "--tiny", "--limit-s", "2"])
    for name in ("exactness", "layer", "table1"):
        assert doc["parts"][name]["status"].startswith("skipped: time"), name
    assert doc["passed"] is False and _schema_errors(json.loads((tmp_path / "gpu_check.json").read_text())) == []
    assert gpu_table.NO_GPU in (tmp_path / "table1_gpu.md").read_text()


def test_table1_rounds_stop_at_the_deadline():
    mode = gpu_check.MODES["tiny"]
    config, _ = gpu_check.load_paper_config(REPO / "config" / "paper.yaml")
    cfgs = gpu_check.table1_run_cfgs(config, ["smt", "lora"], 0.84, mode, torch.device("cpu"))
    res = gpu_check.measure_table1(cfgs, mode, 1, torch.device("cpu"), deadline=0.0, with_full_ft=False)
    assert res["settings"]["stopped_early"] is True and res["settings"]["steps"] == 2
    assert all(len(a["step_seconds"]) == 2 for a in res["arms"].values())


def test_shared_copy_shares_frozen_storage_and_clones_the_targets():
    base = gpu_check.build_base(gpu_check.TINY_LLAMA, 1, torch.float32, torch.device("cpu"))
    shared = gpu_check.shared_copy(base)
    own = gpu_check.shared_copy(base, clone=("q_proj",))
    for (n, p), (_, s), (_, o) in zip(base.named_parameters(), shared.named_parameters(), own.named_parameters()):
        assert s is not p and s.data_ptr() == p.data_ptr(), n
        assert (o.data_ptr() != p.data_ptr()) == n.endswith("q_proj.weight") and torch.equal(o, p), n
    next(shared.parameters()).requires_grad_(False)
    assert next(base.parameters()).requires_grad                   # requires_grad is each copy's own


def test_full_ft_need_counts_weights_grads_two_adam_states_temporaries_and_the_step():
    gib = 2**30
    assert gpu_check.full_ft_need_bytes(13 * gib, 20 * gib) == (5 * 13 + 20 + 2) * gib


def test_table1_runs_the_paper_dtype_path_bf16_weights_and_autocast():
    """bfloat16 weights with mixed_precision bf16 (config/paper.yaml; the GPU default), here on the CPU."""
    mode = dict(gpu_check.MODES["tiny"], dtype="bfloat16", rounds_timed=2)
    config, _ = gpu_check.load_paper_config(REPO / "config" / "paper.yaml")
    cfgs = gpu_check.table1_run_cfgs(config, ["smt", "dora"], 0.84, mode, torch.device("cpu"))
    res = gpu_check.measure_table1(cfgs, mode, 1, torch.device("cpu"), deadline=None, with_full_ft=False)
    assert res["accelerator"]["mixed_precision"] == "bf16" and res["order"] == ["floor", "smt", "dora"]
    assert res["arms"]["smt"]["memory"]["param_bytes"] == 2 * res["total_params"] + 2 * (
        res["arms"]["smt"]["trainable_params"])                       # bf16 weights, plus the bf16 blocks
    assert all(a["final_loss"] > 0 for a in res["arms"].values())
