"""A probe's run directory: same-config cache, metrics.jsonl, reports, process-0-only writes.

    cached = rundir.cached_summary(workdir, config)   # the stored summary if this exact config ran
    log = rundir.start(workdir, config)               # config.json, an empty metrics.jsonl; log(record)
    ...
    rundir.write_text(workdir, 'results.md', text); rundir.write_json(workdir, 'summary.json', summary)

Every process of a multi-process job computes the same (replicated) result; process 0 alone
writes, so the files are written once. Readers (the cache) read on every process.
"""
from __future__ import annotations

import json
import os

import jax


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


def start(workdir: str, config):
    """Create workdir, write config.json and an empty metrics.jsonl (process 0); return
    log(record) that appends a JSON line to metrics.jsonl."""
    os.makedirs(workdir, exist_ok=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    write_json(workdir, "config.json", config_json(config))
    if is_writer():
        open(metrics, "w").close()
    return lambda record: append_jsonl(metrics, record)


def cached_run(workdir: str, config, body) -> dict:
    """A probe's run: the stored summary.json if this exact config already ran in workdir (a rerun
    of the same command reports what it measured); else start the run directory, summary =
    body(log), and write summary.json (process 0). Returns the summary."""
    cached = cached_summary(workdir, config)
    if cached is not None:
        return cached
    summary = body(start(workdir, config))
    write_json(workdir, "summary.json", summary)
    return summary


def report(workdir: str, header: str, table: str, *, progress: bool) -> None:
    """results.md = header + table (process 0); printed too when progress is on."""
    write_text(workdir, "results.md", header + "\n\n" + table + "\n")
    if progress and is_writer():
        print("\n" + header + "\n\n" + table + "\n")
