"""The paper's claims as declared tests: one row per claim and model, its verdict computed from the
records by a decision rule fixed in the config (experiments.claims) before the table is read.

Each claim (CLAIMS) carries the paper's words and section, the runs it compares (taken from the
experiments entries of Tables 2, 3, 4 and 6, so a claim reads exactly the seed groups those tables
show) and the contrast it tests on the primary endpoint (the config's `primary_metric`: the macro
average over the tasks of the per-example correctness the evaluation recorded; under cloze acc_norm).

The test. Every contrast is a signed sum of seed groups' macro-average accuracies, e.g. SMT - LoRA,
with its paired bootstrap over the same test examples (harness.stats: examples resampled per task
with the same indices for every group, each group's seeds resampled; N_BOOT replicates with
BOOT_SEED, the replicates harness.reports.cells.paired draws, so a two-group claim's 95 % interval is
the one Tables 2-6 print for the same difference). From the replicates: the 95 % and 90 % percentile
intervals, the two-sided p of "no difference" and the p of the two one-sided tests (TOST) of "the
difference lies outside +-delta".

The decision rule (fixed in advance; `verdict`):
* supported: the 95 % interval lies above 0, and the claim's test survives Holm's correction;
* contradicted: the 95 % interval lies below 0, and the test survives Holm's correction;
* equivalent within +-delta: TOST at alpha: the 90 % interval lies inside (-delta, +delta);
* inconclusive: none of these.
For the one claim the paper states as a likeness (SMT near full FT: the claim is |SMT - full FT| <
delta) the test is the TOST and "equivalent" is tried first. Holm's correction runs over the family
of claims tested on one model (the claims' own tests: the two-sided p of a directional claim, the
TOST p of the likeness claim); the secondary reading (equivalence of a directional claim,
superiority of the likeness claim) is unadjusted and says only what the interval says. "holds"
reads the verdict against the paper's claim: yes (supported; for the likeness: equivalent), no
(contradicted or equivalent, i.e. the paper's effect is absent or reversed; for the likeness: the
95 % interval lies beyond +-delta), open otherwise.

Power. MDE: the smallest true difference the rule declares supported with `power` (80 %) at
Holm's strictest step (two-sided alpha / m, m the family's size): (z(1 - alpha/2m) + z(power)) SE.
SE comes from a variance model of the observed spread over seeds and examples, so that it can be
scaled to another design: SE^2 = sum over groups of s2_seed / seeds + sum over tasks of v_t / (T^2 n_t),
where s2_seed is the between-seed variance of the macro average on the same test examples (pooled
over every group of the claims' runs that has two seeds or more: one seed says nothing about it)
and v_t the variance over task t's examples of the signed per-example combination of the groups'
seed means (an approximation on the safe side: with one seed the per-example term also holds the
seed's own noise, counted again in s2_seed; the zero-shot model, not trained, has no seed term).
"to resolve" gives, for 1, 3 and 10 seeds per group, the examples per task at which the
MDE reaches the paper's own effect (PAPER_EFFECTS, from the paper's tables; for the likeness claim:
the TOST's power at the paper's difference with margin delta); "never" where the seeds alone leave
too much spread.

The plateau. Section 4.3's words: LoRA and DoRA "will not achieve better performance with larger
trainable parameters" (Table 3: each is best at a small budget and no better at 4.91 %), while "SMT
continues improving its performance when we scale up". A method's *gain* is its accuracy at the
sweep's largest budget minus its accuracy at its best smaller budget (the highest-scoring of the
sweep's smaller budgets, as Table 3's * marks it; with two budgets, the smaller one). The plateau
claim is two contrasts: SMT's gain > 0 (SMT does not plateau), and SMT's gain minus each baseline's
gain > 0 (SMT grows more than the baseline as the budget grows: "LoRA and DoRA's performance
saturation is faster than that of SMT", Section 1). The difference of gains, not the baselines'
gains alone, is tested because the paper's claim is a contrast (a baseline that flattens while SMT
flattens too is not what the paper reports), and each gain is measured from the method's own best
small budget so that a baseline's plateau is not mistaken for a late start. Picking the best small
budget on the same test examples favours the small budget (all methods alike); with the default
config's two budgets there is no pick.
"""
from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np
import pandas as pd

