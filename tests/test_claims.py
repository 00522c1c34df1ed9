"""The claims table (harness/reports/targets/claims.py): its decision rule on constructed inputs, and
the committed cloze study's claims table (built from its records, as results/tables/claims.csv)
recomputed WITHOUT the report's code.

Decision rule: each verdict is reachable; the TOST reads the 90 % interval (not the 95 %); Holm's
adjusted p-values on a textbook example (ordering, the running maximum, the cap at 1); a directional
claim is supported only when its test survives Holm; the likeness claim tries equivalence first;
the minimum detectable effect and "to resolve" follow their formulas.

Recomputation: for every row of the table, the runs it compares are picked here from the
run lists of the committed Tables 2, 3, 4 and 6 (their '# runs:' lines) and the config, the
per-example acc_norm (the declared primary metric, the `acc_norm` field of each prediction row, not
the `correct` field the report reads) is read from results/runs/*/eval/*.predictions.jsonl, and the
estimate, its 95 % and 90 % intervals (this module's own paired bootstrap: another generator, more
replicates), the p-values, Holm's correction, the verdict, the MDE and "to resolve" are recomputed
with numpy and plain Python: no helper of harness.reports or harness.stats is called.
"""
import csv
import io
import json
import math
import pathlib
import re
from statistics import NormalDist

import numpy as np
import pytest

from harness import config as hc
from harness.reports import load_config as _load_config
from harness.reports.targets import claims as cl

REPO = pathlib.Path(__file__).resolve().parents[1]
TABLES = REPO / "results" / "tables"
RUNS = REPO / "results" / "runs"
CFG = hc.load_yaml_strict(REPO / "config" / "config.yaml")
EXP = CFG["experiments"]["claims"]
DELTA, ALPHA, POWER = float(EXP["delta"]), float(EXP.get("alpha", 0.05)), float(EXP.get("power", 0.8))
N_BOOT, REPORT_BOOT, SLACK, ROUND = 4000, 2000, 0.3, 0.05 + 1e-9
TASKS = CFG["eval"]["commonsense"]["tasks"]


# ---- the decision rule on constructed inputs ------------------------------------------------------

def normal_reps(mean, sd, n=20000, seed=0):
    return np.random.default_rng(seed).normal(mean, sd, n)


@pytest.mark.parametrize("mean,sd,expected", [
    (3.0, 0.5, "supported"), (-3.0, 0.5, "contradicted"), (0.0, 0.5, "equivalent within ±2"),
    (1.0, 1.5, "inconclusive")])
def test_every_verdict_is_reachable(mean, sd, expected):
    s = cl.summarize(normal_reps(mean, sd), mean, delta=2.0)
    p_holm = cl.holm([cl.primary_p(s, "superiority")])[0]
    assert cl.verdict(s, "superiority", 2.0, p_holm) == expected


def test_tost_reads_the_90_percent_interval():
    # sd 1.1: the 90 % interval (+-1.81) lies inside +-2, the 95 % interval (+-2.16) does not
    s = cl.summarize(normal_reps(0.0, 1.1), 0.0, delta=2.0)
    assert -2 < s["lo90"] and s["hi90"] < 2 and (s["lo"] < -2 or s["hi"] > 2)
    assert abs(s["lo90"] - NormalDist(0, 1.1).inv_cdf(0.05)) < 0.05
    assert abs(s["lo"] - NormalDist(0, 1.1).inv_cdf(0.025)) < 0.05
    assert s["p_tost"] < 0.05
    assert cl.verdict(s, "superiority", 2.0, 1.0) == "equivalent within ±2"
    assert cl.verdict(s, "equivalence", 2.0, cl.holm([s["p_tost"]])[0]) == "equivalent within ±2"


def test_a_directional_claim_needs_its_test_to_survive_holm():
    s = cl.summarize(normal_reps(2.9, 1.2), 2.9, delta=2.0)  # 95 % interval above 0, p about 0.016
    assert s["lo"] > 0 and 0.005 < s["p"] < 0.05
    assert cl.verdict(s, "superiority", 2.0, s["p"]) == "supported"
    family = [s["p"]] + [0.9] * 9  # ten claims: Holm multiplies the smallest p by 10
    p_holm = cl.holm(family)[0]
    assert p_holm == pytest.approx(10 * s["p"]) and p_holm > 0.05
    assert cl.verdict(s, "superiority", 2.0, p_holm) == "inconclusive"
    assert cl.holds("inconclusive", s, "superiority", 2.0) == "open"


