"""VeRA through peft: frozen shared random projections, trainable scaling vectors.

Also the worked example of adding a method (README, "Add your own method"): one module with
`@register`, one entry under `methods:` in the config.
"""
from __future__ import annotations

from baselines import register
from baselines.base import count_params
from baselines.lora import LoRA, target_linears


def vera_rank_for_budget(model, target_modules, budget: float) -> int:
    """Rank whose trainable count is nearest to budget * total params: per linear r (lambda_d) + out (lambda_b)."""
    if budget is None or budget <= 0:
        raise ValueError(f"VeRA needs a positive budget (fraction of total params), got {budget!r}")
    linears = target_linears(model, target_modules)
    fixed = sum(m.out_features for m in linears)
    return max(1, round((budget * count_params(model) - fixed) / len(linears)))


@register("vera")
class VeRA(LoRA):
    """peft VeRA; method keys: rank (overrides budget), dropout (0.0), d_initial (0.1)."""

    def peft_config(self, rank: int):
        from peft import VeraConfig

        return VeraConfig(r=rank, target_modules=self.target_modules, save_projection=True,
                          vera_dropout=self.method_cfg.get("dropout", 0.0),
                          d_initial=self.method_cfg.get("d_initial", 0.1), task_type="CAUSAL_LM")

    def rank_for_budget(self, model) -> int:
        return vera_rank_for_budget(model, self.target_modules, self.budget)
