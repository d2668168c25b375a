"""Data sources behind one interface: batch i of training is a pure function of (seed, i).

    data = make_data(config.data, seed=0, global_batch_size=128)
    batch = data.train_batch(step)    # {'image': [B_local, H, W, C] f32, 'label': [B_local] i32,
                                      #  'label_mask': [B_local] f32}
    for batch in data.eval_batches(): # same keys plus 'mask' (1 real, 0 padding)

Because batches are addressed by step, resuming at step s replays exactly the data an uninterrupted
run would have seen. B_local = global_batch_size / process_count (each process loads its own slice).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import jax
import numpy as np

from jkd.data.digits import NUM_CLASSES as DIGITS_NUM_CLASSES
from jkd.data.digits import labelled_subset_mask, load_digits_split
from jkd.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Data:
    """What a trainer needs from a dataset (see module docstring for the batch layout)."""
    train_batch: Callable[[int], dict]
    eval_batches: Callable[[], Iterator[dict]]
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_train: int          # examples the train stream draws from
    num_labelled: int       # of which carry a label that the CE term may use
    num_eval: int
    excluded_classes: tuple[int, ...] = ()  # removed from the train stream (data.exclude_classes)
    class_names: tuple[str, ...] = ()  # [num_classes], label i's name (run.json, ONNX metadata); () = unknown
    # train_examples(indices [n]) -> {'image' [n, H, W, C], 'label' [n], 'label_mask' [n]}: training
    # examples by position in 0..num_train-1, unaugmented (the teacher cache reads its examples so)
    train_examples: Callable[[np.ndarray], dict] | None = None


def _array_batches(images, labels, label_mask, *, global_batch_size, seed, process_index, process_count):
    """Epoch-shuffled batches from in-memory arrays; batch `step` depends only on (seed, step)."""
    n = len(labels)
    if global_batch_size > n:
        raise ConfigError(f"config.batch_size: {global_batch_size} exceeds the {n} training examples")
    steps_per_epoch = n // global_batch_size
    local = global_batch_size // process_count

    def train_batch(step: int) -> dict:
        epoch, pos = divmod(int(step), steps_per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx = perm[pos * global_batch_size:(pos + 1) * global_batch_size]
        idx = idx[process_index * local:(process_index + 1) * local]
        return {"image": images[idx], "label": labels[idx], "label_mask": label_mask[idx]}

    return train_batch


def _array_eval(images, labels, *, global_batch_size, process_index, process_count):
    """In-order eval batches padded to full size, with 'mask' marking the real examples."""
    local = global_batch_size // process_count

    def eval_batches():
        for start in range(0, len(labels), global_batch_size):
            idx = np.arange(start, start + global_batch_size)[process_index * local:(process_index + 1) * local]
            real = idx < len(labels)
            idx = np.where(real, idx, 0)
            yield {"image": images[idx], "label": labels[idx], "label_mask": real.astype(np.float32),
                   "mask": real.astype(np.float32)}

    return eval_batches


def excluded_classes(data_cfg, num_classes: int) -> tuple[int, ...]:
    """config.data.exclude_classes as a sorted tuple of class ids, checked against num_classes."""
    raw = data_cfg.get("exclude_classes", ()) or ()
    if isinstance(raw, (int, str)):
        raw = [raw]
    try:
        classes = sorted({int(c) for c in raw})
    except (TypeError, ValueError, OverflowError):  # int(inf)
        raise ConfigError(f"config.data.exclude_classes: a list of class ids, got {raw!r}") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"config.data.exclude_classes: {bad} not in 0..{num_classes - 1} ({num_classes} classes)")
    if len(classes) >= num_classes:
        raise ConfigError(f"config.data.exclude_classes: excluding all {num_classes} classes leaves no data")
    return tuple(classes)


def make_data(data_cfg, *, seed: int, global_batch_size: int, eval_batch_size: int | None = None,
              process_index: int | None = None, process_count: int | None = None) -> Data:
    """Build the train stream and eval set named by config.data (digits, image_folder or any TFDS dataset)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    eval_batch_size = eval_batch_size or global_batch_size
    for field, value in (("config.batch_size", global_batch_size), ("config.eval_batch_size", eval_batch_size)):
        if value % pc:
            raise ConfigError(f"{field}: {value} is not divisible by the {pc} processes")
    fraction = float(data_cfg.get("labelled_fraction", 1.0))
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"config.data.labelled_fraction: must be in (0, 1], got {fraction}")
    size, channels = int(data_cfg.image_size), int(data_cfg.channels)

    if data_cfg.name == "digits":
        exclude = excluded_classes(data_cfg, DIGITS_NUM_CLASSES)
        norm = dict(image_size=size, channels=channels, mean=data_cfg.mean, std=data_cfg.std)
        x_tr, y_tr = load_digits_split("train", **norm)
        # eval_split 'train' scores the training images (e.g. the omitted-class probe's bias shift)
        x_te, y_te = load_digits_split(data_cfg.get("eval_split", "test"), **norm)
        # The labelled subset is fixed by data seed, not run seed: all runs share it (fair baselines).
        mask = labelled_subset_mask(y_tr, fraction, seed=int(data_cfg.get("labelled_seed", 0)))
        # Excluding after drawing the subset keeps the other classes' labelled examples unchanged.
        keep = ~np.isin(y_tr, exclude)
        if data_cfg.get("labelled_only", False):
            keep &= mask > 0
        x_tr, y_tr, mask = x_tr[keep], y_tr[keep], mask[keep]
        return Data(
            train_batch=_array_batches(x_tr, y_tr, mask, global_batch_size=global_batch_size, seed=seed,
                                       process_index=pi, process_count=pc),
            eval_batches=_array_eval(x_te, y_te, global_batch_size=eval_batch_size, process_index=pi,
                                     process_count=pc),
            num_classes=DIGITS_NUM_CLASSES, image_shape=(size, size, channels), num_train=len(y_tr),
            num_labelled=int(mask.sum()), num_eval=len(y_te), excluded_classes=exclude,
            class_names=tuple(str(k) for k in range(DIGITS_NUM_CLASSES)),
            train_examples=lambda idx: {"image": x_tr[idx], "label": y_tr[idx], "label_mask": mask[idx]})

    if fraction < 1.0 or data_cfg.get("labelled_only", False):
        raise ConfigError("config.data.labelled_fraction/labelled_only: a labelled subset is implemented for "
                          "the in-memory digits data only; use labelled_fraction=1.0 with TFDS datasets and "
                          "image folders")
    if data_cfg.name == "image_folder":
        from jkd.data import image_folder  # deferred: digits runs never touch PIL/grain

        folder = image_folder.open_folder(data_cfg)
        exclude = excluded_classes(data_cfg, len(folder.class_names))
        train, evals = image_folder.make_folder_batches(
            folder, data_cfg, global_batch_size=global_batch_size, eval_batch_size=eval_batch_size, seed=seed,
            process_index=pi, process_count=pc, exclude_classes=exclude)
        num_train = int((~np.isin(folder.train.labels, exclude)).sum())
        return _grain_data(train, evals, num_classes=len(folder.class_names), image_shape=(size, size, channels),
                           num_train=num_train, num_eval=len(folder.eval.paths), excluded=exclude,
                           class_names=folder.class_names,
                           train_examples=image_folder.train_example_reader(folder, data_cfg, exclude))

    from jkd.data import tfds as tfds_data

    data_dir = data_cfg.get("data_dir") or None
    info = tfds_data.dataset_info(data_cfg.name, data_dir=data_dir)
    tfds_data.check_prepared(info, data_cfg.name, data_dir)
    exclude = excluded_classes(data_cfg, info["num_classes"])
    common = dict(image_size=size, channels=channels, mean=data_cfg.mean, std=data_cfg.std,
                  data_dir=data_cfg.get("data_dir") or None, process_index=pi, process_count=pc)
    for field in ("train_split", "eval_split"):
        if data_cfg[field] not in info["splits"]:
            raise ConfigError(f"config.data.{field}: {data_cfg[field]!r} is not a split of {data_cfg.name} "
                              f"(splits: {sorted(info['splits'])})")
    train = tfds_data.make_tfds_batches(data_cfg.name, data_cfg.train_split, global_batch_size=global_batch_size,
                                        seed=seed, shuffle=True, exclude_classes=exclude, **common)
    evals = tfds_data.make_tfds_batches(data_cfg.name, data_cfg.eval_split, global_batch_size=eval_batch_size,
                                        seed=seed, shuffle=False, drop_remainder=False, **common)
    num_train = (len(tfds_data.kept_indices(data_cfg.name, data_cfg.train_split, exclude, common["data_dir"]))
                 if exclude else info["splits"][data_cfg.train_split])
    reader = tfds_data.train_example_reader(data_cfg.name, data_cfg.train_split, image_size=size, channels=channels,
                                            mean=data_cfg.mean, std=data_cfg.std, data_dir=common["data_dir"],
                                            exclude_classes=exclude)
    return _grain_data(train, evals, num_classes=info["num_classes"], image_shape=(size, size, channels),
                       num_train=num_train, num_eval=info["splits"][data_cfg.eval_split], excluded=exclude,
                       class_names=tfds_data.class_names(data_cfg.name, data_dir), train_examples=reader)


def _grain_data(train, evals, *, num_classes, image_shape, num_train, num_eval, excluded, class_names,
                train_examples=None) -> Data:
    """Data over grain pipelines (jkd/data/pipeline.py): every train example labelled, eval 'mask' as
    its label_mask."""
    from jkd.data.pipeline import iterate

    def train_batch(step):
        batch = dict(train[int(step)])
        batch["label_mask"] = np.ones(batch["label"].shape, np.float32)
        return batch

    def eval_batches():
        for batch in iterate(evals):
            batch = dict(batch)
            batch["label_mask"] = batch["mask"]
            yield batch

    return Data(train_batch=train_batch, eval_batches=eval_batches, num_classes=num_classes, image_shape=image_shape,
                num_train=num_train, num_labelled=num_train, num_eval=num_eval, excluded_classes=excluded,
                class_names=tuple(class_names), train_examples=train_examples)
