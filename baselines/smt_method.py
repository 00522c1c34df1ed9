"""Sparse Matrix Tuning through the `smt` package: warm-up scoring, block selection, sparse training."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Optional

import torch

import smt
from baselines import register
from baselines.base import WARMUP_SIDECAR, WARMUP_WEIGHTS, Method, StaleResumeError, count_params
from baselines.settings import field
from smt.config import STRATEGIES, WARMUP_MODES

# SMTConfig is the one place that holds SMT's defaults; the config keys reuse them.
_SMT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(smt.SMTConfig)
                 if f.default is not dataclasses.MISSING}
_DEFAULT_TARGETS = smt.SMTConfig.__dataclass_fields__["target_modules"].default_factory()  # q, k, v
SELECTIONS = ("gradient", "random")


@dataclasses.dataclass
class SMTSettings:
    """SMT hyper-parameters (defaults from smt.SMTConfig; target modules and quotas come from the placement)."""

    block_size: int = field(_SMT_DEFAULTS["block_size"], "Block side l (paper: 256); must divide the "
                            "target weight shapes.", min=1)
    warmup_steps: int = field(_SMT_DEFAULTS["warmup_steps"], "Gradient warm-up iterations before the "
                              "selection (paper: 100 commonsense, 25 Math10K).", min=1)
    warmup_mode: str = field(_SMT_DEFAULTS["warmup_mode"], "full_ft: warm-up steps update every weight "
                             "(paper, authors' code); grad_only: only sum gradients.", choices=WARMUP_MODES)
    scoring: str = field(_SMT_DEFAULTS["strategy"], "Block score of the summed warm-up gradient G: mean_abs "
                         "= mean |G| (paper, App. B), abs_mean = |mean G| (authors' attention call), l1, l2.",
                         choices=STRATEGIES)
    warmup_lr: Optional[float] = field(None, "Peak learning rate of the full-FT warm-up steps (null: lr).",
                                       exclusive_min=0)
    selection: str = field("gradient", "gradient: blocks chosen by warm-up gradients; random: a control "
                           "with blocks drawn at random (seeded by the run seed; same budget, placement "
                           "and quotas; no warm-up).", choices=SELECTIONS)
    accumulate_on_cpu: bool = field(_SMT_DEFAULTS["accumulate_on_cpu"], "Keep the fp32 gradient sums on "
                                    "the CPU (7B-scale models on small GPUs).")
    plan_path: Optional[str] = field(None, "A saved selection plan (plan.json) to reuse: skips the warm-up.")


@register("smt")
class SMT(Method):
    """Sparse Matrix Tuning; budget met by floor(budget * total / l^2) blocks (never above the budget).

    Placement gives target_modules and quotas; see SMTSettings for the hyper-parameters.
    """

    label = "SMT"
    Settings = SMTSettings

    def __init__(self, run):
        super().__init__(run)
        s, placement = self.settings, self.run.placement
        self.plan_path = s.plan_path
        self.random = s.selection == "random"
        self.seed = self.run.seed
        self.cfg = smt.SMTConfig(
            block_size=s.block_size, budget=self.budget,
            target_modules=list(placement.target_modules or _DEFAULT_TARGETS),
            quotas=placement.quotas, strategy=s.scoring,
            warmup_steps=s.warmup_steps, warmup_mode=s.warmup_mode,
            accumulate_on_cpu=s.accumulate_on_cpu)
        # a saved plan or a random selection needs no warm-up
        self.warmup_steps = 0 if (self.plan_path or self.random) else self.cfg.warmup_steps
        self.warmup_mode = self.cfg.warmup_mode
        self.warmup_lr = s.warmup_lr or self.lr  # full-FT warm-up steps: the method's lr unless set
        self.scorer = None
        self.plan = None
        self._warmup_dir = None  # where the warm-up weights are (staged by end_warmup, or a resumed checkpoint's)

    def begin_warmup(self, model):
        self.scorer = smt.GradientScorer(model, self.cfg)

    def after_warmup_backward(self, model):
        self.scorer.accumulate()

    def _keeps_warmup_weights(self) -> bool:
        return self.warmup_steps > 0 and self.warmup_mode == "full_ft"

    def end_warmup(self, model, staging_dir):
        """A full-FT warm-up moved every weight: stage them (stamped with the run fingerprint) for the
        checkpoints (save_state), so a resumed run starts from them instead of repeating the warm-up."""
        if not self._keeps_warmup_weights():
            return
        staging_dir = pathlib.Path(staging_dir)
        staging_dir.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, staging_dir / WARMUP_WEIGHTS)
        tmp = staging_dir / (WARMUP_SIDECAR + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "warmup_steps": self.warmup_steps}, indent=2))
        tmp.replace(staging_dir / WARMUP_SIDECAR)
        self._warmup_dir = staging_dir

    def save_state(self, state_dir) -> list:
        """Into a checkpoint: the selection plan (plan.json, stamped with the run fingerprint) and, after
        a full-FT warm-up, the warm-up weights (hard-linked: one copy on disk for every checkpoint)."""
        state_dir = pathlib.Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.plan.to_json(state_dir / "plan.json")
        names = ["plan.json"]
        if self._keeps_warmup_weights():
            for name in (WARMUP_WEIGHTS, WARMUP_SIDECAR):
                try:
                    os.link(self._warmup_dir / name, state_dir / name)
                except OSError:
                    shutil.copy2(self._warmup_dir / name, state_dir / name)
                names.append(name)
        return names

    def resume(self, model, state_dir):
        if self._keeps_warmup_weights():
            model.load_state_dict(torch.load(pathlib.Path(state_dir) / WARMUP_WEIGHTS, weights_only=True))

    def restore(self, out_dir, state_dir):
        """On resume, reuse the warm-up weights (full-FT warm-up) and the plan the interrupted run
        selected, kept in the checkpoint (state_dir), if both were written for this run's
        fingerprint (else StaleResumeError: the loop starts afresh)."""
        state_dir = pathlib.Path(state_dir)
        if self._keeps_warmup_weights():
            side = state_dir / WARMUP_SIDECAR
            try:
                stamped = json.loads(side.read_text()).get("fingerprint")
            except (OSError, ValueError) as err:
                raise StaleResumeError(f"warm-up weights sidecar {side} cannot be read ({type(err).__name__}: "
                                       f"{err})") from None
            if stamped != self.fingerprint or not (state_dir / WARMUP_WEIGHTS).is_file():
                raise StaleResumeError(f"warm-up weights in {state_dir} are missing or belong to run fingerprint "
                                       f"{str(stamped)[:12]}, not {str(self.fingerprint)[:12]}")
            self._warmup_dir = state_dir
        plan = state_dir / "plan.json"
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
        elif self.random:
            self.plan = smt.random_plan(model, self.cfg, self.seed)
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
        if self._keeps_warmup_weights():
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
