"""Full fine-tuning: every parameter trains; the saved delta is the whole model."""
from __future__ import annotations

import pathlib

from safetensors.torch import load_file, save_model

from baselines import register
from baselines.base import Method, count_params


@register("full_ft")
class FullFT(Method):
    """All weights trainable (budget is ignored and reported as 1.0); no settings besides lr."""

    label = "Full FT"

    def apply(self, model, out_dir=None) -> dict:
        self.total_params = count_params(model)
        for p in model.parameters():
            p.requires_grad_(True)
        return self._info(model)

    def save(self, model, out_dir) -> pathlib.Path:
        path = pathlib.Path(out_dir) / "model.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, str(path))
        return path

    def load(self, base_model, out_dir):
        state = load_file(str(pathlib.Path(out_dir) / "model.safetensors"))
        missing, unexpected = base_model.load_state_dict(state, strict=False)
        # Tied weights (SmolLM2: lm_head and embed_tokens share one tensor) are saved under one
        # of their names; a missing key is fine when it shares storage with a loaded one.
        params = dict(base_model.named_parameters(remove_duplicate=False))
        loaded = {params[k].data_ptr() for k in state if k in params}
        missing = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]
        if missing or unexpected:
            raise ValueError(f"full_ft delta in {out_dir} does not match the base model: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return base_model