from harness import config as hc
from harness import stats
from harness.reports.cells import (BOOT_SEED, N_BOOT, Ctx, Group, best_group, closest_budget, finish)
from harness.reports.runs import method_label

KIND = "table"
TITLE = ("Claims of the paper, each a declared test on the primary endpoint (paired difference, percentage "
         "points), with its verdict from the records: supported / contradicted / equivalent within ±δ / "
         "inconclusive (Holm-corrected per model)")
SOURCES = ("table2", "table3", "table4", "table6")  # the experiments entries whose runs the claims read
PAPER_MODELS = ("llama-7b", "llama-13b", "llama2-7b", "llama3-8b")
SEED_GRID = (1, 3, 10)  # seeds per group at which "to resolve" gives the examples per task needed


@dataclasses.dataclass(frozen=True)
class Claim:
    name: str
    label: str  # what the row says
    section: str
    words: str  # the paper's words
    source: str  # the experiments entry whose runs it reads
    test: str  # "superiority" (the paper says > 0) or "equivalence" (the paper says |d| < delta)


CLAIMS = {c.name: c for c in [
    Claim("smt_vs_lora", "SMT > LoRA at equal budget", "4.2, Table 2",
          "SMT can also consistently surpass LoRA and DoRA under the same number of trainable parameters where "
          "LoRA and DoRA achieve the best results", "table2", "superiority"),
    Claim("smt_vs_dora", "SMT > DoRA at equal budget", "4.2, Table 2",
          "SMT consistently surpasses DoRA on LLaMA2-7B, LLaMA3-8B, LLaMA-13B, and LLaMA-7B by 1.3%, 1.6%, 0.9%, and "
          "0.3% respectively, under their best performance trainable parameter number", "table2", "superiority"),
    Claim("plateau_smt", "SMT: no plateau (gain > 0)", "4.3, Table 3",
          "SMT continues improving its performance when we scale up the trainable parameter size", "table3",
          "superiority"),
    Claim("plateau_vs_lora", "SMT's gain > LoRA's gain", "4.3, Table 3",
          "LoRA and DoRA will not achieve better performance with larger trainable parameters and exhibit the "
          "plateau phenomenon", "table3", "superiority"),
    Claim("plateau_vs_dora", "SMT's gain > DoRA's gain", "4.3, Table 3",
          "LoRA and DoRA will not achieve better performance with larger trainable parameters and exhibit the "
          "plateau phenomenon", "table3", "superiority"),
    Claim("attention_vs_mlp", "attention > MLP", "5.1, Table 4",
          "When all SMT trainable parameters are applied to attention mechanisms, the model outperforms the one "
          "where all parameters are allocated to MLPs by 2.0%", "table4", "superiority"),
    Claim("v_vs_q", "V > Q", "5.2, Table 6",
          "Assigning all parameters to the V vectors outperforms the K vectors by 4.6% and the Q vectors by 3.2%",
          "table6", "superiority"),
    Claim("v_vs_k", "V > K", "5.2, Table 6",
          "Assigning all parameters to the V vectors outperforms the K vectors by 4.6% and the Q vectors by 3.2%",
          "table6", "superiority"),
    Claim("smt_near_full_ft", "SMT near full FT", "4.2, Table 2",
          "by fine-tuning less than 5% of all parameters, SMT achieves similar accuracy performance of full "
          "fine-tuning", "table2", "equivalence"),
    Claim("smt_vs_zero_shot", "fine-tuning (SMT) > zero-shot", "1",
          "enhancing performance on downstream tasks often still necessitates fine-tuning", "table2", "superiority"),
]}

