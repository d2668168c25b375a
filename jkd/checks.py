"""Field checks and list parsing shared by every trainer's start-up check (ConfigError naming the field).

    seed(config)                                  config.seed: an integer >= 0
    positive_ints(config, 'steps', 'data.image_size')
    positive(config, 'kd.temperature')            > 0, int or float
    fraction(config, 'kd.weight')                 in [0, 1]
    comma_list(config.variants, ('net', 'rf'), 'variants')  -> ['net', 'rf']
    check_renamed(config, {'method': 'kd_methods (...)'})

Pure functions of a ConfigDict; nothing here knows which trainer it serves.
"""
from __future__ import annotations

from jkd.errors import ConfigError


def get(config, field: str):
    """The value at a dotted path ('data.image_size') of a ConfigDict (KeyError if absent)."""
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def has(config, field: str) -> bool:
    """Whether the dotted path exists in config (a group's keys are read, never created)."""
    node = config
    for part in field.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def seed(config, field: str = "seed") -> None:
    """config.<field> must be an integer >= 0."""
    value = get(config, field)
    if not _is_int(value) or value < 0:
        raise ConfigError(f"config.{field}: must be an integer >= 0, got {value!r}")


def positive_ints(config, *fields, root: str = "config") -> None:
    """Every config.<field> must be an integer > 0 (root: how the message names `config`, e.g.
    'config.data' when a group is passed)."""
    for f in fields:
        value = get(config, f)
        if not _is_int(value) or value <= 0:
            raise ConfigError(f"{root}.{f}: must be a positive integer, got {value!r}")


def int_at_least(config, field: str, low: int, what: str = "") -> None:
    """config.<field> must be an integer >= low; `what` says what the field counts."""
    value = get(config, field)
    if not _is_int(value) or value < low:
        raise ConfigError(f"config.{field}: {what + ', ' if what else ''}must be an integer >= {low}, got {value!r}")


def positive(config, *fields) -> None:
    """Every config.<field> must be a number > 0."""
    for f in fields:
        value = get(config, f)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ConfigError(f"config.{f}: must be > 0, got {value!r}")


def fraction(config, *fields) -> None:
    """Every config.<field> must be a number in [0, 1]."""
    for f in fields:
        value = get(config, f)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"config.{f}: must be in [0, 1], got {value!r}")


def one_of(config, field: str, known) -> None:
    """config.<field> must be one of `known`."""
    value = get(config, field)
    if value not in known:
        raise ConfigError(f"config.{field}: one of {', '.join(repr(k) for k in known)}, got {value!r}")


def comma_list(value, known, field: str) -> list[str]:
    """'a, b' -> ['a', 'b'], each in `known`, at least one, none twice (ConfigError naming config.<field>)."""
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown or len(set(names)) != len(names):
        what = f"unknown {', '.join(map(repr, unknown))}; " if unknown else ("a name twice; " if names else "")
        raise ConfigError(f"config.{field}: need a comma-separated subset of {', '.join(known)} ({what}got {value!r})")
    return names


def check_renamed(config, renamed: dict, prefixes=("",)) -> None:
    """ConfigError for a field of config that was renamed: renamed = {old dotted path: 'new (why)'}.
    prefixes: the groups of config searched as well (e.g. each student's entry)."""
    for prefix in prefixes:
        node = get(config, prefix) if prefix else config
        if not hasattr(node, "keys"):
            continue
        for old, new in renamed.items():
            if has(node, old):
                raise ConfigError(f"config.{prefix + '.' if prefix else ''}{old}: renamed to {new}")
