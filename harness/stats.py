"""Uncertainty of accuracies: Wilson intervals, bootstraps over examples and seeds, paired tests.

Data shapes. A *run* is `{task: 0/1 array of per-example correctness}`, the arrays in example
order (the same order for every run evaluated on the same test examples). A *group* is a list
of runs of one configuration that differ only in the seed. The average over tasks is the macro
average (mean of the task accuracies), as in the paper's tables.

Bootstraps are stratified by task (each task's examples are resampled within the task, so
every replicate keeps the task sizes) and, with several seeds, hierarchical: each replicate
resamples the seeds with replacement and, independently, the test examples (the same example
indices for every seed, since every seed is evaluated on the same examples). The interval
therefore accounts for both the spread over seeds and the finite test set. Paired differences
resample the examples once and apply the same indices to both methods. Every bootstrap is
seeded and deterministic; intervals are percentile intervals. All results are fractions.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
N_BOOT = 2000
DEGENERATE_SHARE = 0.9  # predictions are degenerate when one answer is >= 90 % of them


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion correct / n (95 % by default)."""
    if n <= 0:
        raise ValueError(f"wilson: n must be positive, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"wilson: correct={correct} outside [0, n={n}]")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def label_prior(labels) -> dict:
    """The constant predictor that always answers the most frequent label of `labels`.

    Returns prior_label (ties: the smallest label as a string, so the choice is deterministic),
    label_prior (its accuracy), label_counts and the per-example correctness of that predictor.
    """
    labels = [str(x) for x in labels]
    if not labels:
        raise ValueError("label_prior: no labels")
    counts = Counter(labels)
    prior = min(counts, key=lambda lab: (-counts[lab], lab))
    return {"prior_label": prior, "label_prior": counts[prior] / len(labels),
            "label_counts": dict(sorted(counts.items())),
            "correct": np.array([lab == prior for lab in labels], dtype=float)}


def _as_group(group) -> list[dict]:
    if isinstance(group, dict):
        group = [group]
    group = list(group)
    if not group:
        raise ValueError("empty group of runs")
    tasks = list(group[0])
    for run in group:
        if list(run) != tasks:
            raise ValueError(f"runs of one group cover different tasks: {list(run)} vs {tasks}")
    return group


def _matrix(group: list[dict], task: str) -> np.ndarray:
    """(seeds, examples) correctness matrix of one task."""
    rows = [np.asarray(run[task], dtype=float) for run in group]
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"task {task}: the seeds were evaluated on different numbers of examples "
                         f"({[len(r) for r in rows]}); evaluate every seed on the same test examples")
    if not len(rows[0]):
        raise ValueError(f"task {task}: no examples")
    return np.stack(rows)


def macro(run: dict) -> float:
    """Macro-average accuracy of one run over its tasks."""
    return float(np.mean([np.mean(np.asarray(v, dtype=float)) for v in run.values()]))


def _quantiles(reps: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _replicates(groups: list[list[dict]], signs: list[float], n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of sum_g sign_g * (macro average of group g, mean over its seeds).

    Examples are resampled per task with the same indices for every group and seed (paired);
    each group's seeds are resampled independently.
    """
    rng = np.random.default_rng(seed)
    tasks = list(groups[0][0])
    for g in groups[1:]:
        if list(g[0]) != tasks:
            raise ValueError(f"paired comparison needs the same tasks: {list(g[0])} vs {tasks}")
    seed_weights = [rng.multinomial(len(g), np.full(len(g), 1 / len(g)), size=n_boot) / len(g) for g in groups]
    total = np.zeros(n_boot)
    for task in tasks:
        mats = [_matrix(g, task) for g in groups]
        n = mats[0].shape[1]
        if any(m.shape[1] != n for m in mats):
            raise ValueError(f"task {task}: paired comparison needs the same test examples, got "
                             f"{[m.shape[1] for m in mats]} examples")
        counts = rng.multinomial(n, np.full(n, 1 / n), size=n_boot)  # (n_boot, n) example weights
        for mat, weights, sign in zip(mats, seed_weights, signs):
            per_seed = counts @ mat.T / n  # (n_boot, seeds): each seed's accuracy on the resample
            total += sign * (per_seed * weights).sum(axis=1)
    return total / len(tasks)


def estimate(group, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """Macro-average accuracy of a group of seeds with its interval.

    Returns mean (mean over seeds of the macro average), spread (standard deviation over seeds,
    0 for one seed), seeds, n (examples per seed, summed over tasks) and lo/hi: the percentile
    interval of a bootstrap stratified by task (one seed) or hierarchical over seeds and
    examples (several seeds).
    """
    group = _as_group(group)
    per_seed = [macro(run) for run in group]
    reps = _replicates([group], [1.0], n_boot, seed)
    lo, hi = _quantiles(reps, level)
    return {"mean": float(np.mean(per_seed)), "spread": float(np.std(per_seed, ddof=1)) if len(group) > 1 else 0.0,
            "lo": lo, "hi": hi, "seeds": len(group), "n": int(sum(len(v) for v in group[0].values()))}


def task_estimate(group, task: str, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """Accuracy of one task: Wilson interval for one seed, hierarchical bootstrap for several."""
    group = _as_group(group)
    mat = _matrix(group, task)
    accs = mat.mean(axis=1)
    if len(group) == 1:
        lo, hi = wilson(int(mat.sum()), mat.shape[1], z=_z(level))
    else:
        lo, hi = _quantiles(_replicates([[{task: r[task]} for r in group]], [1.0], n_boot, seed), level)
    return {"mean": float(accs.mean()), "spread": float(np.std(accs, ddof=1)) if len(group) > 1 else 0.0,
            "lo": lo, "hi": hi, "seeds": len(group), "n": int(mat.shape[1])}


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


def paired_difference(group_a, group_b, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """Difference A - B of macro-average accuracy on the same test examples, with its interval.

    Paired bootstrap: each replicate resamples the examples of every task once and uses the
    same indices for A and B (and, with several seeds, resamples A's and B's seeds
    independently). B may be a constant predictor such as the label prior (`label_prior(...)
    ["correct"]` per task). Returns diff, lo, hi, p (two-sided bootstrap p-value: twice the
    smaller tail share of replicates on either side of 0, at most 1) and significant (the
    interval excludes 0).
    """
    a, b = _as_group(group_a), _as_group(group_b)
    reps = _replicates([a, b], [1.0, -1.0], n_boot, seed)
    lo, hi = _quantiles(reps, level)
    diff = float(np.mean([macro(r) for r in a]) - np.mean([macro(r) for r in b]))
    p = min(1.0, 2 * min(float(np.mean(reps <= 0)), float(np.mean(reps >= 0))))
    return {"diff": diff, "lo": lo, "hi": hi, "p": p, "significant": bool(lo > 0 or hi < 0),
            "seeds_a": len(a), "seeds_b": len(b)}


def mcnemar(correct_a, correct_b) -> dict:
    """Exact (binomial) two-sided McNemar test of two predictors on the same examples.

    correct_a/correct_b: 0/1 arrays (concatenate the tasks for a suite). Returns the discordant
    counts a_only (A right, B wrong), b_only, and p.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar: predictors cover different examples ({a.shape} vs {b.shape})")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    if n == 0:
        return {"a_only": 0, "b_only": 0, "p": 1.0}
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return {"a_only": a_only, "b_only": b_only, "p": min(1.0, 2 * tail)}
