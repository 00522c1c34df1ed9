"""Figure content: the data behind each figure (report.figure_data), and that the files are written."""
import json

import numpy as np
import pytest
from test_report_tables import _seeds, cfg, default_accuracy, macro, write_runs  # noqa: F401 (fixture)

from harness import config as hc
from harness import reports as report
from harness.reports.cells import PRIOR_ROW
from harness.reports.runs import method_label


def _plan(n_layers=2):
    mods = {}
    for layer in range(n_layers):
        for proj, blocks in (("q_proj", []), ("k_proj", [[0, 0]] * layer), ("v_proj", [[0, 0], [1, 1]])):
            mods[f"model.layers.{layer}.self_attn.{proj}"] = {"shape": [32, 32], "blocks": blocks}
    return {"format": "smt-selection-plan/1", "block_size": 16, "total_params": 100000,
            "meta": {"budget": 0.02}, "modules": mods}


def test_figure3_draws_each_method_at_its_reached_budget_with_intervals(tmp_path, cfg):
    rids = report.expand_runs(cfg, "figure3")
    reached = {r: 0.0262 for r in rids if "/lora/b2.00/" in r}
    paths = write_runs(tmp_path, cfg, rids, reached=reached)
    fig, frame, caption = report.figure_data("figure3", cfg, paths)
    assert len(frame) == 6  # 3 methods x 2 budgets
    lora2 = frame[(frame.method == "lora") & (frame.budget == 2.0)].iloc[0]
    assert lora2.reached == pytest.approx(2.62) and lora2.label == method_label(cfg, "lora")
    for row in frame.itertuples():
        mean, spread = macro(tmp_path, _seeds(cfg, "tiny", "commonsense", row.method, row.budget))
        assert row.acc == pytest.approx(mean) and row.spread == pytest.approx(spread)
        assert row.lo < row.acc < row.hi and row.seeds == 2 and row.n == 8 * 40
    assert "n = 320" in caption and "seeds = 2" in caption and "95 %" in caption
    out = report.make_figure("figure3", cfg, paths, tmp_path / "fig" / "figure3")
    assert [p.suffix for p in out] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in out)
    text = (tmp_path / "fig" / "figure3.data.csv").read_text()
    assert text.count("\n") == 4 + 1 + 6  # title, caption, commits the records ran at, deviations; columns; rows
    assert text.splitlines()[3].startswith("# deviations: ")


def test_placement_figures_show_accuracy_per_placement(tmp_path, cfg):
    for name, table in (("figure_table4", "table4"), ("figure_table6", "table6")):
        rids = report.expand_runs(cfg, table)
        status = {rids[0]: ("diverged", "nan"), rids[1]: ("diverged", "nan")}  # first placement: no result
        paths = write_runs(tmp_path / name, cfg, rids, status=status)
        _, frame, _ = report.figure_data(name, cfg, paths)
        exp = cfg["experiments"][table]
        assert list(frame.placement) == exp["placements"]
        assert np.isnan(frame.acc.iloc[0]) and frame.seeds.iloc[0] == 0
        for row in frame.iloc[1:].itertuples():
            mean, _ = macro(tmp_path / name, _seeds(cfg, "tiny", "commonsense", "smt", exp["budget"], row.placement))
            assert row.acc == pytest.approx(mean) and row.lo < row.acc < row.hi
        report.make_figure(name, cfg, paths, tmp_path / "fig" / name)


def test_val_loss_figure_uses_the_recorded_curves_and_skips_runs_without(tmp_path, cfg):
    rids = report.expand_runs(cfg, "table3")
    curves = {rids[0]: {"val_curve": [{"step": 0, "val_loss": 3.0}, {"step": 5, "val_loss": 2.5}]},
              rids[-1]: {"val_curve": [{"step": 0, "val_loss": 3.1}, {"step": 5, "val_loss": 2.0},
                                       {"step": 10, "val_loss": 1.5}]}}
    paths = write_runs(tmp_path, cfg, rids, train_info=curves)
    _, frame, _ = report.figure_data("figure_val_loss", cfg, paths)
    assert sorted(frame.run_id.unique()) == sorted([rids[0], rids[-1]])
    assert list(frame[frame.run_id == rids[-1]].val_loss) == [3.1, 2.0, 1.5]
    _, _, caption = report.figure_data("figure_val_loss", cfg, paths)
    assert "no label-prior level" in caption  # nothing recorded: said, not drawn
    report.make_figure("figure_val_loss", cfg, paths, tmp_path / "fig" / "val")
    # the label prior's loss recorded (train_info.val_prior_loss): a dashed line at it in each panel
    prior = {r: {**c, "val_prior_loss": 0.75} for r, c in curves.items()}
    fig, frame, caption = report.figure_data("figure_val_loss", cfg, write_runs(tmp_path / "prior", cfg, rids,
                                                                                 train_info=prior))
    assert set(frame.prior_level) == {0.75} and "dashed" in caption
    for ax in fig.axes:
        assert [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_linestyle() == "--"] == [0.75]
    none = write_runs(tmp_path / "none", cfg, rids)  # no curves at all: an empty figure, not an error
    _, frame, caption = report.figure_data("figure_val_loss", cfg, none)
    assert frame.empty and "no validation curves" in caption
    assert report.make_figure("figure_val_loss", cfg, none, tmp_path / "fig" / "none")[0].is_file()


