"""harness.stats against hand and scipy computations; seeded determinism."""
import math

import numpy as np
import pytest
from scipy import stats as ss

from harness import stats


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (57, 100), (1, 1)])
def test_wilson_matches_scipy_and_the_closed_form(k, n):
    lo, hi = stats.wilson(k, n)
    ref = ss.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_by_hand():
    # 8/10: centre (0.8 + 1.92/10) / 1.384, half 1.96 sqrt(0.016 + 0.0096) / 1.384
    z = stats.Z95
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert stats.wilson(8, 10) == pytest.approx((centre - half, centre + half))
    assert stats.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    with pytest.raises(ValueError):
        stats.wilson(3, 0)


def test_label_prior_counts_and_ties():
    prior = stats.label_prior(["b", "a", "b", "c", "a", "b"])
    assert prior["prior_label"] == "b" and prior["label_prior"] == pytest.approx(0.5)
    assert prior["label_counts"] == {"a": 2, "b": 3, "c": 1}
    assert list(prior["correct"]) == [1, 0, 1, 0, 0, 1]
    assert stats.label_prior(["y", "x"])["prior_label"] == "x"  # tie: deterministic


def _run(rng, p, sizes):
    return {f"t{i}": (rng.random(n) < q).astype(float) for i, (q, n) in enumerate(zip(p, sizes))}


def test_one_seed_bootstrap_is_the_macro_average_with_a_stratified_interval():
    rng = np.random.default_rng(0)
    run = _run(rng, [0.3, 0.8], [400, 100])
    est = stats.estimate(run, n_boot=4000, seed=1)
    assert est["mean"] == pytest.approx((run["t0"].mean() + run["t1"].mean()) / 2)
    assert est["spread"] == 0 and est["seeds"] == 1 and est["n"] == 500
    # stratified: var = (p0 q0 / n0 + p1 q1 / n1) / 4
    p0, p1 = run["t0"].mean(), run["t1"].mean()
    sd = math.sqrt(p0 * (1 - p0) / 400 + p1 * (1 - p1) / 100) / 2
    assert est["hi"] - est["lo"] == pytest.approx(2 * 1.96 * sd, rel=0.08)
    assert est["lo"] < est["mean"] < est["hi"]
    assert stats.estimate(run, n_boot=500, seed=3) == stats.estimate(run, n_boot=500, seed=3)


def test_several_seeds_give_mean_spread_and_a_wider_interval():
    rng = np.random.default_rng(0)
    group = [_run(rng, [0.5 + 0.1 * s, 0.6], [200, 200]) for s in range(3)]
    est = stats.estimate(group, n_boot=3000, seed=0)
    per_seed = [stats.macro(r) for r in group]
    assert est["mean"] == pytest.approx(np.mean(per_seed))
    assert est["spread"] == pytest.approx(np.std(per_seed, ddof=1))
    one = stats.estimate([group[1]], n_boot=3000, seed=0)
    assert est["hi"] - est["lo"] > one["hi"] - one["lo"]  # seed spread widens the interval
    task = stats.task_estimate(group, "t0", n_boot=2000, seed=0)
    assert task["mean"] == pytest.approx(np.mean([r["t0"].mean() for r in group]))
    assert task["lo"] < task["mean"] < task["hi"]
    single = stats.task_estimate([group[0]], "t0")
    assert (single["lo"], single["hi"]) == pytest.approx(stats.wilson(int(group[0]["t0"].sum()), 200))


def test_paired_difference_uses_the_pairing():
    rng = np.random.default_rng(0)
    a = {"t": (rng.random(300) < 0.6).astype(float)}
    b = {"t": a["t"].copy()}
    flip = np.flatnonzero(a["t"] == 1)[:15]  # B misses 15 that A gets: +5 points, always
    b["t"][flip] = 0
    d = stats.paired_difference(a, b, n_boot=2000, seed=0)
    assert d["diff"] == pytest.approx(0.05)
    assert d["significant"] and d["lo"] > 0 and d["p"] < 0.01
    # unpaired, the same 5 points on n=300 would not be significant (sd ~ 4 points)
    assert d["hi"] - d["lo"] < 0.06
    same = stats.paired_difference(a, a, n_boot=500, seed=0)
    assert same["diff"] == 0 and same["lo"] == same["hi"] == 0 and not same["significant"]
    with pytest.raises(ValueError, match="same test examples"):
        stats.paired_difference(a, {"t": a["t"][:-1]})


def test_difference_from_the_label_prior():
    labels = ["x"] * 70 + ["y"] * 30
    prior = stats.label_prior(labels)
    constant = {"t": prior["correct"]}  # a model always answering "x" IS the prior
    d = stats.paired_difference(constant, {"t": prior["correct"]}, n_boot=200)
    assert d["diff"] == 0 and not d["significant"]


def test_mcnemar_exact_matches_scipy_binomtest():
    a = np.array([1] * 12 + [0] * 3 + [1] * 40 + [0] * 45)
    b = np.array([0] * 12 + [1] * 3 + [1] * 40 + [0] * 45)
    res = stats.mcnemar(a, b)
    assert (res["a_only"], res["b_only"]) == (12, 3)
    assert res["p"] == pytest.approx(ss.binomtest(3, 15, 0.5).pvalue)
    assert stats.mcnemar(a, a)["p"] == 1.0
