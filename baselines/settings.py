"""A method's own hyper-parameters: a dataclass `Settings` beside the method, validated here.

Each field has a default and `metadata={"help": ..., "choices": [...], "min": x, "exclusive_min": x,
"max": x}` (all but help optional). `parse(Settings, values, where)` checks every key and value
and names the offending one as `<where>.<key>` with the valid keys or values, so a config typo
fails at load time, before any job runs.
"""
from __future__ import annotations

import dataclasses
import numbers
import typing

# Keys of a config entry methods.<name> that every method shares (workflow/schemas/config.schema.yaml
# checks their values); every other key of the entry is one of the method's own Settings fields.
SHARED_METHOD_KEYS = ("lr", "placement", "label", "base", "deviations", "overrides")


class SettingsError(ValueError):
    """A method hyper-parameter is unknown or invalid; the message names methods.<name>.<key>."""


@dataclasses.dataclass
class NoSettings:
    """A method without hyper-parameters of its own (the shared `lr` is not one of them)."""


def field(default, help: str, **checks):
    """A Settings field: `default`, a `help` text and optional checks (choices, min, exclusive_min, max)."""
    meta = {"help": help, **checks}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe(settings_cls) -> list[dict]:
    """[{name, type, default, help, ...checks}] of every field (for docs and error messages)."""
    hints = typing.get_type_hints(settings_cls)
    out = []
    for f in dataclasses.fields(settings_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default, **f.metadata})
    return out


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_type(tp, value, where: str):
    """Return value (ints widened to float where a float is wanted) or raise SettingsError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(a, value, where)
            except SettingsError as err:
                errors.append(str(err))
        raise SettingsError(errors[0] if len(errors) == 1 else
                            f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else typing.Any
        return [_check_type(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is typing.Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SettingsError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: expected a mapping, got {value!r}")
        return value
    raise TypeError(f"{where}: Settings field type {tp!r} is not supported (use int, float, bool, str, "
                    "list[...], dict or Optional[...])")


def _check_value(meta: dict, value, where: str) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise SettingsError(f"{where}: {value!r} is not one of {list(meta['choices'])}")
    if "min" in meta and value < meta["min"]:
        raise SettingsError(f"{where}: {value!r} is less than the minimum {meta['min']}")
    if "exclusive_min" in meta and value <= meta["exclusive_min"]:
        raise SettingsError(f"{where}: {value!r} must be greater than {meta['exclusive_min']}")
    if "max" in meta and value > meta["max"]:
        raise SettingsError(f"{where}: {value!r} is greater than the maximum {meta['max']}")


def parse(settings_cls, values: dict, where: str):
    """An instance of settings_cls from values (a dict), every key and value checked.

    Unknown keys raise SettingsError naming `<where>.<key>` and the valid keys with their help.
    """
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = "; ".join(f"{f.name} ({f.metadata.get('help', '')})" for f in fields.values()) or "none"
        raise SettingsError(f"{where}.{unknown[0]}: unknown key for this method"
                            f"{' (also ' + ', '.join(unknown[1:]) + ')' if unknown[1:] else ''}; "
                            f"valid keys: {valid}. Shared keys: {', '.join(SHARED_METHOD_KEYS)}")
    hints = typing.get_type_hints(settings_cls)
    checked = {}
    for key, value in values.items():
        value = _check_type(hints[key], value, f"{where}.{key}")
        _check_value(fields[key].metadata, value, f"{where}.{key}")
        checked[key] = value
    return settings_cls(**checked)
