"""The config's error type and the one cross-reference check every config module uses."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key and what to change."""


def need(config: dict, section: str, name: str, where: str) -> None:
    """`name` must be a key of config[section]; else a ConfigError naming `where` and what is defined."""
    if name not in config[section]:
        raise ConfigError(f"{where} names {name!r}, which is not defined under `{section}:` "
                          f"(defined: {', '.join(config[section])})")
