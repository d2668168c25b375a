"""Your own images: `data.name='image_folder'` reads folders of class folders of JPEG/PNG files.

    data.data_dir=ROOT, data.eval_fraction=0 (default):   data.eval_fraction=f > 0:
        ROOT/<train_split>/<class>/*.jpg|jpeg|png              ROOT/<class>/*.jpg|jpeg|png
        ROOT/<eval_split>/<class>/...                          (a fraction f of every class held out for eval)

Classes are the sorted class-folder names (label i = the i-th name), the same in both splits: a
class folder missing from one split is an error naming it. Inside a class folder files are found
recursively; hidden entries (.ipynb_checkpoints, .DS_Store) and other extensions are ignored. The
held-out split (eval_fraction) is stratified and fixed: each class's files are permuted by a seed
derived from the class name, so every run, seed and process sees the same split.

Before anything trains, every file is opened and decoded once on a thread pool (a progress bar
from 2,000 files on): JPEGs at 1/8 scale, which still parses the whole entropy-coded stream, so a
truncated file fails here at a fraction of a full decode. An unreadable file is a ConfigError
naming it, or with data.skip_corrupt=True it is left out and the skipped files are counted in a
warning. A folder mixing grayscale and colour files is an error naming one of the minority kind
unless data.allow_mixed_channels=True (then every image is converted to data.channels, as TFDS
images are). Each process scans the whole folder once (cached) and builds the same file lists.

Batches go through the TFDS path's grain pipeline and host preprocessing (jkd/data/pipeline.py):
shorter side to data.image_size + center crop, channel conversion, normalisation; sharded per
process, batch i a pure function of (seed, i). Decoding uses PIL's JPEG draft mode (DCT scaling to
the smallest size >= image_size before the antialiased resize): same crop, much less work on photos.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import sys
import zlib

import numpy as np
from PIL import Image

from jkd.data import pipeline
from jkd.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL modes read as 1 channel
PROGRESS_FROM = 2000  # files; smaller folders are checked in about a second
SHOW_FILES = 3        # how many file names an error or warning lists


@dataclasses.dataclass(frozen=True)
class Part:
    """One split's files: paths [N], labels int32 [N], channels uint8 [N] (1 or 3, as stored)."""
    paths: tuple[str, ...]
    labels: np.ndarray
    channels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Folder:
    """A scanned, checked image folder: class names [K] and the train / eval parts."""
    root: str
    class_names: tuple[str, ...]
    train: Part
    eval: Part
    skipped: tuple[tuple[str, str], ...]  # (path, why) of unreadable files left out (skip_corrupt)


def _warn(message: str) -> None:
    import jax  # deferred: the scan itself needs no JAX

    if jax.process_index() == 0:
        print(f"jkd: warning: {message}", file=sys.stderr, flush=True)


def _class_folders(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: str) -> tuple[list[str], int]:
    """(sorted image paths under folder, recursively; how many other files were ignored)."""
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith("."):
                continue
            if f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, f))
            else:
                ignored += 1
    return sorted(found), ignored


def _files_per_class(parent: str, classes: list[str]) -> dict[str, list[str]]:
    out = {}
    for name in classes:
        files, ignored = _image_files(os.path.join(parent, name))
        if not files:
            other = f" ({ignored} files without a {'/'.join(IMAGE_EXTENSIONS)} extension ignored)" if ignored else ""
            raise ConfigError(f"config.data.data_dir: class folder {os.path.join(parent, name)} has no images"
                              f"{other}; add images or remove the folder")
        out[name] = files
    return out


def _classes_of(parent: str, root: str, eval_fraction: float) -> list[str]:
    classes = _class_folders(parent)
    if not classes:
        hint = (f"{parent}/<class>/*.jpg" if parent != root or eval_fraction else
                f"{root}/<train_split>/<class>/*.jpg")
        raise ConfigError(f"config.data.data_dir: {parent} has no class folders (expected {hint})")
    return classes


def _held_out(files: list[str], name: str, fraction: float) -> tuple[list[str], list[str]]:
    """(train, eval) files of one class: a fixed fraction held out, by a seed from the class name."""
    perm = np.random.default_rng([0, zlib.crc32(name.encode())]).permutation(len(files))
    k = max(1, round(fraction * len(files)))
    if k >= len(files):
        raise ConfigError(f"config.data.eval_fraction: class {name!r} has {len(files)} image(s): too few to hold "
                          f"out {fraction} of them and keep one to train on")
    held = set(perm[:k].tolist())
    return ([f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held])


