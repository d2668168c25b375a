"""Sweep any jkd config over a cartesian product of overrides: resumable, with tables and plots.

    python -m jkd.sweep --config configs/theory/multiview.py --workdir /tmp/sw \\
        --sweep 'data.mu=0.1,0.2,0.3' --sweep 'seed=0:5' --set variants=net
    python -m jkd.sweep --config configs/quickstart.py --workdir /tmp/sw_t \\
        --sweep 'kd.temperature=1,2,4' --sweep 'seed=0:3'

--sweep 'field=a,b,c' lists values (commas inside brackets/quotes do not split), 'field=start:stop'
an integer range (stop exclusive; 'start:stop:step' too); --set 'field=value' fixes a field for every
point. Every field name and value is checked against the config before the first run (unknown
fields fail with a did-you-mean, values are converted to the field's type), and every point's
config passes the trainer's own start-up checks, so a bad sweep fails before any training.

Each point runs `jkd.main.run(config, <workdir>/points/<name>)`, so any trainer works; its returned
summary is flattened to '/'-joined numeric metrics and appended to <workdir>/results.jsonl. A rerun
skips the points already in results.jsonl (more values or seeds may be added to a sweep later).
At the end: <workdir>/table.md (mean ± std over the `--group-over` fields, default seed, per point
and metric group), plots/<measure>_vs_<field>.png for every swept numeric field, and the trainer's
own figures where it has some (theory: view-learning heatmaps).
"""
from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import importlib.util
import itertools
import json
import os
import re
import sys
import time

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jkd.errors import ConfigError
from jkd.sweep_report import canonical as _canonical
from jkd.sweep_report import report

def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/x.py[:arg]' -> get_config(arg), locked (as jkd.main's --config gives it)."""
    path, arg = spec, None
    if not os.path.exists(spec) and ":" in spec:
        path, arg = spec.rsplit(":", 1)
    if not os.path.isfile(path):
        raise ConfigError(f"--config: no such file {path!r}")
    module_spec = importlib.util.spec_from_file_location(f"jkd_sweep_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config: {path} has no get_config()")
    config = module.get_config(arg) if arg is not None else module.get_config()
    config.lock()
    return config


def field_names(config, prefix: str = "") -> list[str]:
    """Every dotted field path of a ConfigDict, groups included ('kd', 'kd.temperature', ...)."""
    names = []
    for key, value in config.items():
        names.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            names.extend(field_names(value, prefix + key + "."))
    return names


def get_field(config, field: str):
    """The value at a dotted path; ConfigError naming the field (with a did-you-mean) if absent."""
    node = config
    for i, part in enumerate(field.split(".")):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            from jkd.trainers import renamed_hint
            renamed = renamed_hint(field)
            if renamed:
                raise ConfigError(f"config.{field}: {renamed}")
            close = difflib.get_close_matches(field, field_names(config), n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            raise ConfigError(f"config.{field}: unknown field{hint}")
        node = node[part]
    return node


def _split_values(text: str) -> list[str]:
    """Split on commas that are not inside brackets, parentheses or quotes."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def convert(config, field: str, text: str):
    """Parse `text` as a value of the field's current type (bool, int, float, str, tuple, list)."""
    current = get_field(config, field)
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config.{field}: is a group of fields ({', '.join(current.keys())}); "
                          "sweep or set one of them")
    if text == "":
        raise ConfigError(f"config.{field}: empty value")
    holds = current
    if current is None:  # an unset placeholder (e.g. kd.temperature = paper default): its declared type
        parent, _, leaf = field.rpartition(".")
        declared = (get_field(config, parent) if parent else config).get_ref(leaf).get_type()
        current = {float: 0.0, int: 0, str: "", bool: False}.get(declared)
    try:
        if isinstance(current, bool):
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text)
            if not isinstance(value, (tuple, list)):
                raise ValueError
            return type(current)(value)
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    except (ValueError, SyntaxError):
        raise ConfigError(f"config.{field}: cannot read {text!r} as a {type(current).__name__} "
                          f"(the field holds {holds!r})") from None


_RANGE = re.compile(r"^(-?\d+):(-?\d+)(?::(-?\d+))?$")


def parse_sweep(spec: str, config) -> tuple[str, list]:
    """'field=a,b,c' or 'field=start:stop[:step]' (ints, stop exclusive) -> (field, typed values)."""
    if "=" not in spec:
        raise ConfigError(f"--sweep {spec!r}: expected 'field=a,b,c' or 'field=start:stop'")
    field, text = (s.strip() for s in spec.split("=", 1))
    current = get_field(config, field)
    if isinstance(current, int) and not isinstance(current, bool) and ":" in text:
        m = _RANGE.match(text)
        if not m:
            raise ConfigError(f"config.{field}: malformed range {text!r} in --sweep (expected start:stop or "
                              "start:stop:step, integers, stop exclusive)")
        start, stop, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        values = list(range(start, stop, step)) if step else []
        if not values:
            raise ConfigError(f"config.{field}: range {text!r} in --sweep is empty (stop is exclusive)")
        return field, values
    values = [convert(config, field, t) for t in _split_values(text)]
    if len({json.dumps(v) for v in values}) != len(values):
        raise ConfigError(f"config.{field}: --sweep lists a value twice ({text!r})")
    return field, values


def parse_set(spec: str, config) -> tuple[str, object]:
    """'field=value' -> (field, typed value)."""
    if "=" not in spec:
        raise ConfigError(f"--set {spec!r}: expected 'field=value'")
    field, text = (s.strip() for s in spec.split("=", 1))
    return field, convert(config, field, text)


