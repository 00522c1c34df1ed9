"""Table content from synthetic runs that follow the record and evaluation formats.

Each run gets per-example predictions whose accuracy depends on method, budget and seed, so the
tests can recompute every number the tables should show and check that the right run is in
each cell.
"""
import json
import zlib

import numpy as np
import pandas as pd
import pytest

from harness import config as hc
from harness import reports
from harness import reports as report
from harness.reports.cells import DAGGER, DAGGER_NOTE, VAL_LOSS_NOTE
from harness.reports.runs import method_label
from harness.evaluate import task_summary
from harness.tasks import TASKS

N = 40  # examples per task
# accuracy by method and budget asked: LoRA peaks at 2 %, DoRA at 4 %, SMT grows, full FT is best
ACC = {"lora": {2.0: 0.80, 4.0: 0.62}, "dora": {2.0: 0.60, 4.0: 0.84}, "smt": {2.0: 0.70, 4.0: 0.76},
       "full_ft": {None: 0.97}, "smt_absmean": {2.0: 0.66}, "smt_random": {2.0: 0.40}}


@pytest.fixture(scope="module")
def cfg():
    return reports.load_config({**reports.load_config(hc.REPO_ROOT / "config/test.yaml"), "seeds": [0, 1]})


def labels_of(task):
    words = TASKS[task].labels or ("1", "2")
    return [words[0] if i % 5 < 3 else words[1] for i in range(N)]  # 60 % the first label


def default_accuracy(rid):
    p = hc.parse_run_id(rid)
    return ACC.get(p["method"], {}).get(p["budget"], 0.5) + 0.02 * p["seed"]


def _predictions(rid, task, acc, degenerate=False):
    labels = labels_of(task)
    words = TASKS[task].labels or ("1", "2")
    if degenerate:
        preds = [words[0]] * N
    else:
        rng = np.random.default_rng(zlib.crc32(f"{rid}/{task}".encode()))
        hit = rng.random(N) < acc
        preds = [lab if h else next(w for w in words if w != lab) for lab, h in zip(labels, hit)]
    return [{"id": i, "label": lab, "generated": f" the answer is {p}", "prediction": p,
             "extraction_failure": False, "correct": p == lab} for i, (lab, p) in enumerate(zip(labels, preds))]


def write_runs(root, cfg, run_ids, accuracy=default_accuracy, status=None, degenerate=(), reached=None,
               train_info=None):
    """Run dirs with record.json, eval/<suite>.json and predictions; returns the record paths.

    status: {run_id: (status, error)}; degenerate: {(run_id, task)}; reached: {run_id: fraction}.
    """
    status, reached, train_info = status or {}, reached or {}, train_info or {}
    paths = []
    for rid in run_ids:
        p = hc.parse_run_id(rid)
        suite = cfg["datasets"][p["dataset"]]["suite"]
        run_dir = root / rid
        (run_dir / "eval").mkdir(parents=True, exist_ok=True)
        st, err = status.get(rid, ("ok", None))
        frac = reached.get(rid, None if p["budget"] is None else p["budget"] / 100 * 0.98)
        record = {"run_info": {"run_id": rid, "method": p["method"], "budget_asked": p["budget"],
                               "budget_reached": frac, "seed": p["seed"], "status": st, "error": err,
                               "deviations": [f"dev of {p['method']}"],
                               "config": hc.resolve_run(cfg, rid).to_json()},  # as the train job writes it
                  "train_info": {"steps": 10, "train_seconds": 5.0 if p["method"] != "full_ft" else 20.0,
                                 "adapter_bytes": 2**20, "trainable_params": 1000, "peak_memory_bytes": 2**26,
                                 **train_info.get(rid, {})}}
        (run_dir / "record.json").write_text(json.dumps(record))
        if st != "ok":
            ev = {"suite": suite, "status": "skipped", "reason": f"run status {st}: {err}", "tasks": {}}
        else:
            tasks = {}
            for task in cfg["eval"][suite]["tasks"]:
                rows = _predictions(rid, task, accuracy(rid), (rid, task) in degenerate)
                (run_dir / "eval" / f"{task}.predictions.jsonl").write_text(
                    "".join(json.dumps(r) + "\n" for r in rows))
                tasks[task] = {**task_summary(task, rows), "test_sha256": "0" * 64}
            ev = {"suite": suite, "status": "ok", "tasks": tasks}
        (run_dir / "eval" / f"{suite}.json").write_text(json.dumps(ev))
        paths.append(run_dir / "record.json")
    return paths


