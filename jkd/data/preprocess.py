"""What a model expects as input, and one normalised view turned into another model's view.

The host pipeline (jkd/data) normalises every image once, with the students' config.data: x = (p -
mean) / std on [0, 1] pixels p, at config.data.image_size with config.data.channels. A teacher that
expects other statistics (an imported timm / DeiT / DINOv2 ViT: ImageNet mean/std), other channels
or another resolution gets its own view inside the jitted step, from the same augmented images:

    view = view_fn(data_input(config.data), teacher_input)   # None: the teacher takes the students' view
    teacher_images = images if view is None else view(images)

The conversion is exact, not an approximation: undoing the students' normalisation and applying the
teacher's is one affine map per channel, x * (std_s / std_t) + (mean_s - mean_t) / std_t, and every
augmentation jkd applies before it (crops resampled with weights summing to 1 inside the image,
flips, mixup's convex combination) commutes with a per-channel affine map. So the teacher sees the
augmented [0, 1] view normalised as it expects, as if its own pipeline had produced it.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jkd.errors import ConfigError

RESIZE_METHODS = ("bilinear", "bicubic")  # jax.image.resize methods, antialiased when shrinking


class ModelInput(NamedTuple):
    """The input a model expects: (pixels - mean) / std per channel, pixels in [0, 1], images
    [B, image_size, image_size, channels]. mean / std: tuples of `channels` floats, or None when not
    recorded (a teacher imported before jkd recorded it: the students' normalisation is assumed).
    resize: how another resolution is brought to image_size ('bilinear' as jkd's data pipeline,
    'bicubic' as timm's eval transforms for the ViT weights jkd imports)."""
    mean: tuple | None
    std: tuple | None
    image_size: int
    channels: int
    resize: str = "bilinear"


def per_channel(value, channels: int, field: str) -> tuple | None:
    """A scalar or `channels` numbers -> tuple of `channels` floats (None stays None); ConfigError
    naming `field` otherwise. The one parser of per-channel mean / std (data pipeline, teachers, export)."""
    if value is None:
        return None
    a = np.asarray(value, np.float64).reshape(-1)
    if a.size not in (1, channels) or not np.all(np.isfinite(a)):
        raise ConfigError(f"{field}: expected a finite scalar or {channels} finite values, got {a.tolist()}")
    return tuple(float(v) for v in np.broadcast_to(a, (channels,)))


def model_input(mean, std, *, image_size: int, channels: int, resize: str = "bilinear",
                field: str = "config.data") -> ModelInput:
    """Checked ModelInput: mean / std scalars or per-channel sequences (both or neither None), std
    non-zero, resize one of RESIZE_METHODS. ConfigError naming `field`.mean / .std / .resize."""
    mean_t = per_channel(mean, channels, f"{field}.mean")
    std_t = per_channel(std, channels, f"{field}.std")
    if (mean_t is None) != (std_t is None):
        raise ConfigError(f"{field}: mean and std are recorded together; got mean={mean}, std={std}")
    if std_t is not None and any(s == 0 for s in std_t):
        raise ConfigError(f"{field}.std: must be non-zero, got {list(std_t)}")
    if resize not in RESIZE_METHODS:
        raise ConfigError(f"{field}.resize: must be one of {RESIZE_METHODS}, got {resize!r}")
    return ModelInput(mean_t, std_t, int(image_size), int(channels), resize)


def data_input(data_cfg) -> ModelInput:
    """What the host pipeline feeds the students: config.data's mean, std, image_size, channels."""
    return model_input(data_cfg.mean, data_cfg.std, image_size=data_cfg.image_size, channels=data_cfg.channels)


def check_view(source: ModelInput, target: ModelInput, field: str = "config.teacher.checkpoint") -> None:
    """ConfigError unless `source` images can become `target`'s: the same channels, or grey (1) ->
    RGB (3) by repetition (as jkd's data pipeline turns grey images into RGB). RGB -> grey is refused:
    a teacher imported for grey images (--in-channels 1) is distilled into grey students."""
    if source.channels != target.channels and (source.channels, target.channels) != (1, 3):
        raise ConfigError(f"{field}: the teacher takes {target.channels}-channel images, the students' data has "
                          f"{source.channels} (config.data.channels); only 1 -> 3 (grey repeated) is converted. "
                          f"Set config.data.channels={target.channels} or use a {source.channels}-channel teacher")


def teacher_view(images: jax.Array, source: ModelInput, target: ModelInput | None) -> jax.Array:
    """images [B, H, W, source.channels] normalised as `source` -> [B, S, S, target.channels]
    normalised as `target` (S = target.image_size). Returns `images` itself (no op at all) when
    nothing differs; a target without recorded mean/std keeps the source's statistics.
    Ops only where needed: one fused multiply-add per channel (statistics, or grey -> RGB), and
    jax.image.resize(target.resize, antialias=True) when the size differs."""
    if target is None:
        return images
    check_view(source, target)
    c = target.channels
    s_mean, s_std = (np.broadcast_to(np.asarray(v, np.float64), (c,)) for v in (source.mean, source.std))
    t_mean, t_std = (s_mean, s_std) if target.mean is None else (np.asarray(target.mean), np.asarray(target.std))
    scale, shift = s_std / t_std, (s_mean - t_mean) / t_std  # in float64, then one rounding to the images' dtype
    if np.any(scale != 1.0) or np.any(shift != 0.0):
        images = images * jnp.asarray(scale, images.dtype) + jnp.asarray(shift, images.dtype)  # broadcasts 1 -> c
    elif images.shape[-1] != c:
        images = jnp.broadcast_to(images, (*images.shape[:-1], c))
    if images.shape[1:3] != (target.image_size, target.image_size):
        images = jax.image.resize(images, (images.shape[0], target.image_size, target.image_size, c),
                                  method=target.resize, antialias=True)
    return images


def view_fn(source: ModelInput, target: ModelInput | None) -> Callable | None:
    """images -> teacher_view(images, source, target), or None when that would return images
    unchanged (so a teacher with the students' preprocessing compiles to exactly today's step)."""
    if target is None:
        return None
    check_view(source, target)
    same_stats = target.mean is None or (
        np.array_equal(np.broadcast_to(source.mean, (target.channels,)), target.mean)
        and np.array_equal(np.broadcast_to(source.std, (target.channels,)), target.std))
    if same_stats and (source.channels, source.image_size) == (target.channels, target.image_size):
        return None
    return functools.partial(teacher_view, source=source, target=target)
