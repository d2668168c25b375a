"""The pure train step shared by supervised and distillation runs, and the eval step.

    step(state, batch, teacher_params) -> (state, metrics)

One step: derive keys from (rng, step) -> augment the batch once -> every teacher forward once
(frozen, stop_gradient) -> for every student: its objective (jkd.train.objectives), grads, optax
update. With no teacher the loss is CE on labels. Feature-KD heads of student `s` live in
state.params[s + HEADS_SUFFIX] with their own optimizer state and are trained with the student.
Shardings are applied by the caller's jax.jit (jkd.train.loop).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jkd import losses
from jkd.data.augment import augment_batch
from jkd.train.objectives import feature_term, kd_term, needs_features
from jkd.train.state import TrainState, apply_model

HEADS_SUFFIX = "__kd_heads"


def make_train_step(graphdefs: dict, txs: dict, *, num_classes: int, augment_cfg, objectives: dict | None = None,
                    teacher_graphdefs: tuple = (), head_graphdefs: dict | None = None,
                    label_smoothing: float = 0.0, schedules: dict | None = None):
    """Build step(state, batch, teacher_params) for students {name: graphdef}.

    batch: image [B, H, W, C], label [B] int32, label_mask [B] f32 (1 = label usable by CE).
    objectives: {name: Objective} (distillation) or None (supervised). teacher_params: a tuple
    aligned with teacher_graphdefs. metrics: {f'{name}/{metric}': scalar}.
    """
    names = sorted(graphdefs)
    objectives = objectives or {}
    head_graphdefs = head_graphdefs or {}
    teacher_features = needs_features(objectives)

    def step(state: TrainState, batch: dict, teacher_params=()):
        key = jax.random.fold_in(state.rng, state.step)
        aug_key, *model_keys = jax.random.split(key, 1 + 2 * len(names))
        batch = augment_batch(aug_key, batch, num_classes=num_classes, crop_scale=augment_cfg.crop_scale,
                              flip=augment_cfg.flip, mixup_alpha=augment_cfg.mixup_alpha)
        images, label_mask = batch["image"], batch["label_mask"]
        # Label smoothing on (possibly mixed) label distributions.
        targets = batch["label_probs"] * (1.0 - label_smoothing) + label_smoothing / num_classes
        hard_labels = jnp.argmax(batch["label_probs"], -1)

        teacher_out, teacher_logits = None, None
        if teacher_graphdefs:
            outs = [apply_model(g, p, images, return_features=teacher_features and i == 0)
                    for i, (g, p) in enumerate(zip(teacher_graphdefs, teacher_params))]
            outs = jax.lax.stop_gradient(outs)
            teacher_out = outs[0] if teacher_features else None
            teacher_logits = jnp.stack([o["logits"] if isinstance(o, dict) else o for o in outs])  # [M, B, K]
            # DKD/NKD need a target class for every example: the label where usable, else the
            # teachers' (mean) prediction.
            teacher_pred = jnp.argmax(jax.nn.softmax(teacher_logits, -1).mean(0), -1)
            target_classes = jnp.where(label_mask > 0, hard_labels, teacher_pred)

        new_params, new_opt, metrics = dict(state.params), dict(state.opt_state), {}
        for i, name in enumerate(names):
            obj = objectives.get(name)
            heads_name = name + HEADS_SUFFIX
            trainable = {name: state.params[name]}
            if heads_name in state.params:
                trainable[heads_name] = state.params[heads_name]

            def loss_fn(trainable):
                out = apply_model(graphdefs[name], trainable[name], images, key=model_keys[2 * i],
                                  return_features=obj is not None and (obj.deit or obj.feature != "none"))
                logits = out["logits"] if isinstance(out, dict) else out
                if obj is None:
                    ce = losses.soft_cross_entropy(logits, targets, weights=label_mask)
                    return ce, ({"ce": ce}, logits)
                ce_logits, kd_logits = (out["cls_logits"], out["dist_logits"]) if obj.deit else (logits, logits)
                ce = losses.soft_cross_entropy(ce_logits, targets, weights=label_mask)
                kd, parts = kd_term(obj, kd_logits, teacher_logits, target_classes, state.step)
                loss = obj.weight * kd + obj.ce_weight * ce  # each method's published form
                parts = {"ce": ce, "kd": kd, **parts}
                if obj.feature != "none":
                    feat, feat_parts = feature_term(obj, out, teacher_out, head_graphdefs[name], trainable[heads_name],
                                                    model_keys[2 * i + 1])
                    loss = loss + feat
                    parts.update(feat_parts)
                return loss, (parts, logits)

            (loss, (parts, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            for part_name in trainable:
                updates, new_opt[part_name] = txs[part_name].update(grads[part_name], state.opt_state[part_name],
                                                                    state.params[part_name])
                new_params[part_name] = optax.apply_updates(state.params[part_name], updates)
            metrics[f"{name}/loss"] = loss
            metrics[f"{name}/grad_norm"] = optax.tree.norm(grads[name])
            metrics[f"{name}/train_accuracy"] = losses.weighted_mean(
                (jnp.argmax(logits, -1) == hard_labels).astype(jnp.float32), label_mask)
            for part, value in parts.items():
                metrics[f"{name}/{part}"] = value
            if schedules:
                metrics[f"{name}/lr"] = schedules[name](state.step)
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt)
        return new_state, metrics

    return step


def make_eval_step(graphdefs: dict, teacher_graphdefs: tuple = ()):
    """eval(params, batch, teacher_params) -> sums over the batch's real examples (batch['mask']):
    {'count', f'{name}/correct', and with teachers 'teacher/correct' (of the probability-averaged
    ensemble), f'{name}/agree' (top-1 equal to the teacher's), f'{name}/kl' (sum of
    KL(teacher || student) at T=1)}."""
    def eval_step(params: dict, batch: dict, teacher_params=()):
        mask, labels = batch["mask"], batch["label"]
        out = {"count": mask.sum()}
        teacher_pred = teacher_logp = None
        if teacher_graphdefs:
            probs = jnp.stack([jax.nn.softmax(apply_model(g, p, batch["image"]), -1)
                               for g, p in zip(teacher_graphdefs, teacher_params)]).mean(0)
            teacher_pred = jnp.argmax(probs, -1)
            teacher_logp = jnp.log(jnp.maximum(probs, 1e-30))
            out["teacher/correct"] = ((teacher_pred == labels) * mask).sum()
        for name, graphdef in graphdefs.items():
            logits = apply_model(graphdef, params[name], batch["image"])
            pred = jnp.argmax(logits, -1)
            out[f"{name}/correct"] = ((pred == labels) * mask).sum()
            if teacher_pred is not None:
                out[f"{name}/agree"] = ((pred == teacher_pred) * mask).sum()
                kl = (jnp.exp(teacher_logp) * (teacher_logp - jax.nn.log_softmax(logits))).sum(-1)
                out[f"{name}/kl"] = (kl * mask).sum()
        return out

    return eval_step
