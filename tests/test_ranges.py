"""Every numeric config field has a range (jkd/ranges.py), checked at start-up before anything compiles.

The recipes in configs/ are the inventory: a numeric field of any recipe without a row in
NUMERIC_RANGES fails here, and every row a recipe has is set to nan, inf and a finite value outside
its range and must be refused by the trainer's start-up check, naming the field. No data, no
devices, no compile: the whole file runs in seconds (one CLI call).
"""
import copy
import glob
import importlib.util
import math
import os
import re
import subprocess
import sys

import pytest

from jkd import checks, ranges, trainers
from jkd.config import base_config
from jkd.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _variants(path: str) -> list:
    """get_config args a recipe names (arg == "tiny", arg in ("cifar10", "cifar100")), and None."""
    src = open(path).read()
    named = re.findall(r'arg == "(\w+)"', src)
    named += [a for group in re.findall(r"arg in \(([^)]*)\)", src) for a in re.findall(r'"(\w+)"', group)]
    return [None] + named


def _recipes() -> list:
    """[(name, config)] of every recipe in configs/ (and its named variants)."""
    out = []
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)):
        for arg in _variants(path):
            spec = importlib.util.spec_from_file_location("recipe", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            out.append((os.path.relpath(path, REPO) + (f":{arg}" if arg else ""), module.get_config(arg)))
    return out


RECIPES = _recipes()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_fields(config, prefix=""):
    """Dotted paths of the numeric leaves: a number, a placeholder of int/float type (None until set),
    or a tuple/list of numbers."""
    for key in config.keys():
        value, path = config[key], f"{prefix}{key}"
        if hasattr(value, "keys"):
            yield from numeric_fields(value, path + ".")
            continue
        declared = config.get_type(key) if hasattr(config, "get_type") else type(value)
        if (_is_number(value) or declared in (int, float) or
                (isinstance(value, (tuple, list)) and value and all(_is_number(v) for v in value))):
            yield path


def test_every_numeric_field_of_every_recipe_has_a_range():
    """A new numeric field without a row in jkd/ranges.py fails here (and so cannot go unchecked)."""
    missing = {}
    for name, config in [("jkd.config.base_config()", base_config())] + RECIPES:
        for path in numeric_fields(config):
            if ranges.row_of(path) is None and path not in ranges.CHECKED_ELSEWHERE:
                missing.setdefault(path, name)
    assert not missing, f"add these fields to jkd/ranges.py NUMERIC_RANGES (field: first recipe): {missing}"
    for spec, _ in map(ranges._entry, ranges.NUMERIC_RANGES.values()):
        checks.parse_range(spec)  # every row is in the grammar


def _set(config, path: str, value) -> None:
    *groups, leaf = path.split(".")
    node = config
    for g in groups:
        node = node[g]
    with node.ignore_type():
        node[leaf] = value


def _first_use() -> dict:
    """{table row: (recipe name, config, a dotted path of that row in it)}: the first recipe that has it;
    a row no recipe sets (an optional field: optimizer.momentum, a model option) is added to the digits
    recipe (a model option to config.model.kwargs)."""
    out = {}
    for name, config in RECIPES:
        for path in numeric_fields(config):
            row = ranges.row_of(path) or (path if path in ranges.CHECKED_ELSEWHERE else None)
            out.setdefault(row, (name, config, path))
    digits = dict(RECIPES)["configs/digits_supervised.py"]
    for row in set(ranges.NUMERIC_RANGES) - set(out):
        out[row] = ("configs/digits_supervised.py", digits, row.replace("*", "model"))
    return out


def test_a_value_outside_each_range_fails_the_trainers_start_up_check():
    """nan, inf and a finite value outside the range, for every row some recipe has: jkd.trainers.validate
    raises a ConfigError naming the field; the trainer's own check too (its run path, e.g. a notebook
    calling run_quickstart, skips validate)."""
    uses = _first_use()
    assert set(uses) == set(ranges.NUMERIC_RANGES) | set(ranges.CHECKED_ELSEWHERE)
    checked = set()
    for row, (name, config, path) in uses.items():
        trainer = trainers.get(config.trainer)
        if name not in checked:
            trainers.validate(copy.deepcopy(config))  # the unchanged recipe is valid: the errors below are the value's
            checked.add(name)
        spec = ranges.spec_of(path)[0] if row in ranges.NUMERIC_RANGES else "int >= 0"
        for value in checks.outside_range(spec):
            for check in (trainers.validate, trainer.check_config):
                bad = copy.deepcopy(config)
                _set(bad, path, (value,) if row in ranges.CHECKED_ELSEWHERE else value)
                with pytest.raises(ConfigError) as e:
                    check(bad)
                assert str(e.value).startswith(f"config.{path}:"), (name, path, value, str(e.value))


@pytest.mark.parametrize("value, message", [
    (math.nan, "config.optimizer.lr: must be a finite number > 0, got nan"),
    (math.inf, "config.optimizer.lr: must be a finite number > 0, got inf"),
    (-1e-3, "config.optimizer.lr: must be > 0, got -0.001"),
    ("1e-3", "config.optimizer.lr: must be a finite number > 0, got '1e-3'"),
])
def test_the_message_says_what_the_range_is(value, message):
    config = dict(RECIPES)["configs/digits_supervised.py"]
    bad = copy.deepcopy(config)
    _set(bad, "optimizer.lr", value)
    with pytest.raises(ConfigError) as e:
        trainers.validate(bad)
    assert str(e.value) == message


def test_ranges_grammar():
    checks.in_range((0.5, 1.0), "each (0, 1] or None", "config.augment.crop_scale")
    checks.in_range(None, "each (0, 1] or None", "config.augment.crop_scale")
    checks.in_range(-1.0, "-1 or (0, 1]", "config.remedy.light_scale")
    with pytest.raises(ConfigError, match=r"config\.augment\.crop_scale: must be a finite number in \(0, 1\] "
                                          r"\(for a tuple: each value\), got \(0\.5, nan\)"):
        checks.in_range((0.5, math.nan), "each (0, 1] or None", "config.augment.crop_scale")
    with pytest.raises(ConfigError, match=r"config\.steps: must be a positive integer, got True"):
        checks.in_range(True, "int >= 1", "config.steps")
    with pytest.raises(ConfigError, match=r"config\.data\.mu: a probability, must be in \[0, 1\], got 1\.5"):
        ranges.check_value(1.5, "data.mu", "config.data.mu")
    # a student's override has the range of its group's field
    assert ranges.spec_of("students.vit.kd.temperature") == ranges.spec_of("kd.temperature")
    with pytest.raises(ValueError, match="unknown range"):
        checks.parse_range("positive")


def test_docs_list_every_range():
    """docs/INPUTS.md holds the table python -m jkd.ranges prints (so it cannot drift from the checks)."""
    text = open(os.path.join(REPO, "docs", "INPUTS.md")).read()
    assert ranges.markdown() in text, "regenerate docs/INPUTS.md's 'Numeric fields' table: python -m jkd.ranges"


def test_cli_refuses_a_nan_learning_rate_before_anything_runs(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "jkd.main", "--config", os.path.join(REPO, "configs/digits_supervised.py"),
                           "--config.optimizer.lr=nan", "--workdir", str(workdir)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "jkd: error: config.optimizer.lr: must be a finite number > 0, got nan" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()  # refused before the run made its workdir (and so before any compile)
