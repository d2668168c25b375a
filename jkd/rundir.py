"""A probe's run directory: same-config cache, metrics.jsonl (every run's metrics log), reports,
process-0-only writes.

    cached = rundir.cached_summary(workdir, config)   # the stored summary if this exact config ran
    run_log = rundir.start(workdir, config)           # config.json, an empty metrics.jsonl
    run_log.log(record)                               # one line of metrics.jsonl, mirrored by the writers
    rundir.close_log(run_log)                         # the plots as images; writers flushed and closed
    rundir.write_text(workdir, 'results.md', text); rundir.write_json(workdir, 'summary.json', summary)

Every process of a multi-process job computes the same (replicated) result; process 0 alone
writes, so the files are written once. Readers (the cache) read on every process. metrics.jsonl is
the source of truth; the writers config.writers asks for (jkd/writers.py: TensorBoard, W&B) mirror it.
"""
from __future__ import annotations

import json
import os
from typing import Callable, NamedTuple

import jax

from jkd import writers


def is_writer() -> bool:
    """True on the process that writes files (process 0)."""
    return jax.process_index() == 0


def config_json(config) -> dict:
    """The config as plain JSON (what config.json holds and the cache compares)."""
    return json.loads(config.to_json_best_effort())


def cached_summary(workdir: str, config) -> dict | None:
    """summary.json of a finished run of this exact config in workdir, else None."""
    summary_path, config_path = os.path.join(workdir, "summary.json"), os.path.join(workdir, "config.json")
    if not (os.path.exists(summary_path) and os.path.exists(config_path)):
        return None
    with open(config_path) as f:
        if json.load(f) != config_json(config):
            return None
    with open(summary_path) as f:
        return json.load(f)


def read_metrics(workdir: str) -> list[dict]:
    """Every record of <workdir>/metrics.jsonl, in order ({'step', 'split', '<model>/<key>': value, ...})."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no metrics log (is {workdir} a jkd run directory?)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def curve(workdir: str, key: str, split: str = "eval") -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric, e.g. curve(run, 'vit/accuracy'): a learning curve.
    A key no record of that split has is a KeyError naming the keys there are."""
    records = [r for r in read_metrics(workdir) if r.get("split") == split]
    points = [(r["step"], r[key]) for r in records if key in r]
    if not points:
        known = sorted({k for r in records for k in r} - {"step", "split"})
        raise KeyError(f"{key!r}: no {split} record of {workdir}/metrics.jsonl has it (keys: {known})")
    return [s for s, _ in points], [v for _, v in points]


def write_json(workdir: str, name: str, obj, indent: int | None = 2) -> None:
    """<workdir>/<name> = json(obj), from process 0 only."""
    if is_writer():
        with open(os.path.join(workdir, name), "w") as f:
            json.dump(obj, f, indent=indent)


def write_text(workdir: str, name: str, text: str) -> None:
    """<workdir>/<name> = text, from process 0 only."""
    if is_writer():
        with open(os.path.join(workdir, name), "w") as f:
            f.write(text)


def append_jsonl(path: str, record: dict) -> None:
    """One JSON line appended to path, from process 0 only."""
    if is_writer():
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


class RunLog(NamedTuple):
    """A run's metrics log: log(record) appends one JSON line to metrics.jsonl (process 0) and hands
    it to the writers (None on other processes); close it with close_log."""
    log: Callable[[dict], None]
    writers: writers.Writers | None


def open_log(workdir: str, config) -> RunLog:
    """The log of <workdir>/metrics.jsonl as it stands; process 0 opens the writers config.writers
    asks for, which first replay the records already there (a resumed run)."""
    metrics = os.path.join(workdir, "metrics.jsonl")
    mirrors = writers.open_writers(workdir, config, config_json(config)) if is_writer() else None

    def log(record: dict) -> None:
        append_jsonl(metrics, record)
        writers.write_record(mirrors, record)
    return RunLog(log, mirrors)


def close_log(run_log: RunLog) -> None:
    """The run's PNG plots into the writers as images, then flush and close them (files complete)."""
    writers.close_writers(run_log.writers)


def start(workdir: str, config) -> RunLog:
    """Create workdir, write config.json and an empty metrics.jsonl (process 0); return its RunLog
    (open_log)."""
    writers.check_config(config)  # before anything is written
    os.makedirs(workdir, exist_ok=True)
    write_json(workdir, "config.json", config_json(config))
    if is_writer():
        open(os.path.join(workdir, "metrics.jsonl"), "w").close()
    return open_log(workdir, config)


def cached_run(workdir: str, config, body) -> dict:
    """A probe's run: the stored summary.json if this exact config already ran in workdir (a rerun
    of the same command reports what it measured); else start the run directory, summary =
    body(log), and write summary.json (process 0). The writers are closed when body returns or
    raises, after the plots it wrote went in. Returns the summary."""
    cached = cached_summary(workdir, config)
    if cached is not None:
        return cached
    run_log = start(workdir, config)
    try:
        summary = body(run_log.log)
    finally:
        close_log(run_log)
    write_json(workdir, "summary.json", summary)
    return summary


def report(workdir: str, header: str, table: str, *, progress: bool) -> None:
    """results.md = header + table (process 0); printed too when progress is on."""
    write_text(workdir, "results.md", header + "\n\n" + table + "\n")
    if progress and is_writer():
        print("\n" + header + "\n\n" + table + "\n")
