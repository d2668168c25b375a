"""Mirrors of a run's metrics.jsonl: TensorBoard event files (tensorboardX: no TensorFlow, no PyTorch)
and, optionally, a Weights & Biases run. metrics.jsonl stays the source of truth: the writers only
repeat its records, and a reopened run replays what metrics.jsonl holds, so the two never disagree.

    w = writers.open_writers(workdir, config, run_config)  # config.writers; replays <workdir>/metrics.jsonl
    writers.write_record(w, {'step': 50, 'split': 'train', 'vit/kd': 0.41})   # 'train/vit/kd' at step 50
    writers.close_writers(w)                     # <workdir>/*.png as images; flush and close

Tags: the record's string fields, in order, joined by '/' ('train' or 'eval' in jkd.train runs, a
probe's 'desc', or 'variant' then 'method'), then the numeric field's key: 'train/vit/kd',
'eval/vit/teacher_agreement', 'net/single/loss'. A list value (a probe's M models trained at once)
gives one tag per model, '<key>/<m>'. Characters TensorBoard does not take in a tag become '_'.
Step: record['step']; a record without one gets its index in metrics.jsonl (no trainer writes such
records today). The run's PNG plots go in as images 'plots/<file stem>' at the last step, on close.

Callers (jkd.rundir) open writers on process 0 only and close them when the run ends, also when it
stops on an error. This module decides nothing about processes.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import sys
import warnings

import numpy as np

from jkd.errors import ConfigError

WANDB_MODES = ("offline", "online")
EVENT_FILES = "events.out.tfevents.*"  # tensorboardX's (and TensorFlow's) event file names
_BAD_TAG_CHARS = re.compile(r"[^-/\w.]+")


@dataclasses.dataclass
class Writers:
    """The open mirrors of one run (None where off) and what the images need: the workdir, the number
    of records written and the last step."""
    workdir: str
    tensorboard: object | None = None   # tensorboardX.SummaryWriter
    wandb: object | None = None         # wandb.Run
    records: int = 0
    last_step: int = 0
    wandb_prefixes: set = dataclasses.field(default_factory=set)


def settings(config) -> dict:
    """config.writers over base_config()'s defaults (the probes' configs may leave the block out)."""
    from jkd.config import base_config  # the defaults live in one place
    out = dict(base_config().writers)
    given = config.get("writers")
    unknown = sorted(set(given or {}) - set(out))
    if unknown:
        raise ConfigError(f"config.writers: unknown field(s) {unknown} (known: {sorted(out)})")
    out.update(dict(given or {}))
    return out


def check_config(config) -> None:
    """The writer fields are well formed and W&B is importable when asked for; ConfigError naming the field."""
    s = settings(config)
    for field in ("tensorboard", "wandb"):
        if not isinstance(s[field], bool):
            raise ConfigError(f"config.writers.{field}: must be True or False, got {s[field]!r}")
    if not s["wandb"]:
        return
    if s["wandb_mode"] not in WANDB_MODES:
        raise ConfigError(f"config.writers.wandb_mode: must be one of {WANDB_MODES}, got {s['wandb_mode']!r}")
    if not (isinstance(s["wandb_project"], str) and s["wandb_project"]):
        raise ConfigError(f"config.writers.wandb_project: must be a non-empty name, got {s['wandb_project']!r}")
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError('config.writers.wandb: Weights & Biases is not installed; pip install -e ".[wandb]" '
                          "(or set config.writers.wandb=False)") from None


def tensorboardx():
    """The tensorboardX module (its protos read event files back too), imported without torch: its
    writer imports torch whenever torch is installed, only to accept torch tensors (seconds of start-up
    and a second framework in a JAX process); jkd hands it floats and numpy images."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        import tensorboardX
        return tensorboardX
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        import tensorboardX
    finally:
        del sys.modules["torch"]
    return tensorboardX