def _layout(root: str, train_split: str, eval_split: str, eval_fraction: float):
    """(class names [K], {'train': [(path, label)], 'eval': [(path, label)]}) from the folder structure."""
    if eval_fraction:
        classes = _classes_of(root, root, eval_fraction)
        if {train_split, eval_split} <= set(classes) and train_split != eval_split:
            raise ConfigError(f"config.data.eval_fraction: {root} holds split folders {train_split!r} and "
                              f"{eval_split!r}, not class folders; set eval_fraction=0 to use them")
        parts = {"train": [], "eval": []}
        for label, (name, files) in enumerate(_files_per_class(root, classes).items()):
            train, held = _held_out(files, name, eval_fraction)
            parts["train"] += [(f, label) for f in train]
            # eval_split == train_split scores the training images (as digits' eval_split='train')
            parts["eval"] += [(f, label) for f in (train if eval_split == train_split else held)]
        return tuple(classes), parts
    if not _class_folders(root):
        raise ConfigError(f"config.data.data_dir: {root} holds no folders; expected {root}/{train_split}/<class>/*.jpg "
                          f"and {root}/{eval_split}/<class>/*.jpg")
    dirs = {}
    for field, split in (("train_split", train_split), ("eval_split", eval_split)):
        dirs[field] = os.path.join(root, split)
        if not os.path.isdir(dirs[field]):
            present = ", ".join(_class_folders(root)[:5]) or "nothing"
            raise ConfigError(
                f"config.data.{field}: no folder {dirs[field]} ({root} holds: {present}). Expected "
                f"{root}/{train_split}/<class>/*.jpg and {root}/{eval_split}/<class>/*.jpg, or one folder of class "
                f"folders with config.data.eval_fraction set (e.g. 0.1) to hold out part of each class for eval")
    classes = {f: _classes_of(d, root, 0.0) for f, d in dirs.items()}
    for field, other in (("train_split", "eval_split"), ("eval_split", "train_split")):
        missing = sorted(set(classes[other]) - set(classes[field]))
        if missing:
            raise ConfigError(f"config.data.data_dir: class folder(s) {missing[:SHOW_FILES]} of {dirs[other]} are "
                              f"missing from {dirs[field]}; both splits need the same class folders")
    names = classes["train_split"]
    parts = {}
    for part, field in (("train", "train_split"), ("eval", "eval_split")):
        per_class = _files_per_class(dirs[field], names)
        parts[part] = [(f, label) for label, files in enumerate(per_class.values()) for f in files]
    return tuple(names), parts


def _probe(path: str) -> tuple[int, str]:
    """(channels 1 or 3, '') of a readable image file, or (0, why it is not)."""
    try:
        with Image.open(path) as im:
            channels = 1 if im.mode in GRAY_MODES else 3
            im.draft(im.mode, (1, 1))  # JPEG: decode at 1/8 scale (every byte still parsed); others: no-op
            im.load()
        return channels, ""
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return 0, f"{type(e).__name__}: {e}"


def _check_files(paths: list[str]) -> tuple[dict, list]:
    """({path: channels} of the readable files, [(path, why)] of the unreadable ones), in path order."""
    import jax  # deferred: only for the progress bar's process check
    from tqdm import tqdm

    workers = min(16, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # PIL decodes without holding the GIL
        results = list(tqdm(pool.map(_probe, paths), total=len(paths), desc="checking images", leave=False,
                            disable=len(paths) < PROGRESS_FROM or jax.process_index() != 0))
    good = {p: c for p, (c, _) in zip(paths, results) if c}
    bad = [(p, why) for p, (c, why) in zip(paths, results) if not c]
    return good, bad


@functools.lru_cache(maxsize=4)
def _scan(root: str, train_split: str, eval_split: str, eval_fraction: float, skip_corrupt: bool) -> Folder:
    class_names, parts = _layout(root, train_split, eval_split, eval_fraction)
    every = sorted({p for part in parts.values() for p, _ in part})
    good, bad = _check_files(every)
    if bad and not skip_corrupt:
        path, why = bad[0]
        raise ConfigError(f"config.data.data_dir: cannot read image {path} ({why}); {len(bad)} of {len(every)} files "
                          f"are unreadable. Remove or replace them, or set config.data.skip_corrupt=True to leave "
                          f"them out")
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:SHOW_FILES])
        _warn(f"config.data.skip_corrupt: left out {len(bad)} unreadable of {len(every)} image files under {root}: "
              f"{shown}{' ...' if len(bad) > SHOW_FILES else ''}")
    built = {}
    for part, items in parts.items():
        items = [(p, label) for p, label in items if p in good]
        emptied = sorted(set(range(len(class_names))) - {label for _, label in items})
        if emptied:
            raise ConfigError(f"config.data.data_dir: every image of class {class_names[emptied[0]]!r} in the "
                              f"{part} split is unreadable (skip_corrupt left none)")
        built[part] = Part(paths=tuple(p for p, _ in items), labels=np.array([lb for _, lb in items], np.int32),
                           channels=np.array([good[p] for p, _ in items], np.uint8))
    return Folder(root=root, class_names=class_names, train=built["train"], eval=built["eval"], skipped=tuple(bad))


