"""LoRA through peft, with the rank derived from the shared parameter budget."""
from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional

import torch

from baselines import register
from baselines.base import Method, count_params
from baselines.settings import field

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def target_linears(model, target_modules) -> list[torch.nn.Linear]:
    """The nn.Linear modules whose last name component is in target_modules."""
    wanted = set(target_modules)
    found = [m for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in wanted]
    if not found:
        raise ValueError(f"no nn.Linear named {sorted(wanted)} in the model; fix target_modules")
    return found


def nearest_rank(target: float, per_rank: int, fixed: int = 0) -> int:
    """The rank r >= 1 whose count fixed + r * per_rank is nearest to target (a tie: the smaller r).

    The reached budget can still miss the asked one by up to half a rank step (per_rank /
    total params): on a tiny model one rank is a large share of the model.
    """
    if per_rank <= 0:
        raise ValueError(f"per_rank must be positive, got {per_rank}")
    lo = max(1, math.floor((target - fixed) / per_rank))
    hi = lo + 1
    return lo if abs(fixed + lo * per_rank - target) <= abs(fixed + hi * per_rank - target) else hi


def rank_for_budget(model, target_modules, budget: float, dora: bool = False) -> int:
    """Rank whose trainable-parameter count is nearest to budget * total params (at least 1).

    LoRA adds r * (in + out) parameters per targeted linear; DoRA also adds a magnitude
    vector of `out` parameters per linear.
    """
    if budget is None or budget <= 0:
        raise ValueError(f"LoRA/DoRA need a positive budget (fraction of total params), got {budget!r}; "
                         "set `budget` or method key `rank`")
    linears = target_linears(model, target_modules)
    per_rank = sum(m.in_features + m.out_features for m in linears)
    fixed = sum(m.out_features for m in linears) if dora else 0
    return nearest_rank(budget * count_params(model), per_rank, fixed)


@dataclasses.dataclass
class LoRASettings:
    """LoRA / DoRA hyper-parameters (defaults: the DoRA repository's commonsense scripts)."""

    rank: Optional[int] = field(None, "Rank r; set it to ignore the budget (null: the rank whose "
                                "parameter count is nearest to the budget).", min=1)
    alpha_ratio: float = field(2.0, "lora_alpha = alpha_ratio x rank (DoRA repo: alpha 2r).", exclusive_min=0)
    dropout: float = field(0.05, "Dropout on the adapter input (DoRA repo: 0.05).", min=0, max=1)
    target_modules: Optional[list[str]] = field(
        None, "Modules to adapt when the run's placement names none (default q,k,v,up,down).")


@register("lora")
class LoRA(Method):
    """peft LoRA; budget met by the rank whose parameter count is nearest to it (or `rank`).

    Target modules come from the run's placement (config `placements`), else the setting
    target_modules, else Q, K, V, Up, Down (the DoRA repository's LLaMA setting).
    """

    label = "LoRA"
    Settings = LoRASettings
    use_dora = False

    def __init__(self, run):
        super().__init__(run)
        self.target_modules = list(self.run.placement.target_modules or self.settings.target_modules
                                   or DEFAULT_TARGETS)
        self.peft_model = None
        self.rank = None

    def peft_config(self, rank: int):
        """The peft LoraConfig for rank (alpha = alpha_ratio * rank, as in the DoRA repo's scripts)."""
        from peft import LoraConfig

        return LoraConfig(r=rank, lora_alpha=self.settings.alpha_ratio * rank,
                          lora_dropout=self.settings.dropout,
                          target_modules=self.target_modules, use_dora=self.use_dora,
                          bias="none", task_type="CAUSAL_LM")

    def rank_for_budget(self, model) -> int:
        """The rank that spends this run's budget (subclasses with other parameter counts override)."""
        return rank_for_budget(model, self.target_modules, self.budget, dora=self.use_dora)

    def apply(self, model, out_dir=None) -> dict:
        from peft import get_peft_model

        self.total_params = count_params(model)
        self.rank = int(self.settings.rank or self.rank_for_budget(model))
        self.peft_model = get_peft_model(model, self.peft_config(self.rank))
        return {**self._info(model), "rank": self.rank, "target_modules": self.target_modules}

    def save(self, model, out_dir) -> pathlib.Path:
        if self.peft_model is None:
            raise RuntimeError("save() called before apply()")
        self.peft_model.save_pretrained(str(out_dir))
        return pathlib.Path(out_dir)

    def load(self, base_model, out_dir):
        from peft import PeftModel

        self.peft_model = PeftModel.from_pretrained(base_model, str(out_dir))
        return self.peft_model

    def merge(self, model):
        from peft import PeftModel

        if isinstance(model, PeftModel):
            return model.merge_and_unload()
        if self.peft_model is not None:
            return self.peft_model.merge_and_unload()
        return model
