"""Theory probes: ensemble, knowledge distillation and self-distillation on multi-view data
(Allen-Zhu & Li, ICLR 2023), all from one config (configs/theory/multiview.py; config.trainer = 'theory').

Why this probe keeps its own trainer: the theory's models are trained by full-batch GD (optionally
SGD) on a two-layer smoothed-ReLU net that is a pytree of arrays, not an nnx module, vmapped over
models and over the members of an averaged model, with fixed random features precomputed once for
rf/ntk. jkd.probes.multiseed.train_stack runs a different program (optax on nnx models, minibatches
drawn with replacement), so sharing it would change what the theory analyses.

For each model variant (net = the analysed smoothed-ReLU net, rf = random features, ntk = the net
linearised at init; jkd.models.theory) and the same multi-view data (jkd.data.multiview):

  single        L independently initialised models trained on the labels (one vmapped program)
  ensemble      their average (logits, or probabilities with ensemble.average = 'probs')
  kd            S fresh models trained on the ensemble's soft targets (Hinton KD: T^2 KL + CE)
  self_distill  S fresh models, student s trained on the soft targets of single model s
  average       one model made of L fresh members whose averaged logits are trained jointly
                (lr x L, so each member moves as fast as a single model)
  wide          the same L members summed instead of averaged: one model with L x m channels per
                class (the control for 'average': same parameters, no 1/L on the output)

Every model is trained by full-batch GD (or SGD with net.batch_size) on the training set and
measured on the training set and on separate all-multi-view and all-single-view test sets; `test_acc`
mixes the two with the training mixture, (1 - mu) * multi + mu * single. For the net, the
view-learning matrix (max over a class's channels of the correlation with each of its views) shows
the mechanism: which classes learned one view, which both. Measurements, tables and plots:
jkd/probes/theory_report.py.

`run(config, workdir)` writes into the workdir: summary.json (flat `<variant>/<method>/<measure>`
scalars, what it returns and what jkd.sweep tabulates), results.json (per-model values, view
matrices), results.md (table), accuracy.png, view_learning.png, metrics.jsonl (training losses). A
rerun with the same config returns the stored summary.
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jkd import checks, losses, ranges, rundir
from jkd.data.multiview import check_config as check_data_config
from jkd.data.multiview import make_multiview
from jkd.errors import ConfigError, NonFiniteError
from jkd.models import theory as tm
from jkd.probes.theory_report import flat_summary, measure, plot_accuracy, plot_views, results_table, serialisable
from jkd.probes.theory_report import views_learned

METHODS = ("single", "ensemble", "kd", "self_distill", "average", "wide")
SPLITS = ("train", "multi_view", "single_view")
_ROLE = {"single": 0, "kd": 1, "self_distill": 2, "average": 3, "wide": 4}  # independent init streams
_NET_FIELDS = "the analysed net's hyperparameters and optimiser are one group, config.net"
RENAMED = {
    "model.channels": f"net.channels ({_NET_FIELDS})",
    "model.q": f"net.q ({_NET_FIELDS})",
    "model.varrho": f"net.varrho ({_NET_FIELDS})",
    "model.init_std": f"net.init_std ({_NET_FIELDS})",
    "train.steps": f"net.steps ({_NET_FIELDS}; a trained stage's step count is steps in its group)",
    "train.lr": f"net.lr ({_NET_FIELDS})",
    "train.batch_size": f"net.batch_size ({_NET_FIELDS}; it applies to rf and ntk too)",
    "train.log_every": "log_every (top level, as in every jkd recipe)",
    "kd.students": "kd.num_students (an int; config.students is a dict of student models everywhere else in jkd)",
}


def check_config(config) -> None:
    """Every check of a theory config, before anything is generated or compiled (ConfigError)."""
    checks.check_renamed(config, RENAMED)
    ranges.check(config)  # every numeric field's own range (jkd/ranges.py); the relations follow
    check_data_config(config.data)
    checks.comma_list(config.variants, tm.VARIANTS, "variants")
    checks.comma_list(config.methods, METHODS, "methods")
    if config.kd.num_students > config.ensemble.size:
        raise ConfigError(f"config.kd.num_students: {config.kd.num_students} self-distillation students need as "
                          f"many teachers, but config.ensemble.size = {config.ensemble.size}")
    checks.one_of(config, "ensemble.average", ("logits", "probs"))
    checks.fraction(config, "kd.weight")  # stricter than jkd/ranges.py: weight * KD + (1 - weight) * CE
    b = config.net.batch_size
    if not isinstance(b, int) or not 0 <= b <= config.data.num_train:
        raise ConfigError(f"config.net.batch_size: 0 (full batch) or 1..data.num_train = {config.data.num_train}, "
                          f"got {b!r}")


def model_cfg(config, variant: str) -> tm.ModelCfg:
    """The ModelCfg of one variant; rf and ntk share the net's q, varrho (and channels for ntk)."""
    net = config.net
    init_std = {"net": net.init_std, "rf": config.rf.init_std, "ntk": config.ntk.init_std}[variant]
    return tm.ModelCfg(variant=variant, q=net.q, varrho=float(net.varrho), init_std=float(init_std),
                       channels=net.channels, features=config.rf.features)