def test_holm_adjusted_p_values():
    # textbook: p sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert cl.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert cl.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert cl.holm([0.02, 0.02]) == pytest.approx([0.04, 0.04])  # ties
    assert cl.holm([0.001]) == pytest.approx([0.001])
    ps = list(np.random.default_rng(3).uniform(0, 0.1, 7))
    adj = cl.holm(ps)
    order = np.argsort(ps)
    assert all(np.diff(np.array(adj)[order]) >= 0) and all(a >= p for a, p in zip(adj, ps))


def test_the_likeness_claim_tries_equivalence_first_and_holds_reads_the_claim():
    s = cl.summarize(normal_reps(0.5, 0.2), 0.5, delta=2.0)  # above 0 and inside +-2
    assert cl.verdict(s, "superiority", 2.0, s["p"]) == "supported"
    v = cl.verdict(s, "equivalence", 2.0, s["p_tost"])
    assert v == "equivalent within ±2" and cl.holds(v, s, "equivalence", 2.0) == "yes"
    far = cl.summarize(normal_reps(4.0, 0.5), 4.0, delta=2.0)
    v = cl.verdict(far, "equivalence", 2.0, far["p_tost"])
    assert v == "supported" and cl.holds(v, far, "equivalence", 2.0) == "no"
    eq = cl.summarize(normal_reps(0.0, 0.5), 0.0, delta=2.0)
    assert cl.holds(cl.verdict(eq, "superiority", 2.0, 1.0), eq, "superiority", 2.0) == "no"


def test_mde_and_to_resolve_formulas():
    z = NormalDist().inv_cdf
    assert cl.mde(1.0, 1) == pytest.approx(z(0.975) + z(0.8))
    assert cl.mde(1.0, 10) == pytest.approx(z(1 - 0.05 / 20) + z(0.8))
    # seed variance 0.25 per group (2 groups), example term 0.5 at 100 examples per task, m = 1
    zz = z(0.975) + z(0.8)
    allowed = (3.0 / zz) ** 2
    want = [f"{k}×{math.ceil(0.5 * 100 / (allowed - 0.5 / k))}" if allowed > 0.5 / k else f"{k}×never"
            for k in (1, 3, 10)]
    assert cl.to_resolve(3.0, "superiority", [0.25, 0.25], 0.5, 100, 1, 2.0) == ", ".join(want)
    assert cl.to_resolve(0.3, "superiority", [0.25, 0.25], 0.5, 100, 1, 2.0).startswith("1×never")
    assert cl.to_resolve(None, "superiority", [0.25], 0.5, 100, 1, 2.0) == "no effect in the paper"
    assert cl.to_resolve(2.5, "equivalence", [0.25], 0.5, 100, 1, 2.0) == "paper's effect ≥ δ"


# ---- the committed table, recomputed from the prediction files ------------------------------------

def committed(name):
    text = (TABLES / f"{name}.csv").read_text()
    header = [ln[2:] for ln in text.splitlines() if ln.startswith("# ")]
    body = "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("# "))
    runs = next(h[len("runs: "):].split("; ") for h in header if h.startswith("runs: "))
    return header, list(csv.DictReader(io.StringIO(body))), runs


class Run:
    def __init__(self, rid):
        self.rid = rid
        model, dataset, method, budget, placement, seed = rid.split("/")
        self.method, self.placement, self.seed = method.split("@")[0], placement, int(seed[1:])
        self.budget = float(budget[1:])
        self.acc = {}
        for t in TASKS:
            rows = [json.loads(ln) for ln in (RUNS / rid / "eval" / f"{t}.predictions.jsonl").read_text().splitlines()
                    if ln.strip()]
            rows.sort(key=lambda r: r["id"])
            self.acc[t] = np.array([float(r[CFG["primary_metric"]]) for r in rows])

    def macro(self):
        return 100 * float(np.mean([self.acc[t].mean() for t in TASKS]))


_RUNS = {}


def runs_of(ids, **where):
    out = []
    for rid in ids:
        if rid not in _RUNS:
            _RUNS[rid] = Run(rid)
        r = _RUNS[rid]
        if all(getattr(r, k) == v for k, v in where.items()):
            out.append(r)
    return sorted(out, key=lambda r: r.seed)


def mean_macro(group):
    return sum(r.macro() for r in group) / len(group)


