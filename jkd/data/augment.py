"""Augmentations in JAX, run inside the jitted train step on the already-sharded batch.

One augmented (and mixed) view per example is computed once per step and fed identically to the
teacher and to every student (function matching's "consistent views"). All randomness comes from
the key the step derives from (run seed, step), so a resumed run sees the same views.
"""
from __future__ import annotations

import math

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


def random_resized_crop(key: jax.Array, images: jax.Array, scale: tuple = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
    """Inception-style crop with torchvision's semantics (`crop_boxes`: area fraction in `scale`,
    aspect ratio in `ratio`, up to 10 tries, centre-crop fallback), resized back to the input size
    (bilinear). [B, H, W, C] -> [B, H, W, C]. scale (1, 1) leaves every image as it is.

    scale = (min, max): floats, or arrays [B] for a per-example range (class-conditional
    augmentation: lighter crops for some classes, jkd/probes/augmentation.py)."""
    b, h, w, _ = images.shape
    y0, x0, crop_h, crop_w = crop_boxes(key, b, h, w, scale, ratio)

    def crop_one(image, y, x, ch, cw):
        scale_yx = jnp.stack([h / ch, w / cw])
        translation = -jnp.stack([y, x]) * scale_yx
        return jax.image.scale_and_translate(image, image.shape, (0, 1), scale_yx, translation,
                                             method="linear", antialias=False)

    return jax.vmap(crop_one)(images, y0, x0, crop_h, crop_w).astype(images.dtype)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Horizontal flip of each example with probability 1/2. [B, H, W, C] -> same."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def mixup(key: jax.Array, images: jax.Array, label_probs: jax.Array, alpha: float):
    """Mix each example with the batch reversed, one lambda ~ Beta(alpha, alpha) per batch.

    images [B, H, W, C], label_probs [B, K] -> (mixed images, mixed label_probs, lambda).
    """
    lam = jax.random.beta(key, alpha, alpha)
    mixed = lam * images + (1.0 - lam) * images[::-1]
    return mixed.astype(images.dtype), lam * label_probs + (1.0 - lam) * label_probs[::-1], lam


def augment_batch(key: jax.Array, batch: dict, *, num_classes: int, crop_scale=None, flip: bool = False,
                  mixup_alpha: float = 0.0) -> dict:
    """Apply the configured augmentations to batch['image'] [B, H, W, C].

    Adds batch['label_probs'] [B, K] (one-hot, or mixed under mixup) for the label loss; under mixup
    an example's label_mask becomes the product of both partners' masks.
    """
    k_crop, k_flip, k_mix = jax.random.split(key, 3)
    images = batch["image"]
    if crop_scale is not None:
        images = random_resized_crop(k_crop, images, tuple(crop_scale))
    if flip:
        images = random_flip(k_flip, images)
    label_probs = jax.nn.one_hot(batch["label"], num_classes)
    out = dict(batch)
    if mixup_alpha > 0:
        images, label_probs, _ = mixup(k_mix, images, label_probs, mixup_alpha)
        if "label_mask" in batch:
            out["label_mask"] = batch["label_mask"] * batch["label_mask"][::-1]
    out["image"] = images
    out["label_probs"] = label_probs
    return out
