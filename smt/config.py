"""SMTConfig: every knob of Sparse Matrix Tuning, validated on construction."""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Optional, Union

STRATEGIES = ("mean_abs", "abs_mean", "l1", "l2")
WARMUP_MODES = ("full_ft", "grad_only")
MAX_FRACTION = 0.5  # a budget fraction above it is almost surely a percent (0.84 meaning 0.84 %): refused


@dataclasses.dataclass
class SMTConfig:
    """Configuration of Sparse Matrix Tuning.

    Attributes:
        block_size: side ``l`` of the square ``l x l`` sub-matrices (paper: 256 for LLaMA).
            It must divide both dimensions of every target weight.
        budget: a float in (0, 0.5] is a fraction of the model's TOTAL parameter count
            (``sum(p.numel() for p in model.parameters())``, tied weights counted once);
            the number of blocks is ``floor(budget * total / l**2)`` (rounded down, so the
            fraction reached never exceeds the one asked; the plan records the fraction
            reached). An int >= 1 is an absolute number of blocks. A float above 0.5 is refused:
            it is almost surely a percent (0.84 meaning 0.84 %); say so with ``budget_pct``.
        budget_pct: the budget in percent of the model's TOTAL parameters, the unit of the
            harness's configs, run ids and ``benchmarks.gpu_check --budget`` (``budget_pct=0.84``
            is ``budget=0.0084``); give it or ``budget``, not both. Not a field: the config keeps
            ``budget`` (the fraction), which is what plans and records store.
        target_modules: names of the ``nn.Linear`` modules that may hold blocks. A plain
            name matches the last component of a module name (``"q_proj"`` matches
            ``"model.layers.3.self_attn.q_proj"``); a string starting with ``"re:"`` is a
            regular expression that must match the FULL module name (``re.fullmatch``).
        quotas: optional split of the budget over groups of target modules, e.g.
            ``{"mlp": {"modules": ["gate_proj", "up_proj", "down_proj"], "share": 0.25},
            "attn": {"modules": ["q_proj", "k_proj", "v_proj"], "share": 0.75}}``.
            Shares must sum to 1; every target module must fall in exactly one group;
            group block counts are ``floor(share * n)`` plus the remainder handed out by
            largest fractional part (ties: group order), so they sum to ``n`` exactly.
        strategy: block score from the summed warm-up gradient ``G``: ``"mean_abs"``
            (mean of ``|G|`` in the block; paper appendix B; default), ``"abs_mean"``
            (``|mean(G)|``), ``"l1"`` (sum of ``|G|``, same ranking as mean_abs) or
            ``"l2"`` (Frobenius norm).
        warmup_steps: number of warm-up steps the caller runs before selection
            (paper: 100 for commonsense, 25 for Math10K).
        warmup_mode: ``"full_ft"`` (warm-up steps are ordinary full fine-tuning steps, as
            in the paper and the authors' code) or ``"grad_only"`` (gradients only,
            weights untouched: the caller does not step the optimizer).
        accumulate_on_cpu: keep the fp32 gradient accumulators on the CPU (7B-scale models).
    """

    block_size: int = 256
    budget: Union[float, int, None] = None  # None: 0.01, or what budget_pct says
    target_modules: list = dataclasses.field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    quotas: Optional[dict] = None
    strategy: str = "mean_abs"
    warmup_steps: int = 100
    warmup_mode: str = "full_ft"
    accumulate_on_cpu: bool = False
    budget_pct: dataclasses.InitVar[Optional[float]] = None

    def __post_init__(self, budget_pct=None):
        if budget_pct is not None:
            if self.budget is not None:
                raise ValueError(f"SMTConfig: give budget (a fraction, {self.budget!r}) or budget_pct (a percent, "
                                 f"{budget_pct!r}), not both")
            if isinstance(budget_pct, bool) or not isinstance(budget_pct, numbers.Real) \
                    or not 0.0 < float(budget_pct) < 100.0:
                raise ValueError(f"SMTConfig.budget_pct is a percent of the model's total parameters in (0, 100), "
                                 f"got {budget_pct!r}")
            self.budget = round(float(budget_pct) / 100.0, 10)  # as RunConfig.budget holds it
        elif self.budget is None:
            self.budget = 0.01
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (saying what to change) if any field is invalid."""
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"SMTConfig.block_size must be a positive int, got {self.block_size!r}")
        self._validate_budget()
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        self.target_modules = list(self.target_modules)
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError("SMTConfig.target_modules must be a non-empty list of module names "
                             f"(e.g. ['q_proj', 'k_proj', 'v_proj']), got {self.target_modules!r}")
        for pattern in self.target_modules:
            _check_pattern(pattern, "SMTConfig.target_modules")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"SMTConfig.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.warmup_mode not in WARMUP_MODES:
            raise ValueError(f"SMTConfig.warmup_mode must be one of {WARMUP_MODES}, got {self.warmup_mode!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 1:
            raise ValueError(f"SMTConfig.warmup_steps must be an int >= 1, got {self.warmup_steps!r}")
        if self.quotas is not None:
            self._validate_quotas()

    def _validate_budget(self) -> None:
        b = self.budget
        if isinstance(b, numbers.Integral) and not isinstance(b, bool):
            b = self.budget = int(b)
        elif isinstance(b, numbers.Real) and not isinstance(b, bool):
            b = self.budget = float(b)
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise ValueError(f"SMTConfig.budget must be a float in (0, 1) (fraction of total parameters) "
                             f"or an int >= 1 (number of blocks), got {b!r}")
        if isinstance(b, int):
            if b < 1:
                raise ValueError(f"SMTConfig.budget as an int is a number of blocks and must be >= 1, got {b}")
        elif not math.isfinite(b) or not 0.0 < b < 1.0:
            raise ValueError(f"SMTConfig.budget as a float is a fraction of the model's total parameters and "
                             f"must lie in (0, 1), got {b!r}; pass an int for an absolute number of blocks")
        elif b > MAX_FRACTION:
            raise ValueError(f"SMTConfig.budget={b:g} read as a fraction is {b * 100:g} % of all parameters; if you "
                             f"meant {b:g} %, write budget_pct={b:g} (or budget={b / 100:g}). A fraction above "
                             f"{MAX_FRACTION} is refused as almost surely a percent")

    def _validate_quotas(self) -> None:
        if not isinstance(self.quotas, dict) or not self.quotas:
            raise ValueError("SMTConfig.quotas must be None or a non-empty dict "
                             "{group: {'modules': [...], 'share': float}}")
        total = 0.0
        for group, spec in self.quotas.items():
            if not isinstance(spec, dict) or set(spec) != {"modules", "share"}:
                raise ValueError(f"SMTConfig.quotas[{group!r}] must be a dict with exactly the keys "
                                 f"'modules' and 'share', got {spec!r}")
            mods, share = spec["modules"], spec["share"]
            if isinstance(mods, str) or not mods or not all(isinstance(m, str) and m for m in mods):
                raise ValueError(f"SMTConfig.quotas[{group!r}]['modules'] must be a non-empty list of names")
            for m in mods:
                _check_pattern(m, f"SMTConfig.quotas[{group!r}]['modules']")
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
                raise ValueError(f"SMTConfig.quotas[{group!r}]['share'] must be a number in [0, 1], got {share!r}")
            total += share
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"SMTConfig.quotas shares must sum to 1, they sum to {total:g}")

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SMTConfig":
        """Build from a dict; unknown keys raise a ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)} | {"budget_pct"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SMTConfig keys {unknown}; known keys: {sorted(names)}")
        return cls(**d)


def _check_pattern(pattern: str, where: str) -> None:
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as err:
            raise ValueError(f"{where}: invalid regex {pattern!r}: {err}") from None


def name_matches(name: str, pattern: str) -> bool:
    """True if module ``name`` matches ``pattern`` (last name component, or ``re:`` full-name regex)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name.rsplit(".", 1)[-1] == pattern
