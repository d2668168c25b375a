"""Synthetic image datasets for the fairness probes (jkd/probes/spurious.py, augmentation.py).

Both generators are pure numpy functions of (sizes, seed): the same call gives the same images.
Images are float32 in [0, 1], [N, H, W, C]; labels int32 [N].

make_spurious     binary label tied to a small core shape ('+' or 'x' at a random place); a spurious
                  attribute (the background tint: red or blue) equals the label in `spurious_corr` of
                  the examples (exact counts), independent of it at `spurious_corr = 0.5` (balanced
                  test sets). Groups g = 2 * label + attribute: (0,0) (0,1) (1,0) (1,1); the minority
                  groups are label != attribute. The tint is the shortcut: one colour statistic,
                  learnable by any early layer; the shape needs spatial features.
make_fine_grained ten classes of large shapes (Kirichenko et al. 2023's affected pairs, in miniature):
                  0/1 and 2/3 are fine-grained pairs (the same large shape; class 1 and 3 add a small
                  dark mark somewhere inside it); class 4 (large '+') always also contains a small
                  object of class 5 (a diamond) in a corner: a co-occurring pair with multi-label
                  ground truth {4, 5}; classes 6-9 are distinct shapes. Strong random-resized crops
                  cut the mark out of class-1/3 images and show only the small diamond of class-4
                  images, both with their original labels.
"""
from __future__ import annotations

import numpy as np

NUM_GROUPS = 4  # spurious: (label, attribute) in {0, 1}^2
FINE_GRAINED_CLASSES = 10
FINE_GRAINED_SUPERCLASS = np.array([0, 0, 1, 1, 2, 3, 4, 5, 6, 7])  # classes sharing a large shape
CO_OCCURRING = {4: 5}  # class 4's images also contain a small object of class 5
_TINTS = np.array([[0.55, 0.25, 0.25], [0.25, 0.25, 0.55]], np.float32)  # attribute 0 red, 1 blue


