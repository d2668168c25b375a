"""Host preprocessing and grain batch pipelines shared by every file-backed source (TFDS, image folders).

A *source* is any random-access sequence (`len`, `[i]`) of records {'image': uint8 [h, w] or
[h, w, c] (or encoded bytes), 'label': int}. `make_batches` turns it into a `grain.MapDataset`
whose element i is the i-th batch of this process, so `batches[i]` is a pure function of
(seed, i) and training resumes exactly at any step.

Only deterministic preprocessing happens here, in numpy, per example: resize the shorter side to
`image_size` + center crop, channel conversion, normalisation. Random augmentation (random-resized
crop, flip, mixup/cutmix) is NOT done here: it runs in JAX inside the train step, keyed by the
step's PRNG key, so it is on-device and reproducible from (seed, step).
"""
from __future__ import annotations

import io
import math

import grain
import numpy as np
from PIL import Image

from jkd.data.preprocess import per_channel
from jkd.errors import ConfigError

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's 'L' mode


def channel_stats(v, channels: int, field: str) -> np.ndarray:
    """config.data.mean/std as float32 [channels]; ConfigError naming `field` otherwise."""
    return np.asarray(per_channel(v, channels, field), np.float32)


def preprocess(image, image_size: int, channels: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """One example's image (uint8 [h, w, c] or encoded bytes) -> float32 [image_size, image_size, channels]."""
    if isinstance(image, bytes):  # some sources hand back undecoded bytes
        image = np.asarray(Image.open(io.BytesIO(image)))
    img = np.asarray(image, np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    img = img[..., :3] if img.shape[-1] == 4 else img  # drop alpha
    h, w = img.shape[:2]
    if (h, w) != (image_size, image_size):
        # Shorter side -> image_size keeps the aspect ratio; the center crop then drops the margins.
        scale = image_size / min(h, w)
        nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        img = np.asarray(pil.resize((nw, nh), Image.BILINEAR)).reshape(nh, nw, -1)
        top, left = (nh - image_size) // 2, (nw - image_size) // 2
        img = img[top:top + image_size, left:left + image_size]
    x = img.astype(np.float32)
    if x.shape[-1] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 3 and channels == 1:
        x = (x @ LUMA)[..., None]
    return (x / 255.0 - mean) / std


def resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count) as ints, defaulting to jax.process_index() / process_count()."""
    if process_index is None or process_count is None:
        import jax  # deferred: only needed for the defaults

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


def check_preprocessing(image_size: int, channels: int, mean, std, field_prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """image_size, channels, mean and std checked (ConfigError naming the field) -> (mean, std), each
    float32 [1] or [channels]."""
    if image_size < 1:
        raise ConfigError(f"{field_prefix}.image_size: must be positive, got {image_size}")
    if channels not in (1, 3):
        raise ConfigError(f"{field_prefix}.channels: must be 1 or 3, got {channels}")
    mean_a = channel_stats(mean, channels, f"{field_prefix}.mean")
    std_a = channel_stats(std, channels, f"{field_prefix}.std")
    if np.any(std_a == 0):
        raise ConfigError(f"{field_prefix}.std: must be non-zero, got {list(std_a)}")
    return mean_a, std_a


def check_batch_args(p_idx: int, p_cnt: int, global_batch_size: int, image_size: int, channels: int,
                     mean, std, field_prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """The cheap validation (no data opened) -> (mean, std), each float32 [1] or [channels]."""
    if p_cnt < 1 or not 0 <= p_idx < p_cnt:
        raise ConfigError(f"process_index={p_idx} must be in [0, process_count={p_cnt})")
    if global_batch_size < 1 or global_batch_size % p_cnt:
        raise ConfigError(f"config.batch_size (or eval_batch_size): {global_batch_size} must be a positive "
                          f"multiple of the process count {p_cnt}")
    return check_preprocessing(image_size, channels, mean, std, field_prefix)


def train_batches(source, prep, *, seed: int, p_idx: int, p_cnt: int, b_local: int) -> grain.MapDataset:
    """Infinite shuffled batches of this process's shard; prep: record -> {'image', 'label'}."""
    n = len(source)
    ds = grain.MapDataset.source(source)
    # Hash the user seed: grain reseeds epoch e with (seed + e), so raw seeds s and s+1 would
    # replay each other's epochs shifted by one.
    ds = ds.shuffle(seed=int(np.random.SeedSequence(seed).generate_state(1)[0]))
    # Shard the (per-epoch) permutation, keeping n // p_cnt examples per process; slicing keeps
    # the epoch offset, so repeat() reshuffles every epoch and shards stay disjoint within it.
    ds = ds[p_idx:(n // p_cnt) * p_cnt:p_cnt].repeat()
    # Batches may straddle an epoch boundary: no example is dropped and len(ds) is unbounded.
    return ds.map(prep).batch(b_local, drop_remainder=True)


def eval_batches(source, prep, *, p_idx: int, p_cnt: int, b_local: int, global_batch_size: int, split: str,
                 drop_remainder: bool, image_shape: tuple) -> grain.MapDataset:
    """One ordered pass over this process's shard, with 'mask' float32 (1 real, 0 padding); padded
    with blank examples (image zeros `image_shape` [H, W, C]) to the same batch count on every process."""
    n = len(source)
    ds = grain.MapDataset.source(source)
    ds = ds[p_idx:n if not drop_remainder else (n // p_cnt) * p_cnt:p_cnt].map(
        lambda ex: {**prep(ex), "mask": np.float32(1.0)})
    per_proc = math.ceil(n / p_cnt) if not drop_remainder else n // p_cnt
    num_batches = math.ceil(per_proc / b_local) if not drop_remainder else per_proc // b_local
    if num_batches == 0:
        raise ConfigError(f"config.batch_size (or eval_batch_size): {global_batch_size} exceeds the "
                          f"{n} examples of {split!r} with drop_remainder=True")
    pad = num_batches * b_local - len(ds)
    if pad > 0:  # same batch count on every process; padding is masked out of the metrics
        blank = {"image": np.zeros(image_shape, np.float32), "label": np.int32(0), "mask": np.float32(0.0)}
        ds = grain.MapDataset.concatenate([ds, grain.MapDataset.range(pad).map(lambda _: blank)])
    return ds.batch(b_local, drop_remainder=drop_remainder)


def make_batches(source, *, split: str, split_field: str, global_batch_size: int, image_size: int, channels: int,
                 mean: np.ndarray, std: np.ndarray, seed: int, shuffle: bool, p_idx: int, p_cnt: int,
                 drop_remainder: bool = True) -> grain.MapDataset:
    """Random-access dataset of this process's batches of `source` (mean/std from check_batch_args).

    Element i: {'image': float32 [B_local, image_size, image_size, channels], 'label': int32 [B_local]}
    with B_local = global_batch_size // p_cnt; eval batches (shuffle=False) also carry
    'mask': float32 [B_local] (1 real, 0 padding).

    shuffle=True (train): infinite; each epoch is a fresh permutation derived from `seed`, so batch i
    depends only on (seed, i). shuffle=False (eval): one ordered pass; with drop_remainder=False the
    last batch is padded. Every process gets the same number of batches (SPMD steps stay in lockstep)
    and disjoint examples: the record index space is sharded before batching.
    """
    n, b_local = len(source), global_batch_size // p_cnt
    if n < p_cnt:
        raise ConfigError(f"{split_field}: {n} examples cannot be split across {p_cnt} processes")

    def prep(ex):
        return {"image": preprocess(ex["image"], image_size, channels, mean, std), "label": np.int32(ex["label"])}

    if shuffle:
        return train_batches(source, prep, seed=seed, p_idx=p_idx, p_cnt=p_cnt, b_local=b_local)
    return eval_batches(source, prep, p_idx=p_idx, p_cnt=p_cnt, b_local=b_local, global_batch_size=global_batch_size,
                        split=split, drop_remainder=drop_remainder, image_shape=(image_size, image_size, channels))


def example_reader(source, *, image_size: int, channels: int, mean: np.ndarray, std: np.ndarray):
    """read(indices [n] int) -> {'image': float32 [n, image_size, image_size, channels], 'label': int32 [n],
    'label_mask': float32 [n] (ones)}: examples of `source` by position, preprocessed as in make_batches
    (the teacher cache rebuilds each cached view from its example, jkd/train/teacher_cache.py)."""
    def read(indices) -> dict:
        exs = [source[int(i)] for i in np.asarray(indices).reshape(-1)]
        return {"image": np.stack([preprocess(ex["image"], image_size, channels, mean, std) for ex in exs]),
                "label": np.array([ex["label"] for ex in exs], np.int32),
                "label_mask": np.ones(len(exs), np.float32)}
    return read


def iterate(batches: grain.MapDataset, start_step: int = 0, num_steps: int | None = None,
            *, num_threads: int = 0):
    """Yields batches[start_step], batches[start_step + 1], ... .

    Stops after `num_steps` batches, or at len(batches) for a finite (eval) dataset. With
    num_threads > 0, batches are built ahead by a grain thread pool (same batches, same order).
    """
    stop = len(batches) if num_steps is None else min(len(batches), start_step + num_steps)
    if num_threads <= 0:
        for i in range(start_step, stop):
            yield batches[i]
        return
    opts = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    yield from batches[start_step:stop].to_iter_dataset(opts)