def macro(root, rids, suite="commonsense"):
    """Mean over seeds of the macro average (percent), recomputed from the prediction files."""
    vals = []
    for rid in rids:
        ev = json.loads((root / rid / "eval" / f"{suite}.json").read_text())
        accs = []
        for task in ev["tasks"]:
            rows = [json.loads(x) for x in (root / rid / "eval" / f"{task}.predictions.jsonl").read_text().splitlines()]
            accs.append(np.mean([r["correct"] for r in rows]))
        vals.append(np.mean(accs))
    return 100 * np.mean(vals), (100 * np.std(vals, ddof=1) if len(vals) > 1 else 0.0)


def parse_cell(cell):
    """'52.3 ± 1.2 [47.0, 57.1]' -> (52.3, 1.2, 47.0, 57.1); spread 0 without '±'."""
    head, _, rest = cell.partition("[")
    lo, hi = (float(x) for x in rest.split("]")[0].split(","))
    mean, _, spread = head.partition("±")
    return float(mean), float(spread or 0), lo, hi


def _seeds(cfg, model, dataset, method, budget, placement=None):
    placement = placement or cfg["methods"][method]["placement"]
    return [hc.make_run_id(model, dataset, method, budget, placement, s) for s in cfg["seeds"]]


def test_table2_rows_are_each_methods_best_and_smt_at_each_baselines_budget(tmp_path, cfg):
    paths = write_runs(tmp_path, cfg, reports.expand_runs(cfg, "table2"))
    df = report.make_table("table2", cfg, paths, tmp_path / "out" / "table2")
    lab = lambda m: method_label(cfg, m)  # noqa: E731
    assert list(df.Method) == [f"{lab('lora')} (Best)", f"{lab('dora')} (Best)",
                               f"SMT (at {lab('lora')} best budget)", f"SMT (at {lab('dora')} best budget)",
                               "SMT (Best)", lab("full_ft"), lab("zero_shot"), "label prior"]
    rows = df.set_index("Method")
    expect = {f"{lab('lora')} (Best)": ("lora", 2.0), f"{lab('dora')} (Best)": ("dora", 4.0),
              f"SMT (at {lab('lora')} best budget)": ("smt", 2.0), f"SMT (at {lab('dora')} best budget)": ("smt", 4.0),
              "SMT (Best)": ("smt", 4.0), lab("full_ft"): ("full_ft", None)}
    for name, (method, budget) in expect.items():
        mean, spread = macro(tmp_path, _seeds(cfg, "tiny", "commonsense", method, budget))
        got = parse_cell(rows.loc[name, "AVG"])
        assert got[0] == pytest.approx(mean, abs=0.051) and got[1] == pytest.approx(spread, abs=0.051), name
        assert got[2] < got[0] < got[3], name
        assert rows.loc[name, "Params%"] == ("100.00" if budget is None else f"{budget * 0.98:.2f}"), name
        assert rows.loc[name, "seeds"] == "2" and rows.loc[name, "n"] == 8 * N
    # the paired difference SMT - LoRA at LoRA's best budget
    smt, _ = macro(tmp_path, _seeds(cfg, "tiny", "commonsense", "smt", 2.0))
    lora, _ = macro(tmp_path, _seeds(cfg, "tiny", "commonsense", "lora", 2.0))
    diff = rows.loc[f"{lab('lora')} (Best)", "SMT − this"]
    assert float(diff.split()[0]) == pytest.approx(smt - lora, abs=0.051)
    lo, hi = (float(x) for x in diff.split("[")[1].rstrip("]").split(","))
    assert lo < smt - lora < hi
    # full FT (97 %) is significantly better than every other row: the only "best" (the
    # zero-shot row is a reference, never a contender)
    assert list(df.best) == ["", "", "", "", "", "best", "", ""]
    # the zero-shot row: one run, nothing trained; every method row's paired difference from it
    zero_id = hc.zero_shot_run_id(cfg, "tiny", "commonsense")
    assert zero_id == "tiny/commonsense/zero_shot/b0.00/none/s0"
    zero, _ = macro(tmp_path, [zero_id])
    zrow = rows.loc[lab("zero_shot")]
    assert parse_cell(zrow["AVG"])[0] == pytest.approx(zero, abs=0.051)
    assert zrow["Params%"] == "0.00" and zrow["seeds"] == "1" and zrow["vs zero-shot"] == ""
    best_smt, _ = macro(tmp_path, _seeds(cfg, "tiny", "commonsense", "smt", 4.0))
    vs = rows.loc["SMT (Best)", "vs zero-shot"]
    assert float(vs.split()[0]) == pytest.approx(best_smt - zero, abs=0.051)
    lo, hi = (float(x) for x in vs.split("[")[1].rstrip("]").split(","))
    assert lo < best_smt - zero < hi and lo > 0  # 76-78 % against 50 %: significant
    prior = parse_cell(rows.loc["label prior", "AVG"])
    assert prior[0] == pytest.approx(60.0)
    assert parse_cell(rows.loc["label prior", "boolq"])[0] == pytest.approx(60.0)
    out = (tmp_path / "out" / "table2.md").read_text()
    assert "deviations: dev of lora; dev of dora; dev of smt; dev of full_ft" in out and "config: test" in out
    csv = (tmp_path / "out" / "table2.csv").read_text()
    assert csv.startswith("# Table 2") and "tiny/commonsense/smt/b4.00/qkv/s1" in csv
    back = pd.read_csv(tmp_path / "out" / "table2.csv", comment="#")  # the header lines are comments
    assert len(back) == 8 and list(back.columns) == list(df.columns)
    assert "\\begin{tabular}" in (tmp_path / "out" / "table2.tex").read_text()


