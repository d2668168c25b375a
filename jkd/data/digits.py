"""The embedded default dataset: scikit-learn's bundled handwritten digits (1,797 real 8x8 images).

Ships inside scikit-learn, so everything runs offline. The train/test split is fixed (stratified,
25% test, split seed 0) whatever the run seed, so every run and every paper-style table is scored on
the same 450 test digits. Images are upsampled (bilinear) to `image_size` and normalised to
(x - mean) / std from [0, 1] pixel values.
"""
from __future__ import annotations

import functools

import numpy as np

NUM_CLASSES = 10
TEST_FRACTION = 0.25
SPLIT_SEED = 0


@functools.lru_cache(maxsize=4)
def raw_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed stratified split of the 1,797 digits: {'train': (images [1347, 8, 8] f32 in [0, 1],
    labels [1347] i32), 'test': ([450, 8, 8], [450])} (cached; docs/DATA.md writes it as a folder)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # [1797, 8, 8] in [0, 1]
    labels = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=TEST_FRACTION,
                                              stratify=labels, random_state=SPLIT_SEED)
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of [N, 8, 8] images to [N, size, size] (half-pixel centres)."""
    if size == images.shape[1]:
        return images
    src = images.shape[1]
    coords = (np.arange(size) + 0.5) * src / size - 0.5
    lo = np.clip(np.floor(coords).astype(int), 0, src - 1)
    hi = np.clip(lo + 1, 0, src - 1)
    frac = np.clip(coords - lo, 0.0, 1.0).astype(np.float32)
    rows = images[:, lo, :] * (1 - frac)[None, :, None] + images[:, hi, :] * frac[None, :, None]
    return rows[:, :, lo] * (1 - frac)[None, None, :] + rows[:, :, hi] * frac[None, None, :]


def load_digits_split(split: str, *, image_size: int = 16, channels: int = 1, mean: float = 0.5,
                      std: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 [N, image_size, image_size, channels] (normalised) and labels int32 [N].

    split: 'train' (1,347 digits) or 'test' (450 digits).
    """
    if split not in ("train", "test"):
        from jkd.errors import ConfigError
        raise ConfigError(f"config.data: digits has splits 'train' and 'test', got {split!r}")
    images, labels = raw_splits()[split]
    images = _resize(images, image_size)[..., None]
    images = np.repeat(images, channels, axis=-1)
    return ((images - mean) / std).astype(np.float32), labels.copy()


def labelled_subset_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Stratified subset: float32 [N] with 1 for round(fraction * n_c) examples of each class c."""
    if fraction >= 1.0:
        return np.ones(len(labels), np.float32)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), np.float32)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep = max(1, int(round(fraction * len(idx))))
        mask[rng.choice(idx, keep, replace=False)] = 1.0
    return mask