# The paper's own effect of each claim, in points of its average accuracy, per model it reports
# (read off its tables; None: the paper reports no number for it).
PAPER_EFFECTS = {
    # Table 2: SMT (at DoRA's best budget) - LoRA(Best)
    "smt_vs_lora": {"llama-7b": 78.7 - 76.3, "llama-13b": 82.4 - 80.5, "llama2-7b": 81.8 - 77.6,
                    "llama3-8b": 86.8 - 80.8},
    # Section 4.2's text (Table 2: SMT - DoRA(Best))
    "smt_vs_dora": {"llama-7b": 0.3, "llama-13b": 0.9, "llama2-7b": 1.3, "llama3-8b": 1.6},
    # Table 3: SMT at 4.91 % - SMT at its best smaller budget (3.73 %)
    "plateau_smt": {"llama-7b": 81.4 - 80.8, "llama2-7b": 83.4 - 82.8},
    # Table 3: SMT's gain - LoRA's (4.91 % - its best smaller budget, 1.26 % on both models)
    "plateau_vs_lora": {"llama-7b": (81.4 - 80.8) - (74.7 - 76.4), "llama2-7b": (83.4 - 82.8) - (77.0 - 78.4)},
    # Table 3: SMT's gain - DoRA's (DoRA's best smaller budget: 0.84 % on LLaMA-7B, 0.43 % on LLaMA2-7B)
    "plateau_vs_dora": {"llama-7b": (81.4 - 80.8) - (77.6 - 78.4), "llama2-7b": (83.4 - 82.8) - (78.5 - 80.5)},
    "attention_vs_mlp": {"llama-7b": 78.7 - 76.7},  # Table 4: attention 0.84 - MLP 0.84
    "v_vs_q": {"llama-7b": 78.5 - 75.3},  # Table 6
    "v_vs_k": {"llama-7b": 78.5 - 73.9},  # Table 6
    # Table 2: SMT(Best) - full fine-tuning (LLaMA3-8B: no full FT row)
    "smt_near_full_ft": {"llama-7b": 81.4 - 81.4, "llama-13b": 84.3 - 82.2, "llama2-7b": 83.4 - 82.2},
    "smt_vs_zero_shot": {},  # the paper reports no zero-shot row
}

SECTION = ("Claims of the paper: verdicts", "table")  # the report's category and subcategory
CAPTION = """\
The paper's claims, each a declared test on the primary endpoint: one row per claim and model with the paper's words and section, the contrast tested, the paper's own effect, the paired difference with its 95 % and 90 % intervals, the equivalence margin δ, the p of the claim's test (Holm-corrected over the claims of one model), the verdict (supported / contradicted / equivalent within ±δ / inconclusive) and whether the paper's claim holds, the minimum detectable effect at 80 % power, the seeds × test examples per task that would resolve the paper's effect, and the runs read. The rule, δ and its reason, and whether δ was declared after the runs were seen are printed under the table (settings: ``experiments.claims``; the tests: ``harness/reports/targets/claims.py``).

**Runs:** {{ snakemake.params.facts.runs }}; **seeds:** {{ snakemake.params.facts.seeds }}; **n:** {{ snakemake.params.facts.n }} (config ``{{ snakemake.params.facts.config }}``).

**Intervals:** paired bootstraps over the same test examples (stratified by task; over seeds and examples when there are several seeds), the replicates Tables 2-6 use for the same differences.
"""  # the report's caption (a Jinja template over snakemake.params.facts)
SCHEMA = {
    "description": "The paper's claims as declared tests (harness/reports/targets/claims.py): the decision "
                   "rule's settings, fixed before the table is read.",
    "type": "object", "additionalProperties": False, "required": ["delta", "margin_declared_after_runs"],
    "properties": {
        "delta": {"type": "number", "exclusiveMinimum": 0,
                  "description": "Equivalence margin on the primary endpoint, in percentage points of the macro "
                                 "average: two results closer than this are practically the same."},
        "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5, "default": 0.05,
                  "description": "Family-wise error rate (Holm, per model); the intervals are 1 - alpha (two-sided) "
                                 "and 1 - 2 alpha (TOST)."},
        "power": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.8,
                  "description": "Power of the minimum detectable effect and of 'to resolve'."},
        "paper_model": {"enum": list(PAPER_MODELS), "default": "llama-7b",
                        "description": "Whose effect in the paper a model the paper did not run is compared with."},
        "margin_declared_after_runs": {"type": "boolean",
                                       "description": "true: delta was set after the study's runs had been seen "
                                                      "(the table says so)."},
        "claims": {"type": "array", "items": {"enum": list(CLAIMS)}, "minItems": 1, "uniqueItems": True,
                   "description": "The claims tested (default: every claim whose runs the config's experiments "
                                  "define)."},
    },
}


# ---- the decision rule (pure functions: tests/test_claims.py drives them with constructed inputs) ----

def z(q: float) -> float:
    return NormalDist().inv_cdf(q)