def test_table2_places_a_method_at_its_reached_budget_and_pairs_smt_by_it(tmp_path, cfg):
    # LoRA's 2 % run reached 3.8 %: SMT at LoRA's best budget is then SMT at 4 % (3.92 % reached)
    rids = reports.expand_runs(cfg, "table2")
    reached = {r: 0.038 for r in rids if "/lora/b2.00/" in r}
    df = report.make_table("table2", cfg, write_runs(tmp_path, cfg, rids, reached=reached), tmp_path / "t2")
    rows = df.set_index("Method")
    lab = method_label(cfg, "lora")
    assert rows.loc[f"{lab} (Best)", "Params%"] == "3.80"
    assert rows.loc[f"SMT (at {lab} best budget)", "Params%"] == "3.92"


def test_failed_and_diverged_runs_are_shown_with_their_reason(tmp_path, cfg):
    rids = reports.expand_runs(cfg, "table2")
    status = {"tiny/commonsense/lora/b2.00/qkvud/s1": ("diverged", "loss is nan at step 7"),
              "tiny/commonsense/dora/b2.00/qkvud/s0": ("failed", "CUDA out of memory"),
              "tiny/commonsense/dora/b2.00/qkvud/s1": ("failed", "CUDA out of memory"),
              "tiny/commonsense/dora/b4.00/qkvud/s0": ("failed", "killed"),
              "tiny/commonsense/dora/b4.00/qkvud/s1": ("failed", "killed")}
    df = report.make_table("table2", cfg, write_runs(tmp_path, cfg, rids, status=status), tmp_path / "t2")
    rows = df.set_index("Method")
    lora, dora = (f"{method_label(cfg, m)} (Best)" for m in ("lora", "dora"))
    assert rows.loc[lora, "seeds"] == "1/2"  # one seed diverged: the other one is shown, marked
    mean, _ = macro(tmp_path, ["tiny/commonsense/lora/b2.00/qkvud/s0"])
    assert parse_cell(rows.loc[lora, "AVG"])[0] == pytest.approx(mean, abs=0.051)
    mark = rows.loc[lora, "AVG"].split()[-1]
    footer = (tmp_path / "t2.md").read_text().splitlines()
    assert f"{mark.strip('[]')}. tiny/commonsense/lora/b2.00/qkvud/s1: diverged: loss is nan at step 7  " in footer
    assert rows.loc[dora, "AVG"].startswith("failed [")  # no seed of DoRA trained: shown as failed
    assert rows.loc[dora, "boolq"].startswith("failed [")
    md = (tmp_path / "t2.md").read_text()
    assert "CUDA out of memory" in md and "loss is nan at step 7" in md