def bootstrap(terms, seed=12345):
    """Replicates (points) of sum(sign * group mean macro): examples resampled per task with the
    same indices for every group; each group's seeds resampled with replacement."""
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, len(g), size=(N_BOOT, len(g))) for g, _ in terms]
    total = np.zeros(N_BOOT)
    for t in TASKS:
        n = len(terms[0][0][0].acc[t])
        idx = rng.integers(0, n, size=(N_BOOT, n))
        for (g, sign), pick in zip(terms, picks):
            per_seed = np.stack([r.acc[t] for r in g])[:, idx].mean(axis=2)  # (seeds, N_BOOT)
            total += sign * per_seed[pick, np.arange(N_BOOT)[:, None]].mean(axis=1)
    return 100 * total / len(TASKS)


def plausible(reps, q):
    d = 3 * math.sqrt(q * (1 - q) / REPORT_BOOT)
    a, b = np.quantile(reps, [max(0.0, q - d), min(1.0, q + d)])
    return a - ROUND - SLACK, b + ROUND + SLACK


NUM = r"[+\-]?\d+\.\d+"


def expected_terms():
    """(claim label, [(group, sign)]) of every row, chosen from the committed tables' run lists."""
    t2, t3, t4, t6 = (committed(n)[2] for n in ("table2", "table3", "table4", "table6"))
    smt2 = runs_of(t2, method="smt")
    top = max(r.budget for r in runs_of(t3))

    def gain(method):
        big = runs_of(t3, method=method, budget=top)
        smalls = {}
        for r in runs_of(t3, method=method):
            if r.budget < top:
                smalls.setdefault(r.budget, []).append(r)
        best = max(smalls.values(), key=mean_macro)
        return [(big, 1.0), (best, -1.0)]

    def flip(terms):
        return [(g, -s) for g, s in terms]

    return {
        "SMT > LoRA at equal budget": [(smt2, 1.0), (runs_of(t2, method="lora"), -1.0)],
        "SMT > DoRA at equal budget": [(smt2, 1.0), (runs_of(t2, method="dora"), -1.0)],
        "SMT: no plateau (gain > 0)": gain("smt"),
        "SMT's gain > LoRA's gain": gain("smt") + flip(gain("lora")),
        "SMT's gain > DoRA's gain": gain("smt") + flip(gain("dora")),
        "attention > MLP": [(runs_of(t4, placement="qkv"), 1.0), (runs_of(t4, placement="mlp100"), -1.0)],
        "V > Q": [(runs_of(t6, placement="v"), 1.0), (runs_of(t6, placement="q"), -1.0)],
        "V > K": [(runs_of(t6, placement="v"), 1.0), (runs_of(t6, placement="k"), -1.0)],
        "SMT near full FT": [(smt2, 1.0), (runs_of(t2, method="full_ft"), -1.0)],
        "fine-tuning (SMT) > zero-shot": [(smt2, 1.0), (runs_of(t2, method="zero_shot"), -1.0)],
    }


PAPER = {  # the paper's numbers (LLaMA-7B; the committed study's model is not in the paper)
    "SMT > LoRA at equal budget": 78.7 - 76.3, "SMT > DoRA at equal budget": 0.3,
    "SMT: no plateau (gain > 0)": 81.4 - 80.8, "SMT's gain > LoRA's gain": (81.4 - 80.8) - (74.7 - 76.4),
    "SMT's gain > DoRA's gain": (81.4 - 80.8) - (77.6 - 78.4), "attention > MLP": 78.7 - 76.7,
    "V > Q": 78.5 - 75.3, "V > K": 78.5 - 73.9, "SMT near full FT": 0.0, "fine-tuning (SMT) > zero-shot": None,
}


def runs_text(terms):
    parts = []
    for g, sign in terms:
        stem = "/".join(g[0].rid.split("/")[2:-1])
        parts.append(("− " if sign < 0 else "+ ") + f"{stem} s{','.join(str(r.seed) for r in g)}")
    return " ".join(parts)[2:] if terms[0][1] > 0 else " ".join(parts)


def variance_terms(terms, all_groups):
    num = den = 0.0
    for g in all_groups:
        if len(g) > 1:
            m = [r.macro() for r in g]
            mu = sum(m) / len(m)
            num += sum((x - mu) ** 2 for x in m)
            den += len(m) - 1
    sv = num / den
    seed_terms = [0.0 if g[0].method == "zero_shot" else sv for g, _ in terms]
    ex, ns = 0.0, []
    for t in TASKS:
        comb = sum(sign * 100 * np.mean([r.acc[t] for r in g], axis=0) for g, sign in terms)
        ns.append(len(comb))
        ex += float(np.var(comb, ddof=1)) / len(comb)
    return seed_terms, ex / len(TASKS) ** 2, sum(ns) / len(ns)


