"""The teacher cache's on-disk format (jkd/train/teacher_cache.py builds and reads it): one fixed-size
numpy record per example and draw, and array_record shards that never look finished unless they are.

    dtype = record_dtype(num_teachers=1, top_k=5, value_dtype="float16", num_classes=10)   # 50 bytes
    write_shard(path, [r.tobytes() for r in records])     # path.partial -> path, then path.json
    verify_shard(path, records=1344)                       # ConfigError naming the shard otherwise
"""
from __future__ import annotations

import hashlib
import json
import os

import ml_dtypes
import numpy as np

from jkd.errors import ConfigError

CACHE_VERSION = 1
VALUE_DTYPES = ("float16", "bfloat16", "float32")
_NUMPY_16BIT = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}  # host-side, no device round trip


# ----------------------------------------------------------------------------- the record

def record_dtype(num_teachers: int, top_k: int, value_dtype: str, num_classes: int) -> np.dtype:
    """One record's numpy layout (little-endian, fixed size): example and partner index, their crop boxes
    (top, left, crop_h, crop_w: integers, as crop_boxes draws them) and flips, lam, and per teacher the
    top-k log-probabilities (16-bit values stored as their raw bits) and class ids. 70 bytes at k = 10."""
    values = "<f4" if value_dtype == "float32" else "<u2"
    classes = "<i2" if num_classes <= 2 ** 15 else "<i4"
    return np.dtype([("index", "<i4"), ("partner", "<i4"), ("box", "<i2", (4,)), ("partner_box", "<i2", (4,)),
                     ("flip", "u1"), ("partner_flip", "u1"), ("lam", "<f4"),
                     ("logp", values, (num_teachers, top_k)), ("classes", classes, (num_teachers, top_k))])


def encode_values(logp: np.ndarray, value_dtype: str) -> np.ndarray:
    """float32 log-probabilities -> what a record stores (float32, or the raw bits of float16/bfloat16)."""
    if value_dtype == "float32":
        return logp.astype(np.float32)
    return np.asarray(logp, np.float32).astype(_NUMPY_16BIT[value_dtype]).view(np.uint16)


def decode_values(stored: np.ndarray, value_dtype: str) -> np.ndarray:
    """A record's stored values -> float32 log-probabilities."""
    if value_dtype == "float32":
        return stored.astype(np.float32)
    return stored.view(_NUMPY_16BIT[value_dtype]).astype(np.float32)


# ---------------------------------------------------------------------------------- shards

def shard_name(draw: int, process_index: int, process_count: int) -> str:
    return f"draw{draw:04d}-proc{process_index:03d}of{process_count:03d}.array_record"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shard_complete(path: str, records: int) -> bool:
    """Whether `path` is a finished shard: its .json exists, and count and size agree (cheap)."""
    try:
        with open(path + ".json") as f:
            info = json.load(f)
        return info["records"] == records and os.path.getsize(path) == info["bytes"]
    except (OSError, json.JSONDecodeError, KeyError):
        return False


def verify_shard(path: str, records: int) -> None:
    """ConfigError naming the shard when it is missing, unfinished or does not match its checksum."""
    if not os.path.exists(path):
        raise ConfigError(f"config.teacher_cache.dir: shard {path} is missing; rebuild the cache (rerun with the "
                          f"same config: missing shards are written)")
    if not shard_complete(path, records):
        raise ConfigError(f"config.teacher_cache.dir: shard {path} is unfinished (no matching {os.path.basename(path)}"
                          f".json): the build was interrupted; rerun it to rewrite the shard")
    with open(path + ".json") as f:
        if json.load(f)["sha256"] != _sha256(path):
            raise ConfigError(f"config.teacher_cache.dir: shard {path} is corrupt (sha256 differs from the one "
                              f"written with it); delete it and rerun the build")


def write_shard(path: str, records, build_seconds: float = 0.0) -> None:
    """Write records to `path` so that a kill or a full disk never leaves it looking finished: the
    records go to path.partial, which is renamed once closed and synced; the .json (count, bytes,
    sha256) is written last."""
    from array_record.python.array_record_module import ArrayRecordWriter

    partial = path + ".partial"
    for stale in (path + ".json", path, partial):
        if os.path.exists(stale):
            os.remove(stale)
    writer, count = ArrayRecordWriter(partial, "group_size:1"), 0
    try:
        for r in records:
            writer.write(r)
            count += 1
    finally:
        writer.close()
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, path)
    info = {"records": count, "bytes": os.path.getsize(path), "sha256": _sha256(path),
            "build_seconds": round(build_seconds, 3)}
    with open(path + ".json.tmp", "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".json.tmp", path + ".json")
