"""Fairness probes: who pays for distillation, and early-exit reweighted KD (config.trainer = 'fairness').

    python -m jkd.main --config configs/fairness/spurious.py --workdir /tmp/jkd_spurious
    python -m jkd.main --config configs/fairness/augmentation.py --workdir /tmp/jkd_aug

`run_fairness(config, workdir) -> summary` dispatches on config.probe:
  spurious      (this file) a teacher trained on the labels of spurious-correlation data, then
                students trained together from one init on the same batches:
                  ce          labels only
                  kd          Hinton KD (T^2 KL + CE)
                  kd_margin   KD + CE with per-example weights from the early exit's softmax
                              confidence margin where the exit is wrong (Tiwari et al. 2024)
                  kd_laplace  the same with the exit's confidence under a last-layer Laplace
                              approximation (Fasth & Singh 2025), refitted every epoch
                Measured on a group-balanced test set: average, per-group and worst-group accuracy,
                disparity, statistical-parity and equal-opportunity gaps (jkd/evaluate.py).
  augmentation  jkd/probes/augmentation.py: class confusions from random-resized crops, the
                class-conditional remedy, and whether a strong-augmentation teacher passes its
                class bias to a student.

The early exit: a linear head on the mean of block `student.exit_block`'s tokens (ViT) or stage
map (ConvNeXt), trained by CE on the student's detached features, so it is a probe of what the
early layers know and does not change the student. Its weights for example i:
    w_i = exp(beta * conf_i) if the exit's prediction is wrong, else 1
    conf_i = p_top1 - p_top2 of softmax(exit logits)             (margin)
    conf_i = 1 - H(p~_i) / log K, p~ the Laplace predictive     (laplace)
and the KD term is a weighted mean under w (jkd.losses' `weights`; Tiwari et al. reweight the
distillation loss; `reweight.terms = 'kd_and_ce'` also weights the CE term, the form before issue 14). The exact
weighting functions of both papers are not in what we could read: this form is our choice
(docs/FAIRNESS.md). Writes summary.json (flat `<student>/<measure>`), results.json, results.md,
group_accuracy.png, exit_weights.png into the workdir; a rerun of the same config returns the summary.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jkd import evaluate, losses
from jkd.data import synthetic
from jkd.errors import ConfigError
from jkd.models import check_model
from jkd.train.state import ModelSpec, apply_model, graphdef_and_shapes, init_params, make_optimizer

PROBES = ("spurious", "augmentation")
STUDENT_METHODS = ("ce", "kd", "kd_margin", "kd_laplace")
_MODE = {"ce": 0, "kd": 0, "kd_margin": 1, "kd_laplace": 2}  # weighting of each student
GROUP_NAMES = ("y0_a0", "y0_a1", "y1_a0", "y1_a1")  # spurious groups g = 2 * label + attribute
# Which loss terms the exit's weights multiply: Tiwari et al. (2024) reweight the distillation loss
# ('kd', the default); 'kd_and_ce' also weights the label term (jkd's form before issue 14).
REWEIGHT_TERMS = ("kd", "kd_and_ce")


# ----------------------------------------------------------------------------- config checks

def names(value, known, field) -> list[str]:
    """'a,b' -> ['a', 'b'], every name in `known` (ConfigError naming the field otherwise)."""
    out = [n.strip() for n in str(value).split(",") if n.strip()]
    if not out or any(n not in known for n in out):
        raise ConfigError(f"config.{field}: need a comma-separated subset of {', '.join(known)}; got {value!r}")
    return out


def _get(config, field):
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def positive_ints(config, *fields) -> None:
    for f in fields:
        v = _get(config, f)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"config.{f}: must be a positive integer, got {v!r}")


def check_common(config) -> None:
    """Checks shared by both probes: seed, sizes, models, optimizer, KD."""
    if config.get("probe") not in PROBES:
        raise ConfigError(f"config.probe: unknown probe {config.get('probe')!r} (known: {', '.join(PROBES)})")
    if not isinstance(config.seed, int) or config.seed < 0:
        raise ConfigError(f"config.seed: must be an integer >= 0, got {config.seed!r}")
    positive_ints(config, "batch_size", "data.image_size", "data.num_train", "data.num_test", "teacher.steps",
                  "student.steps", "log_every")
    for role in ("teacher", "student"):
        check_model(config[role].model.name, image_size=config.data.image_size, field=f"config.{role}.model",
                    **dict(config[role].model.get("kwargs", {})))
        if config.optimizer.warmup_steps >= config[role].steps:
            raise ConfigError(f"config.optimizer.warmup_steps: {config.optimizer.warmup_steps} must be < "
                              f"config.{role}.steps = {config[role].steps}")
    if config.batch_size > config.data.num_train:
        raise ConfigError(f"config.batch_size: {config.batch_size} exceeds config.data.num_train = "
                          f"{config.data.num_train}")
    if not 0.0 <= config.kd.weight <= 1.0:
        raise ConfigError(f"config.kd.weight: must be in [0, 1], got {config.kd.weight}")
    if config.kd.temperature <= 0:
        raise ConfigError(f"config.kd.temperature: must be > 0, got {config.kd.temperature}")


def check_config(config) -> None:
    """Every start-up check of a fairness config (ConfigError naming the field)."""
    check_common(config)
    if config.probe == "augmentation":
        from jkd.probes.augmentation import check_config as check_aug
        check_aug(config)
        return
    names(config.students, STUDENT_METHODS, "students")
    if config.data.name not in ("spurious_synthetic", "celeb_a"):
        raise ConfigError(f"config.data.name: the spurious probe reads 'spurious_synthetic' or 'celeb_a' "
                          f"(TFDS, attributes as label and group), got {config.data.name!r}")
    if config.data.name == "spurious_synthetic" and not 0.5 <= config.data.spurious_corr < 1.0:
        raise ConfigError(f"config.data.spurious_corr: a fraction in [0.5, 1), got {config.data.spurious_corr}")
    depth = _depth(config.student.model.name)
    if not 0 <= config.student.exit_block < depth - 1:
        raise ConfigError(f"config.student.exit_block: an early block of {config.student.model.name!r}, "
                          f"0..{depth - 2}; got {config.student.exit_block}")
    if config.reweight.beta < 0:
        raise ConfigError(f"config.reweight.beta: must be >= 0, got {config.reweight.beta}")
    if config.reweight.get("terms", "kd") not in REWEIGHT_TERMS:
        raise ConfigError(f"config.reweight.terms: one of {REWEIGHT_TERMS}, got {config.reweight.terms!r}")
    if config.laplace.predictive not in ("probit", "mc"):
        raise ConfigError(f"config.laplace.predictive: 'probit' or 'mc', got {config.laplace.predictive!r}")
    if config.laplace.prior_precision <= 0:
        raise ConfigError(f"config.laplace.prior_precision: must be > 0, got {config.laplace.prior_precision}")
    positive_ints(config, "laplace.fit_examples", "laplace.mc_samples")


def _depth(model_name: str) -> int:
    """Blocks of a ViT or hidden layers of an MLP, stages (4) of a ConvNeXt: where an early exit can read."""
    from jkd.models import parse_model_name
    family, arch = parse_model_name(model_name)
    return arch["depth"] if family in ("vit", "mlp") else 4


# ----------------------------------------------------------------------------- data

def load_group_data(config, split: str, seed: int) -> dict:
    """{'image': [N, S, S, C] f32 in [0, 1], 'label', 'attribute', 'group' [N] i32} for the spurious probe.

    spurious_synthetic: jkd.data.synthetic.make_spurious (train: spurious_corr; test: balanced).
    celeb_a: TFDS data_source, label = attributes[data.label_attr], attribute = attributes[data.group_attr],
    the first data.num_train / data.num_test examples of data.train_split / data.eval_split.
    """
    d = config.data
    if d.name == "spurious_synthetic":
        train = split == "train"
        return synthetic.make_spurious(d.num_train if train else d.num_test,
                                       spurious_corr=d.spurious_corr if train else 0.5,
                                       image_size=d.image_size, core_size=d.core_size,
                                       core_contrast=d.core_contrast, noise=d.noise,
                                       seed=2 * seed + (0 if train else 1))
    import tensorflow_datasets as tfds

    from jkd.data.tfds import _preprocess
    tfds_split = d.train_split if split == "train" else d.eval_split
    try:
        source = tfds.data_source(d.name, split=tfds_split, data_dir=d.data_dir or None, download=False)
    except Exception as e:
        raise ConfigError(f"config.data.data_dir: cannot open TFDS {d.name!r} split {tfds_split!r}: {e}. "
                          f"Prepare it with `tfds build {d.name} --file_format=array_record`.") from e
    n = min(len(source), d.num_train if split == "train" else d.num_test)
    images, label, attribute = [], [], []
    for i in range(n):
        ex = source[i]
        images.append(_preprocess(ex["image"], d.image_size, 3, np.zeros(1, np.float32), np.ones(1, np.float32)))
        label.append(int(ex["attributes"][d.label_attr]))
        attribute.append(int(ex["attributes"][d.group_attr]))
    label, attribute = np.asarray(label, np.int32), np.asarray(attribute, np.int32)
    return {"image": np.stack(images).astype(np.float32), "label": label, "attribute": attribute,
            "group": 2 * label + attribute}


# ----------------------------------------------------------------------------- models, many at once

def model_spec(entry, num_classes: int, image_size: int, channels: int) -> ModelSpec:
    return ModelSpec(name=entry.name, num_classes=num_classes, image_size=image_size, in_channels=channels,
                     kwargs=tuple(sorted(dict(entry.get("kwargs", {})).items())))


def stack(trees: list):
    """[pytree] -> one pytree with a leading model axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def early_features(feats: dict, exit_block: int) -> jax.Array:
    """The early exit's input [B, D]: mean over tokens of ViT block `exit_block` ([B, T, D]), over
    the positions of ConvNeXt stage `exit_block` ([B, H, W, C]), or MLP hidden layer `exit_block`
    ([B, width], as is)."""
    if "hidden" in feats:
        return feats["hidden"][exit_block].astype(jnp.float32)
    if "tokens" in feats:
        return feats["tokens"][exit_block].mean(1).astype(jnp.float32)
    return feats["stages"][exit_block].mean((1, 2)).astype(jnp.float32)