def test_pareto_has_one_point_per_evaluated_run(tmp_path, cfg):
    rids = report.expand_runs(cfg, "table2")
    ti = {rids[0]: {"steps": 20, "train_seconds": 8.0, "peak_memory_bytes": 3 * 2**20, "trainable_params": 1234}}
    status = {rids[1]: ("failed", "oom")}
    paths = write_runs(tmp_path, cfg, rids, status=status, train_info=ti)
    _, frame, _ = report.figure_data("figure_pareto", cfg, paths)
    zero = hc.zero_shot_run_id(cfg, "tiny", "commonsense")  # nothing trained: a level, not a point
    assert list(frame.run_id) == [r for r in rids if r not in (rids[1], zero)]
    first = frame.iloc[0]
    assert first.step_seconds == pytest.approx(0.4) and first.peak_memory_mb == pytest.approx(3.0)
    assert first.trainable_params == 1234
    assert first.acc == pytest.approx(macro(tmp_path, [rids[0]])[0]) and first.seeds == 1
    # every panel draws the label prior (the most frequent label of each task, averaged over tasks)
    fig, _, caption = report.figure_data("figure_pareto", cfg, paths)
    shares = []
    for pred in sorted((paths[0].parent / "eval").glob("*.predictions.jsonl")):
        labels = [json.loads(line)["label"] for line in pred.read_text().splitlines()]
        shares.append(max(labels.count(v) for v in set(labels)) / len(labels))
    level = 100 * float(np.mean(shares))
    panels = [ax for ax in fig.axes if ax.axison]  # the free panel holds the legend
    assert len(panels) == 4  # one run records trainable parameters: no log panel beside the linear one
    for ax in panels:
        flat = [ln for ln in ax.get_lines() if len(set(ln.get_ydata())) == 1]
        assert any(ln.get_ydata()[0] == pytest.approx(level) for ln in flat), ax.get_xlabel()
    assert PRIOR_ROW in caption
    zero_level = macro(tmp_path, [zero])[0]
    for ax in panels:
        flat = [ln for ln in ax.get_lines() if len(set(ln.get_ydata())) == 1]
        assert any(ln.get_ydata()[0] == pytest.approx(zero_level) for ln in flat), ax.get_xlabel()
    assert "zero-shot" in caption
    report.make_figure("figure_pareto", cfg, paths, tmp_path / "fig" / "pareto")


def test_figure7_shows_each_variant_with_size_and_step_time(tmp_path, cfg):
    rids = report.expand_runs(cfg, "figure7")
    ti = {r: {"adapter_bytes": 3 * 2**20, "adapter_files": {"smt_delta.safetensors": 3 * 2**20}}
          for r in rids if "/smt_random/" in r}
    ti.update({r: {"adapter_bytes": 7 * 2**20, "adapter_files": {"smt_delta.safetensors": 2 * 2**20,
                                                                  "warmup_weights.pt": 5 * 2**20}}
               for r in rids if "/smt/" in r})
    paths = write_runs(tmp_path, cfg, rids, train_info=ti)
    fig, frame, _ = report.figure_data("figure7", cfg, paths)
    assert list(frame.variant) == cfg["experiments"]["table7"]["methods"]
    rnd = frame.set_index("variant").loc["smt_random"]
    assert rnd.delta_mb == pytest.approx(3.0) and rnd.step_seconds == pytest.approx(0.5)
    assert rnd.blocks_mb == pytest.approx(3.0) and rnd.warmup_weights_mb == 0
    smt = frame.set_index("variant").loc["smt"]  # the full-FT warm-up's weights apart from the blocks
    assert (smt.delta_mb, smt.blocks_mb, smt.warmup_weights_mb) == pytest.approx((7.0, 2.0, 5.0))
    sizes = fig.axes[1]
    heights = sorted(round(b.get_height(), 6) for b in sizes.patches if b.get_height() == b.get_height())
    assert 2.0 in heights and 5.0 in heights and 7.0 not in heights  # two bars, not one total
    mean, _ = macro(tmp_path, _seeds(cfg, "tiny", "commonsense", "smt_random", 2.0, "qkv"))
    assert rnd.acc == pytest.approx(mean)
    report.make_figure("figure7", cfg, paths, tmp_path / "fig" / "figure7")


def test_plan_figures(tmp_path, cfg):
    for name in ("figure4", "figure5"):
        paths = write_runs(tmp_path / name, cfg, report.expand_runs(cfg, name))
        for p in paths:
            (p.parent / "plan.json").write_text(json.dumps(_plan()))
        _, frame, _ = report.figure_data(name, cfg, paths)
        if name == "figure5":
            assert dict(zip(frame.projection, frame.share)) == pytest.approx({"q_proj": 0.0, "k_proj": 100 / 5,
                                                                             "v_proj": 400 / 5})
        out = report.make_figure(name, cfg, paths, tmp_path / "fig" / name)
        assert all(p.stat().st_size > 1000 for p in out)
