"""Image-classification batches from any TFDS dataset via `tfds.data_source` + grain `MapDataset`.

No TensorFlow is needed to *read*: `tfds.data_source` opens array_record files and decodes images
with PIL/OpenCV. The dataset must already be prepared in array_record format, e.g.
`tfds build cifar10 --file_format=array_record --data_dir=...` (generating it does need TensorFlow).

Preprocessing and the batch pipelines are jkd/data/pipeline.py's, shared with the image-folder
source: deterministic host preprocessing only (random augmentation runs in the jitted step), and
element i of every pipeline is the i-th batch of this process, a pure function of (seed, i).
"""
from __future__ import annotations

import difflib
import functools

import grain
import numpy as np
import tensorflow_datasets as tfds

from jkd.data import pipeline
from jkd.errors import ConfigError

_preprocess = pipeline.preprocess  # the old private name (jkd.probes.spurious, benchmarks/input_pipeline.py)
iterate = pipeline.iterate  # callers and tests use jkd.data.tfds.iterate


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


def class_names(name: str, data_dir: str | None = None, *, field: str = "config.data.name") -> tuple[str, ...]:
    """The label feature's ClassLabel names [num_classes] ('0', '1', ... where the dataset names none)."""
    return tuple(str(n) for n in _builder(name, data_dir, field).info.features["label"].names)


def prepare_hint(name: str, data_dir: str | None) -> tuple[str, str]:
    """(the versioned directory TFDS reads `name` from, the sentence that says how to prepare it there).

    Training never starts a download: it reads array_record files that `tfds build` wrote."""
    builder = _builder(name, data_dir, "config.data.name")
    root = str(builder.data_dir_root)
    manual = ""
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        manual = f" It needs its source files in {root}/downloads/manual first (see the TFDS catalog page)."
    # `tfds build` and download_and_prepare both import TensorFlow to generate (checked with TFDS
    # 4.9: its CLI and cifar10's generator); reading the result needs neither.
    return str(builder.data_dir), (
        f"Prepare it once (generating needs `pip install tensorflow`; training reads the files without it): "
        f"`tfds build {name} --data_dir={root} --file_format=array_record`, or point config.data.data_dir at "
        f"the directory that holds it.{manual}")


def check_prepared(info: dict, name: str, data_dir: str | None) -> None:
    """ConfigError naming config.data.data_dir, the directory looked in and the command that prepares
    it, when `name` has no prepared splits under data_dir (info: dataset_info's dict)."""
    if not info["splits"]:
        where, how = prepare_hint(name, data_dir)
        raise ConfigError(f"config.data.data_dir: TFDS dataset {name!r} is not prepared under {where}. {how}")


def _check_split(info: dict, name: str, split: str, field: str) -> None:
    """Validates a split spec such as 'train', 'train[:90%]' or 'train+validation'."""
    if not info["splits"]:  # not prepared (or mocked from code): tfds.data_source decides below
        return
    for part in split.split("+"):
        base = part.split("[")[0].strip()
        if base not in info["splits"]:
            raise ConfigError(f"{field}: unknown split {base!r} for TFDS dataset {name!r} "
                              f"(available: {', '.join(sorted(info['splits']))})")


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


def _open_source(name: str, split: str, data_dir: str | None, exclude_classes, field_prefix: str,
                 split_field: str):
    """The split's random-access record source (records of exclude_classes left out)."""
    info = dataset_info(name, data_dir, field=f"{field_prefix}.name")
    _check_split(info, name, split, split_field)
    try:  # download=False: never start a multi-GB download/generation from a training job
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # not prepared, TFRECORD-only, bad slice, ...
        where, how = prepare_hint(name, data_dir)
        why = f"not prepared under {where}" if not info["splits"] else f"{e}"
        raise ConfigError(f"{field_prefix}.data_dir: cannot open TFDS {name!r} split {split!r} for random "
                          f"access: {why}. {how}") from e
    if exclude_classes:
        source = _Subset(source, kept_indices(name, split, exclude_classes, data_dir))
    return source


def train_example_reader(name: str, split: str, *, image_size: int, channels: int, mean, std,
                         data_dir: str | None = None, exclude_classes=(), field_prefix: str = "config.data"):
    """read(indices) -> examples of TFDS `name`/`split` by position (pipeline.example_reader), the same
    positions as the train stream's (exclude_classes left out)."""
    mean_a, std_a = pipeline.check_preprocessing(image_size, channels, mean, std, field_prefix)
    source = _open_source(name, split, data_dir, exclude_classes, field_prefix, f"{field_prefix}.train_split")
    return pipeline.example_reader(source, image_size=image_size, channels=channels, mean=mean_a, std=std_a)


def make_tfds_batches(name: str, split: str, *, global_batch_size: int, image_size: int,
                      channels: int, mean, std, seed: int, shuffle: bool,
                      data_dir: str | None = None, process_index: int | None = None,
                      process_count: int | None = None, drop_remainder: bool = True,
                      field_prefix: str = "config.data", split_field: str | None = None,
                      exclude_classes=()) -> grain.MapDataset:
    """Random-access dataset of this process's batches of TFDS `name`/`split`: the layout and the
    shuffle / padding / sharding rules of jkd.data.pipeline.make_batches (batch i of the train
    stream depends only on (seed, i); eval batches carry 'mask'), after the TFDS checks."""
    p_idx, p_cnt = pipeline.resolve_processes(process_index, process_count)
    split_field = split_field or f"{field_prefix}.{'train_split' if shuffle else 'eval_split'}"
    # All cheap validation first, before any data is opened.
    mean_a, std_a = pipeline.check_batch_args(p_idx, p_cnt, global_batch_size, image_size, channels, mean, std,
                                              field_prefix)
    source = _open_source(name, split, data_dir, exclude_classes, field_prefix, split_field)
    return pipeline.make_batches(source, split=split, split_field=split_field, global_batch_size=global_batch_size,
                                 image_size=image_size, channels=channels, mean=mean_a, std=std_a, seed=seed,
                                 shuffle=shuffle, p_idx=p_idx, p_cnt=p_cnt, drop_remainder=drop_remainder)
