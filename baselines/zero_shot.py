"""The zero-shot reference: the base model as it is, no parameter trains.

Not a fine-tuning method but the row every method must beat (experiments.table2.zero_shot). It
runs through the same train and evaluate jobs as every method, so its record says what was
evaluated (model checksums, commit) and its validation loss at step 0 is measured the way every
run's is; the training loop stops after that measurement (`trains = False`).
"""
from __future__ import annotations

import json
import pathlib

from baselines import register
from baselines.base import Method, count_params

DELTA_FILE = "zero_shot.json"


@register("zero_shot")
class ZeroShot(Method):
    """Nothing trainable; the saved delta is a marker file, loading it returns the base model."""

    label = "zero-shot (no training)"
    trains = False

    def apply(self, model, out_dir=None) -> dict:
        self.total_params = count_params(model)
        for p in model.parameters():
            p.requires_grad_(False)
        return self._info(model)

    def save(self, model, out_dir) -> pathlib.Path:
        path = pathlib.Path(out_dir) / DELTA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"method": self.name, "delta": None, "note": "the base model, nothing trained"}))
        return path

    def load(self, base_model, out_dir):
        path = pathlib.Path(out_dir) / DELTA_FILE
        if not path.is_file():  # a zero-shot record over another method's delta would evaluate the wrong model
            raise FileNotFoundError(f"{path} not found: {out_dir} was not written by a zero-shot run; train it again")
        return base_model