def open_writers(workdir: str, config, run_config: dict) -> Writers:
    """The writers config.writers asks for, on workdir (run_config: what config.json holds, the W&B
    run's config). Stale event files there are removed (also with TensorBoard off: event files mirror
    metrics.jsonl or do not exist) and the records metrics.jsonl holds are written again, so the event
    files mirror it also after a resume (jkd.train.loop cuts metrics.jsonl back to the restored step
    first)."""
    check_config(config)
    s = settings(config)
    w = Writers(workdir)
    for path in glob.glob(os.path.join(workdir, EVENT_FILES)):
        os.remove(path)
    if s["tensorboard"]:
        # flush_secs: a live `tensorboard --logdir` sees new points within half a minute.
        w.tensorboard = tensorboardx().SummaryWriter(logdir=workdir, flush_secs=30)
    if s["wandb"]:
        import wandb
        w.wandb = wandb.init(project=s["wandb_project"], mode=s["wandb_mode"], dir=workdir,
                             name=os.path.basename(os.path.abspath(workdir)), reinit="create_new",
                             config={"workdir": os.path.abspath(workdir), **run_config},
                             settings=wandb.Settings(console="off", silent=True, save_code=False))
    for record in _read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        write_record(w, record)
    return w


def _read_jsonl(path: str) -> list[dict]:
    """The records of a metrics.jsonl (none if absent; a line cut short by a kill is skipped)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def record_scalars(record: dict) -> tuple[str, dict]:
    """(prefix, {tag: float}) of one metrics record: prefix = its string fields joined by '/', tags =
    prefix/key for every int or float field but 'step' ('<key>/<m>' per entry of a list)."""
    prefix = "/".join(_clean(v) for k, v in record.items() if isinstance(v, str))
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, (str, bool)) or value is None:
            continue
        tag = f"{prefix}/{_clean(key)}" if prefix else _clean(key)
        if isinstance(value, (int, float)):
            out[tag] = float(value)
        elif isinstance(value, (list, tuple)):
            flat = np.asarray(value, dtype=float).reshape(-1)
            out.update({f"{tag}/{m}": float(v) for m, v in enumerate(flat)})
    return prefix, out


def _clean(name: str) -> str:
    return _BAD_TAG_CHARS.sub("_", str(name)).strip("/_") or "_"


def write_record(w: Writers | None, record: dict) -> None:
    """Every numeric field of one metrics record to the open writers (None: nothing to do)."""
    if w is None:
        return
    step = record.get("step")
    step = int(step) if isinstance(step, (int, float)) and math.isfinite(step) else w.records
    w.records += 1
    w.last_step = max(w.last_step, step)
    prefix, scalars = record_scalars(record)
    if w.tensorboard is not None:
        for tag, value in scalars.items():
            w.tensorboard.add_scalar(tag, value, global_step=step)
    if w.wandb is not None and scalars:
        # W&B wants one increasing step per run; a probe's phases each count from 0, so every prefix
        # gets its own x axis '<prefix>/step'.
        step_key = f"{prefix}/step" if prefix else "step"
        if prefix and prefix not in w.wandb_prefixes:
            w.wandb.define_metric(step_key, hidden=True)
            w.wandb.define_metric(f"{prefix}/*", step_metric=step_key)
            w.wandb_prefixes.add(prefix)
        w.wandb.log({**scalars, step_key: step})


def write_images(w: Writers | None) -> list[str]:
    """The workdir's PNG files (the probes' plots) as images 'plots/<stem>' at the last step; returns
    the paths written (an unreadable one is skipped with a warning)."""
    if w is None or (w.tensorboard is None and w.wandb is None):
        return []
    from PIL import Image
    written = []
    for path in sorted(glob.glob(os.path.join(w.workdir, "*.png"))):
        tag = "plots/" + _clean(os.path.splitext(os.path.basename(path))[0])
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im if im.mode in ("RGB", "RGBA") else im.convert("RGBA"))  # [H, W, 3|4] uint8
        except OSError as e:  # a plot cut short (e.g. by the error that ends this run) must not hide the run
            warnings.warn(f"jkd.writers: {path} is not a readable PNG, not added to the writers ({e})")
            continue
        if w.tensorboard is not None:
            w.tensorboard.add_image(tag, pixels, global_step=w.last_step, dataformats="HWC")
        if w.wandb is not None:
            import wandb
            w.wandb.log({tag: wandb.Image(path)})
        written.append(path)
    return written


def close_writers(w: Writers | None) -> None:
    """Add the workdir's plots as images, then flush and close every writer (idempotent)."""
    if w is None:
        return
    try:
        write_images(w)
    finally:
        if w.tensorboard is not None:
            w.tensorboard.close()
            w.tensorboard = None
        if w.wandb is not None:
            w.wandb.finish()
            w.wandb = None
