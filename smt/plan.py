"""SelectionPlan: which l x l blocks of which modules SMT trains (JSON round-trip, summaries)."""
from __future__ import annotations

import json
import pathlib
from typing import Optional, Union


def module_type(name: str) -> str:
    """The module type used in summaries: the last component of the name (``"q_proj"``)."""
    return name.rsplit(".", 1)[-1]


def layer_index(name: str) -> Optional[int]:
    """The layer index of a module: its last purely numeric name component (None if none)."""
    nums = [int(p) for p in name.split(".") if p.isdigit()]
    return nums[-1] if nums else None


class SelectionPlan:
    """The result of SMT block selection.

    Args:
        block_size: side ``l`` of the blocks.
        shapes: ``{module_name: (out_features, in_features)}`` for EVERY target module
            (modules that received no block included, so maps show zeros).
        blocks: ``{module_name: [(row, col), ...]}`` in block units, sorted; modules absent
            or with an empty list get no blocks.
        total_params: the model's total parameter count the budget refers to.
        meta: free JSON-able record of how the plan was made (budget asked, strategy,
            warm-up steps and mode, target modules, quotas, ...).
    """

    def __init__(self, block_size: int, shapes: dict, blocks: dict, total_params: int,
                 meta: Optional[dict] = None):
        self.block_size = int(block_size)
        self.shapes = {k: (int(v[0]), int(v[1])) for k, v in shapes.items()}
        from .layer import block_coordinate  # (0.5, 0) is an error naming the block, never (0, 0)

        self.blocks = {k: sorted((block_coordinate(r, (r, c)), block_coordinate(c, (r, c)))
                                 for r, c in blocks.get(k, [])) for k in self.shapes}
        unknown = sorted(set(blocks) - set(self.shapes))
        if unknown:
            raise ValueError(f"SelectionPlan: blocks given for modules without a shape: {unknown}")
        self.total_params = int(total_params)
        self.meta = dict(meta or {})
        self._validate()

    def _validate(self) -> None:
        l = self.block_size
        for name, (o, i) in self.shapes.items():
            if o % l or i % l:
                raise ValueError(f"SelectionPlan: block size {l} does not divide {name} of shape {(o, i)}")
            bl = self.blocks[name]
            if len(set(bl)) != len(bl):
                raise ValueError(f"SelectionPlan: repeated blocks in {name}")
            for r, c in bl:
                if not (0 <= r < o // l and 0 <= c < i // l):
                    raise ValueError(f"SelectionPlan: block {(r, c)} outside the {o // l} x {i // l} grid of {name}")

    @property
    def n_blocks(self) -> int:
        """Number of selected blocks over all modules."""
        return sum(len(b) for b in self.blocks.values())

    @property
    def trainable_params(self) -> int:
        """Number of trainable parameters (n_blocks * l * l)."""
        return self.n_blocks * self.block_size ** 2

    @property
    def budget_reached(self) -> float:
        """trainable_params / total_params."""
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def counts(self) -> dict:
        """``{module_name: number of blocks}`` for every target module."""
        return {k: len(v) for k, v in self.blocks.items()}

    def summary(self) -> dict:
        """Totals plus, per module type (q_proj, k_proj, v_proj, o_proj, gate_proj, ...), the
        block count, parameter count, share of the trainable parameters and the fraction of
        that type's weights that is trainable. Feeds Figure 5 and the run record."""
        per_type = {}
        for name, shape in self.shapes.items():
            t = per_type.setdefault(module_type(name), {"blocks": 0, "params": 0, "type_params": 0})
            t["blocks"] += len(self.blocks[name])
            t["params"] += len(self.blocks[name]) * self.block_size ** 2
            t["type_params"] += shape[0] * shape[1]
        trainable = self.trainable_params
        for t in per_type.values():
            t["share"] = t["params"] / trainable if trainable else 0.0
            t["fraction_of_type"] = t["params"] / t["type_params"] if t["type_params"] else 0.0
        return {"block_size": self.block_size, "n_blocks": self.n_blocks, "trainable_params": trainable,
                "total_params": self.total_params, "budget_asked": self.meta.get("budget"),
                "budget_reached": self.budget_reached, "n_modules": len(self.shapes),
                "n_modules_with_blocks": sum(1 for b in self.blocks.values() if b), "per_type": per_type}

    def layer_map(self) -> dict:
        """Block counts as a layer x module-type matrix (Figure 4).

        Returns ``{"layers": [0, 1, ...], "types": ["q_proj", ...], "counts": [[...], ...]}``
        where ``counts[i][j]`` is the number of blocks in layer ``layers[i]``, type
        ``types[j]``. Modules without a layer index are listed under layer ``None`` (last).
        """
        types, layers = [], set()
        for name in self.shapes:
            if module_type(name) not in types:
                types.append(module_type(name))
            layers.add(layer_index(name))
        layer_list = sorted(x for x in layers if x is not None) + ([None] if None in layers else [])
        counts = [[0] * len(types) for _ in layer_list]
        for name, bl in self.blocks.items():
            counts[layer_list.index(layer_index(name))][types.index(module_type(name))] += len(bl)
        return {"layers": layer_list, "types": types, "counts": counts}

    def to_dict(self) -> dict:
        """JSON-able dict; :meth:`from_dict` inverts it exactly."""
        return {"format": "smt-selection-plan/1", "block_size": self.block_size,
                "total_params": self.total_params, "meta": self.meta,
                "modules": {k: {"shape": list(self.shapes[k]), "blocks": [list(b) for b in self.blocks[k]]}
                            for k in self.shapes}}

    @classmethod
    def from_dict(cls, d: dict) -> "SelectionPlan":
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != "smt-selection-plan/1":
            raise ValueError(f"not an SMT selection plan (format={d.get('format')!r})")
        mods = d["modules"]
        return cls(d["block_size"], {k: v["shape"] for k, v in mods.items()},
                   {k: [tuple(b) for b in v["blocks"]] for k, v in mods.items()}, d["total_params"], d.get("meta"))

    def to_json(self, path: Union[str, pathlib.Path, None] = None) -> str:
        """The plan as a JSON string; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            pathlib.Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: Union[str, pathlib.Path]) -> "SelectionPlan":
        """Read a plan from a JSON string, or from a file when given a path (str or Path)."""
        if isinstance(text_or_path, pathlib.Path) or not str(text_or_path).lstrip().startswith("{"):
            text_or_path = pathlib.Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text_or_path))

    def __eq__(self, other) -> bool:
        return isinstance(other, SelectionPlan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"SelectionPlan(block_size={self.block_size}, n_blocks={self.n_blocks}, "
                f"modules={len(self.shapes)}, budget_reached={self.budget_reached:.6f})")
