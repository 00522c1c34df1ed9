"""LoHa (low-rank Hadamard product) through peft: the second worked example of adding a method.

Following README "Add your own method": this one module (Settings, label, budget rule, peft
config) plus one config entry `methods.loha: {lr: ..., placement: qkvud}` puts LoHa in the
registry, the sweep tables and figures. Nothing else was edited.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from baselines import register
from baselines.base import count_params
from baselines.lora import LoRA, nearest_rank, target_linears
from baselines.settings import field


def loha_rank_for_budget(model, target_modules, budget: float) -> int:
    """Rank nearest to budget * total params: LoHa trains two rank-r pairs per linear, 2 r (in + out)."""
    if budget is None or budget <= 0:
        raise ValueError(f"LoHa needs a positive budget (fraction of total params), got {budget!r}; "
                         "set `budget` or the setting `rank`")
    per_rank = 2 * sum(m.in_features + m.out_features for m in target_linears(model, target_modules))
    return nearest_rank(budget * count_params(model), per_rank)


@dataclasses.dataclass
class LoHaSettings:
    """LoHa hyper-parameters (defaults: peft's LoHaConfig, except alpha tied to the rank as for LoRA)."""

    rank: Optional[int] = field(None, "Rank r of each Hadamard factor; null: nearest to the budget.", min=1)
    alpha_ratio: float = field(1.0, "alpha = alpha_ratio x rank (peft default: alpha = r = 8).",
                               exclusive_min=0)
    rank_dropout: float = field(0.0, "Dropout on the rank dimension (peft default 0.0).", min=0, max=1)
    module_dropout: float = field(0.0, "Probability of skipping the adapter in a step (peft default 0.0).",
                                  min=0, max=1)
    target_modules: Optional[list[str]] = field(
        None, "Modules to adapt when the run's placement names none (default q,k,v,up,down).")


@register("loha")
class LoHa(LoRA):
    """peft LoHa; budget met by the rank whose 2 r (in + out) per linear is nearest to it."""

    label = "LoHa"
    Settings = LoHaSettings

    def peft_config(self, rank: int):
        from peft import LoHaConfig

        return LoHaConfig(r=rank, alpha=self.settings.alpha_ratio * rank,
                          rank_dropout=self.settings.rank_dropout, module_dropout=self.settings.module_dropout,
                          target_modules=self.target_modules)

    def rank_for_budget(self, model) -> int:
        return loha_rank_for_budget(model, self.target_modules, self.budget)