def summarize(reps, estimate: float, delta: float, alpha: float = 0.05) -> dict:
    """From bootstrap replicates of a difference (points): its two-sided 1 - alpha interval, the
    1 - 2 alpha interval of the TOST, the two-sided p of d = 0 and the TOST p of |d| >= delta."""
    reps = np.asarray(reps, dtype=float)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    lo90, hi90 = np.quantile(reps, [alpha, 1 - alpha])
    p = min(1.0, 2 * min(float(np.mean(reps <= 0)), float(np.mean(reps >= 0))))
    p_tost = max(float(np.mean(reps <= -delta)), float(np.mean(reps >= delta)))
    return {"diff": float(estimate), "lo": float(lo), "hi": float(hi), "lo90": float(lo90), "hi90": float(hi90),
            "p": p, "p_tost": p_tost}


def primary_p(s: dict, test: str) -> float:
    """The p of a claim's own test: two-sided for a directional claim, the TOST's for a likeness."""
    return s["p_tost"] if test == "equivalence" else s["p"]


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the k-th smallest times (m - k + 1), made
    non-decreasing along that order, at most 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        out[i] = running
    return out


SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


def equivalent_label(delta: float) -> str:
    return f"equivalent within ±{delta:g}"


def verdict(s: dict, test: str, delta: float, p_holm: float, alpha: float = 0.05) -> str:
    """The rule: supported (1 - alpha interval above 0), contradicted (below 0), equivalent within
    ±delta (TOST: the 1 - 2 alpha interval inside (-delta, delta)), inconclusive; the claim's own
    test must also survive Holm (p_holm <= alpha); a likeness claim tries equivalence first."""
    inside = -delta < s["lo90"] and s["hi90"] < delta
    own_ok = p_holm <= alpha
    if test == "equivalence":
        if inside and own_ok:
            return equivalent_label(delta)
        if s["lo"] > 0:
            return SUPPORTED
        if s["hi"] < 0:
            return CONTRADICTED
        return INCONCLUSIVE
    if s["lo"] > 0 and own_ok:
        return SUPPORTED
    if s["hi"] < 0 and own_ok:
        return CONTRADICTED
    if inside:
        return equivalent_label(delta)
    return INCONCLUSIVE


def holds(v: str, s: dict, test: str, delta: float) -> str:
    """The verdict read against the paper's claim: yes / no / open."""
    if test == "equivalence":
        if v.startswith("equivalent"):
            return "yes"
        return "no" if s["lo"] >= delta or s["hi"] <= -delta else "open"
    if v == SUPPORTED:
        return "yes"
    return "no" if v == CONTRADICTED or v.startswith("equivalent") else "open"