def test_footnote_numbers_match_the_marks_and_skip_the_explanatory_notes(tmp_path, cfg):
    # the dagger note comes first (a degenerate task), then a failure the cells point to: the
    # failure is footnote 1, and neither the dagger nor the val-loss note takes a number
    rids = reports.expand_runs(cfg, "table6")
    deg = {(rid, task) for rid in rids for task in ("boolq", "piqa")}
    status = {rids[-1]: ("failed", "killed by the scheduler")}
    df = report.make_table("table6", cfg, write_runs(tmp_path, cfg, rids, degenerate=deg, status=status),
                           tmp_path / "t6")
    marks = {c.split()[-1] for c in df.AVG if c.split()[-1].startswith("[")}
    assert marks == {"[1]"}
    footer = (tmp_path / "t6.md").read_text().splitlines()
    assert f"1. {rids[-1]}: failed: killed by the scheduler  " in footer
    assert f"{DAGGER_NOTE}  " in footer
    assert not any(line.split(". ", 1)[-1].startswith(DAGGER) for line in footer if line[:1].isdigit())


def test_missing_evaluation_is_shown_not_fatal(tmp_path, cfg):
    paths = write_runs(tmp_path, cfg, reports.expand_runs(cfg, "table6"))
    (paths[0].parent / "eval" / "commonsense.json").unlink()
    df = report.make_table("table6", cfg, paths, tmp_path / "t6")
    assert df.seeds.iloc[0] == "1/2" and "no evaluation" in " ".join(df.attrs["footnotes"])


def test_degenerate_predictions_are_marked(tmp_path, cfg):
    rids = reports.expand_runs(cfg, "table6")
    deg = {("tiny/commonsense/smt/b2.00/k/s1", "piqa")}
    df = report.make_table("table6", cfg, write_runs(tmp_path, cfg, rids, degenerate=deg), tmp_path / "t6")
    k = df.iloc[0]
    assert k.piqa.endswith(DAGGER) and not k.boolq.endswith(DAGGER)
    assert not any(c.endswith(DAGGER) for c in df.iloc[1][["boolq", "piqa"]])
    assert DAGGER_NOTE in df.attrs["footnotes"]


def test_table3_marks_best_only_when_significant_and_shows_paired_differences(tmp_path, cfg):
    paths = write_runs(tmp_path, cfg, reports.expand_runs(cfg, "table3"))
    df = report.make_table("table3", cfg, paths, tmp_path / "table3").set_index("Method")
    lora, dora = method_label(cfg, "lora"), method_label(cfg, "dora")
    assert df.loc[lora, "2.00"].endswith(" *") and not df.loc[lora, "4.00"].endswith("*")  # 80 vs 62
    assert df.loc[dora, "4.00"].endswith(" *")
    assert df.loc["SMT", "2.00"].endswith(" ≈") and df.loc["SMT", "4.00"].endswith(" ≈")  # 70 vs 76: a tie
    smt4, _ = macro(tmp_path, _seeds(cfg, "tiny", "commonsense", "smt", 4.0))
    dora4, _ = macro(tmp_path, _seeds(cfg, "tiny", "commonsense", "dora", 4.0))
    assert float(df.loc[f"SMT − {dora}", "4.00"].split()[0]) == pytest.approx(smt4 - dora4, abs=0.051)
    assert parse_cell(df.loc["label prior", "2.00"])[0] == pytest.approx(60.0)


