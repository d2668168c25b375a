"""The probes' shared trainer: M small nnx models stacked on a leading axis and trained at once.

    params = stack([{"model": init_params(spec, seed)}] * M)       # one init: paired comparisons
    params, history = train_stack(loss_fn, params, tx, images, labels, steps=..., batch_size=..., seed=...)
    logits, early = forward_all(graphdef, params, test_images, mean=..., std=..., exit_block=0)

One vmapped optax program per chunk of steps: every model sees the same batches and keys, and a
per-model `aux` pytree (crop scales, a KD teacher, a weighting mode) is what tells them apart. The
spurious and augmentation probes (jkd/probes/spurious.py, augmentation.py) are built on it;
`check_teacher_student` holds the start-up checks of their shared teacher/student fields.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jkd import checks, ranges
from jkd.errors import ConfigError, NonFiniteError
from jkd.models import check_model
from jkd.train.state import ModelSpec, model_features


def check_teacher_student(config) -> None:
    """Checks of the fields every probe on this trainer reads: every numeric field's range
    (jkd/ranges.py), config.teacher and config.student (model, steps), optimizer warm-up, batch size,
    KD weight in [0, 1]; and no config.probe (the field that picked one of these probes before
    config.trainer did)."""
    if "probe" in config:
        raise ConfigError("config.probe: removed; config.trainer names the probe ('spurious' or 'augmentation')")
    ranges.check(config)
    for role in ("teacher", "student"):
        check_model(config[role].model.name, image_size=config.data.image_size, field=f"config.{role}.model",
                    **dict(config[role].model.get("kwargs", {})))
        if config.optimizer.warmup_steps >= config[role].steps:
            raise ConfigError(f"config.optimizer.warmup_steps: {config.optimizer.warmup_steps} must be < "
                              f"config.{role}.steps = {config[role].steps}")
    if config.batch_size > config.data.num_train:
        raise ConfigError(f"config.batch_size: {config.batch_size} exceeds config.data.num_train = "
                          f"{config.data.num_train}")
    checks.fraction(config, "kd.weight")  # stricter than jkd/ranges.py: weight * KD + (1 - weight) * CE


# ----------------------------------------------------------------------------- models, many at once

def model_spec(entry, num_classes: int, image_size: int, channels: int) -> ModelSpec:
    """The ModelSpec of a config model entry (name, kwargs) at these data sizes."""
    return ModelSpec(name=entry.name, num_classes=num_classes, image_size=image_size, in_channels=channels,
                     kwargs=tuple(sorted(dict(entry.get("kwargs", {})).items())))


def stack(trees: list):
    """[pytree] -> one pytree with a leading model axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i: int):
    """Model i of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def normalise(images: jax.Array, mean: float, std: float) -> jax.Array:
    return (images.astype(jnp.float32) - mean) / std


def feature_depth(model_name: str) -> int:
    """Blocks of a ViT or hidden layers of an MLP, stages (4) of a ConvNeXt: the layers early_features reads."""
    from jkd.models import parse_model_name
    family, arch = parse_model_name(model_name)
    return arch["depth"] if family in ("vit", "mlp") else 4


def early_features(feats: dict, exit_block: int) -> jax.Array:
    """Pooled intermediate features [B, D] (an early exit's input): mean over tokens of ViT block
    `exit_block` ([B, T, D]), over the positions of ConvNeXt stage `exit_block` ([B, H, W, C]), or
    MLP hidden layer `exit_block` ([B, width], as is). feats: jkd.train.state.model_features."""
    if "hidden" in feats:
        return feats["hidden"][exit_block].astype(jnp.float32)
    if "tokens" in feats:
        return feats["tokens"][exit_block].mean(1).astype(jnp.float32)
    return feats["stages"][exit_block].mean((1, 2)).astype(jnp.float32)


# ----------------------------------------------------------------------------- training

def train_stack(loss_fn, params, tx, images: np.ndarray, labels: np.ndarray, *, steps: int, batch_size: int,
                seed: int, aux=None, refit=None, refit_every: int = 0, log_every: int = 100, desc: str = "train",
                progress: bool = True, log=None):
    """Train M models stacked on axis 0 at once (one vmapped, scanned optax program).

    loss_fn(params_m, batch, key, aux_m) -> (loss, {name: scalar}); batch = {'image' [B, H, W, C],
    'label' [B], 'index' [B]} drawn uniformly with replacement from (images, labels), the same
    batches and keys for every model. aux: a pytree with leading axis M (per-model settings) or None.
    refit(params) -> aux is called every `refit_every` steps (and before the first), e.g. to refit
    a Laplace posterior once per epoch. Returns (params, history [{step, <metrics> of model m}]).
    Raises NonFiniteError when a logged loss or metric is not finite (checked where the metrics
    come back to the host every log_every steps: no extra device syncs).
    """
    x, y = jnp.asarray(images), jnp.asarray(labels)
    n = len(labels)
    opt_state = jax.vmap(tx.init)(params)
    key = jax.random.PRNGKey(seed)

    def one_model(p, o, a, batch, k):
        (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, k, a)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, {"loss": loss, **metrics}

    @jax.jit
    def chunk(params, opt_state, aux, x, y, start, stop):  # data as arguments, not baked-in constants
        def body(i, carry):  # dynamic trip count: one compile for every chunk length
            p, o, _ = carry
            k_idx, k_step = jax.random.split(jax.random.fold_in(key, i))
            idx = jax.random.randint(k_idx, (batch_size,), 0, n)
            batch = {"image": x[idx], "label": y[idx], "index": idx}
            return jax.vmap(one_model, in_axes=(0, 0, 0 if aux is not None else None, None, None))(
                p, o, aux, batch, k_step)
        shapes = jax.eval_shape(lambda: body(start, (params, opt_state, None))[2])
        m0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return jax.lax.fori_loop(start, stop, body, (params, opt_state, m0))

    every = min(x for x in (refit_every, log_every, steps) if x > 0)
    history, done = [], 0
    with tqdm(total=steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True) as bar:
        while done < steps:
            if refit is not None and refit_every and done % refit_every == 0:
                aux = refit(params)
            length = min(every - done % every, steps - done)
            params, opt_state, m = chunk(params, opt_state, aux, x, y, done, done + length)
            done += length
            bar.update(length)
            if done % log_every == 0 or done == steps:
                rec = {"step": done, **{k: np.asarray(v).tolist() for k, v in m.items()}}
                _check_finite(rec, desc)
                history.append(rec)
                if log is not None:
                    log({"desc": desc, **rec})
    return params, history


def _check_finite(rec: dict, desc: str) -> None:
    """NonFiniteError naming desc, step, metric and model when a logged value [M] is NaN or inf."""
    for name, values in rec.items():
        bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=float).reshape(-1)))
        if bad.size:
            raise NonFiniteError(f"{desc}: {name} is {np.asarray(values).reshape(-1)[bad[0]]} at step {rec['step']} "
                                 f"(model {bad[0]} of the stack); training diverged: try a lower "
                                 f"config.optimizer.lr")


# ----------------------------------------------------------------------------- evaluation

@functools.partial(jax.jit, static_argnames=("graphdef", "mean", "std", "exit_block"))
def _forward(graphdef, params, images, mean, std, exit_block):
    def one(pm):
        feats = model_features(graphdef, pm["model"], normalise(images, mean, std))
        early = early_features(feats, exit_block) if exit_block is not None else feats["logits"][:, :0]
        return feats["logits"], early
    return jax.vmap(one)(params)


def forward_all(graphdef, params, images: np.ndarray, *, mean: float, std: float, exit_block: int | None = None,
                batch: int = 256):
    """(logits [M, N, K], early features [M, N, D] or None without exit_block) of M stacked models."""
    n = len(images)
    # padded to whole batches: one shape, one compile
    padded = np.concatenate([images, np.zeros((-n % batch,) + images.shape[1:], images.dtype)])
    outs = [_forward(graphdef, params, jnp.asarray(padded[i:i + batch]), mean, std, exit_block)
            for i in range(0, len(padded), batch)]
    logits = np.concatenate([np.asarray(o[0]) for o in outs], axis=1)[:, :n]
    early = np.concatenate([np.asarray(o[1]) for o in outs], axis=1)[:, :n]
    return logits, (early if exit_block is not None else None)
