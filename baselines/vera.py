"""VeRA through peft: frozen shared random projections, trainable scaling vectors.

Also the worked example of adding a method (README, "Add your own method"): one module with
`@register`, one entry under `methods:` in the config.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from baselines import register
from baselines.base import count_params
from baselines.lora import LoRA, nearest_rank, target_linears
from baselines.settings import field


def vera_rank_for_budget(model, target_modules, budget: float) -> int:
    """Rank whose trainable count is nearest to budget * total params: per linear r (lambda_d) + out (lambda_b)."""
    if budget is None or budget <= 0:
        raise ValueError(f"VeRA needs a positive budget (fraction of total params), got {budget!r}")
    linears = target_linears(model, target_modules)
    fixed = sum(m.out_features for m in linears)
    return nearest_rank(budget * count_params(model), len(linears), fixed)


@dataclasses.dataclass
class VeRASettings:
    """VeRA hyper-parameters (defaults: peft's VeraConfig)."""

    rank: Optional[int] = field(None, "Rank of the shared random projections; null: nearest to the budget.",
                                min=1)
    dropout: float = field(0.0, "vera_dropout (peft default 0.0).", min=0, max=1)
    d_initial: float = field(0.1, "Initial value of the scaling vector lambda_d (peft default 0.1).")
    target_modules: Optional[list[str]] = field(
        None, "Modules to adapt when the run's placement names none (default q,k,v,up,down).")


@register("vera")
class VeRA(LoRA):
    """peft VeRA; budget met by the rank nearest to it (r lambda_d + out lambda_b per linear)."""

    label = "VeRA"
    Settings = VeRASettings

    def peft_config(self, rank: int):
        from peft import VeraConfig

        return VeraConfig(r=rank, target_modules=self.target_modules, save_projection=True,
                          vera_dropout=self.settings.dropout,
                          d_initial=self.settings.d_initial, task_type="CAUSAL_LM")

    def rank_for_budget(self, model) -> int:
        return vera_rank_for_budget(model, self.target_modules, self.budget)