@pytest.fixture(scope="module")
def table():
    """The claims table built now by the report's code from the committed records (the committed
    csv equals it byte for byte: tests/test_rebuild_from_records.py): (footer lines, rows, runs)."""
    from harness import lr_sweep
    from harness import reports

    cfg = {k: v for k, v in _load_config(CFG).items() if k != "data_root"}
    cfg = lr_sweep.with_choice(cfg, lr_sweep.read_choice(REPO / "results" / lr_sweep.FILE))
    ids = reports.expand_runs(cfg, "claims")
    df, run_ids, _ = reports.build_table("claims", cfg, [RUNS / r / "record.json" for r in ids])
    header = list(df.attrs["footnotes"])
    return header, df.to_dict("records"), run_ids


@pytest.mark.skipif(not RUNS.is_dir(), reason="no committed records under results/runs")
def test_committed_claims_table_recomputed_from_the_prediction_files(table):
    header, rows, runs = table
    terms_of = expected_terms()
    assert [r["Claim"] for r in rows] == list(terms_of), "one row per claim of the committed study, in order"
    z = NormalDist().inv_cdf
    all_groups = {tuple(r.rid for r in g): g for ts in terms_of.values() for g, _ in ts}.values()  # each group once
    m = len(rows)
    own = {}
    for row in rows:
        what, terms = row["Claim"], terms_of[row["Claim"]]
        assert row["Model"] == "smollm2-135m" and row["δ"] == f"±{DELTA:.1f}"
        assert row["Runs read"] == runs_text(terms), f"{what}: runs read"
        est = sum(s * mean_macro(g) for g, s in terms)
        reps = bootstrap(terms)
        d, lo, hi = map(float, re.match(rf"^({NUM}) \[({NUM}), ({NUM})\]$", row["Estimate [95 %]"]).groups())
        lo90, hi90 = map(float, re.match(rf"^\[({NUM}), ({NUM})\]$", row["90 %"]).groups())
        assert abs(d - est) <= ROUND, f"{what}: estimate {d} != {est:+.3f} recomputed (sign included)"
        for value, q in ((lo, 0.025), (hi, 0.975), (lo90, 0.05), (hi90, 0.95)):
            a, b = plausible(reps, q)
            assert a <= value <= b, f"{what}: the {q} end {value} outside [{a:.2f}, {b:.2f}] (own bootstrap)"
        test = "equivalence" if what == "SMT near full FT" else "superiority"
        p = (max(np.mean(reps <= -DELTA), np.mean(reps >= DELTA)) if test == "equivalence"
             else min(1.0, 2 * min(np.mean(reps <= 0), np.mean(reps >= 0))))
        own[what] = (est, reps, float(p), test, row)
        # MDE and "to resolve": deterministic functions of the data
        seed_terms, ex, n_obs = variance_terms(terms, all_groups)
        se = math.sqrt(sum(v / len(g) for v, (g, _) in zip(seed_terms, terms)) + ex)
        mde = (z(1 - ALPHA / (2 * m)) + z(POWER)) * se
        assert row["MDE (80 %)"] == f"{mde:.1f} pt", f"{what}: MDE {row['MDE (80 %)']} != {mde:.2f}"
        effect = PAPER[what]
        if effect is None:
            assert row["To resolve"] == "no effect in the paper"
        else:
            if test == "equivalence":
                room, zz = DELTA - abs(effect), z(1 - ALPHA / m) + z((1 + POWER) / 2)
            else:
                room, zz = effect, z(1 - ALPHA / (2 * m)) + z(POWER)
            allowed = (room / zz) ** 2
            want = ", ".join(f"{k}×{math.ceil(ex * n_obs / (allowed - sum(seed_terms) / k))}"
                             if allowed > sum(seed_terms) / k else f"{k}×never" for k in (1, 3, 10))
            assert row["To resolve"] == want, f"{what}: to resolve {row['To resolve']!r} != {want!r}"
            assert row["Paper's effect"] == f"{effect:+.1f} (llama-7b)"
    # Holm over the family (one model), then the verdict; where the own bootstrap cannot tell
    # (an interval end or a p near its threshold) either reading is accepted
    names = list(own)
    ps = [own[n][2] for n in names]
    order = sorted(range(m), key=lambda i: ps[i])
    adj, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * ps[i]))
        adj[i] = running
    for name, p_holm in zip(names, adj):
        est, reps, p, test, row = own[name]
        lo, hi = np.quantile(reps, [0.025, 0.975])
        lo90, hi90 = np.quantile(reps, [0.05, 0.95])
        close = min(abs(lo), abs(hi), abs(abs(lo90) - DELTA), abs(abs(hi90) - DELTA)) < 0.3 \
            or 0.5 * ALPHA < p_holm < 2 * ALPHA
        inside = -DELTA < lo90 and hi90 < DELTA
        if test == "equivalence":
            want = (f"equivalent within ±{DELTA:g}" if inside and p_holm <= ALPHA else
                    "supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive")
        else:
            want = ("supported" if lo > 0 and p_holm <= ALPHA else "contradicted" if hi < 0 and p_holm <= ALPHA
                    else f"equivalent within ±{DELTA:g}" if inside else "inconclusive")
        if not close:
            assert row["Verdict"] == want, f"{name}: verdict {row['Verdict']!r}, recomputed {want!r} (Holm p {p_holm:.3f})"
        holm_cell = float(re.search(r"\(<?(\d\.\d+)\)$", row["p (Holm)"]).group(1))
        assert abs(holm_cell - p_holm) <= 0.03 + 0.5 * p_holm, f"{name}: Holm p {holm_cell} vs {p_holm:.4f}"


