"""Field checks and list parsing shared by every trainer's start-up check (ConfigError naming the field).

    in_range(config.optimizer.lr, '> 0', 'config.optimizer.lr')   # a range in words (grammar below)
    positive_ints(config, 'num_classes', 'dim', root='config.data')
    fraction(config, 'kd.weight')                 in [0, 1]
    comma_list(config.variants, ('net', 'rf'), 'variants')  -> ['net', 'rf']
    check_renamed(config, {'method': 'kd_methods (...)'})

Pure functions of a ConfigDict or a value; nothing here knows which trainer it serves (the range of
every numeric config field is one table, jkd/ranges.py, checked with in_range).
"""
from __future__ import annotations

import functools
import math
import re

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


# ----------------------------------------------------------------------------- numeric ranges
# A range is a short string, read by people (docs/INPUTS.md prints them) and by in_range:
#   'int >= 1'  'int in [-4, 3]'  '> 0'  '>= 0'  '[0, 1)'  '(0, 1]'  'any' (a finite number)
#   '1'  (exactly this value)   'None'   alternatives joined by ' or ':  '1 or 3', '-1 or (0, 1]'
#   a leading 'each ' also accepts a tuple/list whose every value fits ('each > 0': data.std per channel)
# Every float range excludes nan and +-inf: a bound is only ever compared with finite numbers.
_INTERVAL = re.compile(r"^(int in )?([\[(])\s*(\S+),\s*(\S+)\s*([\])])$")
_BOUND = re.compile(r"^(int )?(>=|>)\s*(\S+)$")
_VALUE = re.compile(r"^-?\d+(\.\d+)?$")


@functools.lru_cache(maxsize=None)
def parse_range(spec: str) -> tuple[bool, tuple]:
    """'each (0, 1] or None' -> (each, options); an option is (text, integer, low, low_open, high, high_open)
    with text 'None' for None. ValueError for a spec outside the grammar above (a bug in the table)."""
    each = spec.startswith("each ")
    options = []
    for text in (spec[5:] if each else spec).split(" or "):
        if text in ("None", "any"):
            options.append((text, False, -math.inf, True, math.inf, True))
        elif m := _INTERVAL.match(text):
            options.append((text, bool(m[1]), float(m[3]), m[2] == "(", float(m[4]), m[5] == ")"))
        elif m := _BOUND.match(text):
            options.append((text, bool(m[1]), float(m[3]), m[2] == ">", math.inf, True))
        elif _VALUE.match(text):
            options.append((text, False, float(text), False, float(text), False))
        else:
            raise ValueError(f"unknown range {spec!r} (see jkd/checks.py)")
    return each, tuple(options)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits(value, option) -> bool:
    text, integer, low, low_open, high, high_open = option
    if text == "None":
        return value is None
    if not _is_number(value) or (integer and not _is_int(value)) or not math.isfinite(value):
        return False
    return (low < value if low_open else low <= value) and (value < high if high_open else value <= high)


def _phrase(option, finite: bool) -> str:
    """How a message names one option; `finite`: say 'a finite number' (the value was not one)."""
    text, integer = option[0], option[1]
    if text == "None" or _VALUE.match(text):
        return text
    if text == "any":
        return "a finite number"
    if integer:
        return "a positive integer" if text == "int >= 1" else "an " + text.replace("int ", "integer ")
    return ("a finite number " if finite else "") + (text if text[0] in "<>" else f"in {text}")


def describe_range(spec: str, finite: bool = True, none: bool = True) -> str:
    """The words for a range: '> 0' -> 'a finite number > 0' ('> 0' with finite=False); none=False
    leaves out a 'None' option (an error about a number need not say that unset is fine)."""
    each, options = parse_range(spec)
    words = [_phrase(o, finite) for o in options if none or o[0] != "None"]
    return " or ".join(words) + (" (for a tuple: each value)" if each else "")


def in_range(value, spec: str, field: str, what: str = "") -> None:
    """ConfigError '<field>: [<what>, ]must be <range>, got <value>' unless value fits spec (grammar above);
    the range says 'a finite number' when the value is not one (nan, inf, a string)."""
    each, options = parse_range(spec)
    values = list(value) if each and isinstance(value, (tuple, list)) else [value]
    if all(any(_fits(v, o) for o in options) for v in values):
        return
    finite = all(v is None or (_is_number(v) and math.isfinite(v)) for v in values)
    raise ConfigError(f"{field}: {what + ', ' if what else ''}must be {describe_range(spec, not finite, False)}, "
                      f"got {value!r}")


def integer_range(spec: str) -> bool:
    """Whether spec admits integers only ('int >= 1', '1 or 3', '-1 or int >= 1')."""
    return all(o[1] or (_VALUE.match(o[0]) and "." not in o[0]) for o in parse_range(spec)[1] if o[0] != "None")


def outside_range(spec: str) -> list:
    """Values that fail spec: nan, inf, and a finite one where the range has a finite outside (the
    first of: below or on each lower bound, on or above each upper bound, 0.5 for an integer range)."""
    _, options = parse_range(spec)
    bounds = [b for o in options if o[0] not in ("None", "any") for b in (o[2] - 1, o[2], o[4], o[4] + 1)]
    candidates = [int(b) if b == int(b) else b for b in bounds if math.isfinite(b)] + [0.5]
    finite = next((c for c in candidates if not any(_fits(c, o) for o in options)), None)
    return [math.nan, math.inf] + ([] if finite is None else [finite])
