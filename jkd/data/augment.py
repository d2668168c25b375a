"""Augmentations in JAX, run inside the jitted train step on the already-sharded batch.

One augmented (and mixed) view per example is computed once per step and fed identically to the
teacher and to every student (function matching's "consistent views"). All randomness comes from
the key the step derives from (run seed, step), so a resumed run sees the same views.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


def crop_boxes(key: jax.Array, batch: int, height: int, width: int, scale: tuple = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10):
    """torchvision's RandomResizedCrop.get_params, vectorised over a batch.

    Per example, up to `attempts` draws of an area fraction ~ U(scale) and a log-uniform aspect
    ratio in `ratio`, each rounded to an integer box (w = round(sqrt(A r)), h = round(sqrt(A / r)));
    the first draw that fits the image is taken, with its top-left corner uniform over the integer
    positions. If none fits: the centre crop of the whole image clipped to `ratio` (torchvision's
    fallback). scale = (min, max): floats, or arrays [B] (per-example ranges).
    Returns (top, left, crop_h, crop_w), each float32 [B] holding integers.
    """
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    lo = jnp.broadcast_to(jnp.asarray(scale[0], jnp.float32), (batch,))[:, None]
    hi = jnp.broadcast_to(jnp.asarray(scale[1], jnp.float32), (batch,))[:, None]
    # uniform(lo, hi) as lo + u (hi - lo): the same draws for float and per-example bounds
    area = height * width * (lo + jax.random.uniform(k_area, (batch, attempts)) * (hi - lo))
    aspect = jnp.exp(jax.random.uniform(k_ratio, (batch, attempts), minval=math.log(ratio[0]),
                                        maxval=math.log(ratio[1])))
    cw, ch = jnp.round(jnp.sqrt(area * aspect)), jnp.round(jnp.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    first = jnp.argmax(fits, axis=1)[:, None]  # the first draw that fits (0 if none: masked below)
    found = fits.any(axis=1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fall_w, fall_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fall_w, fall_h = round(height * max(ratio)), height
    else:
        fall_w, fall_h = width, height
    crop_w = jnp.where(found, jnp.take_along_axis(cw, first, 1)[:, 0], float(fall_w))
    crop_h = jnp.where(found, jnp.take_along_axis(ch, first, 1)[:, 0], float(fall_h))
    top = jnp.where(found, jnp.floor(jax.random.uniform(k_y, (batch,)) * (height - crop_h + 1)),
                    float((height - fall_h) // 2))
    left = jnp.where(found, jnp.floor(jax.random.uniform(k_x, (batch,)) * (width - crop_w + 1)),
                     float((width - fall_w) // 2))
    # uniform() < 1, but float rounding can reach the upper end: keep the box inside the image
    return jnp.minimum(top, height - crop_h), jnp.minimum(left, width - crop_w), crop_h, crop_w


def crop_resize(images: jax.Array, top: jax.Array, left: jax.Array, crop_h: jax.Array, crop_w: jax.Array) -> jax.Array:
    """Each image's box (top, left, crop_h, crop_w: float32 [B] of integers, from crop_boxes) resized
    back to the full size (bilinear, no antialiasing). [B, H, W, C] -> [B, H, W, C]."""
    _, h, w, _ = images.shape

    def crop_one(image, y, x, ch, cw):
        scale_yx = jnp.stack([h / ch, w / cw])
        translation = -jnp.stack([y, x]) * scale_yx
        return jax.image.scale_and_translate(image, image.shape, (0, 1), scale_yx, translation,
                                             method="linear", antialias=False)

    return jax.vmap(crop_one)(images, top, left, crop_h, crop_w).astype(images.dtype)


def random_resized_crop(key: jax.Array, images: jax.Array, scale: tuple = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
    """Inception-style crop with torchvision's semantics (`crop_boxes`: area fraction in `scale`,
    aspect ratio in `ratio`, up to 10 tries, centre-crop fallback), resized back to the input size
    (bilinear). [B, H, W, C] -> [B, H, W, C]. scale (1, 1) leaves every image as it is.

    scale = (min, max): floats, or arrays [B] for a per-example range (class-conditional
    augmentation: lighter crops for some classes, jkd/probes/augmentation.py)."""
    b, h, w, _ = images.shape
    return crop_resize(images, *crop_boxes(key, b, h, w, scale, ratio))


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Horizontal flip of each example with probability 1/2. [B, H, W, C] -> same."""
    return flip_where(images, draw_flips(key, images.shape[0]))


def draw_flips(key: jax.Array, batch: int) -> jax.Array:
    """Which examples are flipped: bool [B], each with probability 1/2."""
    return jax.random.bernoulli(key, 0.5, (batch,))


def flip_where(images: jax.Array, flips: jax.Array) -> jax.Array:
    """images [B, H, W, C] with the examples where flips [B] (bool) is set mirrored left-right."""
    return jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)


def mixup(key: jax.Array, images: jax.Array, label_probs: jax.Array, alpha: float):
    """Mix each example with the batch reversed, one lambda ~ Beta(alpha, alpha) per batch.

    images [B, H, W, C], label_probs [B, K] -> (mixed images, mixed label_probs, lambda).
    """
    return mix_reversed(images, label_probs, jax.random.beta(key, alpha, alpha))


