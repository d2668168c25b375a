"""Theory probes: ensemble, knowledge distillation and self-distillation on multi-view data
(Allen-Zhu & Li, ICLR 2023), all from one config (configs/theory/multiview.py).

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

Every model is trained by full-batch GD (or SGD with train.batch_size) on the training set and
measured on the training set and on separate all-multi-view and all-single-view test sets; `test_acc`
mixes the two with the training mixture, (1 - mu) * multi + mu * single. For the net, the
view-learning matrix (max over a class's channels of the correlation with each of its views) shows
the mechanism: which classes learned one view, which both.

Writes into the workdir: summary.json (flat `<variant>/<method>/<measure>` scalars, what
`run_theory` returns and what jkd.sweep tabulates), results.json (per-model values, view matrices),
results.md (table), accuracy.png, view_learning.png, metrics.jsonl (training losses). A rerun with
the same config returns the stored summary.
"""
from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jkd import losses
from jkd.data.multiview import check_config as check_data_config
from jkd.data.multiview import make_multiview
from jkd.errors import ConfigError
from jkd.models import theory as tm

METHODS = ("single", "ensemble", "kd", "self_distill", "average", "wide")
SPLITS = ("train", "multi_view", "single_view")
_ROLE = {"single": 0, "kd": 1, "self_distill": 2, "average": 3, "wide": 4}  # independent init streams


def _names(value, known, field):
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise ConfigError(f"config.{field}: need a comma-separated subset of {', '.join(known)}; got {value!r}")
    return names


def _positive_int(config, field):
    value = config
    for part in field.split("."):
        value = value[part]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"config.{field}: must be a positive integer, got {value!r}")


def _positive(config, field):
    value = config
    for part in field.split("."):
        value = value[part]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"config.{field}: must be > 0, got {value!r}")


def check_config(config) -> None:
    """Every check of a theory config, before anything is generated or compiled (ConfigError)."""
    if not isinstance(config.seed, int) or config.seed < 0:
        raise ConfigError(f"config.seed: must be an integer >= 0, got {config.seed!r}")
    check_data_config(config.data)
    if not isinstance(config.data.seed, int) or config.data.seed < -1:
        raise ConfigError(f"config.data.seed: an integer >= 0, or -1 to follow config.seed; got {config.data.seed!r}")
    _names(config.variants, tm.VARIANTS, "variants")
    _names(config.methods, METHODS, "methods")
    q = config.model.q
    if not isinstance(q, int) or isinstance(q, bool) or q < 3:
        raise ConfigError(f"config.model.q: the smoothed ReLU's power must be an integer >= 3, got {q!r}")
    for f in ("model.channels", "rf.features", "train.steps", "rf.steps", "ntk.steps", "ensemble.size",
              "kd.students", "train.log_every"):
        _positive_int(config, f)
    for f in ("model.varrho", "model.init_std", "rf.init_std", "ntk.init_std", "train.lr", "rf.lr", "ntk.lr",
              "kd.temperature"):
        _positive(config, f)
    if config.ensemble.size < 2:
        raise ConfigError(f"config.ensemble.size: an ensemble needs at least 2 models, got {config.ensemble.size}")
    if config.kd.students > config.ensemble.size:
        raise ConfigError(f"config.kd.students: {config.kd.students} self-distillation students need as many "
                          f"teachers, but config.ensemble.size = {config.ensemble.size}")
    if not 0.0 < config.probe.view_threshold <= 1.0:
        raise ConfigError(f"config.probe.view_threshold: a fraction in (0, 1] of the model's largest view "
                          f"correlation, got {config.probe.view_threshold}")
    if config.ensemble.average not in ("logits", "probs"):
        raise ConfigError(f"config.ensemble.average: 'logits' or 'probs', got {config.ensemble.average!r}")
    if not 0.0 <= config.kd.weight <= 1.0:
        raise ConfigError(f"config.kd.weight: must be in [0, 1], got {config.kd.weight}")
    b = config.train.batch_size
    if not isinstance(b, int) or not 0 <= b <= config.data.num_train:
        raise ConfigError(f"config.train.batch_size: 0 (full batch) or 1..data.num_train = {config.data.num_train}, "
                          f"got {b!r}")


def model_cfg(config, variant: str) -> tm.ModelCfg:
    """The ModelCfg of one variant; rf and ntk share the net's q, varrho (and channels for ntk)."""
    m = config.model
    init_std = {"net": m.init_std, "rf": config.rf.init_std, "ntk": config.ntk.init_std}[variant]
    return tm.ModelCfg(variant=variant, q=m.q, varrho=float(m.varrho), init_std=float(init_std),
                       channels=m.channels, features=config.rf.features)