def _schedule(config, variant: str) -> tuple[int, float]:
    """(steps, lr) of a variant: config.net, config.rf or config.ntk."""
    section = config[variant]
    return section.steps, float(section.lr)


# ----------------------------------------------------------------------------- models, many at once

def init_models(key: jax.Array, mc: tm.ModelCfg, count: int, *, num_classes: int, dim: int,
                members: int = 0) -> tuple[dict, dict]:
    """(params, frozen) of `count` models stacked on axis 0, model i from fold_in(key, i).

    members > 0: each model is an average of `members` sub-models: leaves [count, members, ...].
    """
    def one(i):
        k = jax.random.fold_in(key, i)
        if members:
            return jax.vmap(lambda j: tm.init_params(jax.random.fold_in(k, j), mc, num_classes=num_classes,
                                                     dim=dim))(jnp.arange(members))
        return tm.init_params(k, mc, num_classes=num_classes, dim=dim)
    return jax.vmap(one)(jnp.arange(count))


def _features(frozen, x, mc, members):
    """Per-model fixed features (tm.features); an ensemble-of-members model stacks its members'."""
    if members and mc.variant != "net":
        return jax.vmap(lambda fr: tm.features(fr, x, mc))(frozen)
    return tm.features(frozen, x, mc)


def _head(params, frozen, x, feats, mc, members, combine):
    """Logits [N, k] of one model; with members, the mean (combine='mean') or sum of their logits."""
    if members:
        logits = jax.vmap(lambda p, fr, f: tm.head(p, fr, x, f, mc))(params, frozen, feats)
        return logits.mean(0) if combine == "mean" else logits.sum(0)
    return tm.head(params, frozen, x, feats, mc)


@functools.partial(jax.jit, static_argnames=("mc", "members", "combine"))
def _logits_one(params, frozen, x, mc, members, combine):
    return _head(params, frozen, x, _features(frozen, x, mc, members), mc, members, combine)


def logits_of(params: dict, frozen: dict, x: np.ndarray, mc: tm.ModelCfg, *, members: int = 0,
              combine: str = "mean") -> jax.Array:
    """Logits [R, N, k] of R stacked models on x [N, P, d] (one model at a time: bounded memory)."""
    x = jnp.asarray(x)
    return jax.lax.map(lambda pf: _logits_one(pf[0], pf[1], x, mc, members, combine), (params, frozen))


@functools.partial(jax.jit, static_argnames=("mc", "members"))
def _features_all(frozen, x, mc, members):
    return jax.lax.map(lambda fr: _features(fr, x, mc, members), frozen)


@functools.partial(jax.jit, static_argnames=("length", "mc", "lr", "batch_size", "kd_temperature", "kd_weight",
                                             "members", "combine"))
def _train_chunk(params, frozen, x, feats, labels, teacher, batch_key, start, *, length, mc, lr, batch_size,
                 kd_temperature, kd_weight, members, combine):
    """`length` GD steps of every stacked model (see train_models); returns (params, mean loss [length])."""
    in_axes = (0, 0, 0, None if teacher is None or teacher.ndim == 2 else 0, None)

    def loss_fn(p, fr, f, t, idx):
        xx, y = x, labels
        if batch_size:  # fixed features of members are [L, N, ...]: their example axis is 1
            xx, y, t = x[idx], labels[idx], None if t is None else t[idx]
            f = jax.tree.map(lambda a: a[:, idx] if members else a[idx], f)
        logits = _head(p, fr, xx, f, mc, members, combine)
        ce = losses.cross_entropy(logits, y)
        if t is None:
            return ce
        return kd_weight * losses.kd_kl(logits, t, temperature=kd_temperature) + (1.0 - kd_weight) * ce

    grad_fn = jax.vmap(jax.value_and_grad(loss_fn), in_axes=in_axes)

    def step(p, i):
        idx = (jax.random.choice(jax.random.fold_in(batch_key, i), labels.shape[0], (batch_size,), replace=False)
               if batch_size else None)
        loss, g = grad_fn(p, frozen, feats, teacher, idx)
        return jax.tree.map(lambda a, b: a - lr * b, p, g), loss.mean()

    return jax.lax.scan(step, params, start + jnp.arange(length))