@pytest.mark.skipif(not RUNS.is_dir(), reason="no committed records under results/runs")
def test_committed_claims_table_says_when_the_margin_was_declared():
    header, _, runs = committed("claims")
    flagged = any("declared after the runs read here had been committed" in h for h in header)
    assert flagged == bool(EXP["margin_declared_after_runs"]) and flagged
    assert any(h.startswith("primary endpoint: cloze acc_norm") for h in header)
    # every run the rows read is in the table's run list, and nothing else
    read = {r.rid for ts in expected_terms().values() for g, _ in ts for r in g}
    assert set(runs) == read


@pytest.mark.skipif(not RUNS.is_dir(), reason="no committed records under results/runs")
def test_a_claim_without_usable_runs_is_not_tested_and_leaves_the_family():
    """Without the V SMT run, 'V > Q' and 'V > K' say "not tested" with the reason, and Holm's
    family shrinks to the claims tested (the other rows' Holm p-values are recomputed over 8)."""
    from harness import lr_sweep
    from harness import reports

    cfg = {k: v for k, v in _load_config(CFG).items() if k != "data_root"}
    cfg = lr_sweep.with_choice(cfg, lr_sweep.read_choice(REPO / "results" / lr_sweep.FILE))
    ids = [r for r in reports.expand_runs(cfg, "claims") if hc.parse_run_id(r)["placement"] != "v"]
    df, _, _ = reports.build_table("claims", cfg, [RUNS / r / "record.json" for r in ids])
    rows = {r["Claim"]: r for r in df.to_dict("records")}
    for name in ("V > Q", "V > K"):
        assert rows[name]["Verdict"].startswith("not tested") and rows[name]["Estimate [95 %]"] == "n/a"
    assert any("v_vs_q: not tested (no runs" in n for n in df.attrs["footnotes"]), df.attrs["footnotes"]
    tested = [r for r in rows.values() if not r["Verdict"].startswith("not tested")]
    ps = [float(re.match(r"^<?(\d\.\d+)", r["p (Holm)"]).group(1)) for r in tested]
    holm = [float(re.search(r"\(<?(\d\.\d+)\)$", r["p (Holm)"]).group(1)) for r in tested]
    assert len(tested) == 8 and holm == pytest.approx(cl.holm(ps), abs=1e-3)
    smallest = min(range(8), key=lambda i: ps[i])
    assert holm[smallest] == pytest.approx(min(1.0, 8 * ps[smallest]), abs=1e-3)


def test_a_claim_whose_runs_the_config_lacks_is_a_config_error_naming_it():
    raw = hc.load_yaml_strict(REPO / "config" / "test.yaml")
    assert cl.claim_names(_load_config(raw), raw["experiments"]["claims"]) == list(cl.CLAIMS)
    del raw["experiments"]["table6"]
    assert "v_vs_q" not in cl.claim_names(_load_config(raw), raw["experiments"]["claims"])  # default: dropped
    raw["experiments"]["claims"]["claims"] = ["v_vs_q"]
    with pytest.raises(hc.ConfigError, match=r"experiments\.claims\.claims: 'v_vs_q' reads the runs of "
                                             r"experiments\.table6"):
        _load_config(raw)