def mix_reversed(images: jax.Array, label_probs: jax.Array, lam: jax.Array):
    """Mixup of each example with the batch reversed at one scalar lam: (images [B, H, W, C],
    label_probs [B, K]) -> (mixed images, mixed label_probs, lam). The live step's form; mix_views is
    the per-example one (the same values up to float rounding: XLA fuses the two differently)."""
    mixed = lam * images + (1.0 - lam) * images[::-1]
    return mixed.astype(images.dtype), lam * label_probs + (1.0 - lam) * label_probs[::-1], lam


class ViewDraw(NamedTuple):
    """The random parameters of one batch's augmented views, every field [B] (one row per example):
    the crop box (top, left, crop_h, crop_w: float32 integers; the whole image when cropping is off),
    flip (bool), and the mixup partner's position in the batch (int32; the batch reversed) with
    lam (float32; 1 when mixup is off). What jkd's teacher cache stores per example (jkd/train/teacher_cache.py)."""
    top: jax.Array
    left: jax.Array
    crop_h: jax.Array
    crop_w: jax.Array
    flip: jax.Array
    partner: jax.Array
    lam: jax.Array


def draw_views(key: jax.Array, batch: int, height: int, width: int, *, crop_scale=None, flip: bool = False,
               mixup_alpha: float = 0.0) -> ViewDraw:
    """The draws augment_batch makes from `key` for a batch of B images [H, W] (the same random bits)."""
    k_crop, k_flip, k_mix = jax.random.split(key, 3)
    if crop_scale is not None:
        top, left, crop_h, crop_w = crop_boxes(k_crop, batch, height, width, tuple(crop_scale))
    else:
        top = left = jnp.zeros((batch,), jnp.float32)
        crop_h, crop_w = jnp.full((batch,), float(height)), jnp.full((batch,), float(width))
    flips = draw_flips(k_flip, batch) if flip else jnp.zeros((batch,), bool)
    lam = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1.0)
    return ViewDraw(top, left, crop_h, crop_w, flips, jnp.arange(batch - 1, -1, -1, dtype=jnp.int32),
                    jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (batch,)))


def unmixed_view(images: jax.Array, draw: ViewDraw, *, crop: bool, flip: bool) -> jax.Array:
    """The cropped (when crop) and flipped (when flip) images [B, H, W, C], before any mixup."""
    if crop:
        images = crop_resize(images, draw.top, draw.left, draw.crop_h, draw.crop_w)
    if flip:
        images = flip_where(images, draw.flip)
    return images


def mix_views(views: jax.Array, partner_views: jax.Array, lam: jax.Array) -> jax.Array:
    """lam [B] * views + (1 - lam) * partner_views, both [B, H, W, C]: the mixup of each example with its
    partner's own (cropped, flipped) view."""
    lam = lam[:, None, None, None]
    return (lam * views + (1.0 - lam) * partner_views).astype(views.dtype)


def views_from_records(batch: dict, *, crop: bool, flip: bool, mixup: bool) -> jax.Array:
    """The view of every record of a batch, from its stored parameters: images [B, H, W, C].

    batch: 'image' [B, H, W, C], 'box' [B, 4], 'flip' [B] and under mixup 'partner_image', 'partner_box',
    'partner_flip', 'lam' [B]. The builder (for the teacher) and the cached train step (for the students)
    both call this (jkd/train/teacher_cache.py), so the two views are the same computation on the same inputs."""
    def draw(box, flips):
        return ViewDraw(box[:, 0], box[:, 1], box[:, 2], box[:, 3], flips.astype(bool), None, None)

    views = unmixed_view(batch["image"], draw(batch["box"], batch["flip"]), crop=crop, flip=flip)
    if mixup:
        partner = unmixed_view(batch["partner_image"], draw(batch["partner_box"], batch["partner_flip"]),
                               crop=crop, flip=flip)
        views = mix_views(views, partner, batch["lam"])
    return views


def augment_batch(key: jax.Array, batch: dict, *, num_classes: int, crop_scale=None, flip: bool = False,
                  mixup_alpha: float = 0.0) -> dict:
    """Apply the configured augmentations to batch['image'] [B, H, W, C] (draw_views from `key`).

    Adds batch['label_probs'] [B, K] (one-hot, or mixed under mixup) for the label loss; under mixup
    an example's label_mask becomes the product of both partners' masks.
    """
    images = batch["image"]
    b, h, w, _ = images.shape
    draw = draw_views(key, b, h, w, crop_scale=crop_scale, flip=flip, mixup_alpha=mixup_alpha)
    images = unmixed_view(images, draw, crop=crop_scale is not None, flip=flip)
    label_probs = jax.nn.one_hot(batch["label"], num_classes)
    out = dict(batch)
    if mixup_alpha > 0:  # draw.partner is the batch reversed
        images, label_probs, _ = mix_reversed(images, label_probs, draw.lam[0])
        if "label_mask" in batch:
            out["label_mask"] = batch["label_mask"] * batch["label_mask"][::-1]
    out["image"] = images
    out["label_probs"] = label_probs
    return out
