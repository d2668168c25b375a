"""Image-classification batches from any TFDS dataset via `tfds.data_source` + grain `MapDataset`.

No TensorFlow is needed to *read*: `tfds.data_source` opens array_record files and decodes images
with PIL/OpenCV. The dataset must already be prepared in array_record format, e.g.
`tfds build cifar10 --file_format=array_record --data_dir=...` (generating it does need TensorFlow).

Only deterministic preprocessing happens here, in numpy, per example: decode, resize the shorter
side to `image_size` + center crop, channel conversion, normalisation. Random augmentation
(random-resized crop, flip, mixup/cutmix) is NOT done here: it runs in JAX inside the train step,
keyed by the step's PRNG key, so it is on-device and reproducible from (seed, step).

Every pipeline is a random-access `grain.MapDataset` whose element i is the i-th batch of this
process, so `batches[i]` is a pure function of (seed, i) and training resumes exactly at any step.
"""
from __future__ import annotations

import difflib
import functools
import io
import math

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jkd.errors import ConfigError

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's 'L' mode


def _builder(name: str, data_dir: str | None, field: str):
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        # Without community datasets: listing those would need GCS access (gcsfs / TensorFlow).
        close = difflib.get_close_matches(name, tfds.list_builders(with_community_datasets=False), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see tfds.list_builders()"
        raise ConfigError(f"{field}: unknown TFDS dataset {name!r} ({hint})") from None


def dataset_info(name: str, data_dir: str | None = None, *, field: str = "config.data.name") -> dict:
    """Metadata of TFDS dataset `name` from `tfds.builder(...).info` (reads no examples).

    Returns {'num_classes': int, 'splits': {split: num_examples}, 'image_key': 'image',
    'label_key': 'label', 'image_shape': (H, W, C)} (H/W are None for variable-size images;
    `splits` is empty when the dataset is not prepared under `data_dir`).
    """
    info = _builder(name, data_dir, field).info
    feats = info.features
    if "image" not in feats or "label" not in feats or not hasattr(feats["label"], "num_classes"):
        raise ConfigError(f"{field}: TFDS dataset {name!r} has no 'image'/'label' (ClassLabel) "
                          f"features; found {sorted(feats.keys())}")
    return {"num_classes": int(feats["label"].num_classes),
            "splits": {k: int(v.num_examples) for k, v in info.splits.items()},
            "image_key": "image", "label_key": "label", "image_shape": tuple(feats["image"].shape)}


def _check_split(info: dict, name: str, split: str, field: str) -> None:
    """Validates a split spec such as 'train', 'train[:90%]' or 'train+validation'."""
    if not info["splits"]:  # not prepared (or mocked from code): tfds.data_source decides below
        return
    for part in split.split("+"):
        base = part.split("[")[0].strip()
        if base not in info["splits"]:
            raise ConfigError(f"{field}: unknown split {base!r} for TFDS dataset {name!r} "
                              f"(available: {', '.join(sorted(info['splits']))})")


def _channel_stats(v, channels: int, field: str) -> np.ndarray:
    a = np.asarray(v, np.float32).reshape(-1)
    if a.size not in (1, channels):
        raise ConfigError(f"{field}: expected a scalar or {channels} values, got {list(a)}")
    return a


def _preprocess(image, image_size: int, channels: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
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
        x = (x @ _LUMA)[..., None]
    return (x / 255.0 - mean) / std


class _Subset:
    """The records `indices` of a random-access source, as a random-access source."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[int(self.indices[i])]


@functools.lru_cache(maxsize=8)
def _kept_indices(name: str, split: str, exclude_classes: tuple, data_dir: str | None) -> np.ndarray:
    labels_source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                     decoders={"image": tfds.decode.SkipDecoding()})
    labels = np.array([int(labels_source[i]["label"]) for i in range(len(labels_source))], np.int64)
    return np.flatnonzero(~np.isin(labels, list(exclude_classes)))


def kept_indices(name: str, split: str, exclude_classes, data_dir: str | None = None) -> np.ndarray:
    """Record indices [n_kept] of `split` whose label is not in exclude_classes.

    Reads every record's label once with the images left undecoded (tfds SkipDecoding), so the
    pass costs I/O, not JPEG decoding (once per process: cached).
    """
    return _kept_indices(name, split, tuple(sorted(int(c) for c in exclude_classes)), data_dir)


def _resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count) as ints, defaulting to jax.process_index() / process_count()."""
    if process_index is None or process_count is None:
        import jax  # deferred: only needed for the defaults

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


def _check_batch_args(p_idx: int, p_cnt: int, global_batch_size: int, image_size: int, channels: int,
                      mean, std, field_prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """The cheap validation (no data opened) -> (mean, std), each float32 [1] or [channels]."""
    if p_cnt < 1 or not 0 <= p_idx < p_cnt:
        raise ConfigError(f"process_index={p_idx} must be in [0, process_count={p_cnt})")
    if global_batch_size < 1 or global_batch_size % p_cnt:
        raise ConfigError(f"config.batch_size (or eval_batch_size): {global_batch_size} must be a positive "
                          f"multiple of the process count {p_cnt}")
    if image_size < 1:
        raise ConfigError(f"{field_prefix}.image_size: must be positive, got {image_size}")
    if channels not in (1, 3):
        raise ConfigError(f"{field_prefix}.channels: must be 1 or 3, got {channels}")
    mean_a = _channel_stats(mean, channels, f"{field_prefix}.mean")
    std_a = _channel_stats(std, channels, f"{field_prefix}.std")
    if np.any(std_a == 0):
        raise ConfigError(f"{field_prefix}.std: must be non-zero, got {list(std_a)}")
    return mean_a, std_a


def _open_source(name: str, split: str, data_dir: str | None, exclude_classes, field_prefix: str,
                 split_field: str):
    """The split's random-access record source (records of exclude_classes left out)."""
    info = dataset_info(name, data_dir, field=f"{field_prefix}.name")
    _check_split(info, name, split, split_field)
    try:  # download=False: never start a multi-GB download/generation from a training job
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # not prepared, TFRECORD-only, bad slice, ...
        raise ConfigError(f"{field_prefix}.data_dir: cannot open TFDS {name!r} split {split!r} "
                          f"(data_dir={data_dir!r}) for random access: {e}. Prepare it with `tfds "
                          f"build {name} --file_format=array_record`.") from e
    if exclude_classes:
        source = _Subset(source, kept_indices(name, split, exclude_classes, data_dir))
    return source


def _train_batches(source, prep, *, seed: int, p_idx: int, p_cnt: int, b_local: int) -> grain.MapDataset:
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


def _eval_batches(source, prep, *, p_idx: int, p_cnt: int, b_local: int, global_batch_size: int, split: str,
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


def make_tfds_batches(name: str, split: str, *, global_batch_size: int, image_size: int,
                      channels: int, mean, std, seed: int, shuffle: bool,
                      data_dir: str | None = None, process_index: int | None = None,
                      process_count: int | None = None, drop_remainder: bool = True,
                      field_prefix: str = "config.data", split_field: str | None = None,
                      exclude_classes=()) -> grain.MapDataset:
    """Random-access dataset of this process's batches.

    Element i: {'image': float32 [B_local, image_size, image_size, channels], 'label': int32 [B_local]}
    with B_local = global_batch_size // process_count; eval batches (shuffle=False) also carry
    'mask': float32 [B_local] (1 real, 0 padding).

    shuffle=True (train): infinite; each epoch is a fresh permutation derived from `seed`, so batch i
    depends only on (seed, i). shuffle=False (eval): one ordered pass; with drop_remainder=False the
    last batch is padded. Every process gets the same number of batches (SPMD steps stay in lockstep)
    and disjoint examples: the record index space is sharded before batching.
    """
    p_idx, p_cnt = _resolve_processes(process_index, process_count)
    split_field = split_field or f"{field_prefix}.{'train_split' if shuffle else 'eval_split'}"
    # All cheap validation first, before any data is opened.
    mean_a, std_a = _check_batch_args(p_idx, p_cnt, global_batch_size, image_size, channels, mean, std,
                                      field_prefix)
    source = _open_source(name, split, data_dir, exclude_classes, field_prefix, split_field)
    n, b_local = len(source), global_batch_size // p_cnt
    if n < p_cnt:
        raise ConfigError(f"{split_field}: {n} examples cannot be split across {p_cnt} processes")

    def prep(ex):
        return {"image": _preprocess(ex["image"], image_size, channels, mean_a, std_a),
                "label": np.int32(ex["label"])}

    if shuffle:
        return _train_batches(source, prep, seed=seed, p_idx=p_idx, p_cnt=p_cnt, b_local=b_local)
    return _eval_batches(source, prep, p_idx=p_idx, p_cnt=p_cnt, b_local=b_local,
                         global_batch_size=global_batch_size, split=split, drop_remainder=drop_remainder,
                         image_shape=(image_size, image_size, channels))


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