def test_tables_4_5_6_7(tmp_path, cfg):
    for name in ("table4", "table5", "table6", "table7"):
        paths = write_runs(tmp_path / name, cfg, reports.expand_runs(cfg, name))
        df = report.make_table(name, cfg, paths, tmp_path / name / "out")
        assert df.iloc[-1].iloc[0 if name == "table7" else 1] == "label prior", name
        assert not (df.AVG == "n/a").any(), name
    df4 = report.make_table("table4", cfg, list((tmp_path / "table4").rglob("record.json")), tmp_path / "t4")
    assert list(df4["MLP%"])[:4] == ["2.00", "1.00", "0.50", "0.00"]
    df7 = report.make_table("table7", cfg, list((tmp_path / "table7").rglob("record.json")), tmp_path / "t7")
    rows = df7.set_index("Variant")
    random_label = method_label(cfg, "smt_random")
    smt, _ = macro(tmp_path / "table7", _seeds(cfg, "tiny", "commonsense", "smt", 2.0, "qkv"))
    rnd, _ = macro(tmp_path / "table7", _seeds(cfg, "tiny", "commonsense", "smt_random", 2.0, "qkv"))
    assert float(rows.loc[random_label, "variant − SMT"].split()[0]) == pytest.approx(rnd - smt, abs=0.051)
    assert rows.loc[random_label, "delta MB"] == "1.00" and rows.loc[random_label, "s/step"] == "0.500"


def test_corrupt_eval_names_the_file(tmp_path, cfg):
    paths = write_runs(tmp_path, cfg, reports.expand_runs(cfg, "table6"))
    bad = paths[1].parent / "eval" / "commonsense.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match=str(bad)):
        report.make_table("table6", cfg, paths, tmp_path / "t6")


def test_corrupt_predictions_name_the_file(tmp_path, cfg):
    paths = write_runs(tmp_path, cfg, reports.expand_runs(cfg, "table6"))
    bad = next((paths[1].parent / "eval").glob("*.predictions.jsonl"))
    bad.write_text(bad.read_text() + '{"id": 999, "label"\n')  # a truncated last line
    with pytest.raises(ValueError, match=f"{bad}.*evaluate the run again"):
        report.make_table("table6", cfg, paths, tmp_path / "t6")


def test_equal_methods_are_shown_as_a_tie_not_a_best(tmp_path, cfg):
    # every placement of Table 6 has the same true accuracy (70 %): no row may be called "best"
    df = report.make_table("table6", cfg, write_runs(tmp_path, cfg, reports.expand_runs(cfg, "table6")), tmp_path / "t6")
    assert "best" not in list(df.best) and list(df.best).count("tied best") >= 2
    # ...while a clearly better placement is the one best
    better = lambda rid: 0.95 if "/v/" in rid else default_accuracy(rid)  # noqa: E731
    df = report.make_table("table6", cfg, write_runs(tmp_path / "b", cfg, reports.expand_runs(cfg, "table6"), better),
                           tmp_path / "t6b")
    assert list(df.best[:4]) == ["", "", "best", ""]


