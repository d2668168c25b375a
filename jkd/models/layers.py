"""Small pieces shared by the models: stochastic depth and dropout driven by an explicit key.

The models hold parameters only (no RNG state inside modules), so a forward pass is a pure function
of (params, inputs, key). Training code passes `key`; evaluation passes `key=None` (deterministic).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def drop_path(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Stochastic depth: zero whole residual branches per example, rescale the survivors.

    x: [B, ...]; rate: probability of dropping an example's branch; key=None -> identity.
    """
    if key is None or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Element-wise dropout with inverted scaling. key=None -> identity."""
    if key is None or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def split_key(key: jax.Array | None, n: int) -> list:
    """n independent keys from `key`, or n Nones when running deterministically."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))