def _check_channels(folder: Folder, channels: int, allow_mixed: bool) -> None:
    """ConfigError on a folder that mixes grayscale and colour files (unless allowed); a warning when
    every file has the other channel count than data.channels (converted, as TFDS images are)."""
    paths = folder.train.paths + folder.eval.paths
    stored = np.concatenate([folder.train.channels, folder.eval.channels])
    gray, colour = int((stored == 1).sum()), int((stored == 3).sum())
    if gray and colour and not allow_mixed:
        minority = 1 if gray <= colour else 3
        first = [p for p, c in zip(paths, stored) if c == minority][:SHOW_FILES]
        raise ConfigError(f"config.data.data_dir: {folder.root} mixes {gray} grayscale and {colour} colour images "
                          f"(e.g. {', '.join(first)}); convert them to one kind, or set "
                          f"config.data.allow_mixed_channels=True to convert every image to "
                          f"config.data.channels={channels}")
    if not (gray and colour) and (gray or colour) and (1 if gray else 3) != channels:
        _warn(f"config.data.channels={channels}: the images under {folder.root} are "
              f"{'grayscale' if gray else 'colour'}; each is converted to {channels} channel(s)")


def open_folder(data_cfg) -> Folder:
    """The folder named by config.data (data_dir, splits, eval_fraction, skip_corrupt, allow_mixed_channels),
    scanned and checked once per process; ConfigError naming the field or path on bad input."""
    root = str(data_cfg.get("data_dir") or "")
    if not root:
        raise ConfigError("config.data.data_dir: image_folder needs the folder of images, e.g. "
                          "--config.data.data_dir=/path/to/images (holding train/<class>/ and test/<class>/)")
    if not os.path.isdir(root):
        raise ConfigError(f"config.data.data_dir: {root} is not a directory")
    fraction = float(data_cfg.get("eval_fraction", 0.0))
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"config.data.eval_fraction: must be in [0, 1), got {fraction}")
    # the cheap checks of the batches' fields before a large folder is scanned
    pipeline.check_preprocessing(int(data_cfg.image_size), int(data_cfg.channels), data_cfg.mean, data_cfg.std,
                                 "config.data")
    folder = _scan(os.path.abspath(root), str(data_cfg.train_split), str(data_cfg.eval_split), fraction,
                   bool(data_cfg.get("skip_corrupt", False)))
    _check_channels(folder, int(data_cfg.channels), bool(data_cfg.get("allow_mixed_channels", False)))
    return folder


def load_image(path: str, image_size: int) -> np.ndarray:
    """A file's pixels: uint8 [h, w] (grayscale) or [h, w, 3], decoded at the smallest JPEG scale
    whose sides are >= image_size; ConfigError naming the file if it cannot be read."""
    try:
        with Image.open(path) as im:
            im.draft(im.mode, (image_size, image_size))
            if im.mode.startswith("I"):  # 16-bit grayscale PNG: keep the top 8 bits
                return (np.asarray(im, np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            return np.asarray(im.convert("L" if im.mode in GRAY_MODES else "RGB"))
    except Exception as e:  # the file changed since the scan, or PIL decodes it only partly
        raise ConfigError(f"config.data.data_dir: cannot read image {path} ({type(e).__name__}: {e}); remove or "
                          f"replace it (the up-front check passed: did it change since?)") from e


class _Files:
    """A Part as a random-access source of records {'image': uint8 [h, w(, 3)], 'label': int}."""

    def __init__(self, part: Part, image_size: int):
        self.part, self.image_size = part, image_size

    def __len__(self) -> int:
        return len(self.part.paths)

    def __getitem__(self, i):
        return {"image": load_image(self.part.paths[i], self.image_size), "label": int(self.part.labels[i])}


def _without(part: Part, exclude_classes) -> Part:
    keep = ~np.isin(part.labels, list(exclude_classes))
    return Part(paths=tuple(p for p, k in zip(part.paths, keep) if k), labels=part.labels[keep],
                channels=part.channels[keep])


def train_example_reader(folder: Folder, data_cfg, exclude_classes=()):
    """read(indices) -> training examples by position (pipeline.example_reader), the same positions as the
    train stream's (exclude_classes left out)."""
    size, channels = int(data_cfg.image_size), int(data_cfg.channels)
    mean, std = pipeline.check_preprocessing(size, channels, data_cfg.mean, data_cfg.std, "config.data")
    return pipeline.example_reader(_Files(_without(folder.train, exclude_classes), size), image_size=size,
                                   channels=channels, mean=mean, std=std)


def make_folder_batches(folder: Folder, data_cfg, *, global_batch_size: int, eval_batch_size: int, seed: int,
                        process_index: int, process_count: int, exclude_classes=()):
    """(train, eval) grain MapDatasets of this process's batches (layout: pipeline.make_batches);
    exclude_classes (class ids) are left out of the train stream only."""
    size, channels = int(data_cfg.image_size), int(data_cfg.channels)
    out = []
    train = _without(folder.train, exclude_classes)
    for part, batch, shuffle, field in ((train, global_batch_size, True, "train_split"),
                                        (folder.eval, eval_batch_size, False, "eval_split")):
        mean, std = pipeline.check_batch_args(process_index, process_count, batch, size, channels, data_cfg.mean,
                                              data_cfg.std, "config.data")
        out.append(pipeline.make_batches(
            _Files(part, size), split=str(data_cfg[field]), split_field=f"config.data.{field}",
            global_batch_size=batch, image_size=size, channels=channels, mean=mean, std=std, seed=seed,
            shuffle=shuffle, p_idx=process_index, p_cnt=process_count, drop_remainder=shuffle))
    return tuple(out)
