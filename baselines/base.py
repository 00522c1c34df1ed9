"""The interface every fine-tuning method implements (see docs/ARCHITECTURE.md)."""
from __future__ import annotations

import dataclasses
import pathlib

from baselines.settings import NoSettings, parse

# The one name of the weights a full-FT warm-up leaves (SMT): SMT.end_warmup keeps them (with a
# sidecar naming the run fingerprint) in the run's resume directory, SMT.save puts them beside the
# delta for evaluation.
WARMUP_WEIGHTS = "warmup_weights.pt"
WARMUP_SIDECAR = "warmup_weights.json"


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

    The training loop (harness.train) calls, in order:
      check_run_length (the run is long enough for the method's warm-up);
      fresh start: begin_warmup, after_warmup_backward after each warm-up backward, end_warmup
                   (only when warmup_steps > 0);
      resume:      restore (may refuse: the run starts afresh), resume;
    then apply, trains the parameters left with requires_grad (save_state into each checkpoint),
    and save. Evaluation calls load then merge. Profiling (Table 1) runs the same warm-up hooks and
    the same step.

    A method owns its hyper-parameters: `Settings` is a dataclass whose fields (defaults and
    `metadata={"help": ...}`) are the keys a config entry methods.<name> may set besides the
    shared lr/placement/label/base/deviations/overrides; `label` is its display name
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

    def __init__(self, run):
        """run: the harness.run_config.RunConfig this method trains in (its JSON form is parsed by
        the caller, harness.run_config.as_run_config: the methods sit below the harness and import
        none of it); its settings were parsed once, into this method's Settings, when it was built."""
        if isinstance(run, dict):
            raise TypeError(f"{type(self).__name__}(run): pass a RunConfig, not its JSON form; parse it first "
                            "with harness.run_config.as_run_config(run)")
        self.run = run
        if self.run.method.name != self.name:
            raise ValueError(f"run {self.run.run_id!r} is for method {self.run.method.name!r}, not {self.name!r}")
        self.settings = self.run.method.settings
        self.lr = self.run.method.lr
        self.budget = self.run.budget
        self.total_params = None

    @classmethod
    def parse_settings(cls, values: dict, where: str | None = None):
        """This method's Settings from values (a dict); SettingsError names `<where>.<key>`."""
        return parse(cls.Settings, dict(values), where or f"methods.{cls.name}")

    @classmethod
    def default_settings(cls) -> dict:
        """Every Settings field with its default value."""
        return dataclasses.asdict(cls.Settings())

    def check_run_length(self, total_steps: int) -> None:
        """Refuse a run of total_steps optimizer steps that the method's warm-up would fill."""
        if self.warmup_steps >= total_steps:
            raise ValueError(f"{self.label} warm-up ({self.warmup_steps} steps) must be shorter than the run "
                             f"({total_steps} steps); lower the method's warmup_steps or raise train.max_steps")

    def begin_warmup(self, model):
        """Called once before the warm-up steps (only when warmup_steps > 0)."""

    def after_warmup_backward(self, model):
        """Called after each warm-up backward pass, before any optimizer step."""

    def end_warmup(self, model, staging_dir):
        """Called once after the warm-up steps, on the main process: stage in staging_dir whatever a
        resumed run needs instead of repeating the warm-up (stamped with self.fingerprint);
        save_state puts it into each checkpoint."""

    def save_state(self, state_dir) -> list:
        """Called on the main process by every checkpoint (after apply): write into state_dir (the
        checkpoint's method/ directory) what a resumed run needs; return the names written, which
        the checkpoint's manifest lists (a checkpoint missing one is incomplete)."""
        return []

    def restore(self, out_dir, state_dir):
        """Called when a run may resume from a checkpoint (before the model is loaded): check the
        method's own files (state_dir: what save_state wrote); raise StaleResumeError if one is
        missing or was written for another fingerprint, and the run starts afresh."""

    def resume(self, model, state_dir):
        """Called instead of the warm-up when a run resumes (after restore accepted it, before
        apply): put the model in the state the warm-up left (e.g. load the warm-up weights)."""

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