def with_overrides(config, overrides: dict):
    """A copy of config with {dotted field: value} applied (types already checked)."""
    c = config.copy_and_resolve_references()
    for field, value in overrides.items():
        *parents, leaf = field.split(".")
        node = c
        for p in parents:
            node = node[p]
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"config.{field}: {e}") from None
    c.lock()
    return c


def point_name(point: dict) -> str:
    """A directory name from a point's overrides ('data.mu=0.1,seed=0'), hashed if very long."""
    name = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in point.items())
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
    if len(name) > 120:
        name = name[:80] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def flatten(summary, prefix: str = "") -> dict:
    """Nested dicts/lists -> {'a/b/0/c': float} keeping numbers only (bools and strings dropped)."""
    out = {}
    items = summary.items() if isinstance(summary, dict) else enumerate(summary) \
        if isinstance(summary, (list, tuple)) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list, tuple)):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _read_records(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- the sweep

def plan(config_spec: str, sweeps: list[str], sets: list[str]):
    """Parse and check everything: (base config, {field: values}, {field: value}, [(point, config)]).

    Every point's config goes through its trainer's start-up checks here (jkd.trainers.validate),
    so a bad sweep fails before the first run.
    """
    from jkd.trainers import validate

    base = load_config(config_spec)
    fixed = dict(parse_set(s, base) for s in sets)
    swept: dict = {}
    for s in sweeps:
        field, values = parse_sweep(s, base)
        if field in swept or field in fixed:
            raise ConfigError(f"config.{field}: given twice (in --sweep and/or --set)")
        swept[field] = values
    base = with_overrides(base, fixed)
    points = []
    for combo in itertools.product(*swept.values()):
        point = dict(zip(swept, combo))
        cfg = with_overrides(base, point)
        try:
            validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"sweep point {point_name(point) or '(no overrides)'}: {e}") from None
        points.append((point, cfg))
    return base, swept, fixed, points


def run_sweep(config_spec: str, sweeps: list[str], workdir: str, *, sets: list[str] = (),
              group_over=("seed",), metrics: str | None = None, progress: bool = True, runner=None) -> list[dict]:
    """Run every point not yet in <workdir>/results.jsonl, then write table.md and the plots.

    runner(config, workdir) -> summary defaults to jkd.main.run. Returns the records of this sweep's
    points ({'point', 'name', 'workdir', 'metrics', 'seconds'}).
    """
    base, swept, fixed, points = plan(config_spec, list(sweeps), list(sets))
    os.makedirs(workdir, exist_ok=True)
    meta_path = os.path.join(workdir, "sweep.json")
    meta = {"config": config_spec, "set": fixed}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if {"config": old.get("config"), "set": old.get("set")} != json.loads(json.dumps(meta)):
            raise ConfigError(f"--workdir: {workdir} holds a sweep of --config {old.get('config')!r} with --set "
                              f"{old.get('set')}; this one differs, use another --workdir")
    with open(meta_path, "w") as f:
        json.dump({**meta, "sweep": swept, "group_over": list(group_over)}, f, indent=2)

    if runner is None:
        from jkd.main import run as runner
    results_path = os.path.join(workdir, "results.jsonl")
    done = {_canonical(r["point"]): r for r in _read_records(results_path)}
    todo = [(p, c) for p, c in points if _canonical(json.loads(json.dumps(p))) not in done]
    with tqdm(total=len(points), initial=len(points) - len(todo), desc="sweep", disable=not progress,
              dynamic_ncols=True) as bar:
        for point, cfg in todo:
            name = point_name(point) or "base"
            bar.set_postfix_str(name)
            t0 = time.time()
            summary = runner(cfg, os.path.join(workdir, "points", name))
            record = {"point": point, "name": name, "workdir": os.path.join(workdir, "points", name),
                      "metrics": flatten(summary), "seconds": time.time() - t0}
            with open(results_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            done[_canonical(json.loads(json.dumps(point)))] = record
            bar.update(1)
    records = [done[_canonical(json.loads(json.dumps(p)))] for p, _ in points]
    report(records, swept, workdir, base.get("trainer"), group_over=group_over, metrics=metrics,
           header=f"--config {config_spec}" + "".join(f" --set {k}={v}" for k, v in fixed.items()))
    return records


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (no program name; sys.argv if None), parsed without running anything;
    `plan(args.config, args.sweep, args.set)` then checks every point as --dry-run does."""
    parser = argparse.ArgumentParser(prog="python -m jkd.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="recipe file configs/<recipe>.py[:arg]")
    parser.add_argument("--workdir", required=True, help="sweep directory (resumes if present)")
    parser.add_argument("--sweep", action="append", default=[], metavar="FIELD=VALUES",
                        help="'field=a,b,c' or 'field=start:stop' (integers, stop exclusive); repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="fixed override; repeatable")
    parser.add_argument("--group-over", default="seed", help="comma-separated fields averaged over in the table")
    parser.add_argument("--metrics", default=None, help="regex: only these metrics in the table")
    parser.add_argument("--dry-run", action="store_true", help="check everything and list the points, run nothing")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    group_over = tuple(f.strip() for f in args.group_over.split(",") if f.strip())
    try:
        if args.dry_run:
            _, _, _, points = plan(args.config, args.sweep, args.set)
            for point, _ in points:
                print(point_name(point) or "base")
            print(f"{len(points)} points")
            return
        records = run_sweep(args.config, args.sweep, args.workdir, sets=args.set, group_over=group_over,
                            metrics=args.metrics)
    except ConfigError as e:
        print(f"jkd.sweep: error: {e}", file=sys.stderr)
        sys.exit(2)
    with open(os.path.join(args.workdir, "table.md")) as f:
        print("\n" + f.read())
    print(f"{len(records)} points; results in {args.workdir}/results.jsonl, plots in {args.workdir}/plots")


if __name__ == "__main__":
    main()
