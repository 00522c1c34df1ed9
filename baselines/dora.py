"""DoRA through peft (LoraConfig(use_dora=True)); rank derived from the shared budget."""
from __future__ import annotations

from baselines import register
from baselines.lora import LoRA


@register("dora")
class DoRA(LoRA):
    """LoRA with weight decomposition: the budget also pays for one magnitude vector per linear."""

    label = "DoRA"
    use_dora = True