def train_models(params: dict, frozen: dict, x: np.ndarray, labels: np.ndarray, mc: tm.ModelCfg, *,
                 steps: int, lr: float, batch_size: int = 0, teacher_logits=None, kd_temperature: float = 1.0,
                 kd_weight: float = 1.0, members: int = 0, combine: str = "mean", seed: int = 0,
                 chunk: int = 100, desc: str = "train", progress: bool = True, log=None) -> tuple[dict, np.ndarray]:
    """Train R stacked models at once: one `jax.vmap`-ed, `lax.scan`-ed GD program.

    params, frozen: pytrees with leading axis R (from init_models). x [N, P, d], labels [N] int.
    teacher_logits: None (cross-entropy on labels), [N, k] (one teacher for all) or [R, N, k] (one
    per model); with a teacher the loss is kd_weight * T^2 KL(teacher_T || model_T) + (1 - kd_weight) CE.
    members > 0: each model is `members` sub-models whose logits are averaged (combine='mean') or
    summed ('sum') and trained jointly (leaves [R, members, ...]).
    batch_size 0 = full-batch GD; else SGD on `batch_size` examples per step, drawn without
    replacement from PRNGKey(seed), the same batches for every model. Every `chunk` steps the last
    mean loss goes to log({'step', 'loss'}) and the progress bar. Returns (params, losses
    [ceil(steps / chunk)]). The compiled chunk is cached by shapes and settings: a sweep compiles once.
    Raises NonFiniteError (naming desc, the step and the loss) when a chunk's logged loss is not finite.
    """
    labels = jnp.asarray(labels)
    x = jnp.asarray(x)
    feats = _features_all(frozen, x, mc, members) if mc.variant != "net" else {}  # once: [R, (members,) N, ...]
    teacher = None if teacher_logits is None else jnp.asarray(teacher_logits)
    static = dict(mc=mc, lr=float(lr), batch_size=int(batch_size), kd_temperature=float(kd_temperature),
                  kd_weight=float(kd_weight), members=int(members), combine=combine)
    batch_key = jax.random.PRNGKey(seed)
    history = []
    with tqdm(total=steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True) as bar:
        done = 0
        while done < steps:
            length = min(chunk, steps - done)
            params, chunk_losses = _train_chunk(params, frozen, x, feats, labels, teacher, batch_key, done,
                                                length=length, **static)
            done += length
            history.append(float(chunk_losses[-1]))
            if not np.isfinite(history[-1]):
                raise NonFiniteError(f"{desc}: the loss is {history[-1]} at step {done}; training diverged: try a "
                                     f"lower learning rate (config.{mc.variant}.lr)")
            bar.update(length)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
            if log is not None:
                log({"step": done, "loss": history[-1]})
    return params, np.asarray(history)


def ensemble_logits(logits: jax.Array, average: str = "logits", temperature: float = 1.0) -> jax.Array:
    """Combine member logits [L, N, k] -> [N, k]: mean logits, or ('probs') logits whose softmax at
    `temperature` is the mean of the members' softmax at that temperature (losses.ensemble_logits).
    A KD teacher at T needs the latter at T: the mean probabilities at T = 1, softened afterwards,
    are a different (sharper) target."""
    if average == "probs":
        return losses.ensemble_logits(logits, temperature)
    return logits.mean(0)



