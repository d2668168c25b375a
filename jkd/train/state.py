"""Train state pytree, model specs and optimizers.

A run trains one or more models ("students"; a supervised run is one student without a teacher),
each with its own params and optimizer state, sharing the step counter, the rng and every batch:

    TrainState(step=int32[], rng=uint32[2], params={name: params}, opt_state={name: optax state})

Params are plain nested dicts of fp32 arrays (`nnx.to_pure_dict`), so the state is an
ordinary pytree for jit, optax and orbax; `apply_model` merges them with the static graphdef.
"""
from __future__ import annotations

import dataclasses

import flax
import jax
import optax
from flax import nnx

from jkd.errors import ConfigError
from jkd.models import create_model


# Model kwargs that choose how a model computes, not what: a run may change them on resume.
COMPUTE_OPTIONS = ("attention_impl", "attention_pad_to")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    rng: jax.Array
    params: dict
    opt_state: dict


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: written to <workdir>/run.json, compared on resume."""
    name: str
    num_classes: int
    image_size: int
    in_channels: int
    kwargs: tuple = ()  # sorted (key, value) pairs, hashable
    dtype: str = "float32"

    def build(self, seed: int = 0) -> nnx.Module:
        return create_model(self.name, num_classes=self.num_classes, image_size=self.image_size,
                            in_channels=self.in_channels, dtype=self.dtype, seed=seed, **dict(self.kwargs))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["kwargs"] = dict(self.kwargs)
        return d

    @staticmethod
    def from_json(d: dict) -> "ModelSpec":
        return ModelSpec(**{**d, "kwargs": tuple(sorted(d.get("kwargs", {}).items()))})

    def architecture(self) -> dict:
        """The fields that decide the parameter shapes (compute dtype and attention kernel options excluded)."""
        d = self.to_json()
        d.pop("dtype")
        for option in COMPUTE_OPTIONS:
            d["kwargs"].pop(option, None)
        return d


def graphdef_and_shapes(spec: ModelSpec):
    """(graphdef, params as ShapeDtypeStructs) without allocating anything."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: spec.build()))
    return graphdef, nnx.to_pure_dict(state)


def init_params(spec: ModelSpec, seed: int) -> dict:
    """Fresh params (pure dict). Jit this with out_shardings to initialise directly sharded."""
    return nnx.to_pure_dict(nnx.split(spec.build(seed))[1])


def apply_model(graphdef, params: dict, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Forward pass: images [B, H, W, C] -> logits [B, K] (model_features for the intermediates)."""
    return nnx.merge(graphdef, params)(images, key=key)


def model_features(graphdef, params: dict, images: jax.Array, key: jax.Array | None = None) -> dict:
    """Forward pass with the intermediates: images [B, H, W, C] -> {'logits' [B, K], and per family
    'tokens' (ViT: per block [B, T, D]), 'stages' (ConvNeXt: per stage [B, H', W', C']) or 'hidden'
    (MLP: per layer [B, width]), ...}."""
    return nnx.merge(graphdef, params)(images, key=key, return_features=True)


def make_optimizer(opt_cfg, total_steps: int, field: str = "config.optimizer") -> optax.GradientTransformation:
    """Gradient clipping + AdamW/SGD on a linear-warmup cosine schedule.

    Weight decay applies to matrices and kernels only (ndim >= 2), not to biases, norms, tokens'
    1-d parameters.
    """
    if opt_cfg.warmup_steps >= total_steps:
        raise ConfigError(f"{field}.warmup_steps: {opt_cfg.warmup_steps} must be < the {total_steps} train steps")
    if opt_cfg.lr <= 0:
        raise ConfigError(f"{field}.lr: must be > 0, got {opt_cfg.lr}")
    schedule = lr_schedule(opt_cfg, total_steps)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    if opt_cfg.name == "adamw":
        base = optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, weight_decay=opt_cfg.weight_decay,
                           mask=decay_mask)
    elif opt_cfg.name == "sgd":
        base = optax.chain(optax.add_decayed_weights(opt_cfg.weight_decay, mask=decay_mask),
                           optax.sgd(schedule, momentum=opt_cfg.get("momentum", 0.9), nesterov=True))
    else:
        raise ConfigError(f"{field}.name: unknown optimizer {opt_cfg.name!r} (known: adamw, sgd)")
    chain = [optax.clip_by_global_norm(opt_cfg.grad_clip)] if opt_cfg.grad_clip else []
    return optax.chain(*chain, base)


def lr_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to opt_cfg.lr, then cosine decay to final_lr_ratio * lr at total_steps."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt_cfg.lr, warmup_steps=opt_cfg.warmup_steps, decay_steps=total_steps,
        end_value=opt_cfg.lr * opt_cfg.get("final_lr_ratio", 0.0))