def _schedule(config, variant: str) -> tuple[int, float]:
    """(steps, lr) of a variant: the net trains with config.train, rf and ntk with their own."""
    section = {"net": config.train, "rf": config.rf, "ntk": config.ntk}[variant]
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


# ----------------------------------------------------------------------------- measurements

def accuracies(logits: dict, data) -> dict:
    """{split: [R] accuracy} from {split: logits [R, N, k]} plus test_acc = (1-mu) multi + mu single."""
    labels = {"train": data.train["label"], "multi_view": data.test_multi["label"],
              "single_view": data.test_single["label"]}
    acc = {s: np.asarray((np.asarray(lg).argmax(-1) == labels[s][None]).mean(-1)) for s, lg in logits.items()}
    acc["test"] = (1.0 - data.mu) * acc["multi_view"] + data.mu * acc["single_view"]
    return acc


def views_learned(corr: np.ndarray, fraction: float, floor: float) -> np.ndarray:
    """corr [R, k, 2] -> bool [R, k, 2]: view (j, l) counts as learned by model r when its correlation is
    at least `fraction` of model r's largest view correlation and at least `floor` (varrho: the
    smoothed ReLU's linear part). Relative, because the learned views' scale grows with steps, q and
    varrho, and a view at a few varrho already counts as "partly learned" but barely moves a logit."""
    corr = np.asarray(corr)
    return corr >= np.maximum(fraction * corr.max(axis=(1, 2), keepdims=True), floor)


def view_fractions(learned: np.ndarray) -> dict:
    """learned [R, k, 2] bool -> per model [R]: fractions of classes with both / one / no view learned."""
    count = np.asarray(learned).sum(-1)
    return {"views_both": (count == 2).mean(-1), "views_one": (count == 1).mean(-1),
            "views_none": (count == 0).mean(-1)}


def single_view_by_view(logits: np.ndarray, split: dict, learned: np.ndarray) -> dict:
    """Single-view test accuracy [R] split by whether model r learned the sample's strong view
    (NaN where no sample falls in a group): the mechanism in one number pair."""
    y, strong = split["label"], split["strong_view"]
    known = np.asarray(learned)[:, y, strong]                       # [R, N]
    correct = np.asarray(logits).argmax(-1) == y[None]
    with np.errstate(invalid="ignore"):
        return {"view_learned": (correct & known).sum(1) / known.sum(1),
                "view_missed": (correct & ~known).sum(1) / (~known).sum(1)}


def _measure(logits, data, corr=None, learned=None):
    out = {"acc": accuracies(logits, data)}
    if corr is not None:
        out["views"], out["learned"] = np.asarray(corr), np.asarray(learned)
        out["view_fractions"] = view_fractions(learned)
        out["acc"].update({f"single_view_{k}": v for k, v in
                           single_view_by_view(logits["single_view"], data.test_single, learned).items()})
    return out


def run_variant(config, variant: str, data, *, log=None) -> dict:
    """All requested methods for one variant: {method: {'acc': {split: [R]}, 'views': [R, k, 2]?, ...}}."""
    mc = model_cfg(config, variant)
    steps, lr = _schedule(config, variant)
    methods = _names(config.methods, METHODS, "methods")
    k, dim = data.num_classes, data.views.shape[1]
    L, S = config.ensemble.size, config.kd.students
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), tm.VARIANTS.index(variant))
    views = jnp.asarray(data.views)
    x = {"train": data.train["x"], "multi_view": data.test_multi["x"], "single_view": data.test_single["x"]}
    fraction = config.probe.view_threshold
    has_views = variant == "net"  # rf has no per-class first layer; ntk's stays near its (large) init
    common = dict(steps=steps, lr=lr, batch_size=config.train.batch_size, seed=config.seed,
                  progress=config.progress, chunk=config.train.log_every)

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
        out["single"] = _measure(single_logits, data, **single_views)
        ens = {s: ensemble_logits(lg, config.ensemble.average)[None] for s, lg in single_logits.items()}
        ens_views = {n: v.max(0, keepdims=True) for n, v in single_views.items()}
        out["ensemble"] = _measure(ens, data, **ens_views)
    kd_args = dict(kd_temperature=config.kd.temperature, kd_weight=config.kd.weight)
    if "kd" in methods:
        teacher = ensemble_logits(single_logits["train"], config.ensemble.average, config.kd.temperature)
        logits, v = trained("kd", S, teacher_logits=teacher, **kd_args, desc=f"{variant}: {S} KD students")
        out["kd"] = _measure(logits, data, **v)
    if "self_distill" in methods:
        logits, v = trained("self_distill", S, teacher_logits=single_logits["train"][:S], **kd_args,
                            desc=f"{variant}: {S} self-distilled")
        out["self_distill"] = _measure(logits, data, **v)
    if "average" in methods:
        # lr x L: each member then moves as fast as a single model does (its gradient is 1/L of one)
        logits, v = trained("average", 1, members=L, lr=lr * L, desc=f"{variant}: average of {L}")
        out["average"] = _measure(logits, data, **v)
    if "wide" in methods:  # the sum of L members = one model with L x m channels per class
        logits, v = trained("wide", 1, members=L, combine="sum", desc=f"{variant}: {L}x wide")
        out["wide"] = _measure(logits, data, **v)
    return {m: out[m] for m in methods}