def run_variant(config, variant: str, data, *, log=None) -> dict:
    """All requested methods for one variant: {method: {'acc': {split: [R]}, 'views': [R, k, 2]?, ...}}."""
    mc = model_cfg(config, variant)
    steps, lr = _schedule(config, variant)
    methods = checks.comma_list(config.methods, METHODS, "methods")
    k, dim = data.num_classes, data.views.shape[1]
    L, S = config.ensemble.size, config.kd.num_students
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), tm.VARIANTS.index(variant))
    views = jnp.asarray(data.views)
    x = {"train": data.train["x"], "multi_view": data.test_multi["x"], "single_view": data.test_single["x"]}
    fraction = config.probe.view_threshold
    has_views = variant == "net"  # rf has no per-class first layer; ntk's stays near its (large) init
    common = dict(steps=steps, lr=lr, batch_size=config.net.batch_size, seed=config.seed,
                  progress=config.progress, chunk=config.log_every)

    def init(method, count, members=0):
        return init_models(jax.random.fold_in(key, _ROLE[method]), mc, count, num_classes=k, dim=dim,
                           members=members)

    def logger(method):
        return None if log is None else (lambda rec: log({"variant": variant, "method": method, **rec}))

    def views_of(params, members=0):
        """{'corr', 'learned'} [R, k, 2]; a model made of members is one model with all their channels."""
        if not has_views:
            return {}
        fn = jax.vmap(lambda p: tm.view_correlations(p, views))
        corr = np.asarray(jax.vmap(fn)(params).max(axis=1) if members else fn(params))
        return {"corr": corr, "learned": views_learned(corr, fraction, mc.varrho)}

    def trained(method, count, **kwargs):
        members, combine = kwargs.get("members", 0), kwargs.get("combine", "mean")
        params, frozen = init(method, count, members)
        params, _ = train_models(params, frozen, data.train["x"], data.train["label"], mc, **{**common, **kwargs},
                                 log=logger(method))
        logits = {s: logits_of(params, frozen, x[s], mc, members=members, combine=combine) for s in SPLITS}
        return logits, views_of(params, members)

    out = {}
    if set(methods) & {"single", "ensemble", "kd", "self_distill"}:
        single_logits, single_views = trained("single", L, desc=f"{variant}: {L} single models")
        out["single"] = measure(single_logits, data, **single_views)
        ens = {s: ensemble_logits(lg, config.ensemble.average)[None] for s, lg in single_logits.items()}
        ens_views = {n: v.max(0, keepdims=True) for n, v in single_views.items()}
        out["ensemble"] = measure(ens, data, **ens_views)
    kd_args = dict(kd_temperature=config.kd.temperature, kd_weight=config.kd.weight)
    if "kd" in methods:
        teacher = ensemble_logits(single_logits["train"], config.ensemble.average, config.kd.temperature)
        logits, v = trained("kd", S, teacher_logits=teacher, **kd_args, desc=f"{variant}: {S} KD students")
        out["kd"] = measure(logits, data, **v)
    if "self_distill" in methods:
        logits, v = trained("self_distill", S, teacher_logits=single_logits["train"][:S], **kd_args,
                            desc=f"{variant}: {S} self-distilled")
        out["self_distill"] = measure(logits, data, **v)
    if "average" in methods:
        # lr x L: each member then moves as fast as a single model does (its gradient is 1/L of one)
        logits, v = trained("average", 1, members=L, lr=lr * L, desc=f"{variant}: average of {L}")
        out["average"] = measure(logits, data, **v)
    if "wide" in methods:  # the sum of L members = one model with L x m channels per class
        logits, v = trained("wide", 1, members=L, combine="sum", desc=f"{variant}: {L}x wide")
        out["wide"] = measure(logits, data, **v)
    return {m: out[m] for m in methods}


# ----------------------------------------------------------------------------- entry point

def run(config, workdir: str) -> dict:
    """Run every requested variant and method; write the reports; return the flat summary (the
    stored one when this exact config already ran in workdir)."""
    check_config(config)
    return rundir.cached_run(workdir, config, lambda log: _measured_run(config, workdir, log))


def _measured_run(config, workdir: str, log) -> dict:
    """Every variant on one data draw, timed, with the reports (rundir.cached_run writes summary.json)."""
    t0 = time.time()
    data_seed = config.seed if config.data.seed < 0 else config.data.seed
    data = make_multiview(config.data, seed=data_seed)
    results, times = {}, {}
    for variant in checks.comma_list(config.variants, tm.VARIANTS, "variants"):
        t = time.time()
        results[variant] = run_variant(config, variant, data, log=log)
        times[f"{variant}/wall_time_s"] = time.time() - t

    summary = {"seed": config.seed, "data_seed": data_seed, **flat_summary(results), **times,
               "wall_time_s": time.time() - t0}
    header = (f"Multi-view probe (seed {config.seed}, data seed {data_seed}): k = {config.data.num_classes}, "
              f"d = {config.data.dim}, P = {config.data.num_patches}, mu = {config.data.mu}, "
              f"{config.data.num_train} training samples; ensemble of {config.ensemble.size}, "
              f"{config.kd.num_students} KD / self-distillation students, T = {config.kd.temperature}. "
              "Accuracies in %, mean ± std over the method's models.")
    rundir.write_json(workdir, "results.json", {"summary": summary, "results": serialisable(results)}, indent=None)
    rundir.report(workdir, header, results_table(results, config.data.mu), progress=config.progress)
    if rundir.is_writer():
        plot_accuracy(results, os.path.join(workdir, "accuracy.png"))
        plot_views(results, os.path.join(workdir, "view_learning.png"), config.ensemble.size)
    return summary
