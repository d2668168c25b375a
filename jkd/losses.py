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


def hard_kd(student_logits: jax.Array, teacher_logits: jax.Array, *, label_smoothing: float = 0.0,
            weights: jax.Array | None = None) -> jax.Array:
    """Hard distillation: CE on the teacher's argmax (DeiT's 'hard' variant). [B, K], [B, K] -> scalar."""
    return cross_entropy(student_logits, jnp.argmax(teacher_logits, -1), label_smoothing=label_smoothing,
                         weights=weights)


def _kl_rows(p_logp: jax.Array, q_logp: jax.Array) -> jax.Array:
    """KL(p || q) per row from log-probabilities [B, K] -> [B] (0 log 0 = 0)."""
    p = jnp.exp(p_logp)
    return jnp.where(p > 0, p * (p_logp - q_logp), 0.0).sum(-1)


def dkd(student_logits: jax.Array, teacher_logits: jax.Array, targets: jax.Array, *, temperature: float,
        alpha: float = 1.0, beta: float = 8.0, weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Decoupled KD (Zhao et al. 2022): (alpha * TCKD + beta * NCKD) * T^2.

    TCKD: KL between the binary (target, non-target) masses of teacher and student at T.
    NCKD: KL between teacher and student distributions over the non-target classes (renormalised).
    targets [B] int: the class treated as 'target' (labels; callers use the teacher's argmax for
    unlabelled examples). Returns (loss, {'tckd', 'nckd'}). The linear warm-up is applied by the caller.
    """
    t = temperature
    gt = jax.nn.one_hot(targets, student_logits.shape[-1], dtype=bool)
    p_s = jax.nn.softmax(student_logits / t, -1)
    p_t = jax.nn.softmax(teacher_logits / t, -1)
    eps = 1e-12
    b_s = jnp.stack([(p_s * gt).sum(-1), (p_s * ~gt).sum(-1)], -1)
    b_t = jnp.stack([(p_t * gt).sum(-1), (p_t * ~gt).sum(-1)], -1)
    tckd = _kl_rows(jnp.log(b_t + eps), jnp.log(b_s + eps))
    # Non-target distributions: mask the target logit out (-inf) and renormalise.
    nt_s = jax.nn.log_softmax(jnp.where(gt, -1e9, student_logits / t), -1)
    nt_t = jax.nn.log_softmax(jnp.where(gt, -1e9, teacher_logits / t), -1)
    nckd = _kl_rows(nt_t, nt_s)
    tckd, nckd = weighted_mean(tckd, weights) * t ** 2, weighted_mean(nckd, weights) * t ** 2
    return alpha * tckd + beta * nckd, {"tckd": tckd, "nckd": nckd}


def nkd(student_logits: jax.Array, teacher_logits: jax.Array, targets: jax.Array, *, temperature: float,
        gamma: float = 1.5, teacher_target_prob: jax.Array | None = None,
        weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Normalised KD (Yang et al. 2023): -t_y log s_y + gamma * T^2 * CE(t_hat, s_hat).

    t_y, s_y: teacher/student probabilities (T = 1) of the target class; t_hat, s_hat: their
    distributions over the non-target classes at temperature T, renormalised. targets [B] int.
    teacher_target_prob [B]: t_y when it is not softmax(teacher_logits)[y] (an ensemble's mean
    probability at T = 1, while teacher_logits carry the ensemble's distribution at T). t_y is a
    constant weight (the reference detaches it). Returns (loss, {'nkd_target', 'nkd_non_target'}).
    """
    t = temperature
    gt = jax.nn.one_hot(targets, student_logits.shape[-1], dtype=bool)
    log_s = jax.nn.log_softmax(student_logits, -1)
    if teacher_target_prob is None:
        teacher_target_prob = (jax.nn.softmax(teacher_logits, -1) * gt).sum(-1)
    t_y = jax.lax.stop_gradient(teacher_target_prob)
    target_term = -(t_y * (log_s * gt).sum(-1))
    nt_s = jax.nn.log_softmax(jnp.where(gt, -1e9, student_logits / t), -1)
    nt_t = jax.nn.softmax(jnp.where(gt, -1e9, teacher_logits / t), -1)
    non_target = -(nt_t * jnp.where(gt, 0.0, nt_s)).sum(-1)
    target_term = weighted_mean(target_term, weights)
    non_target = gamma * t ** 2 * weighted_mean(non_target, weights)
    return target_term + non_target, {"nkd_target": target_term, "nkd_non_target": non_target}


def _safe_norm(x: jax.Array, axis: int) -> jax.Array:
    """||x|| along axis, with gradient 0 where x = 0 (torch's convention; jnp.linalg.norm gives NaN)."""
    sq = (x * x).sum(axis)
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _mean_pearson_rows(a: jax.Array, b: jax.Array, eps: float) -> jax.Array:
    """Mean over rows of the Pearson correlation of a[i, :] and b[i, :], as DIST's reference computes
    it: cos(a - mean, b - mean) with the eps added to the product of the norms. [N, M], [N, M] -> scalar."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    cos = (a * b).sum(1) / (_safe_norm(a, 1) * _safe_norm(b, 1) + eps)
    return cos.mean()


def dist(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float, beta: float = 1.0,
         gamma: float = 1.0, eps: float = 1e-8) -> tuple[jax.Array, dict]:
    """DIST (Huang et al. 2022): T^2 * (beta * inter + gamma * intra) on y = softmax(z / T).

    inter = 1 - mean over examples of pearson(y_s[i, :], y_t[i, :]) (each example's class ranking);
    intra = 1 - mean over classes of pearson(y_s[:, k], y_t[:, k]) (each class across the batch).
    student_logits, teacher_logits [B, K] -> scalar, in float32. The intra term correlates the
    examples of the batch it is given (the whole batch under jit, all devices together; the reference
    runs per GPU). No per-example weights: a relation over the batch has no per-example mean.
    Returns (loss, {'dist_inter': T^2 inter, 'dist_intra': T^2 intra}) (the reference's inter_loss
    and intra_loss, before beta and gamma).
    """
    t = temperature
    y_s = jax.nn.softmax(student_logits.astype(jnp.float32) / t, -1)
    y_t = jax.nn.softmax(teacher_logits.astype(jnp.float32) / t, -1)
    inter = t ** 2 * (1.0 - _mean_pearson_rows(y_s, y_t, eps))
    intra = t ** 2 * (1.0 - _mean_pearson_rows(y_s.T, y_t.T, eps))
    return beta * inter + gamma * intra, {"dist_inter": inter, "dist_intra": intra}


def ensemble_logits(teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """Logits whose softmax at T is the mean of the teachers' softmax at T.

    teacher_logits [M, B, K] -> [B, K] = T * log(mean_m softmax(z_m / T)). A KL or CE at temperature
    T against these logits distils the probability-averaged ensemble at T exactly. At another
    temperature they are not the ensemble (softmax(ensemble_logits(z, T)) != mean softmax(z)):
    ask for the temperature each term needs (jkd.train.objectives.teacher_targets).
    """
    probs = jax.nn.softmax(teacher_logits / temperature, -1).mean(0)
    return temperature * jnp.log(jnp.maximum(probs, 1e-30))


def vitkd_mimic(student_preds: list, teacher_tokens: list, *, alpha: float) -> jax.Array:
    """ViTKD mimicking (Yang et al. 2022) as in the reference (yzd-v/cls_KD ViTKDLoss):
    alpha * sum over layers, tokens and channels of (x_s' - x_t)^2 / B.

    student_preds, teacher_tokens: lists of [B, N, D_t] (the projected student patch tokens and the
    teacher's, one pair per shallow block) -> scalar. The sum reduction makes the loss grow with
    N * D_t: alpha = 3e-5 is the reference's value for DeiT sizes.
    """
    b = student_preds[0].shape[0]
    sq = sum(((p.astype(jnp.float32) - t.astype(jnp.float32)) ** 2).sum() for p, t in zip(student_preds, teacher_tokens))
    return alpha * sq / b


def vitkd_generate(generated: jax.Array, teacher_tokens: jax.Array, mask: jax.Array, *, beta: float,
                   mask_ratio: float) -> jax.Array:
    """ViTKD generation as in the reference: beta * sum over masked tokens and channels of
    (g - x_t)^2 / B / mask_ratio.

    generated, teacher_tokens [B, N, D_t]; mask [B, N] (1 = masked, generated) -> scalar.
    """
    b = generated.shape[0]
    diff = (generated.astype(jnp.float32) - teacher_tokens.astype(jnp.float32)) * mask[..., None]
    return beta * (diff ** 2).sum() / b / mask_ratio


def feature_mse(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error over positions and channels. pred, target [B, N, D]; mask [B, N] (1 = counts)."""
    sq = ((pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2).mean(-1)
    if mask is None:
        return sq.mean()
    return (sq * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def feature_cosine(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean over positions of 1 - cos(pred, target) along the channel axis. [B, ..., D] -> scalar."""
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    cos = (pred * target).sum(-1) / (jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(target, axis=-1) + 1e-8)
    return (1.0 - cos).mean()


def complete_top_k(logp: jax.Array, classes: jax.Array, num_classes: int) -> jax.Array:
    """Top-k log-probabilities logp [B, M, k] of classes [B, M, k] -> [M, B, K] log-probabilities: the k
    kept, the rest of the mass (1 - their sum) spread evenly over the other K - k classes (FKD)."""
    b, m, k = logp.shape
    logp = logp.astype(jnp.float32)
    if k < num_classes:
        rest = jnp.maximum(1.0 - jnp.exp(logp).sum(-1, keepdims=True), 1e-12) / (num_classes - k)
        full = jnp.broadcast_to(jnp.log(rest), (b, m, num_classes))
    else:
        full = jnp.zeros((b, m, num_classes), jnp.float32)
    full = full.at[jnp.arange(b)[:, None, None], jnp.arange(m)[None, :, None], classes].set(logp)
    return full.transpose(1, 0, 2)
