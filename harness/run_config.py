"""One run's configuration, typed: `RunConfig`, built once by `harness.config.resolve_run`.

Every consumer (the job script, the training loop, a method, profiling, evaluation, the
report) takes this one object under one name, `run`. Its JSON form (`to_json` / `from_json`) is
what a Snakemake rule passes to a job, what `record.json` keeps in `run_info.config` and what
the run fingerprint hashes (harness.records.fingerprint_inputs), so a record says exactly the
configuration the run trained with.

What is NOT in it: execution resources (threads: the job script's argument) and the data
root (resolved where data is read, harness.data.resolve_data_root). Paths to the prepared model
and training set are in it (`model.path`, `dataset.path`) but are left out of the fingerprint:
moving files reruns nothing.

The method's own settings are parsed ONCE, into the method's `Settings` dataclass, when the
object is built (resolve_run, or from_json at a process boundary); a method reads
`run.method.settings` and never parses them again.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional

# keys a record written by an older harness may hold that are not part of the config any more
# (dropped when such a record is read): `threads` is an execution resource, `max_train_records`
# moved to the dataset spec long ago
_LEGACY_TRAIN_KEYS = ("threads", "max_train_records")


class RunConfigError(ValueError):
    """A run config (JSON) that does not describe a run; the message names the key."""


def _check_keys(where: str, given: dict, cls) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise RunConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """The prepared model a run starts from."""

    name: str
    path: str
    dtype: str = "float32"
    device: str = "auto"


@dataclasses.dataclass(frozen=True)
class DatasetRef:
    """The prepared training set; `spec` is what it must have been built from (its meta is checked)."""

    name: str
    path: str
    spec: Optional[dict] = None


@dataclasses.dataclass(frozen=True)
class MethodRef:
    """The registered method that runs (`name`), the config entry it came from (`variant`), its
    peak learning rate and its own settings (an instance of the method's `Settings`)."""

    name: str
    variant: str
    lr: float
    settings: Any = None

    def to_json(self) -> dict:
        own = dataclasses.asdict(self.settings) if dataclasses.is_dataclass(self.settings) else {}
        return {"name": self.name, "variant": self.variant, "lr": self.lr, **own}

    @classmethod
    def from_json(cls, data: dict) -> "MethodRef":
        import baselines

        data = dict(data)
        if "name" not in data:
            raise RunConfigError("method: no `name` (the registered method that runs)")
        name = data.pop("name")
        variant, lr = data.pop("variant", name), data.pop("lr", None)
        try:
            method_cls = baselines.get_method(name)
        except KeyError:
            raise RunConfigError(f"method.name: no method {name!r} in the baselines registry "
                                 f"(available: {', '.join(baselines.available())})") from None
        return cls(name=name, variant=variant, lr=lr,
                   settings=method_cls.parse_settings(data, f"methods.{variant}"))


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the trainable parameters may go: module names, or quota groups (SMT)."""

    name: str
    target_modules: Optional[list] = None
    quotas: Optional[dict] = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings shared by every method (workflow/schemas/config.schema.yaml,
    `train:`, which holds the help text and the same defaults)."""

    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    max_grad_norm: Optional[float] = 1.0
    cutoff_len: int = 256
    train_on_inputs: bool = False
    add_eos_token: bool = True
    checkpoint_every: Optional[int] = 20
    keep_checkpoints: bool = False
    val_records: int = 0
    val_every: Optional[int] = None
    log_every: int = 5

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        data = {k: v for k, v in data.items() if k not in _LEGACY_TRAIN_KEYS}
        _check_keys("train", data, cls)
        if "adam_betas" in data:
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run (docs/ARCHITECTURE.md, "Resolved run config").

    budget: a fraction of ALL model parameters (None for full fine-tuning); the run id writes it
    in percent (`budget_percent`).
    """

    run_id: str
    model: ModelRef
    dataset: DatasetRef
    method: MethodRef
    placement: Placement
    train: TrainConfig
    budget: Optional[float] = None
    seed: int = 0
    config_name: Optional[str] = None
    recipe: Optional[str] = None
    deviations: tuple = ()

    @property
    def budget_percent(self) -> Optional[float]:
        return None if self.budget is None else round(self.budget * 100.0, 10)

    def to_json(self) -> dict:
        """The JSON form (a plain dict): what a job receives and a record keeps."""
        return {"run_id": self.run_id, "config_name": self.config_name,
                "model": dataclasses.asdict(self.model), "dataset": copy.deepcopy(dataclasses.asdict(self.dataset)),
                "method": self.method.to_json(), "budget": self.budget,
                "placement": copy.deepcopy(dataclasses.asdict(self.placement)), "seed": self.seed,
                "train": self.train.to_json(), "recipe": self.recipe, "deviations": list(self.deviations)}

    @classmethod
    def from_json(cls, data: dict) -> "RunConfig":
        """Parse the JSON form (a job's argument, a record's run_info.config); the method's
        settings are validated by its Settings. An unknown key is an error naming it."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise RunConfigError(f"a run config is a mapping, got {type(data).__name__}")
        _check_keys("run config", data, cls)
        for key in ("run_id", "model", "dataset", "method"):
            if key not in data:
                raise RunConfigError(f"run config: no `{key}`")
        parts = {}
        for key, part in (("model", ModelRef), ("dataset", DatasetRef), ("placement", Placement)):
            given = dict(data.get(key) or {"name": "none"})
            _check_keys(key, given, part)
            parts[key] = part(**copy.deepcopy(given))
        return cls(run_id=data["run_id"], model=parts["model"], dataset=parts["dataset"],
                   method=MethodRef.from_json(data["method"]), placement=parts["placement"],
                   train=TrainConfig.from_json(data.get("train") or {}), budget=data.get("budget"),
                   seed=int(data.get("seed") or 0), config_name=data.get("config_name"),
                   recipe=data.get("recipe"), deviations=tuple(data.get("deviations") or ()))

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def as_run_config(run) -> RunConfig:
    """`run` as a RunConfig: the object itself, or its JSON form parsed (at a process boundary)."""
    return run if isinstance(run, RunConfig) else RunConfig.from_json(run)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation suite's settings, resolved once from the config (harness.config.resolve.resolve_eval):
    what the evaluate rule passes to its job (`to_json`, a rule param) and what an evaluation output
    keeps as `eval_cfg`. `split`/`start`: experiments.lr_sweep's validation split (`<suite>_val`);
    `protocol`/`metric`: the cloze protocol and its primary metric (None: the generative protocol).
    No data root: where the data lives decides nothing (harness.data.resolve_data_root)."""

    suite: str
    tasks: tuple
    limit: Optional[int] = None
    batch_size: int = 8
    max_new_tokens: int = 32
    num_beams: int = 1
    repetition_penalty: float = 1.0
    protocol: Optional[str] = None
    metric: Optional[str] = None
    split: Optional[str] = None
    start: Optional[dict] = None

    _OPTIONAL = ("protocol", "metric", "split", "start")  # left out of the JSON form when None

    def to_json(self) -> dict:
        out = {"suite": self.suite, "tasks": list(self.tasks), "limit": self.limit, "batch_size": self.batch_size,
               "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
               "repetition_penalty": self.repetition_penalty}
        out.update({k: copy.deepcopy(getattr(self, k)) for k in self._OPTIONAL if getattr(self, k) is not None})
        return out

    @classmethod
    def from_json(cls, data: dict) -> "EvalConfig":
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise RunConfigError(f"an eval config is a mapping, got {type(data).__name__}")
        _check_keys("eval config", data, cls)
        for key in ("suite", "tasks"):
            if key not in data:
                raise RunConfigError(f"eval config: no `{key}`")
        return cls(**{**copy.deepcopy(data), "tasks": tuple(data["tasks"])})
