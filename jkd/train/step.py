"""The pure train step shared by supervised and distillation runs, and the eval step.

    step(state, batch, teacher_params) -> (state, metrics)

One step: derive keys from (rng, step) -> augment the batch once -> every teacher forward once
(frozen, stop_gradient) -> for every student: its objective (jkd.train.objectives), grads, optax
update. With no teacher the loss is CE on labels. Feature-KD heads of student `s` live in
state.params[s + HEADS_SUFFIX] with their own optimizer state and are trained with the student.
Shardings are applied by the caller's jax.jit (jkd.train.loop).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jkd import losses
from jkd.data.augment import augment_batch, views_from_records
from jkd.train.objectives import feature_term, kd_term, needs_features
from jkd.train.state import TrainState, apply_model, model_features

HEADS_SUFFIX = "__kd_heads"


class _Batch(NamedTuple):
    """The augmented batch: images [B, H, W, C], label_mask [B] f32, targets [B, K] (smoothed label
    distributions), hard_labels [B] int (argmax of the unsmoothed ones)."""
    images: jax.Array
    label_mask: jax.Array
    targets: jax.Array
    hard_labels: jax.Array


class _Teacher(NamedTuple):
    """Frozen teacher outputs: out (the first teacher's features dict, or None when no objective needs
    them), logits [M, B, K], probs [B, K] (the probability-averaged ensemble, _ensemble_probs),
    target_classes [B] int (DKD/NKD's target class per example)."""
    out: dict | None
    logits: jax.Array
    probs: jax.Array
    target_classes: jax.Array


def make_train_step(graphdefs: dict, txs: dict, *, num_classes: int, augment_cfg, objectives: dict | None = None,
                    teacher_graphdefs: tuple = (), head_graphdefs: dict | None = None,
                    label_smoothing: float = 0.0, schedules: dict | None = None, teacher_views: tuple = (),
                    cached: bool = False):
    """Build step(state, batch, teacher_params) for students {name: graphdef}.

    batch: image [B, H, W, C], label [B] int32, label_mask [B] f32 (1 = label usable by CE).
    objectives: {name: Objective} (distillation) or None (supervised). teacher_params: a tuple
    aligned with teacher_graphdefs. teacher_views: aligned with them too, each None (the teacher
    takes the students' images) or images -> the teacher's input (jkd.data.preprocess.view_fn);
    () = all None. metrics: {f'{name}/{metric}': scalar}.

    cached: distil from a teacher cache (jkd/train/teacher_cache.py): no teacher forward and no
    augmentation draw; the batch carries each record's view parameters (box, flip, lam, partner_*)
    and the teachers' top-k teacher_logp / teacher_classes [B, M, k]; teacher_params are not read.
    """
    names = sorted(graphdefs)
    objectives = objectives or {}
    head_graphdefs = head_graphdefs or {}
    teacher_features = needs_features(objectives)

    def step(state: TrainState, batch: dict, teacher_params=()):
        key = jax.random.fold_in(state.rng, state.step)
        aug_key, *model_keys = jax.random.split(key, 1 + 2 * len(names))
        teacher = None
        if cached:  # views and teacher outputs from the cache's records
            b = _cached_batch(batch, num_classes=num_classes, augment_cfg=augment_cfg, label_smoothing=label_smoothing)
            teacher = _cached_teacher(batch, b, num_classes)
        else:
            b = _augmented_batch(aug_key, batch, num_classes=num_classes, augment_cfg=augment_cfg,
                                 label_smoothing=label_smoothing)
            if teacher_graphdefs:
                teacher = _teacher_forward(teacher_graphdefs, teacher_params, b, with_features=teacher_features,
                                           views=teacher_views)

        new_params, new_opt, metrics = dict(state.params), dict(state.opt_state), {}
        for i, name in enumerate(names):
            trainable = {name: state.params[name]}
            if name + HEADS_SUFFIX in state.params:
                trainable[name + HEADS_SUFFIX] = state.params[name + HEADS_SUFFIX]

            def loss_fn(trainable):
                return _student_loss(trainable, name=name, obj=objectives.get(name), graphdef=graphdefs[name],
                                     head_graphdefs=head_graphdefs, batch=b, teacher=teacher, step=state.step,
                                     keys=(model_keys[2 * i], model_keys[2 * i + 1]))

            (loss, (parts, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            _apply_updates(txs, state, trainable, grads, new_params, new_opt)
            metrics.update(_student_metrics(name, loss, parts, logits, grads, b, state.step,
                                            schedules[name] if schedules else None,
                                            None if teacher is None else teacher.probs))
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt)
        return new_state, metrics

    return step


def _augmented_batch(aug_key, batch: dict, *, num_classes: int, augment_cfg, label_smoothing: float) -> _Batch:
    """Augment the batch once (batch: image [B, H, W, C], label [B], label_mask [B]) and build the
    CE targets: label smoothing on the (possibly mixed) label distributions label_probs [B, K]."""
    batch = augment_batch(aug_key, batch, num_classes=num_classes, crop_scale=augment_cfg.crop_scale,
                          flip=augment_cfg.flip, mixup_alpha=augment_cfg.mixup_alpha)
    images, label_mask = batch["image"], batch["label_mask"]
    # Label smoothing on (possibly mixed) label distributions.
    targets = batch["label_probs"] * (1.0 - label_smoothing) + label_smoothing / num_classes
    hard_labels = jnp.argmax(batch["label_probs"], -1)
    return _Batch(images, label_mask, targets, hard_labels)


def _cached_batch(batch: dict, *, num_classes: int, augment_cfg, label_smoothing: float) -> _Batch:
    """The students' views rebuilt from a teacher cache's records (views_from_records: the
    computation the teacher's views came from) and their CE targets, as _augmented_batch builds them."""
    mixup = augment_cfg.mixup_alpha > 0
    images = views_from_records(batch, crop=augment_cfg.crop_scale is not None, flip=bool(augment_cfg.flip),
                                mixup=mixup)
    label_probs, label_mask = jax.nn.one_hot(batch["label"], num_classes), batch["label_mask"]
    if mixup:
        lam = batch["lam"][:, None]
        label_probs = lam * label_probs + (1.0 - lam) * jax.nn.one_hot(batch["partner_label"], num_classes)
        label_mask = label_mask * batch["partner_label_mask"]
    targets = label_probs * (1.0 - label_smoothing) + label_smoothing / num_classes
    return _Batch(images, label_mask, targets, jnp.argmax(label_probs, -1))


def _cached_teacher(batch: dict, b: _Batch, num_classes: int) -> _Teacher:
    """The teachers' outputs from the cache: their top-k log-probabilities completed to [M, B, K]
    (losses.complete_top_k), and the target classes as _teacher_forward makes them."""
    logits = losses.complete_top_k(batch["teacher_logp"], batch["teacher_classes"], num_classes)
    probs = _ensemble_probs(logits)
    return _Teacher(None, logits, probs, _target_classes(b, probs))


def _target_classes(b: _Batch, probs: jax.Array) -> jax.Array:
    """DKD/NKD need a target class for every example [B]: the label where usable, else the teachers'
    (mean) prediction from probs [B, K]."""
    return jnp.where(b.label_mask > 0, b.hard_labels, jnp.argmax(probs, -1))


def teacher_inputs(images: jax.Array, views: tuple, num_teachers: int) -> list:
    """Each teacher's input from the students' images [B, H, W, C]: views[i](images), or images itself
    where views[i] is None or views is () (then nothing is added to the computation)."""
    views = views or (None,) * num_teachers
    return [images if view is None else view(images) for view in views]


def _teacher_forward(teacher_graphdefs: tuple, teacher_params: tuple, b: _Batch, *, with_features: bool,
                     views: tuple = ()) -> _Teacher:
    """Every teacher once on its view of b.images [B, H, W, C] (teacher_inputs), frozen
    (stop_gradient): logits [M, B, K], the first teacher's features when with_features (feature
    KD), and the per-example target classes [B]."""
    inputs = teacher_inputs(b.images, views, len(teacher_graphdefs))
    teacher_out = None
    if with_features:  # feature KD learns from the first teacher's intermediates
        teacher_out = jax.lax.stop_gradient(model_features(teacher_graphdefs[0], teacher_params[0], inputs[0]))
    teacher_logits = jax.lax.stop_gradient(jnp.stack([  # [M, B, K]
        teacher_out["logits"] if i == 0 and teacher_out is not None else apply_model(g, p, x)
        for i, (g, p, x) in enumerate(zip(teacher_graphdefs, teacher_params, inputs))]))
    probs = _ensemble_probs(teacher_logits)
    return _Teacher(teacher_out, teacher_logits, probs, _target_classes(b, probs))


def _ensemble_probs(teacher_logits: jax.Array) -> jax.Array:
    """Teacher logits [M, B, K] -> the probability-averaged ensemble [B, K] f32 at T = 1."""
    return jax.nn.softmax(teacher_logits.astype(jnp.float32), -1).mean(0)


def _agreement_and_kl(logits: jax.Array, teacher_probs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per example [B] f32: top-1 agreement of student logits [B, K] with teacher_probs [B, K], and
    KL(teacher || student) at T = 1. The train metrics and the eval step measure with this."""
    teacher_logp = jnp.log(jnp.maximum(teacher_probs, 1e-30))
    agree = (jnp.argmax(logits, -1) == jnp.argmax(teacher_probs, -1)).astype(jnp.float32)
    kl = (teacher_probs * (teacher_logp - jax.nn.log_softmax(logits.astype(jnp.float32)))).sum(-1)
    return agree, kl


def _student_loss(trainable: dict, *, name: str, obj, graphdef, head_graphdefs: dict, batch: _Batch,
                  teacher: _Teacher | None, step, keys: tuple):
    """One student's objective: trainable {name: params[, name + HEADS_SUFFIX: head params]} ->
    (loss scalar, (parts {metric: scalar}, logits [B, K])). obj None: CE on the labels; else the
    method's KD term (+ feature term) and CE. keys: (student dropout key, feature-head key)."""
    heads_name = name + HEADS_SUFFIX
    with_features = obj is not None and (obj.deit or obj.feature != "none")
    forward = model_features if with_features else apply_model
    out = forward(graphdef, trainable[name], batch.images, key=keys[0])
    logits = out["logits"] if with_features else out
    if obj is None:
        ce = losses.soft_cross_entropy(logits, batch.targets, weights=batch.label_mask)
        return ce, ({"ce": ce}, logits)
    ce_logits, kd_logits = (out["cls_logits"], out["dist_logits"]) if obj.deit else (logits, logits)
    ce = losses.soft_cross_entropy(ce_logits, batch.targets, weights=batch.label_mask)
    kd, parts = kd_term(obj, kd_logits, teacher.logits, teacher.target_classes, step)
    loss = obj.weight * kd + obj.ce_weight * ce  # each method's published form
    parts = {"ce": ce, "kd": kd, **parts}
    if obj.feature != "none":
        feat, feat_parts = feature_term(obj, out, teacher.out, head_graphdefs[name], trainable[heads_name],
                                        keys[1])
        loss = loss + feat
        parts.update(feat_parts)
    return loss, (parts, logits)


def _apply_updates(txs: dict, state: TrainState, trainable: dict, grads: dict, new_params: dict,
                   new_opt: dict) -> None:
    """One optax update of every trainable part (a student and its KD heads), into new_params / new_opt."""
    for part_name in trainable:
        updates, new_opt[part_name] = txs[part_name].update(grads[part_name], state.opt_state[part_name],
                                                            state.params[part_name])
        new_params[part_name] = optax.apply_updates(state.params[part_name], updates)


def _student_metrics(name: str, loss, parts: dict, logits, grads: dict, b: _Batch, step, schedule,
                     teacher_probs=None) -> dict:
    """{f'{name}/{metric}': scalar}: loss, grad_norm (of the student, not its heads), train_accuracy
    (logits [B, K] vs b.hard_labels over usable labels), the loss parts, lr with a schedule, and with
    the teachers' ensemble teacher_probs [B, K] the eval step's agreement and KL as batch means
    (every example, labelled or not): teacher_agreement, teacher_kl."""
    metrics = {f"{name}/loss": loss}
    if teacher_probs is not None:
        agree, kl = _agreement_and_kl(logits, teacher_probs)
        metrics.update({f"{name}/teacher_agreement": agree.mean(), f"{name}/teacher_kl": kl.mean()})
    metrics[f"{name}/grad_norm"] = optax.tree.norm(grads[name])
    metrics[f"{name}/train_accuracy"] = losses.weighted_mean(
        (jnp.argmax(logits, -1) == b.hard_labels).astype(jnp.float32), b.label_mask)
    for part, value in parts.items():
        metrics[f"{name}/{part}"] = value
    if schedule is not None:
        metrics[f"{name}/lr"] = schedule(step)
    return metrics


def make_eval_step(graphdefs: dict, teacher_graphdefs: tuple = (), teacher_views: tuple = ()):
    """eval(params, batch, teacher_params) -> sums over the batch's real examples (batch['mask']),
    each teacher scoring its own view of the images (teacher_views, as in make_train_step):
    {'count', f'{name}/correct', and with teachers 'teacher/correct' (of the probability-averaged
    ensemble), f'{name}/agree' (top-1 equal to the teacher's), f'{name}/kl' (sum of
    KL(teacher || student) at T=1)}."""
    def eval_step(params: dict, batch: dict, teacher_params=()):
        mask, labels = batch["mask"], batch["label"]
        out = {"count": mask.sum()}
        probs = None
        if teacher_graphdefs:
            inputs = teacher_inputs(batch["image"], teacher_views, len(teacher_graphdefs))
            probs = _ensemble_probs(jnp.stack([apply_model(g, p, x)
                                               for g, p, x in zip(teacher_graphdefs, teacher_params, inputs)]))
            out["teacher/correct"] = ((jnp.argmax(probs, -1) == labels) * mask).sum()
        for name, graphdef in graphdefs.items():
            logits = apply_model(graphdef, params[name], batch["image"])
            pred = jnp.argmax(logits, -1)
            out[f"{name}/correct"] = ((pred == labels) * mask).sum()
            if probs is not None:
                agree, kl = _agreement_and_kl(logits, probs)
                out[f"{name}/agree"] = (agree * mask).sum()
                out[f"{name}/kl"] = (kl * mask).sum()
        return out

    return eval_step
