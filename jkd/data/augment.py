"""Augmentations in JAX, run inside the jitted train step on the already-sharded batch.

One augmented (and mixed) view per example is computed once per step and fed identically to the
teacher and to every student (function matching's "consistent views"). All randomness comes from
the key the step derives from (run seed, step), so a resumed run sees the same views.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def random_resized_crop(key: jax.Array, images: jax.Array, scale: tuple = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
    """Inception-style crop: per example a box of area fraction in `scale` and aspect ratio in `ratio`
    (log-uniform), resized back to the input size (bilinear). [B, H, W, C] -> [B, H, W, C].

    scale = (min, max): floats, or arrays [B] for a per-example range (class-conditional
    augmentation: lighter crops for some classes, jkd/probes/augmentation.py)."""
    b, h, w, _ = images.shape
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    # uniform(lo, hi) as lo + u (hi - lo): the same draws for float and per-example bounds
    lo, hi = jnp.asarray(scale[0], jnp.float32), jnp.asarray(scale[1], jnp.float32)
    area = lo + jax.random.uniform(k_area, (b,)) * (hi - lo)
    log_r = jax.random.uniform(k_ratio, (b,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    aspect = jnp.exp(log_r)
    crop_w = jnp.clip(jnp.sqrt(area * aspect) * w, 1.0, w)
    crop_h = jnp.clip(jnp.sqrt(area / aspect) * h, 1.0, h)
    y0 = jax.random.uniform(k_y, (b,)) * (h - crop_h)
    x0 = jax.random.uniform(k_x, (b,)) * (w - crop_w)

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