def exit_logits(exit_params: dict, phi: jax.Array) -> jax.Array:
    """Linear early exit: phi [B, D] -> logits [B, K]."""
    return phi @ exit_params["kernel"] + exit_params["bias"]


def normalise(images: jax.Array, mean: float, std: float) -> jax.Array:
    return (images.astype(jnp.float32) - mean) / std


def train_stack(loss_fn, params, tx, images: np.ndarray, labels: np.ndarray, *, steps: int, batch_size: int,
                seed: int, aux=None, refit=None, refit_every: int = 0, log_every: int = 100, desc: str = "train",
                progress: bool = True, log=None):
    """Train M models stacked on axis 0 at once (one vmapped, scanned optax program).

    loss_fn(params_m, batch, key, aux_m) -> (loss, {name: scalar}); batch = {'image' [B, H, W, C],
    'label' [B], 'index' [B]} drawn uniformly with replacement from (images, labels), the same
    batches and keys for every model. aux: a pytree with leading axis M (per-model settings) or None.
    refit(params) -> aux is called every `refit_every` steps (and before the first), e.g. to refit
    a Laplace posterior once per epoch. Returns (params, history [{step, <metrics> of model m}]).
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
                history.append(rec)
                if log is not None:
                    log({"desc": desc, **rec})
    return params, history


@functools.partial(jax.jit, static_argnames=("graphdef", "mean", "std", "exit_block"))
def _forward(graphdef, params, images, mean, std, exit_block):
    def one(pm):
        feats = apply_model(graphdef, pm["model"], normalise(images, mean, std), return_features=True)
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


# ----------------------------------------------------------------------------- last-layer Laplace

def _with_bias(phi: jax.Array) -> jax.Array:
    return jnp.concatenate([phi, jnp.ones(phi.shape[:-1] + (1,), phi.dtype)], -1)


def laplace_precision(phi: jax.Array, exit_params: dict, prior_precision: float, data_scale: float = 1.0) -> jax.Array:
    """Posterior precision [P, P], P = (D + 1) K, of a linear softmax head (kernel [D, K], bias [K],
    flattened as W~ = [kernel; bias] [D + 1, K] row-major) at its current value:

        data_scale * sum_i kron(phi~_i phi~_i^T, diag(p_i) - p_i p_i^T) + prior_precision * I

    phi [N, D] the head's inputs, phi~ = [phi, 1], p_i = softmax(head(phi_i)). This is the GGN of the
    summed cross-entropy, which for a head linear in its parameters equals the exact Hessian;
    data_scale = N_train / N rescales a subsample to the whole training set.
    """
    p = jax.nn.softmax(exit_logits(exit_params, phi), -1)                 # [N, K]
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


def exit_weights(exit_logits_: jax.Array, labels: jax.Array, *, mode, beta: float,
                 laplace_probs: jax.Array | None = None) -> jax.Array:
    """Per-example loss weights [B] from the early exit (module docstring): exp(beta * conf) where the
    exit is wrong, 1 elsewhere; mode 0 = all ones, 1 = softmax margin, 2 = Laplace confidence
    (1 - normalised entropy of laplace_probs). mode may be a traced integer (one program, many students)."""
    p = jax.nn.softmax(exit_logits_, -1)
    top2 = jax.lax.top_k(p, 2)[0]
    margin = top2[:, 0] - top2[:, 1]
    wrong = jnp.argmax(exit_logits_, -1) != labels
    conf = margin
    if laplace_probs is not None:
        k = laplace_probs.shape[-1]
        entropy = -(laplace_probs * jnp.log(jnp.maximum(laplace_probs, 1e-12))).sum(-1)
        conf = jnp.where(mode == 2, 1.0 - entropy / math.log(k), margin)
    w = jnp.where(wrong, jnp.exp(beta * conf), 1.0)
    return jax.lax.stop_gradient(jnp.where(mode == 0, 1.0, w))


# ----------------------------------------------------------------------------- the spurious probe

def student_objective(logits, labels, teacher_logits, weights, *, kd_on, kd_weight: float, temperature: float,
                      terms: str = "kd") -> jax.Array:
    """One spurious-probe student's loss (scalar) on logits [B, K], labels [B], teacher logits [B, K],
    exit weights [B]: kd_on (1.0 or 0.0, traced) picks Hinton KD `kd_weight T^2 KL + (1 - kd_weight) CE`
    or CE alone. terms='kd' weights only the KD term by `weights` (Tiwari et al. 2024 reweight the
    distillation loss), 'kd_and_ce' both (each a weighted mean); CE alone (the `ce` student) is unweighted."""
    kd = losses.kd_kl(logits, teacher_logits, temperature=temperature, weights=weights)
    kd_ce = losses.cross_entropy(logits, labels, weights=weights if terms == "kd_and_ce" else None)
    ce = losses.cross_entropy(logits, labels)
    return kd_on * (kd_weight * kd + (1.0 - kd_weight) * kd_ce) + (1.0 - kd_on) * ce


def _init_exit(dim: int, k: int) -> dict:
    return {"kernel": jnp.zeros((dim, k)), "bias": jnp.zeros((k,))}


def _feature_dim(graphdef, params, image_shape, exit_block) -> int:
    phi = jax.eval_shape(lambda p: early_features(apply_model(graphdef, p, jnp.zeros((1,) + image_shape),
                                                              return_features=True), exit_block), params)
    return int(phi.shape[-1])


def run_spurious(config, workdir: str, log=None) -> tuple[dict, dict]:
    """Teacher + students on spurious-correlation data; returns (flat summary, detailed results)."""
    c = config
    train, test = load_group_data(c, "train", c.seed), load_group_data(c, "test", c.seed)
    k, image_shape = 2, train["image"].shape[1:]
    mean, std = float(c.data.mean), float(c.data.std)
    methods = names(c.students, STUDENT_METHODS, "students")
    t_spec = model_spec(c.teacher.model, k, c.data.image_size, image_shape[-1])
    s_spec = model_spec(c.student.model, k, c.data.image_size, image_shape[-1])
    t_graph, _ = graphdef_and_shapes(t_spec)
    s_graph, s_shapes = graphdef_and_shapes(s_spec)

    # Teacher: labels only (ERM), so it learns whatever shortcut the data offers.
    def teacher_loss(p, batch, key, aux):
        logits = apply_model(t_graph, p["model"], normalise(batch["image"], mean, std))
        return losses.cross_entropy(logits, batch["label"]), {}

    t_params = stack([{"model": init_params(t_spec, c.seed)}])
    t_params, _ = train_stack(teacher_loss, t_params, make_optimizer(c.optimizer, c.teacher.steps), train["image"],
                              train["label"], steps=c.teacher.steps, batch_size=c.batch_size, seed=c.seed,
                              log_every=c.log_every, desc="teacher", progress=c.progress, log=log)
    teacher_train_logits = jnp.asarray(forward_all(t_graph, t_params, train["image"], mean=mean, std=std)[0][0])

    # Students: one init, the same batches; per-student KD switch and weighting mode.
    exit_block, beta = c.student.exit_block, float(c.reweight.beta)
    temp, kd_w = float(c.kd.temperature), float(c.kd.weight)
    terms = c.reweight.get("terms", "kd")
    dim = _feature_dim(s_graph, s_shapes, image_shape, exit_block)
    s_init = {"model": init_params(s_spec, c.seed + 1), "exit": _init_exit(dim, k)}
    s_params = stack([s_init] * len(methods))
    p_dim = (dim + 1) * k
    aux0 = {"kd": jnp.array([m != "ce" for m in methods], jnp.float32),
            "mode": jnp.array([_MODE[m] for m in methods], jnp.int32),
            "cov": jnp.broadcast_to(jnp.eye(p_dim), (len(methods), p_dim, p_dim))}
    lap = c.laplace

    def student_loss(p, batch, key, aux):
        feats = apply_model(s_graph, p["model"], normalise(batch["image"], mean, std), return_features=True)
        logits = feats["logits"]
        phi = jax.lax.stop_gradient(early_features(feats, exit_block))
        e_logits = exit_logits(p["exit"], phi)
        exit_ce = losses.cross_entropy(e_logits, batch["label"])
        e_sg = jax.lax.stop_gradient(e_logits)
        probs = laplace_predictive(e_sg, logit_covariance(phi, aux["cov"], k), method=lap.predictive, key=key,
                                   samples=lap.mc_samples)
        w = exit_weights(e_sg, batch["label"], mode=aux["mode"], beta=beta, laplace_probs=probs)
        loss = student_objective(logits, batch["label"], teacher_train_logits[batch["index"]], w, kd_on=aux["kd"],
                                 kd_weight=kd_w, temperature=temp, terms=terms)
        return loss + exit_ce, {"exit_ce": exit_ce, "mean_weight": w.mean()}

    n = len(train["label"])
    fit_idx = np.random.default_rng(c.seed).permutation(n)[:min(lap.fit_examples, n)]
    fit_images = train["image"][fit_idx]
    uses_laplace = "kd_laplace" in methods

    @jax.jit
    def covariances(exit_params, phi):
        prec = jax.vmap(lambda e, f: laplace_precision(f, e, lap.prior_precision, n / len(fit_idx)))(exit_params, phi)
        return jnp.linalg.inv(prec)

    def refit(params):  # once per epoch: the Laplace posterior of every student's exit at its current weights
        _, phi = forward_all(s_graph, params, fit_images, mean=mean, std=std, exit_block=exit_block)
        return {**aux0, "cov": covariances(params["exit"], jnp.asarray(phi))}

    epoch = max(1, n // c.batch_size)
    s_params, _ = train_stack(student_loss, s_params, make_optimizer(c.optimizer, c.student.steps), train["image"],
                              train["label"], steps=c.student.steps, batch_size=c.batch_size, seed=c.seed + 1,
                              aux=aux0, refit=refit if uses_laplace else None, refit_every=epoch,
                              log_every=c.log_every, desc="students", progress=c.progress, log=log)

    # Measurements on the balanced test set; exit weights on the training set (who gets up-weighted).
    results = {}
    t_test = forward_all(t_graph, t_params, test["image"], mean=mean, std=std)[0][0]  # model 0: [N, K]
    s_test, phi_test = forward_all(s_graph, s_params, test["image"], mean=mean, std=std, exit_block=exit_block)
    aux_end = refit(s_params) if uses_laplace else aux0
    _, phi_train = forward_all(s_graph, s_params, train["image"], mean=mean, std=std, exit_block=exit_block)
    for role, logits in [("teacher", t_test)] + list(zip(methods, s_test)):
        results[role] = evaluate.group_report(logits.argmax(-1), test["label"], test["group"], test["attribute"],
                                              num_classes=k, num_groups=4, positive_class=1)
    minority = train["group"] % 3 != 0  # label != attribute: groups (0,1) and (1,0)
    for i, m in enumerate(methods):
        e = unstack(s_params["exit"], i)
        results[m]["exit_worst_group_acc"] = evaluate.group_report(
            np.asarray(exit_logits(e, jnp.asarray(phi_test[i]))).argmax(-1), test["label"], test["group"],
            test["attribute"], num_classes=k, num_groups=4)["worst_group_acc"]
        el = exit_logits(e, jnp.asarray(phi_train[i]))
        probs = laplace_predictive(el, logit_covariance(jnp.asarray(phi_train[i]), aux_end["cov"][i], k),
                                   method=lap.predictive, key=jax.random.PRNGKey(0), samples=lap.mc_samples)
        schemes = (("margin", 1), ("laplace", 2)) if uses_laplace else (("margin", 1),)
        w = {mode: np.asarray(exit_weights(el, jnp.asarray(train["label"]), mode=mode, beta=beta, laplace_probs=probs))
             for _, mode in schemes}
        results[m]["weights"] = {name: w[mode] for name, mode in schemes}
        # how strongly each weighting singles out the minority groups (mean weight ratio)
        for name, mode in schemes:
            results[m][f"{name}_weight_ratio"] = float(w[mode][minority].mean() / w[mode][~minority].mean())
    results["_train_minority"] = minority
    summary = {}
    for role, r in results.items():
        if role.startswith("_"):
            continue
        for key_, v in r.items():
            if key_ == "group_acc":
                summary.update({f"{role}/{g}_acc": float(a) for g, a in zip(GROUP_NAMES, v)})
            elif key_ != "weights":
                summary[f"{role}/{key_}"] = float(v)
    return summary, results


# ----------------------------------------------------------------------------- reports and entry point

def results_table(summary: dict, roles: list[str]) -> str:
    """Markdown: one row per model, accuracies in %."""
    cols = ["avg_acc", "worst_group_acc"] + [f"{g}_acc" for g in GROUP_NAMES] + ["disparity", "sp_gap", "eo_gap",
                                                                                "exit_worst_group_acc"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for role in roles:
        cells = []
        for col in cols:
            v = summary.get(f"{role}/{col}")
            cells.append("–" if v is None else (f"{100 * v:.1f}" if col.endswith("acc") else f"{v:.3f}"))
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_group_accuracy(summary: dict, roles: list[str], path: str) -> None:
    """Bars: per-group accuracy of every model (from a spurious-probe summary) -> PNG."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    width = 0.8 / len(roles)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for i, role in enumerate(roles):
        vals = [100 * summary[f"{role}/{g}_acc"] for g in GROUP_NAMES] + [100 * summary[f"{role}/avg_acc"]]
        ax.bar(np.arange(5) + (i - (len(roles) - 1) / 2) * width, vals, width, label=role)
    ax.set_xticks(range(5), [f"y={g[1]}, a={g[4]}" for g in GROUP_NAMES] + ["average"])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=len(roles), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_exit_weights(results: dict, method: str, path: str) -> None:
    """Histogram of the margin and Laplace weights of one student's exit, majority vs minority examples."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    minority = results["_train_minority"]
    schemes = list(results[method]["weights"])
    fig, axes = plt.subplots(1, len(schemes), figsize=(4 * len(schemes), 3), squeeze=False)
    axes = axes[0]
    for ax, name in zip(axes, schemes):
        w = results[method]["weights"][name]
        bins = np.linspace(1.0, max(float(w.max()), 1.01), 30)
        ax.hist([w[~minority], w[minority]], bins=bins, label=["majority groups", "minority groups"], log=True)
        ax.set_title(f"{name} weights of {method}'s exit", fontsize=9)
        ax.set_xlabel("weight")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cached(workdir: str, config):
    config_json = json.loads(config.to_json_best_effort())
    summary_path, config_path = os.path.join(workdir, "summary.json"), os.path.join(workdir, "config.json")
    if os.path.exists(summary_path) and os.path.exists(config_path):
        with open(config_path) as f:
            if json.load(f) == config_json:
                with open(summary_path) as g:
                    return json.load(g), config_json
    return None, config_json


def run_fairness(config, workdir: str) -> dict:
    """Run the probe named by config.probe; write the reports into workdir; return the flat summary."""
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    cached, config_json = _cached(workdir, config)
    if cached is not None:  # same command rerun: report what it measured
        return cached
    # Every process computes the same (replicated) probe; process 0 alone writes its files.
    writer = jax.process_index() == 0
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if writer:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config_json, f, indent=2)
        open(metrics_path, "w").close()

    def log(record):
        if writer:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    t0 = time.time()
    if config.probe == "augmentation":
        from jkd.probes.augmentation import run_augmentation
        summary, text = run_augmentation(config, workdir, log=log, write=writer)
    else:
        summary, results = run_spurious(config, workdir, log=log)
        roles = ["teacher"] + names(config.students, STUDENT_METHODS, "students")
        text = (f"Spurious probe (seed {config.seed}): {config.data.name}, {config.data.num_train} training "
                f"examples, teacher {config.teacher.model.name}, students {config.student.model.name} (exit "
                f"at block {config.student.exit_block}); test accuracies in %.\n\n" + results_table(summary, roles))
        if writer:
            plot_group_accuracy(summary, roles, os.path.join(workdir, "group_accuracy.png"))
            shown = next((m for m in ("kd_laplace", "kd_margin", "kd") if m in results), None)
            if shown:
                plot_exit_weights(results, shown, os.path.join(workdir, "exit_weights.png"))
    summary = {"seed": config.seed, **summary, "wall_time_s": time.time() - t0}
    if writer:
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    if config.progress and writer:
        print("\n" + text + "\n")
    return summary


def sweep_figures(records: list[dict], out_dir: str, group_of) -> list[str]:
    """jkd.sweep hook: the augmentation probe's accuracy-vs-crop-scale figure over seeds (when the
    records hold it); the spurious probe's per-group bars, mean over each group of points."""
    from jkd.probes.augmentation import sweep_figure
    paths = sweep_figure(records, out_dir)
    groups: dict = {}
    for rec in records:
        if any(k.endswith("/y0_a1_acc") for k in rec["metrics"]):
            groups.setdefault(group_of(rec), []).append(rec["metrics"])
    lines = []
    for i, (label, ms) in enumerate(groups.items()):
        roles = list(dict.fromkeys(k.split("/")[0] for k in ms[0] if k.endswith("/y0_a1_acc")))
        mean = {k: float(np.mean([m[k] for m in ms if k in m])) for k in ms[0]}
        path = os.path.join(out_dir, f"group_accuracy_{i}.png")
        plot_group_accuracy(mean, roles, path)
        paths.append(path)
        lines += [f"Paired differences over {len(ms)} runs ({label}): the students share init and batches, so "
                  "per-run differences (mean ± std, percentage points) are sharper than the table's spreads.", "",
                  "| model - reference | avg_acc | worst_group_acc |", "|---|---:|---:|"]
        pairs = [(r, "teacher") for r in roles[1:]] + ([("kd", "ce")] if {"kd", "ce"} <= set(roles) else [])
        for role, ref in pairs + [(r, "kd") for r in roles if r.startswith("kd_")]:
            cells = []
            for measure in ("avg_acc", "worst_group_acc"):
                d = 100 * np.array([m[f"{role}/{measure}"] - m[f"{ref}/{measure}"] for m in ms
                                    if f"{ref}/{measure}" in m])
                cells.append(f"{d.mean():+.1f} ± {d.std(ddof=1) if len(d) > 1 else 0:.1f}" if len(d) else "–")
            lines.append(f"| {role} - {ref} | " + " | ".join(cells) + " |")
        lines.append("")
    if lines:
        with open(os.path.join(out_dir, "paired_differences.md"), "w") as f:
            f.write("\n".join(lines))
        paths.append(os.path.join(out_dir, "paired_differences.md"))
    return paths