def test_val_loss_column_is_the_mean_and_range_over_seeds(tmp_path, cfg):
    rids = reports.expand_runs(cfg, "table2")
    vals = {r: {"final_val_loss": 0.5 + 0.01 * i, "val_prior_loss": 0.55,
                "val_curve": [{"step": 0, "val_loss": 2.0}, {"step": 10, "val_loss": 0.5 + 0.01 * i}]}
            for i, r in enumerate(rids)}
    df = report.make_table("table2", cfg, write_runs(tmp_path, cfg, rids, train_info=vals), tmp_path / "t2")
    rows = df.set_index("Method")
    smt = [vals[r]["final_val_loss"] for r in _seeds(cfg, "tiny", "commonsense", "smt", 4.0)]
    assert rows.loc["SMT (Best)", "val loss"] == \
        f"{sum(smt) / len(smt):.4f} ({min(smt):.4f}–{max(smt):.4f})"
    assert VAL_LOSS_NOTE in df.attrs["footnotes"]
    assert rows.loc["label prior", "val loss"] == "0.5500"  # the loss of a label-prior-only model
    from harness.reports.cells import Ctx
    from harness.reports.runs import load_run
    from harness.reports.targets.figure_val_loss import frame as val_loss_frame
    frame = val_loss_frame(Ctx("table2", cfg, [load_run(p) for p in tmp_path.rglob("record.json")]))
    assert len(frame) == 2 * len(rids) and set(frame.prior_level) == {0.55}
    plain = report.make_table("table2", cfg, write_runs(tmp_path / "b", cfg, rids), tmp_path / "u2")
    assert set(plain["val loss"]) <= {"-", ""} and VAL_LOSS_NOTE not in plain.attrs["footnotes"]


def test_table2_at_one_budget_names_it_and_compares_each_baseline_with_the_one_smt_row(tmp_path):
    raw = reports.load_config(hc.REPO_ROOT / "config/test.yaml")
    cfg = reports.load_config({**raw, "seeds": [0, 1],
                          "experiments": {**raw["experiments"], "table2": {**raw["experiments"]["table2"],
                                                                           "budgets": [2.0]}}})
    rids = reports.expand_runs(cfg, "table2")
    df = report.make_table("table2", cfg, write_runs(tmp_path, cfg, rids), tmp_path / "t2")
    lab = lambda m: method_label(cfg, m)  # noqa: E731
    assert list(df.Method) == [f"{lab('lora')} (2.00 %)", f"{lab('dora')} (2.00 %)", "SMT (2.00 %)",
                               lab("full_ft"), lab("zero_shot"), "label prior"]
    rows = df.set_index("Method")
    smt, _ = macro(tmp_path, _seeds(cfg, "tiny", "commonsense", "smt", 2.0))
    for m in ("lora", "dora"):
        other, _ = macro(tmp_path, _seeds(cfg, "tiny", "commonsense", m, 2.0))
        assert float(rows.loc[f"{lab(m)} (2.00 %)", "SMT − this"].split()[0]) == pytest.approx(smt - other, abs=0.051)


def test_a_run_is_what_its_record_says_not_what_its_id_or_todays_config_says(tmp_path, cfg):
    """Run.fields (what tables select and group on) come from run_info.config, the typed RunConfig
    the train job stored; a record without it is an error naming the file."""
    from harness.reports.runs import load_run

    rid = report.expand_runs(cfg, "table3")[0]
    path = write_runs(tmp_path, cfg, [rid])[0]
    rec = json.loads(path.read_text())
    rec["run_info"]["config"]["seed"] = 7  # the record trained seed 7, whatever its directory says
    rec["run_info"]["config"]["method"]["lr"] = 0.123
    path.write_text(json.dumps(rec))
    run = load_run(path)
    assert (run.seed, run.lr, run.lr_named) == (7, 0.123, None)
    assert run.fields == {"model": hc.parse_run_id(rid)["model"], "dataset": hc.parse_run_id(rid)["dataset"],
                          "method": hc.parse_run_id(rid)["method"], "budget": hc.parse_run_id(rid)["budget"],
                          "placement": hc.parse_run_id(rid)["placement"], "seed": 7, "lr": 0.123}
    del rec["run_info"]["config"]
    path.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"record.json has no run_info.config"):
        load_run(path)
