"""Inference latency of the same student in JAX (jit), onnxruntime and TensorRT.

Every backend gets host float32 arrays and returns host logits (copies included, as a deployment
would see it). Warm: each (backend, batch) runs `warmup` times first (compilation, allocation);
then `repeats` timed calls, interleaved across backends; the median is reported (robust to the
other processes sharing the CPU). JAX uses the model as trained (ConvNeXt 'auto' = shifted
multiply-adds on CPU, its fastest form there); onnxruntime runs the exported graph with its
default threads and optimizations.
"""
from __future__ import annotations

import platform
import time

import numpy as np


def time_fn(fn, images: np.ndarray, *, warmup: int = 3, repeats: int = 20) -> dict:
    """Median/min wall time (ms) of fn(images) with its result on the host."""
    for _ in range(warmup):
        np.asarray(fn(images))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.asarray(fn(images))
        times.append((time.perf_counter() - t) * 1e3)
    return _stats(times)


def _stats(times: list[float]) -> dict:
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "repeats": len(times)}


def benchmark(backends: dict, image_shape, batches=(1, 32), *, warmup: int = 3, repeats: int = 20,
              seed: int = 0) -> list[dict]:
    """backends {name: fn(images [B, H, W, C]) -> logits}; first one is the reference for ratios.

    Calls are interleaved (A, B, A, B, ...) so that load from other processes on a shared machine
    hits every backend alike and the ratios stay meaningful even when the absolute times drift.
    Returns rows {backend, batch, median_ms, min_ms, ms_per_image, images_per_s, speedup_vs_<ref>}.
    """
    rows = []
    ref = next(iter(backends))
    for batch in batches:
        images = np.random.default_rng(seed).uniform(0, 1, (batch, *image_shape)).astype(np.float32)
        for fn in backends.values():
            for _ in range(warmup):
                np.asarray(fn(images))
        times = {name: [] for name in backends}
        for _ in range(repeats):
            for name, fn in backends.items():
                t = time.perf_counter()
                np.asarray(fn(images))
                times[name].append((time.perf_counter() - t) * 1e3)
        base = float(np.median(times[ref]))
        for name in backends:
            st = _stats(times[name])
            rows.append({"backend": name, "batch": batch, **st, "ms_per_image": st["median_ms"] / batch,
                         "images_per_s": 1e3 * batch / st["median_ms"], f"speedup_vs_{ref}": base / st["median_ms"]})
    return rows


def machine() -> str:
    import os

    import jax
    import onnxruntime
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{platform.machine()}, {cores} CPU cores visible, jax {jax.__version__} "
            f"({jax.default_backend()}), onnxruntime {onnxruntime.__version__}")


def format_table(rows: list[dict], title: str = "") -> str:
    """Markdown table of benchmark rows."""
    ref_key = next(k for k in rows[0] if k.startswith("speedup_vs_"))
    ref = ref_key[len("speedup_vs_"):]
    lines = ([title, ""] if title else []) + [
        f"| backend | batch | median ms | min ms | ms / image | images / s | speed vs {ref} (x) |",
        "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['batch']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | "
                     f"{r['ms_per_image']:.4f} | {r['images_per_s']:.0f} | {r[ref_key]:.2f} |")
    return "\n".join(lines)


def format_int8_table(rows: list[dict], file_bytes: dict, fp32: str = "onnxruntime",
                      int8: str = "onnxruntime int8") -> str:
    """Markdown table: fp32 vs INT8 onnxruntime median ms per batch from the same interleaved run
    (rows of `benchmark`), the INT8 speed-up (fp32 ms / INT8 ms; < 1 means INT8 is slower) and the
    size of each file on disk (file_bytes {backend: bytes})."""
    ms = {(r["backend"], r["batch"]): r["median_ms"] for r in rows}
    lines = [f"| batch | {fp32} fp32 ms | {int8} ms | INT8 speed-up (x) | fp32 file MB | INT8 file MB |",
             "|---:|---:|---:|---:|---:|---:|"]
    for batch in sorted({b for _, b in ms}):
        a, b = ms[(fp32, batch)], ms[(int8, batch)]
        lines.append(f"| {batch} | {a:.3f} | {b:.3f} | {a / b:.2f} | {file_bytes[fp32] / 1e6:.3f} | "
                     f"{file_bytes[int8] / 1e6:.3f} |")
    return "\n".join(lines)