def mde(se: float, m: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect: two-sided alpha / m (Holm's strictest step), the given power."""
    return (z(1 - alpha / (2 * m)) + z(power)) * se


def design_se(seed_var_terms: list[float], example_term: float, n_obs: float, seeds: int, n: float) -> float:
    """SE of a contrast with `seeds` seeds per group and `n` examples per task, from the variance
    model: sum_g s2_seed / seeds + example_term * n_obs / n."""
    return math.sqrt(sum(seed_var_terms) / seeds + example_term * n_obs / n)


def to_resolve(effect: float | None, test: str, seed_var_terms: list[float], example_term: float, n_obs: float,
               m: int, delta: float, alpha: float = 0.05, power: float = 0.8) -> str:
    """'1×N1, 3×N3, 10×N10': examples per task, at 1, 3 and 10 seeds per group, at which the rule
    resolves the paper's effect with `power` ('never' where the seed spread alone is too much)."""
    if effect is None:
        return "no effect in the paper"
    if test == "equivalence":  # TOST at the paper's difference: margin left over, two one-sided tests
        room = delta - abs(effect)
        if room <= 0:
            return f"paper's effect ≥ δ"
        zz = z(1 - alpha / m) + (z((1 + power) / 2) if abs(effect) < 1e-9 else z(power))
    else:
        if effect <= 0:
            return "paper's effect ≤ 0"
        room, zz = effect, z(1 - alpha / (2 * m)) + z(power)
    allowed = (room / zz) ** 2  # the variance at which the MDE equals the paper's effect
    out = []
    for k in SEED_GRID:
        left = allowed - sum(seed_var_terms) / k
        if left <= 0 or example_term <= 0:
            out.append(f"{k}×never" if left <= 0 else f"{k}×1")
        else:
            out.append(f"{k}×{math.ceil(example_term * n_obs / left)}")
    return ", ".join(out)


# ---- selecting the runs each claim compares ---------------------------------------------------------

def _entry(config: dict, name: str) -> dict | None:
    return config["experiments"].get(name)


def _single_module(config: dict, placements: list[str], module: str) -> str | None:
    """The placement of `placements` that puts every block on one projection (`q_proj`...)."""
    for p in placements:
        spec = config["placements"][p]
        if not spec.get("quotas") and (hc.target_modules(spec) or []) == [module]:
            return p
    return None


def _mlp_share(config: dict, place: str) -> float | None:
    spec = config["placements"][place]
    if spec.get("quotas"):
        return None
    mods = set(hc.target_modules(spec) or [])
    qkv = {"q_proj", "k_proj", "v_proj"}
    if not mods:
        return None
    return 0.0 if mods <= qkv else (1.0 if not mods & qkv else None)


def _attention_mlp(config: dict, exp: dict) -> tuple[str | None, str | None]:
    """(the all-attention, the all-MLP placement) of Table 4's placements."""
    att = [p for p in exp["placements"] if _mlp_share(config, p) == 0.0]
    mlp = [p for p in exp["placements"] if _mlp_share(config, p) == 1.0]
    return (att[0] if att else None), (mlp[0] if mlp else None)


def _available(config: dict, name: str) -> bool:
    c = CLAIMS[name]
    exp = _entry(config, c.source)
    if exp is None:
        return False
    if name == "smt_near_full_ft":
        return bool(exp.get("full_ft"))
    if name == "smt_vs_zero_shot":
        return bool(exp.get("zero_shot"))
    if name in ("smt_vs_lora", "smt_vs_dora", "plateau_vs_lora", "plateau_vs_dora"):
        sweep = _entry(config, "table3") or {}
        base = name.rsplit("_", 1)[1]
        proposed = config.get("proposed", "smt")
        return base in sweep.get("methods", []) and proposed in sweep.get("methods", []) \
            and (not name.startswith("plateau") or len(sweep.get("budgets", [])) > 1)
    if name == "plateau_smt":
        return len(exp.get("budgets", [])) > 1 and config.get("proposed", "smt") in exp.get("methods", [])
    if name == "attention_vs_mlp":
        return all(_attention_mlp(config, exp))
    if name in ("v_vs_q", "v_vs_k"):
        return all(_single_module(config, exp["placements"], m) for m in ("v_proj", name[-1] + "_proj"))
    return False


def claim_names(config: dict, exp: dict) -> list[str]:
    """The claims tested: experiments.claims.claims, else every claim whose runs the config defines."""
    return list(exp.get("claims") or [n for n in CLAIMS if _available(config, n)])


def check(config, exp) -> None:
    for name in exp.get("claims") or []:
        if not _available(config, name):
            c = CLAIMS[name]
            raise hc.ConfigError(f"experiments.claims.claims: {name!r} reads the runs of experiments.{c.source}, "
                                 "which this config does not define as the claim needs (see the claim in "
                                 "harness/reports/targets/claims.py); define it or drop the claim")


def _source_runs(config: dict, source: str) -> list[str]:
    from harness.reports.targets import table2, table3, table4, table6

    module = {"table2": table2, "table3": table3, "table4": table4, "table6": table6}[source]
    return module.runs(config, config["experiments"][source])


def runs(config, exp) -> list[str]:
    names = claim_names(config, exp)
    out = []
    for source in SOURCES:
        if any(CLAIMS[n].source == source for n in names):
            ids = _source_runs(config, source)
            if source in ("table4", "table6"):  # only the placements a claim compares
                keep = set(_placements_read(config, source, names))
                ids = [r for r in ids if hc.parse_run_id(r)["placement"] in keep]
            out += ids
    return list(dict.fromkeys(out))


def _placements_read(config: dict, source: str, names: list[str]) -> list[str]:
    exp = config["experiments"][source]
    if source == "table4":
        return list(_attention_mlp(config, exp)) if "attention_vs_mlp" in names else []
    mods = ["v_proj"] + [n[-1] + "_proj" for n in ("v_vs_q", "v_vs_k") if n in names]
    return [_single_module(config, exp["placements"], m) for m in dict.fromkeys(mods)] if len(mods) > 1 else []


# ---- building the table ------------------------------------------------------------------------------

def _sub(ctx: Ctx, source: str) -> Ctx:
    """The runs of one source table, as that table sees them (its own run ids only)."""
    ids = set(_source_runs(ctx.config, source))
    return Ctx(source, ctx.config, [r for r in ctx.runs if r.run_id in ids], ctx.notes)


def _contrasts(ctx: Ctx, name: str) -> list[tuple[str, list[tuple[Group | None, float]]]]:
    """(model, [(group, sign), ...]) of a claim, one per model it is tested on."""
    c, proposed = CLAIMS[name], ctx.proposed
    sub = _sub(ctx, c.source)
    exp = ctx.config["experiments"][c.source]
    out = []
    if c.source == "table2":
        from harness.reports.targets import table2

        dataset = ctx.config["experiments"]["table3"]["dataset"]
        for model in table2.models(ctx.config):
            mruns = sub.select(model=model, dataset=dataset)
            own = sub.groups([r for r in mruns if r.method == proposed], dataset)
            if name in ("smt_vs_lora", "smt_vs_dora"):
                base = best_group(sub.groups([r for r in mruns if r.method == name.rsplit("_", 1)[1]], dataset))
                at = closest_budget(own, base.reached if base else None)
                out.append((model, [(at, 1.0), (base, -1.0)]))
            else:
                other = hc.FULL_FT if name == "smt_near_full_ft" else hc.ZERO_SHOT
                oruns = [r for r in mruns if r.method == other]
                out.append((model, [(best_group(own), 1.0), (sub.group(oruns, dataset) if oruns else None, -1.0)]))
    elif c.source == "table3":
        dataset = exp["dataset"]
        top = max(float(b) for b in exp["budgets"])
        for model in exp["models"]:
            mruns = sub.select(model=model, dataset=dataset)

            def gain(method):
                groups = sub.groups([r for r in mruns if r.method == method], dataset)
                big = [g for g in groups if float(g.runs[0].parts["budget"]) == top]
                small = best_group([g for g in groups if float(g.runs[0].parts["budget"]) < top])
                return [(big[0] if big else None, 1.0), (small, -1.0)]

            terms = gain(proposed)
            if name != "plateau_smt":
                terms += [(g, -s) for g, s in gain(name.rsplit("_", 1)[1])]
            out.append((model, terms))
    else:
        from harness.reports.targets import _placements

        groups = dict(_placements.groups(sub, exp))
        if name == "attention_vs_mlp":
            a, b = _attention_mlp(ctx.config, exp)
        else:
            a, b = (_single_module(ctx.config, exp["placements"], m) for m in ("v_proj", name[-1] + "_proj"))
        out.append((exp["model"], [(groups.get(a), 1.0), (groups.get(b), -1.0)]))
    return out


def _runs_read(terms) -> str:
    """'smt@lr0.0003/b0.84/qkv s0,1,2 − lora@... s0' (model and dataset are the row's)."""
    parts = []
    for g, sign in terms:
        if g is None or not g.runs:
            parts.append(("− " if sign < 0 else "+ ") + "(none)")
            continue
        stem = "/".join(g.runs[0].run_id.split("/")[2:-1])
        seeds = ",".join(str(r.parts["seed"]) for r in g.runs)
        parts.append(("− " if sign < 0 else "+ ") + f"{stem} s{seeds}")
    text = " ".join(parts)
    return text[2:] if text.startswith("+ ") else text


def _variance_model(terms, seed_var: float | None) -> tuple[list[float], float, float]:
    """(per-group seed-variance terms s2_seed, example term sum_t v_t / (T^2 n_t), examples per task),
    in points squared."""
    groups = [g for g, _ in terms]
    tasks = groups[0].tasks
    example_term, ns = 0.0, []
    for t in tasks:
        comb = 100 * sum(sign * np.mean([r.correct[g.suite][t] for r in g.ok], axis=0) for g, sign in terms)
        n = len(comb)
        ns.append(n)
        example_term += float(np.var(comb, ddof=1)) / n if n > 1 else 0.0
    example_term /= len(tasks) ** 2
    # the zero-shot model is not trained: no seed spread
    return [0.0 if g.runs[0].method == hc.ZERO_SHOT else (seed_var or 0.0) for g in groups], example_term, \
        float(np.mean(ns))


def pooled_seed_variance(groups: list[Group]) -> float | None:
    """Between-seed variance of the macro average (same test examples), pooled over the groups
    with two seeds or more (points squared); None when no group has two."""
    num = den = 0.0
    for g in groups:
        if len(g.ok) < 2:
            continue
        macros = [100 * stats.macro({t: r.correct[g.suite][t] for t in g.tasks}) for r in g.ok]
        num += float(np.var(macros, ddof=1)) * (len(macros) - 1)
        den += len(macros) - 1
    return num / den if den else None


def paper_effect(name: str, model: str, exp: dict) -> tuple[float | None, str]:
    effects = PAPER_EFFECTS[name]
    ref = model if model in effects else exp.get("paper_model", "llama-7b")
    value = effects.get(ref)
    return (None, "-") if value is None else (round(value, 1), f"{value:+.1f} ({ref})")


def _fmt_p(p: float) -> str:
    return f"<{1 / N_BOOT:.4f}" if p < 1 / N_BOOT else f"{p:.4f}"


def build(ctx: Ctx) -> pd.DataFrame:
    exp = ctx.exp
    delta, alpha, power = float(exp["delta"]), float(exp.get("alpha", 0.05)), float(exp.get("power", 0.8))
    proposed = method_label(ctx.config, ctx.proposed)
    rows, family = [], {}
    all_groups = []
    for name in claim_names(ctx.config, exp):
        for model, terms in _contrasts(ctx, name):
            all_groups += [g for g, _ in terms if g is not None]
            rows.append({"_claim": CLAIMS[name], "_model": model, "_terms": terms})
    seed_var = pooled_seed_variance(list({tuple(r.run_id for r in g.runs): g for g in all_groups}.values()))
    for row in rows:
        terms, c = row["_terms"], row["_claim"]
        usable = all(g is not None and g.ok for g, _ in terms)
        row["_s"] = None
        if usable:
            data = [g.data() for g, _ in terms]
            signs = [s for _, s in terms]
            try:
                reps = 100 * stats._replicates(data, signs, N_BOOT, BOOT_SEED)  # cells.paired's replicates
            except ValueError as err:  # different test examples
                ctx.notes.mark(f"{row['_model']} {c.name}: not tested: {err}")
            else:
                est = 100 * sum(s * np.mean([stats.macro(run) for run in d]) for d, s in zip(data, signs))
                row["_s"] = summarize(reps, est, delta, alpha)
                family.setdefault(row["_model"], []).append(row)
    for members in family.values():  # Holm across the claims tested on one model
        adjusted = holm([primary_p(r["_s"], r["_claim"].test) for r in members])
        for r, p in zip(members, adjusted):
            r["_holm"], r["_m"] = p, len(members)
    out = []
    for row in rows:
        c, s, terms, model = row["_claim"], row["_s"], row["_terms"], row["_model"]
        effect, effect_text = paper_effect(c.name, model, exp)
        sym = {"smt_vs_lora": f"{proposed} − LoRA", "smt_vs_dora": f"{proposed} − DoRA",
               "plateau_smt": f"gain({proposed})", "plateau_vs_lora": f"gain({proposed}) − gain(LoRA)",
               "plateau_vs_dora": f"gain({proposed}) − gain(DoRA)", "attention_vs_mlp": "attention − MLP",
               "v_vs_q": "V − Q", "v_vs_k": "V − K", "smt_near_full_ft": f"{proposed} − full FT",
               "smt_vs_zero_shot": f"{proposed} − zero-shot"}[c.name]
        rec = {"Model": model, "Claim": c.label, "Paper (§)": f"§{c.section}: “{c.words}”",
               "Test": f"|{sym}| < δ" if c.test == "equivalence" else f"{sym} > 0",
               "Paper's effect": effect_text}
        if s is None:
            why = "; ".join(f"{g.runs[0].run_id if g and g.runs else 'no runs'}: {g.status_text if g else 'missing'}"
                            for g, _ in terms if g is None or not g.ok)
            mark = ctx.notes.mark(f"{model} {c.name}: not tested ({why or 'no paired difference'})")
            rec.update({"Estimate [95 %]": "n/a", "90 %": "n/a", "δ": f"±{delta:.1f}", "p (Holm)": "-",
                        "Verdict": f"not tested {mark}", "Holds": "-", "MDE (80 %)": "-", "To resolve": "-",
                        "Runs read": _runs_read(terms)})
            out.append(rec)
            continue
        seed_terms, ex_term, n_obs = _variance_model(terms, seed_var)
        seeds_now = [len(g.ok) for g, _ in terms]
        se = math.sqrt(sum(v / k for v, k in zip(seed_terms, seeds_now)) + ex_term)
        v = verdict(s, c.test, delta, row["_holm"], alpha)
        rec.update({
            "Estimate [95 %]": f"{s['diff']:+.1f} [{s['lo']:+.1f}, {s['hi']:+.1f}]",
            "90 %": f"[{s['lo90']:+.1f}, {s['hi90']:+.1f}]",
            "δ": f"±{delta:.1f}",
            "p (Holm)": f"{_fmt_p(primary_p(s, c.test))} ({_fmt_p(row['_holm'])})",
            "Verdict": v,
            "Holds": holds(v, s, c.test, delta),
            "MDE (80 %)": f"{mde(se, row['_m'], alpha, power):.1f} pt",
            "To resolve": to_resolve(effect, c.test, seed_terms, ex_term, n_obs, row["_m"], delta, alpha, power),
            "Runs read": _runs_read(terms),
        })
        out.append(rec)
    _footnotes(ctx, exp, delta, alpha, power, seed_var)
    return finish(out)


def _footnotes(ctx: Ctx, exp: dict, delta: float, alpha: float, power: float, seed_var: float | None) -> None:
    metric = ctx.config.get("primary_metric") or "accuracy"
    ctx.notes.mark(
        f"rule (declared in experiments.claims before the verdicts are computed): the paired difference of the primary endpoint "
        f"({metric}, macro average over the tasks, percentage points) with a paired bootstrap of {N_BOOT} replicates "
        f"over the same test examples (and the seeds); supported: the {100 * (1 - alpha):g} % interval above 0, "
        f"contradicted: below 0 (both: the claim's test also significant after Holm's correction over the claims "
        f"of one model, p (Holm) <= {alpha:g}); equivalent within ±δ: two one-sided tests at {alpha:g}, the "
        f"{100 * (1 - 2 * alpha):g} % interval inside ±δ (for 'SMT near full FT' the claim's own test, Holm-"
        "corrected, tried first); inconclusive otherwise. Holds: the verdict read against the paper's claim")
    ctx.notes.mark(
        f"δ = {delta:g} points: the paper's headline effect (§1: SMT 'outperforms ... LoRA and DoRA ... by 2+ points'); "
        "a difference inside ±δ is smaller than what the paper presents as its gain, so 'equivalent within ±δ' on a "
        "directional claim says the paper's effect is absent here, and on 'SMT near full FT' that the claim holds")
    if exp.get("margin_declared_after_runs"):
        ctx.notes.mark("the margin δ and this rule were declared after the runs read here had been committed and seen "
                       "(experiments.claims.margin_declared_after_runs: true): these verdicts are not a pre-registered "
                       "test; runs trained after the margin's commit are")
    sv = "none (no group has two seeds; seed spread taken as 0)" if seed_var is None else \
        f"{math.sqrt(seed_var):.2f} points (SD over seeds, pooled over the groups with several seeds)"
    ctx.notes.mark(
        f"MDE: the smallest true difference the rule declares supported with {100 * power:g} % power at Holm's "
        f"strictest step (two-sided {alpha:g}/m, m the claims of the model), from SE² = Σ groups seed variance / "
        f"seeds + Σ tasks example variance / (tasks² × examples); seed spread: {sv}. To resolve: seeds per group × "
        "test examples per task at which the MDE reaches the paper's own effect (the likeness claim: the TOST's "
        "power at the paper's difference); 'never': the seed spread alone is too much")
    ctx.notes.mark("Paper's effect: the paper's number for the claim on that model, from its tables (Table 2: SMT at "
                   "the baseline's best budget minus the baseline's best; Table 3: gain = accuracy at the largest "
                   "budget minus the best smaller budget); a model the paper did not run is compared with "
                   f"experiments.claims.paper_model ({exp.get('paper_model', 'llama-7b')})")
