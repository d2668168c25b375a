"""The network analysed by Allen-Zhu & Li (ICLR 2023), and the two "kernel" contrasts.

  net: F_i(X) = sum_{r<m} sum_{p<P} ReLU~(<w_{i,r}, x_p>)             trainable w [k, m, d]
  rf:  F_i(X) = sum_{r<M} a_{i,r} phi_r(X) / sqrt(M),                  trainable a [k, M]
       phi_r(X) = sum_p ReLU~(<u_r, x_p>), u [M, d] frozen at init (random features)
  ntk: F_i(X) = sum_{r,p} ReLU~'(<w0_{i,r}, x_p>) <w_{i,r} - w0_{i,r}, x_p>
       the net linearised at its init W0 (frozen), centred (F(W0) dropped), trainable w [k, m, d]

ReLU~ is the paper's smoothed ReLU: 0 for z <= 0, z^q / (q varrho^(q-1)) on [0, varrho] and
z - (1 - 1/q) varrho above; it and its derivative are continuous (q >= 3 in the paper). Its flat
start is what turns learning into a race between the two views of a class that the view with the
larger correlation at init wins: a single model ends up with one view per class. rf and ntk have no
such race: their features are fixed at init and only a linear function of them is trained.

Models are pure functions of (params, frozen) pytrees, not nnx modules: `jax.vmap` over a leading
axis then trains L seeds as one compiled program. x is [N, P, d]; logits are [N, k].
`features` is the part of the forward pass that training never changes (rf's random features, ntk's
gates at W0), so a trainer computes it once; `head` is the rest.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

VARIANTS = ("net", "rf", "ntk")


@dataclasses.dataclass(frozen=True)
class ModelCfg:
    """Everything that defines one variant (hashable: safe to close over in jitted code).

    channels: m (net/ntk: per class); features: M (rf); init_std: std of w (net), w0 (ntk), u (rf).
    """
    variant: str
    q: int
    varrho: float
    init_std: float
    channels: int = 1
    features: int = 1


def smoothed_relu(z: jax.Array, q: int, varrho: float) -> jax.Array:
    """ReLU~(z) elementwise (any shape): 0 | z^q / (q varrho^(q-1)) | z - (1 - 1/q) varrho."""
    zc = jnp.clip(z, 0.0, varrho)  # clipping keeps the polynomial branch (and its gradient) finite
    poly = zc ** q / (q * varrho ** (q - 1))
    return jnp.where(z >= varrho, z - (1.0 - 1.0 / q) * varrho, poly)  # >=: autodiff gives 1 at the knot


def smoothed_relu_grad(z: jax.Array, q: int, varrho: float) -> jax.Array:
    """ReLU~'(z) elementwise: 0 | (z / varrho)^(q-1) | 1 (continuous at 0 and at varrho)."""
    return jnp.clip(z / varrho, 0.0, 1.0) ** (q - 1)


def init_params(key: jax.Array, mc: ModelCfg, *, num_classes: int, dim: int) -> tuple[dict, dict]:
    """(trainable, frozen) params at init; Gaussian N(0, init_std^2) entries.

    net: ({'w': [k, m, d]}, {});  rf: ({'a': zeros [k, M]}, {'u': [M, d]});
    ntk: ({'w': W0}, {'w0': W0}) with W0 [k, m, d], so the model starts at the zero function.
    """
    if mc.variant == "rf":
        u = mc.init_std * jax.random.normal(key, (mc.features, dim))
        return {"a": jnp.zeros((num_classes, mc.features))}, {"u": u}
    w = mc.init_std * jax.random.normal(key, (num_classes, mc.channels, dim))
    if mc.variant == "ntk":
        return {"w": w}, {"w0": w}
    return {"w": w}, {}


def net_logits(w: jax.Array, x: jax.Array, q: int, varrho: float) -> jax.Array:
    """The analysed net: w [k, m, d], x [N, P, d] -> logits [N, k]."""
    z = jnp.einsum("kmd,npd->nkmp", w, x)
    return smoothed_relu(z, q, varrho).sum(axis=(2, 3))


def features(frozen: dict, x: jax.Array, mc: ModelCfg) -> dict:
    """The parts of the forward pass that training never changes, so a trainer computes them once:
    rf {'phi': [N, M]} (the random features), ntk {'gate': ReLU~'(<w0, x_p>) [N, k, m, P]}, net {}."""
    if mc.variant == "rf":
        return {"phi": smoothed_relu(jnp.einsum("md,npd->nmp", frozen["u"], x), mc.q, mc.varrho).sum(-1)}
    if mc.variant == "ntk":
        return {"gate": smoothed_relu_grad(jnp.einsum("kmd,npd->nkmp", frozen["w0"], x), mc.q, mc.varrho)}
    return {}


def head(params: dict, frozen: dict, x: jax.Array, feats: dict, mc: ModelCfg) -> jax.Array:
    """Logits [N, k] from x [N, P, d] and feats = features(frozen, x, mc)."""
    if mc.variant == "rf":
        phi = feats["phi"]
        return phi @ params["a"].T / jnp.sqrt(phi.shape[-1])  # 1/sqrt(M): the lr does not depend on M
    if mc.variant == "ntk":
        return (feats["gate"] * jnp.einsum("kmd,npd->nkmp", params["w"] - frozen["w0"], x)).sum(axis=(2, 3))
    return net_logits(params["w"], x, mc.q, mc.varrho)


def apply(params: dict, frozen: dict, x: jax.Array, mc: ModelCfg) -> jax.Array:
    """Logits [N, k] of the variant for x [N, P, d]."""
    return head(params, frozen, x, features(frozen, x, mc), mc)


def view_correlations(params: dict, views: jax.Array) -> jax.Array:
    """The view-learning matrix [k, 2]: entry (j, l) = max_r <w_{j,r}, v_{j,l+1}>.

    params holds 'w' [k, m, d] (net, ntk); views [2k, d] with row 2j + l = v_{j,l+1}.
    """
    k = views.shape[0] // 2
    corr = jnp.einsum("kmd,vd->kmv", params["w"], views).max(axis=1)  # [k, 2k]
    return corr.reshape(k, k, 2)[jnp.arange(k), jnp.arange(k)]
