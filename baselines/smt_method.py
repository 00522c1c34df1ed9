"""Sparse Matrix Tuning through the `smt` package: warm-up scoring, block selection, sparse training."""
from __future__ import annotations

import pathlib

import torch

import smt
from baselines import register
from baselines.base import WARMUP_WEIGHTS, Method, StaleResumeError, count_params


@register("smt")
class SMT(Method):
    """SMT; method keys: block_size, warmup_steps, warmup_mode, warmup_lr, scoring, accumulate_on_cpu,
    plan_path (a saved plan: skips the warm-up). Placement gives target_modules and quotas."""

    def __init__(self, run_cfg: dict):
        super().__init__(run_cfg)
        m, placement = self.method_cfg, run_cfg.get("placement") or {}
        self.plan_path = m.get("plan_path")
        self.cfg = smt.SMTConfig(
            block_size=m.get("block_size", 256), budget=self.budget,
            target_modules=list(placement.get("target_modules") or ["q_proj", "k_proj", "v_proj"]),
            quotas=placement.get("quotas"), strategy=m.get("scoring", "mean_abs"),
            warmup_steps=0 if self.plan_path else m.get("warmup_steps", 100),
            warmup_mode=m.get("warmup_mode", "full_ft"),
            accumulate_on_cpu=m.get("accumulate_on_cpu", False))
        self.warmup_steps = self.cfg.warmup_steps
        self.warmup_mode = self.cfg.warmup_mode
        self.warmup_lr = m.get("warmup_lr", m["lr"])  # full-FT warm-up steps: the method's lr unless set
        self.scorer = None
        self.plan = None

    def begin_warmup(self, model):
        self.scorer = smt.GradientScorer(model, self.cfg)

    def after_warmup_backward(self, model):
        self.scorer.accumulate()

    def restore(self, out_dir):
        """On resume, reuse the plan the interrupted run selected (out_dir/plan.json), if it was
        selected for this run's fingerprint (else StaleResumeError: the loop starts afresh)."""
        plan = pathlib.Path(out_dir) / "plan.json"
        if not plan.is_file():
            raise StaleResumeError(f"{plan} is missing")
        stamped = smt.SelectionPlan.from_json(plan).meta.get("run_fingerprint")
        if self.fingerprint is not None and stamped != self.fingerprint:
            raise StaleResumeError(f"{plan} was selected for run fingerprint {str(stamped)[:12]}, "
                                   f"not this run's {self.fingerprint[:12]}")
        self.plan_path = str(plan)

    def apply(self, model, out_dir=None) -> dict:
        self.total_params = count_params(model)
        if self.plan_path:
            self.plan = smt.SelectionPlan.from_json(pathlib.Path(self.plan_path))
        elif self.scorer is not None:
            self.plan = self.scorer.select()
            self.scorer = None
        else:
            raise RuntimeError("SMT needs a selection: run warm-up steps (method key warmup_steps > 0) "
                               "or give method key plan_path")
        smt.apply_smt(model, self.plan)
        if out_dir is not None:
            self.plan.meta["run_fingerprint"] = self.fingerprint  # restore() reuses it only for the same run
            self.plan.to_json(pathlib.Path(out_dir) / "plan.json")
        return {**self._info(model), "plan_summary": self.plan.summary()}

    WARMUP_WEIGHTS = WARMUP_WEIGHTS

    def save(self, model, out_dir) -> pathlib.Path:
        """The block delta; after a full-FT warm-up also every weight as the warm-up left it.

        full_ft warm-up steps (the paper's procedure) update the whole model before the blocks
        are chosen, so the blocks alone, put on the original base, are not the trained model.
        """
        path = smt.save_smt(model, out_dir)
        if self.warmup_steps > 0 and self.warmup_mode == "full_ft":
            state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.endswith(".blocks")}
            torch.save(state, pathlib.Path(out_dir) / self.WARMUP_WEIGHTS)  # torch.save keeps tied weights tied
        return path

    def load(self, base_model, out_dir):
        warm = pathlib.Path(out_dir) / self.WARMUP_WEIGHTS
        if warm.is_file():
            base_model.load_state_dict(torch.load(warm, weights_only=True), strict=True)
        return smt.load_smt(base_model, out_dir)

    def merge(self, model):
        return smt.merge_smt(model)
