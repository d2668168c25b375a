"""Last-layer Laplace approximation of a linear softmax head (the spurious probe's early exit;
Fasth & Singh 2025 weight KD by an exit's confidence under it).

    cov = jnp.linalg.inv(laplace_precision(phi_fit, head, prior_precision, n_train / n_fit))
    probs = laplace_predictive(phi @ head['kernel'] + head['bias'], logit_covariance(phi, cov, k))

head = {'kernel' [D, K], 'bias' [K]}; its weights flattened as W~ = [kernel; bias] [D + 1, K] row-major.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _with_bias(phi: jax.Array) -> jax.Array:
    return jnp.concatenate([phi, jnp.ones(phi.shape[:-1] + (1,), phi.dtype)], -1)


def laplace_precision(phi: jax.Array, head: dict, prior_precision: float, data_scale: float = 1.0) -> jax.Array:
    """Posterior precision [P, P], P = (D + 1) K, of a linear softmax head (kernel [D, K], bias [K],
    flattened as W~ = [kernel; bias] [D + 1, K] row-major) at its current value:

        data_scale * sum_i kron(phi~_i phi~_i^T, diag(p_i) - p_i p_i^T) + prior_precision * I

    phi [N, D] the head's inputs, phi~ = [phi, 1], p_i = softmax(head(phi_i)). This is the GGN of the
    summed cross-entropy, which for a head linear in its parameters equals the exact Hessian;
    data_scale = N_train / N rescales a subsample to the whole training set.
    """
    p = jax.nn.softmax(phi @ head["kernel"] + head["bias"], -1)           # [N, K]
    lam = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]          # [N, K, K]
    pt = _with_bias(phi)
    d1, k = pt.shape[-1], p.shape[-1]
    h = jnp.einsum("nd,ne,nkl->dkel", pt, pt, lam).reshape(d1 * k, d1 * k)
    return data_scale * h + prior_precision * jnp.eye(d1 * k, dtype=h.dtype)


def logit_covariance(phi: jax.Array, cov: jax.Array, num_classes: int) -> jax.Array:
    """Covariance [N, K, K] of the head's logits f = W~^T phi~ under a weight covariance cov [P, P]."""
    pt = _with_bias(phi)
    c = cov.reshape(pt.shape[-1], num_classes, pt.shape[-1], num_classes)
    return jnp.einsum("nd,dkel,ne->nkl", pt, c, pt)


def laplace_predictive(mean_logits: jax.Array, logit_cov: jax.Array, *, method: str = "probit",
                       key: jax.Array | None = None, samples: int = 100) -> jax.Array:
    """Predictive class probabilities [N, K] from Gaussian logits N(mean [N, K], cov [N, K, K]).

    probit: softmax(mean_k / sqrt(1 + pi/8 var_k)) (the multi-class probit approximation, diagonal);
    mc: the mean of softmax over `samples` draws (key required).
    """
    if method == "probit":
        var = jnp.diagonal(logit_cov, axis1=-2, axis2=-1)
        return jax.nn.softmax(mean_logits / jnp.sqrt(1.0 + math.pi / 8.0 * var), -1)
    k = mean_logits.shape[-1]
    chol = jnp.linalg.cholesky(logit_cov + 1e-6 * jnp.eye(k))
    eps = jax.random.normal(key, (samples,) + mean_logits.shape)
    f = mean_logits[None] + jnp.einsum("nkl,snl->snk", chol, eps)
    return jax.nn.softmax(f, -1).mean(0)
