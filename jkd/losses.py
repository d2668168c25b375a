"""Losses on logits: pure functions, per-example vectors reduced by a (masked) mean.

Conventions: logits [B, K] float32, integer labels [B], optional example weights/mask [B]
(1 = counts, 0 = ignored). Every loss returns a scalar: the weighted mean over examples.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_mean(per_example: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean of per_example [B] under weights [B] (sum w*x / max(sum w, 1e-8)); plain mean if None."""
    if weights is None:
        return per_example.mean()
    weights = weights.astype(per_example.dtype)
    return (per_example * weights).sum() / jnp.maximum(weights.sum(), 1e-8)


def cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0,
                  weights: jax.Array | None = None) -> jax.Array:
    """CE(y, softmax(logits)) with label smoothing eps: target = (1-eps) onehot + eps/K.

    logits [B, K], labels [B] int -> scalar.
    """
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes) * (1.0 - label_smoothing) + label_smoothing / num_classes
    return soft_cross_entropy(logits, targets, weights=weights)


def soft_cross_entropy(logits: jax.Array, target_probs: jax.Array, *, weights: jax.Array | None = None) -> jax.Array:
    """-sum_k p_k log softmax(logits)_k; logits, target_probs [B, K] -> scalar (e.g. mixup labels)."""
    per_example = -(target_probs * jax.nn.log_softmax(logits, axis=-1)).sum(-1)
    return weighted_mean(per_example, weights)


def kd_kl(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 1.0,
          weights: jax.Array | None = None) -> jax.Array:
    """Hinton soft-target loss: T^2 * KL(softmax(t/T) || softmax(s/T)).

    The T^2 keeps gradient magnitudes independent of T: d/ds_i = T * (q_i - p_i) where
    q = softmax(s/T), p = softmax(t/T) (Hinton et al. 2015). [B, K], [B, K] -> scalar.
    """
    t = temperature
    teacher_logp = jax.nn.log_softmax(teacher_logits / t, axis=-1)
    student_logp = jax.nn.log_softmax(student_logits / t, axis=-1)
    per_example = (jnp.exp(teacher_logp) * (teacher_logp - student_logp)).sum(-1)
    return (t ** 2) * weighted_mean(per_example, weights)


def hinton_kd(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
              temperature: float, kd_weight: float, label_smoothing: float = 0.0,
              label_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """kd_weight * T^2 KL(teacher_T || student_T) + (1 - kd_weight) * CE(labels).

    The KD term covers every example (the transfer set); the CE term only examples with
    label_mask [B] = 1 (labelled subset; None = all). Returns (loss, {'kd': ..., 'ce': ...}).
    """
    kd = kd_kl(student_logits, teacher_logits, temperature=temperature)
    ce = cross_entropy(student_logits, labels, label_smoothing=label_smoothing, weights=label_mask)
    return kd_weight * kd + (1.0 - kd_weight) * ce, {"kd": kd, "ce": ce}
