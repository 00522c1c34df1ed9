"""The interface every fine-tuning method implements (see docs/ARCHITECTURE.md)."""
from __future__ import annotations

import dataclasses
import pathlib

from baselines.settings import NoSettings, parse

# Keys of a resolved run_cfg["method"] that every method shares (validated by the central schema);
# every other key is one of the method's own Settings fields.
SHARED_RUN_KEYS = ("name", "variant", "lr")


# The one name of the weights a full-FT warm-up leaves (SMT): the training loop keeps them in a
# run's checkpoints/ for resume, SMT.save puts them beside the delta for evaluation.
WARMUP_WEIGHTS = "warmup_weights.pt"


class StaleResumeError(RuntimeError):
    """A file kept for resuming (plan, warm-up weights) belongs to another run fingerprint;
    the training loop discards the run's resume state and starts afresh, giving this reason."""


def count_params(model, trainable_only: bool = False) -> int:
    """Number of parameters (unique tensors) of model, optionally only those requiring grad."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


class Method:
    """A fine-tuning method: which parameters train, and how the result is saved and merged.

    The training loop calls, in order: begin_warmup / after_warmup_backward (only when
    warmup_steps > 0), apply, then trains the parameters left with requires_grad, then save.
    Evaluation calls load then merge.

    A method owns its hyper-parameters: `Settings` is a dataclass whose fields (defaults and
    `metadata={"help": ...}`) are the keys a config entry methods.<name> may set besides the
    shared lr/placement/label/base/deviations/by_dataset/by_model; `label` is its display name
    in tables and figures. Budget: `apply` returns `budget_reached` (trainable / total params),
    which the training loop records in run_info.budget_reached; reports place a method there.
    """

    name = "base"
    label = "base"
    Settings = NoSettings
    warmup_steps = 0
    warmup_mode = "full_ft"
    trains = True  # False: the loop measures the validation loss at step 0 and saves, no step (zero-shot)
    fingerprint = None  # set by the training loop: the run's fingerprint, for files kept to resume

    def __init__(self, run_cfg: dict):
        self.run_cfg = run_cfg
        self.method_cfg = run_cfg["method"]
        self.settings = self.parse_settings(
            {k: v for k, v in self.method_cfg.items() if k not in SHARED_RUN_KEYS},
            f"methods.{self.method_cfg.get('variant') or self.method_cfg.get('name', self.name)}")
        self.budget = run_cfg.get("budget")
        self.total_params = None

    @classmethod
    def parse_settings(cls, values: dict, where: str | None = None):
        """This method's Settings from values (a dict); SettingsError names `<where>.<key>`."""
        return parse(cls.Settings, dict(values), where or f"methods.{cls.name}")

    @classmethod
    def default_settings(cls) -> dict:
        """Every Settings field with its default value."""
        return dataclasses.asdict(cls.Settings())

    def begin_warmup(self, model):
        """Called once before the warm-up steps (only when warmup_steps > 0)."""

    def after_warmup_backward(self, model):
        """Called after each warm-up backward pass, before any optimizer step."""

    def restore(self, out_dir):
        """Called instead of the warm-up when a run resumes from a checkpoint in out_dir (before
        apply); raise StaleResumeError if a file it reuses was written for another fingerprint."""

    def apply(self, model, out_dir=None) -> dict:
        """Make only this method's parameters trainable; return info (trainable/total params, budget)."""
        raise NotImplementedError

    def save(self, model, out_dir) -> pathlib.Path:
        """Write the adapter/delta under out_dir; return the path written."""
        raise NotImplementedError

    def load(self, base_model, out_dir):
        """Return base_model with the delta saved under out_dir applied."""
        raise NotImplementedError

    def merge(self, model):
        """Return a plain transformers model (delta folded into the weights) for evaluation."""
        return model

    def _info(self, model) -> dict:
        """Standard info dict: trainable params against the base model's total params."""
        trainable = count_params(model, trainable_only=True)
        total = self.total_params or count_params(model)
        return {"trainable_params": trainable, "total_params": total,
                "budget_reached": trainable / total}