# ----------------------------------------------------------------------------- reports

_MEASURES = (("train", "train_acc"), ("multi_view", "multi_view_acc"), ("single_view", "single_view_acc"),
             ("test", "test_acc"), ("single_view_view_learned", "sv_view_learned_acc"),
             ("single_view_view_missed", "sv_view_missed_acc"))


def flat_summary(results: dict) -> dict:
    """{'<variant>/<method>/<measure>': mean over the method's models} (accuracies in [0, 1])."""
    flat = {}
    for variant, methods in results.items():
        for method, r in methods.items():
            for split, name in _MEASURES:
                values = np.asarray(r["acc"].get(split, []), dtype=float)
                if np.isfinite(values).any():
                    flat[f"{variant}/{method}/{name}"] = float(np.nanmean(values))
            for name, v in r.get("view_fractions", {}).items():
                if name != "views_none":
                    flat[f"{variant}/{method}/{name}"] = float(np.mean(v))
    return flat


def _pm(values, scale=100.0):
    v = scale * np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return "–"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if v.size > 1 else f"{v.mean():.1f}"


def results_table(results: dict, mu: float) -> str:
    """Markdown: one row per (variant, method); accuracies in %, mean ± std over the method's models.
    The two 'single-view, strong view ...' columns split the single-view test set by whether the
    model learned the view each sample shows strongly (net only)."""
    lines = ["| variant | method | models | train | multi-view test | single-view test | "
             f"test (mu = {mu:g}) | single-view, strong view learned | ... missed | "
             "classes with both views | with one view |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, methods in results.items():
        for method, r in methods.items():
            acc, vf = r["acc"], r.get("view_fractions")
            views = (_pm(vf["views_both"]), _pm(vf["views_one"])) if vf else ("–", "–")
            lines.append(f"| {variant} | {method} | {len(acc['train'])} | {_pm(acc['train'])} | "
                         f"{_pm(acc['multi_view'])} | {_pm(acc['single_view'])} | {_pm(acc['test'])} | "
                         f"{_pm(acc.get('single_view_view_learned', []))} | "
                         f"{_pm(acc.get('single_view_view_missed', []))} | {views[0]} | {views[1]} |")
    return "\n".join(lines)


def _plot_accuracy(results: dict, path: str) -> None:
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    variants = list(results)
    fig, axes = plt.subplots(1, len(variants), figsize=(4.5 * len(variants), 3.6), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        methods = list(results[variant])
        pos = np.arange(len(methods))
        for i, (split, label) in enumerate((("multi_view", "multi-view test"), ("single_view", "single-view test"))):
            vals = [100 * np.asarray(results[variant][m]["acc"][split]) for m in methods]
            ax.bar(pos + (i - 0.5) * 0.38, [v.mean() for v in vals], 0.38, label=label,
                   yerr=[v.std(ddof=1) if v.size > 1 else 0 for v in vals], capsize=3)
        ax.set_xticks(pos, [m.replace("_", "-") for m in methods], rotation=30)
        ax.set_ylim(0, 100)
        ax.set_title(variant)
        ax.set_ylabel("accuracy (%)")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_view_matrices(panels: list[tuple], path: str, *, vmax=None, label="") -> None:
    """Heatmaps, one per panel (title, matrix [k, 2][, learned bool [k, 2]]): views on the rows,
    classes on the columns; learned cells get a white dot."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    k = panels[0][1].shape[0]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(4.0, 0.45 * k + 1.5), 1.15 * len(panels) + 0.8),
                             squeeze=False, gridspec_kw={"hspace": 0.55})
    vmax = vmax or max(float(np.nanmax(p[1])) for p in panels)
    for ax, panel in zip(axes[:, 0], panels):
        title, m = panel[:2]
        im = ax.imshow(np.asarray(m).T, vmin=0, vmax=vmax, cmap="viridis", aspect="auto")
        if len(panel) > 2:
            cls, view = np.nonzero(np.asarray(panel[2]))
            ax.scatter(cls, view, s=12, c="white")
        ax.set_yticks([0, 1], ["view 1", "view 2"])
        ax.set_xticks(range(k), [str(j) for j in range(k)])
        ax.tick_params(labelbottom=ax is axes[-1, 0])  # class numbers once, at the bottom
        ax.set_title(title, fontsize=9)
    axes[-1, 0].set_xlabel("class")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label=label, shrink=0.8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plot_views(results: dict, path: str) -> None:
    panels = [(f"{m}, {'union over members' if m == 'ensemble' else 'model 0'}: both views in "
               f"{100 * np.mean(r['view_fractions']['views_both']):.0f}% of classes (all models)",
               r["views"][0], r["learned"][0])
              for m, r in results.get("net", {}).items() if "views" in r]
    if panels:
        plot_view_matrices(panels, path, label="max_r <w_(j,r), v_(j,l)>\n(dot: learned)")


def sweep_figures(records: list[dict], out_dir: str, group_of) -> list[str]:
    """jkd.sweep hook: view-learning heatmaps over a sweep of the theory probe.

    For each group of points (group_of(record) -> label, e.g. 'data.mu=0.2'), the fraction of the
    net's models (over every seed and model in the group) that learned view l of class j, one panel
    per method. Writes <out_dir>/view_learning_<i>.png per group; returns the paths.
    """
    groups: dict = {}
    for rec in records:
        path = os.path.join(rec["workdir"], "results.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            res = json.load(f)
        for method, r in res.get("results", {}).get("net", {}).items():
            if "learned" in r:
                groups.setdefault(group_of(rec), {}).setdefault(method, []).extend(r["learned"])
    paths = []
    for i, (label, methods) in enumerate(groups.items()):
        panels = [(f"{m} ({len(v)} models)", np.mean(np.asarray(v, dtype=float), axis=0)) for m, v in methods.items()]
        path = os.path.join(out_dir, f"view_learning_{i}.png")
        plot_view_matrices(panels, path, vmax=1.0, label=f"fraction of models that\nlearned the view ({label})")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- entry point

def run_theory(config, workdir: str) -> dict:
    """Run every requested variant and method; write the reports; return the flat summary."""
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    config_json = json.loads(config.to_json_best_effort())
    summary_path, config_path = os.path.join(workdir, "summary.json"), os.path.join(workdir, "config.json")
    if os.path.exists(summary_path) and os.path.exists(config_path):
        with open(config_path) as f:
            if json.load(f) == config_json:  # same command rerun: report what it measured
                with open(summary_path) as g:
                    return json.load(g)
    # Every process computes the same (replicated) probe; process 0 alone writes its files.
    writer = jax.process_index() == 0
    if writer:
        with open(config_path, "w") as f:
            json.dump(config_json, f, indent=2)
    t0 = time.time()
    data_seed = config.seed if config.data.seed < 0 else config.data.seed
    data = make_multiview(config.data, seed=data_seed)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if writer:
        open(metrics_path, "w").close()

    def log(record):
        if writer:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    results, times = {}, {}
    for variant in _names(config.variants, tm.VARIANTS, "variants"):
        t = time.time()
        results[variant] = run_variant(config, variant, data, log=log)
        times[f"{variant}/wall_time_s"] = time.time() - t

    summary = {"seed": config.seed, "data_seed": data_seed, **flat_summary(results), **times,
               "wall_time_s": time.time() - t0}
    table = results_table(results, config.data.mu)
    header = (f"Multi-view probe (seed {config.seed}, data seed {data_seed}): k = {config.data.num_classes}, "
              f"d = {config.data.dim}, P = {config.data.num_patches}, mu = {config.data.mu}, "
              f"{config.data.num_train} training samples; ensemble of {config.ensemble.size}, "
              f"{config.kd.students} KD / self-distillation students, T = {config.kd.temperature}. "
              "Accuracies in %, mean ± std over the method's models.")
    serial = {v: {m: {"acc": {s: np.asarray(a).tolist() for s, a in r["acc"].items()},
                      **({"views": r["views"].tolist(), "learned": r["learned"].tolist(),
                          "view_fractions": {n: np.asarray(a).tolist() for n, a in r["view_fractions"].items()}}
                         if "views" in r else {})}
                  for m, r in ms.items()} for v, ms in results.items()}
    if writer:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"summary": summary, "results": serial}, f)
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(header + "\n\n" + table + "\n")
        _plot_accuracy(results, os.path.join(workdir, "accuracy.png"))
        _plot_views(results, os.path.join(workdir, "view_learning.png"))
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
    if config.progress and writer:
        print("\n" + header + "\n\n" + table + "\n")
    return summary
