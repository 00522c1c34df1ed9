"""Switches that must be read back (issue 31, item 4): each is set to a value other than its
default or the value it usually coincides with, and what it drives is checked.

* SMTCallback(lr=...) against the Trainer's own `args.learning_rate`: the example sets both from
  the run config, equal unless the method has a `warmup_lr`; here they differ, and the blocks
  must train at the callback's rate (the harness's run with the same config is the reference);
* `--config from_records=false` (a string on the command line) must mean false: the workflow
  plans training, where from_records=true refuses to train;
* the GPU check's goals against the right reference: the layer goal against the frozen layer
  (not the trainable one), the "<= 0.60 x DoRA" goal from SMT's ratio to DoRA (not to LoRA), and
  the rendered table showing each goal's own answer.
"""
import pytest
import torch

from benchmarks import gpu_check
from harness import gpu_table


# ------------------------------------------------------------------ the GPU check's goals
def _case(frozen, trainable):
    q = lambda m: {"median": m, "q1": m, "q3": m, "iqr": 0.0}  # noqa: E731
    return {"smt_over_frozen": q(frozen), "smt_over_trainable": q(trainable)}


@pytest.mark.parametrize("frozen,trainable,met", [(1.30, 0.80, False), (1.00, 1.40, True), (1.04, 0.50, True)])
def test_the_layer_goal_is_smt_against_the_frozen_layer(monkeypatch, frozen, trainable, met):
    monkeypatch.setattr(gpu_check, "layer_case", lambda *a, **k: _case(frozen, trainable))
    mode = {"dtype": "float32", "samples": 3, "iters_per_sample": 1, "layer_warmup": 0,
            "layer_shapes": [(64, 64), (64, 128)], "block_fracs": [0.1]}
    res = gpu_check.part_layer(torch.device("cpu"), mode, gpu_check.Clock(10_000), 1.0)
    assert res["status"] == "measured" and len(res["cases"]) == 2
    assert "frozen" in res["goal"] and res["goal_met"] is met


def _arms(smt, lora, dora, peaks=(10, 20)):
    arm = lambda t, peak=None: {"step_seconds": [t, t * 1.01, t * 0.99], "ratio_to_floor_paired": None,  # noqa: E731
                                "cuda": {"arm_peak_bytes": peak}}
    return {"smt": arm(smt, peaks[0]), "lora": arm(lora, peaks[1]), "dora": arm(dora)}


@pytest.mark.parametrize("smt,lora,dora,want", [
    (0.5, 1.0, 0.7, {"smt_step_le_0.85_lora": True, "smt_step_le_0.60_dora": False}),   # 0.50 x LoRA, 0.71 x DoRA
    (0.9, 1.0, 2.0, {"smt_step_le_0.85_lora": False, "smt_step_le_0.60_dora": True}),   # 0.90 x LoRA, 0.45 x DoRA
])
def test_each_step_goal_is_read_from_its_own_ratio(smt, lora, dora, want):
    out = gpu_check.ratios(_arms(smt, lora, dora))
    assert out["smt_over_lora"]["median"] == pytest.approx(smt / lora)
    assert out["smt_over_dora"]["median"] == pytest.approx(smt / dora)
    assert {k: out["goals"][k] for k in want} == want and out["goals"]["smt_peak_below_lora"] is True


def _doc(goals):
    """The smallest measured GPU-check document gpu_table.render reads (no arms, one goal set)."""
    return {"device": {"type": "cuda", "name": "test GPU", "count": 1, "memory_bytes": 2**34},
            "versions": {"torch": "t", "cuda": "c", "python": "p", "git_sha": "0" * 40},
            "created_at": "2026-01-01T00:00:00", "elapsed_s": 1.0, "limit_s": 480.0, "mode": "paper", "passed": True,
            "parts": {"exactness": {"status": "passed", "checks": []},
                      "layer": {"status": "measured", "cases": [], "goal": "SMT <= 1.05 x the frozen layer",
                                "goal_met": True},
                      "table1": {"status": "measured", "settings": {"steps": 3, "warmup_steps": 1}, "layers": 32,
                                 "full_depth": True, "total_params": 6.7e9, "batch_size": 4, "seq_len": 512,
                                 "budget_pct": 1.26, "arms": {}, "order": [], "ratios": {"goals": goals},
                                 "deviations": []}}}


@pytest.mark.parametrize("lora,dora,peak,text", [
    (True, False, None, "SMT step <= 0.85 x LoRA's: yes; <= 0.60 x DoRA's: no; SMT's peak below LoRA's: n/a"),
    (False, True, True, "SMT step <= 0.85 x LoRA's: no; <= 0.60 x DoRA's: yes; SMT's peak below LoRA's: yes"),
])
def test_the_table_shows_each_goals_own_answer(lora, dora, peak, text):
    md, _ = gpu_table.render(_doc({"smt_step_le_0.85_lora": lora, "smt_step_le_0.60_dora": dora,
                                   "smt_peak_below_lora": peak}))
    assert text in md


# ------------------------------------------------------------------ from_records=false
@pytest.mark.slow  # two Snakemake dry runs, ~10 s each
def test_from_records_false_on_the_command_line_means_false():
    from test_workflow_dag import job_counts, snakemake

    res = snakemake("-n", "--forceall", "--configfile=config/test.yaml", "table3", "--config", "from_records=false")
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stdout)["train"] > 0  # false: the tables' runs are trained
    res = snakemake("-n", "--forceall", "--configfile=config/test.yaml", "table3", "--config", "from_records=true")
    assert res.returncode != 0 and "from_records=true rebuilds table3" in res.stdout + res.stderr


# ------------------------------------------------------------------ SMTCallback(lr=...)
@pytest.mark.slow  # trains the tiny model twice (Trainer and harness)
def test_the_callbacks_lr_drives_the_blocks_not_the_trainers_learning_rate(tmp_path_factory, tmp_path):
    """warmup_lr 1e-2 (the Trainer's args.learning_rate, the full-FT warm-up's rate) and lr 5e-2
    (SMTCallback(lr=...), the blocks' rate after the selection): the Trainer's loss and lr at every
    step equal the harness's for the same run config, which trains the blocks at lr."""
    from conftest import make_tiny_env, tiny_run_cfg
    from test_integrations_trainer import _assert_same, _harness
    from trainer_smt import train_with_trainer  # examples/ (on the path via test_integrations_trainer)

    torch.set_num_threads(1)
    env = make_tiny_env(tmp_path_factory.mktemp("callback_lr"))
    cfg = tiny_run_cfg(env, "smt", 5e-2, smt_warmup=3, method={"warmup_mode": "full_ft", "warmup_lr": 1e-2})
    cfg["budget"] = 0.02
    res = train_with_trainer(cfg, tmp_path / "trainer")
    assert res["trainer"].args.learning_rate == 1e-2 and res["callback"].lr == 5e-2
    curve, plan = _harness(cfg, tmp_path / "harness")
    main = [p for p in curve if p.get("phase") != "warmup"]
    assert main and main[0]["lr"] > 1e-2  # the main phase runs on the 5e-2 schedule, above the warm-up's peak
    _assert_same(res, curve, plan, "warmup_lr 1e-2, lr 5e-2")
