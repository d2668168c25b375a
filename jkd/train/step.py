"""The pure train step shared by supervised and distillation runs, and the eval step.

    step(state, batch, teacher_params) -> (state, metrics)

One step: derive keys from (rng, step) -> augment the batch once -> teacher forward once (frozen,
stop_gradient) -> for every student: loss, grads, optax update. With no teacher the loss is CE on
labels; with a teacher it is Hinton KD mixed with CE (losses.hinton_kd). Shardings are applied by
the caller's jax.jit (see loop.compile_steps).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jkd import losses
from jkd.data.augment import augment_batch
from jkd.train.state import TrainState, apply_model


def make_train_step(graphdefs: dict, txs: dict, *, num_classes: int, augment_cfg, kd_cfg=None,
                    teacher_graphdef=None, label_smoothing: float = 0.0, schedules: dict | None = None):
    """Build step(state, batch, teacher_params) for students {name: graphdef} with optimizers txs.

    batch: image [B, H, W, C], label [B] int32, label_mask [B] f32 (1 = label usable by CE).
    kd_cfg: None (supervised) or fields temperature, weight. metrics: {f'{name}/{metric}': scalar}.
    """
    names = sorted(graphdefs)

    def step(state: TrainState, batch: dict, teacher_params=None):
        key = jax.random.fold_in(state.rng, state.step)
        aug_key, *model_keys = jax.random.split(key, 1 + len(names))
        batch = augment_batch(aug_key, batch, num_classes=num_classes, crop_scale=augment_cfg.crop_scale,
                              flip=augment_cfg.flip, mixup_alpha=augment_cfg.mixup_alpha)
        images, label_mask = batch["image"], batch["label_mask"]
        # Label smoothing on (possibly mixed) label distributions.
        targets = batch["label_probs"] * (1.0 - label_smoothing) + label_smoothing / num_classes
        teacher_logits = None
        if teacher_graphdef is not None:
            teacher_logits = jax.lax.stop_gradient(apply_model(teacher_graphdef, teacher_params, images))

        new_params, new_opt, metrics = {}, {}, {}
        for name, model_key in zip(names, model_keys):
            def loss_fn(params):
                logits = apply_model(graphdefs[name], params, images, key=model_key)
                ce = losses.soft_cross_entropy(logits, targets, weights=label_mask)
                parts = {"ce": ce}
                if teacher_logits is None:
                    return ce, (parts, logits)
                kd = losses.kd_kl(logits, teacher_logits, temperature=kd_cfg.temperature)
                parts["kd"] = kd
                return kd_cfg.weight * kd + (1.0 - kd_cfg.weight) * ce, (parts, logits)

            (loss, (parts, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params[name])
            updates, new_opt[name] = txs[name].update(grads, state.opt_state[name], state.params[name])
            new_params[name] = optax.apply_updates(state.params[name], updates)
            hard_labels = jnp.argmax(batch["label_probs"], -1)
            metrics[f"{name}/loss"] = loss
            metrics[f"{name}/grad_norm"] = optax.tree.norm(grads)
            metrics[f"{name}/train_accuracy"] = losses.weighted_mean(
                (jnp.argmax(logits, -1) == hard_labels).astype(jnp.float32), label_mask)
            for part, value in parts.items():
                metrics[f"{name}/{part}"] = value
            if schedules:
                metrics[f"{name}/lr"] = schedules[name](state.step)
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt)
        return new_state, metrics

    return step


def make_eval_step(graphdefs: dict, teacher_graphdef=None):
    """eval(params, batch, teacher_params) -> sums over the batch's real examples (batch['mask']):
    {'count', f'{name}/correct', and with a teacher 'teacher/correct', f'{name}/agree' (top-1 equal
    to the teacher's), f'{name}/kl' (sum of KL(teacher || student) at T=1)}."""
    def eval_step(params: dict, batch: dict, teacher_params=None):
        mask, labels = batch["mask"], batch["label"]
        out = {"count": mask.sum()}
        teacher_pred = teacher_logp = None
        if teacher_graphdef is not None:
            teacher_logits = apply_model(teacher_graphdef, teacher_params, batch["image"])
            teacher_pred = jnp.argmax(teacher_logits, -1)
            teacher_logp = jax.nn.log_softmax(teacher_logits)
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