def group_counts(num: int, spurious_corr: float) -> np.ndarray:
    """Examples per group [(0,0), (0,1), (1,0), (1,1)] for `num` examples: the majority groups
    (label = attribute) share round(num * corr) evenly, the minority groups the rest."""
    majority = int(round(num * spurious_corr))
    minority = num - majority
    return np.array([majority - majority // 2, minority // 2, minority - minority // 2, majority // 2])


def _shape_mask(kind: str, size: int) -> np.ndarray:
    """A [size, size] float mask of a named shape, centred."""
    r = (np.arange(size) - (size - 1) / 2) / ((size - 1) / 2)  # [-1, 1]
    y, x = np.meshgrid(r, r, indexing="ij")
    t = 1.5 / size * 2  # stroke half-width in these units: about 1.5 px
    masks = {
        "plus": (np.abs(x) < t) | (np.abs(y) < t),
        "x": (np.abs(x - y) < t * 1.4) | (np.abs(x + y) < t * 1.4),
        "ring": (np.maximum(np.abs(x), np.abs(y)) > 1 - 2 * t),
        "disc": x ** 2 + y ** 2 < 0.9,
        "diamond": np.abs(x) + np.abs(y) < 1.0,
        "hbars": (np.abs(y - 0.5) < t) | (np.abs(y + 0.5) < t),
        "triangle": (y > -0.9) & (np.abs(x) < (y + 0.9) / 1.9),
        "ell": ((np.abs(x + 0.8) < t * 1.5) | (np.abs(y - 0.8) < t * 1.5)),
        "vbars": (np.abs(x - 0.5) < t) | (np.abs(x + 0.5) < t),
    }
    return masks[kind].astype(np.float32)


def make_spurious(num: int, *, spurious_corr: float = 0.95, image_size: int = 16, core_size: int = 5,
                  core_contrast: float = 0.5, noise: float = 0.15, seed: int = 0) -> dict:
    """Spurious-correlation images (see module docstring).

    Returns {'image': [N, S, S, 3] f32, 'label': [N] i32, 'attribute': [N] i32, 'group': [N] i32
    (2 * label + attribute)}, shuffled; group sizes exactly group_counts(num, spurious_corr).
    """
    rng = np.random.default_rng(seed)
    counts = group_counts(num, spurious_corr)
    group = rng.permutation(np.repeat(np.arange(NUM_GROUPS), counts))
    label, attribute = group // 2, group % 2
    images = np.broadcast_to(_TINTS[attribute][:, None, None, :], (num, image_size, image_size, 3)).copy()
    shapes = np.stack([_shape_mask("plus", core_size), _shape_mask("x", core_size)])
    pos = rng.integers(0, image_size - core_size + 1, size=(num, 2))
    strength = core_contrast * rng.uniform(0.7, 1.0, size=num).astype(np.float32)
    for i in range(num):
        y0, x0 = pos[i]
        images[i, y0:y0 + core_size, x0:x0 + core_size, :] += strength[i] * shapes[label[i]][..., None]
    images += noise * rng.standard_normal(images.shape).astype(np.float32)
    return {"image": np.clip(images, 0.0, 1.0).astype(np.float32), "label": label.astype(np.int32),
            "attribute": attribute.astype(np.int32), "group": group.astype(np.int32)}


_FG_SHAPES = ("ring", "ring", "disc", "disc", "plus", "diamond", "hbars", "x", "triangle", "ell")


def make_fine_grained(num: int, *, image_size: int = 16, shape_size: int = 11, min_shape_size: int = 0,
                      mark_size: int = 2, object_size: int = 5, noise: float = 0.1, seed: int = 0) -> dict:
    """Fine-grained and co-occurring class pairs (see module docstring); balanced classes.

    The large shape's side is shape_size px, or uniform in [min_shape_size, shape_size] when
    min_shape_size > 0 (objects at several scales: what random-resized crops are meant to cover).

    Returns {'image': [N, S, S, 1] f32, 'label': [N] i32, 'multi_label': [N, 10] bool (ground truth
    of every class present: class 4 images also hold class 5), 'superclass': [10] i32 (classes with
    the same large shape share it)}.
    """
    rng = np.random.default_rng(seed)
    k = FINE_GRAINED_CLASSES
    label = rng.permutation(np.arange(num) % k).astype(np.int32)
    images = np.zeros((num, image_size, image_size, 1), np.float32)
    sizes = list(range(min_shape_size or shape_size, shape_size + 1))
    masks = {(c, z): _shape_mask(s, z) for c, s in enumerate(_FG_SHAPES) for z in sizes}
    small = _shape_mask(_FG_SHAPES[5], object_size)
    multi = np.zeros((num, k), bool)
    multi[np.arange(num), label] = True
    for i in range(num):
        c = label[i]
        size = sizes[rng.integers(0, len(sizes))] if len(sizes) > 1 else shape_size
        span = image_size - size + 1
        canvas = images[i, :, :, 0]
        intensity = rng.uniform(0.6, 1.0)
        if c in CO_OCCURRING:
            # the large shape in one half, the small object in the opposite corner
            corner = rng.integers(0, 4)
            oy, ox = (corner // 2) * (image_size - object_size), (corner % 2) * (image_size - object_size)
            canvas[oy:oy + object_size, ox:ox + object_size] = np.maximum(
                canvas[oy:oy + object_size, ox:ox + object_size], rng.uniform(0.6, 1.0) * small)
            sy = 0 if corner // 2 else image_size - size
            sx = 0 if corner % 2 else image_size - size
            multi[i, CO_OCCURRING[c]] = True
        else:
            sy, sx = rng.integers(0, span, size=2)
        region = canvas[sy:sy + size, sx:sx + size]
        region[:] = np.maximum(region, intensity * masks[c, size])
        if c in (1, 3):  # the discriminative mark: a dark square on the shape (ring: in its hole, bright)
            lo = max(2, round(3 * size / shape_size))  # inside the ring's hole
            my, mx = rng.integers(lo, size - lo - mark_size + 1, size=2)
            region[my:my + mark_size, mx:mx + mark_size] = 0.0 if c == 3 else intensity
    images += noise * rng.standard_normal(images.shape).astype(np.float32)
    return {"image": np.clip(images, 0.0, 1.0), "label": label, "multi_label": multi,
            "superclass": FINE_GRAINED_SUPERCLASS.astype(np.int32)}
