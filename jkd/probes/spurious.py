"""Group fairness under KD on spurious-correlation data, and early-exit reweighted KD (config.trainer = 'spurious').

    python -m jkd.main --config configs/fairness/spurious.py --workdir /tmp/jkd_spurious

A teacher trained on the labels of spurious-correlation data, then students trained together from
one init on the same batches (jkd.probes.multiseed.train_stack), one per loss in config.student_losses:
    ce          labels only
    kd          Hinton KD (T^2 KL + CE)
    kd_margin   KD + CE with per-example weights from the early exit's softmax confidence margin
                where the exit is wrong (Tiwari et al. 2024)
    kd_laplace  the same with the exit's confidence under a last-layer Laplace approximation
                (Fasth & Singh 2025; jkd.probes.laplace), refitted every epoch
Measured on a group-balanced test set: average, per-group and worst-group accuracy, disparity,
statistical-parity and equal-opportunity gaps (jkd/evaluate.py).

The early exit: a linear head on the mean of block `student.exit_block`'s tokens (ViT) or stage
map (ConvNeXt), trained by CE on the student's detached features, so it is a probe of what the
early layers know and does not change the student. Its weights for example i:
    w_i = exp(beta * conf_i) if the exit's prediction is wrong, else 1
    conf_i = p_top1 - p_top2 of softmax(exit logits)             (margin)
    conf_i = 1 - H(p~_i) / log K, p~ the Laplace predictive     (laplace)
and the KD term is a weighted mean under w (jkd.losses' `weights`; Tiwari et al. reweight the distillation loss;
`reweight.terms = 'kd_and_ce'` also weights the CE term, the form before issue 14). The exact weighting functions of
both papers are not in what we could read: this form is our choice (docs/FAIRNESS.md). `run(config, workdir)` writes
summary.json (flat `<model>/<measure>`, what it returns), results.md, metrics.jsonl, group_accuracy.png,
exit_weights.png into the workdir; a rerun of the same config returns the stored summary.
"""
from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jkd import checks, evaluate, losses, rundir
from jkd.data import synthetic
from jkd.errors import ConfigError
from jkd.probes.laplace import laplace_precision, laplace_predictive, logit_covariance
from jkd.probes.multiseed import (check_teacher_student, early_features, feature_depth, forward_all, model_spec,
                                  normalise, stack, train_stack, unstack)
from jkd.train.state import apply_model, graphdef_and_shapes, init_params, make_optimizer, model_features

STUDENT_LOSSES = ("ce", "kd", "kd_margin", "kd_laplace")
_K = 2  # classes: the binary label
_MODE = {"ce": 0, "kd": 0, "kd_margin": 1, "kd_laplace": 2}  # weighting of each student
GROUP_NAMES = ("y0_a0", "y0_a1", "y1_a0", "y1_a1")  # spurious groups g = 2 * label + attribute
# Which loss terms the exit's weights multiply: Tiwari et al. (2024) reweight the distillation loss
# ('kd', the default); 'kd_and_ce' also weights the label term (jkd's form before issue 14).
REWEIGHT_TERMS = ("kd", "kd_and_ce")
RENAMED = {"students": "student_losses (the comma-separated losses of the students trained together; "
                       "config.students is a dict of student models everywhere else in jkd)"}


def check_config(config) -> None:
    """Every start-up check of a spurious-probe config (ConfigError naming the field)."""
    checks.check_renamed(config, RENAMED)
    check_teacher_student(config)
    student_losses(config)
    if config.data.name not in ("spurious_synthetic", "celeb_a"):
        raise ConfigError(f"config.data.name: the spurious probe reads 'spurious_synthetic' or 'celeb_a' "
                          f"(TFDS, attributes as label and group), got {config.data.name!r}")
    if config.data.name == "spurious_synthetic" and config.data.core_size > config.data.image_size:
        raise ConfigError(f"config.data.core_size: the core shape must fit in the image, <= data.image_size = "
                          f"{config.data.image_size}; got {config.data.core_size}")
    depth = feature_depth(config.student.model.name)
    if not 0 <= config.student.exit_block < depth - 1:
        raise ConfigError(f"config.student.exit_block: an early block of {config.student.model.name!r}, "
                          f"0..{depth - 2}; got {config.student.exit_block}")
    if checks.has(config, "reweight.terms"):
        checks.one_of(config, "reweight.terms", REWEIGHT_TERMS)
    checks.one_of(config, "laplace.predictive", ("probit", "mc"))


def student_losses(config) -> list[str]:
    """config.student_losses as a list, e.g. ['ce', 'kd', 'kd_margin', 'kd_laplace']."""
    return checks.comma_list(config.student_losses, STUDENT_LOSSES, "student_losses")


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


# ----------------------------------------------------------------------------- the early exit and the loss

def exit_logits(exit_params: dict, phi: jax.Array) -> jax.Array:
    """Linear early exit: phi [B, D] -> logits [B, K]."""
    return phi @ exit_params["kernel"] + exit_params["bias"]


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


# ----------------------------------------------------------------------------- the probe

def train_and_measure(config, log=None) -> tuple[dict, dict]:
    """Teacher + students on spurious-correlation data; returns (flat summary, detailed results)."""
    train, test = load_group_data(config, "train", config.seed), load_group_data(config, "test", config.seed)
    teacher, teacher_train_logits = _train_teacher(config, train, log)
    students, posterior = _train_students(config, train, teacher_train_logits, log)
    results = _measure(config, teacher, students, posterior, train, test)
    summary = {}  # flat: '<role>/<measure>', the per-group accuracies by group name
    for role in [r for r in results if not r.startswith("_")]:
        for key_, v in results[role].items():
            if key_ == "group_acc":
                summary.update({f"{role}/{g}_acc": float(a) for g, a in zip(GROUP_NAMES, v)})
            elif key_ != "weights":
                summary[f"{role}/{key_}"] = float(v)
    return summary, results


def _train_teacher(c, train: dict, log) -> tuple[tuple, jax.Array]:
    """The teacher, by labels only (ERM), so it learns whatever shortcut the data offers. train: 'image'
    [N, S, S, C], 'label' [N]. Returns ((graphdef, params on a model axis of 1), its logits on train [N, K])."""
    mean, std = float(c.data.mean), float(c.data.std)
    t_spec = model_spec(c.teacher.model, _K, c.data.image_size, train["image"].shape[-1])
    t_graph, _ = graphdef_and_shapes(t_spec)

    def teacher_loss(p, batch, key, aux):
        logits = apply_model(t_graph, p["model"], normalise(batch["image"], mean, std))
        return losses.cross_entropy(logits, batch["label"]), {}

    t_params = stack([{"model": init_params(t_spec, c.seed)}])
    t_params, _ = train_stack(teacher_loss, t_params, make_optimizer(c.optimizer, c.teacher.steps), train["image"],
                              train["label"], steps=c.teacher.steps, batch_size=c.batch_size, seed=c.seed,
                              log_every=c.log_every, desc="teacher", progress=c.progress, log=log)
    return (t_graph, t_params), jnp.asarray(forward_all(t_graph, t_params, train["image"], mean=mean, std=std)[0][0])


def _train_students(c, train: dict, teacher_train_logits: jax.Array, log) -> tuple[tuple, object]:
    """The M students of config.student_losses: one init, the same batches; aux per student: 'kd' [M] (KD switch),
    'mode' [M] (weighting), 'cov' [M, P, P] (P = (D + 1) K: the exit's Laplace posterior on features phi [., D],
    refitted every epoch if kd_laplace). Returns ((graphdef, params [M, ...]), posterior(params) -> that aux)."""
    methods, image_shape, lap, n = student_losses(c), train["image"].shape[1:], c.laplace, len(train["label"])
    mean, std, exit_block = float(c.data.mean), float(c.data.std), c.student.exit_block
    s_spec = model_spec(c.student.model, _K, c.data.image_size, image_shape[-1])
    s_graph, s_shapes = graphdef_and_shapes(s_spec)
    dim = int(jax.eval_shape(lambda p: early_features(model_features(s_graph, p, jnp.zeros((1,) + image_shape)),
                                                      exit_block), s_shapes).shape[-1])
    s_init = {"model": init_params(s_spec, c.seed + 1), "exit": {"kernel": jnp.zeros((dim, _K)),
                                                                 "bias": jnp.zeros((_K,))}}
    s_params = stack([s_init] * len(methods))
    p_dim = (dim + 1) * _K
    aux0 = {"kd": jnp.array([m != "ce" for m in methods], jnp.float32),
            "mode": jnp.array([_MODE[m] for m in methods], jnp.int32),
            "cov": jnp.broadcast_to(jnp.eye(p_dim), (len(methods), p_dim, p_dim))}
    fit_idx = np.random.default_rng(c.seed).permutation(n)[:min(lap.fit_examples, n)]
    fit_images = train["image"][fit_idx]
    uses_laplace = "kd_laplace" in methods

    @jax.jit
    def covariances(exit_params, phi):
        prec = jax.vmap(lambda e, f: laplace_precision(f, e, lap.prior_precision, n / len(fit_idx)))(exit_params, phi)
        return jnp.linalg.inv(prec)

    def refit(params):  # the Laplace posterior of every student's exit at its current weights
        _, phi = forward_all(s_graph, params, fit_images, mean=mean, std=std, exit_block=exit_block)
        return {**aux0, "cov": covariances(params["exit"], jnp.asarray(phi))}

    s_params, _ = train_stack(_student_loss(c, s_graph, teacher_train_logits), s_params,
                              make_optimizer(c.optimizer, c.student.steps), train["image"], train["label"],
                              steps=c.student.steps, batch_size=c.batch_size, seed=c.seed + 1, aux=aux0,
                              refit=refit if uses_laplace else None, refit_every=max(1, n // c.batch_size),
                              log_every=c.log_every, desc="students", progress=c.progress, log=log)
    return (s_graph, s_params), (refit if uses_laplace else lambda params: aux0)


def _student_loss(c, s_graph, teacher_train_logits: jax.Array):
    """train_stack's loss of one student: student_objective + the early exit's CE on the detached block
    features phi [B, D]; the teacher's logits [B, K] are teacher_train_logits [N, K] at batch['index'] [B]."""
    mean, std, exit_block, beta = float(c.data.mean), float(c.data.std), c.student.exit_block, float(c.reweight.beta)
    temp, kd_w, terms, lap = float(c.kd.temperature), float(c.kd.weight), c.reweight.get("terms", "kd"), c.laplace

    def student_loss(p, batch, key, aux):
        feats = model_features(s_graph, p["model"], normalise(batch["image"], mean, std))
        logits = feats["logits"]
        phi = jax.lax.stop_gradient(early_features(feats, exit_block))
        e_logits = exit_logits(p["exit"], phi)
        exit_ce = losses.cross_entropy(e_logits, batch["label"])
        e_sg = jax.lax.stop_gradient(e_logits)
        probs = laplace_predictive(e_sg, logit_covariance(phi, aux["cov"], _K), method=lap.predictive, key=key,
                                   samples=lap.mc_samples)
        w = exit_weights(e_sg, batch["label"], mode=aux["mode"], beta=beta, laplace_probs=probs)
        loss = student_objective(logits, batch["label"], teacher_train_logits[batch["index"]], w, kd_on=aux["kd"],
                                 kd_weight=kd_w, temperature=temp, terms=terms)
        return loss + exit_ce, {"exit_ce": exit_ce, "mean_weight": w.mean()}
    return student_loss


def _measure(c, teacher: tuple, students: tuple, posterior, train: dict, test: dict) -> dict:
    """Group reports of every model (logits [N, K]) on the balanced test set, and each student's exit weights
    [N_train] on the training set (who gets up-weighted): {role: {measure: value}, '_train_minority': [N_train]}."""
    (t_graph, t_params), (s_graph, s_params) = teacher, students
    mean, std, exit_block, methods = float(c.data.mean), float(c.data.std), c.student.exit_block, student_losses(c)
    lap, beta, uses_laplace = c.laplace, float(c.reweight.beta), "kd_laplace" in methods
    results = {}
    t_test = forward_all(t_graph, t_params, test["image"], mean=mean, std=std)[0][0]  # model 0: [N, K]
    s_test, phi_test = forward_all(s_graph, s_params, test["image"], mean=mean, std=std, exit_block=exit_block)
    aux_end = posterior(s_params)
    _, phi_train = forward_all(s_graph, s_params, train["image"], mean=mean, std=std, exit_block=exit_block)
    for role, logits in [("teacher", t_test)] + list(zip(methods, s_test)):
        results[role] = evaluate.group_report(logits.argmax(-1), test["label"], test["group"], test["attribute"],
                                              num_classes=_K, num_groups=4, positive_class=1)
    minority = train["group"] % 3 != 0  # label != attribute: groups (0,1) and (1,0)
    for i, m in enumerate(methods):
        e = unstack(s_params["exit"], i)
        results[m]["exit_worst_group_acc"] = evaluate.group_report(
            np.asarray(exit_logits(e, jnp.asarray(phi_test[i]))).argmax(-1), test["label"], test["group"],
            test["attribute"], num_classes=_K, num_groups=4)["worst_group_acc"]
        el = exit_logits(e, jnp.asarray(phi_train[i]))
        probs = laplace_predictive(el, logit_covariance(jnp.asarray(phi_train[i]), aux_end["cov"][i], _K),
                                   method=lap.predictive, key=jax.random.PRNGKey(0), samples=lap.mc_samples)
        schemes = (("margin", 1), ("laplace", 2)) if uses_laplace else (("margin", 1),)
        w = {mode: np.asarray(exit_weights(el, jnp.asarray(train["label"]), mode=mode, beta=beta, laplace_probs=probs))
             for _, mode in schemes}
        results[m]["weights"] = {name: w[mode] for name, mode in schemes}
        # how strongly each weighting singles out the minority groups (mean weight ratio)
        for name, mode in schemes:
            results[m][f"{name}_weight_ratio"] = float(w[mode][minority].mean() / w[mode][~minority].mean())
    results["_train_minority"] = minority
    return results


def run(config, workdir: str) -> dict:
    """The probe: check, train, measure; write the reports into workdir; return the flat summary
    (the stored one when this exact config already ran there)."""
    check_config(config)
    return rundir.cached_run(workdir, config, lambda log: _measured_run(config, workdir, log))


def _measured_run(config, workdir: str, log) -> dict:
    """train_and_measure, timed, with the report and figures (rundir.cached_run writes summary.json)."""
    t0 = time.time()
    summary, results = train_and_measure(config, log=log)
    roles = ["teacher"] + student_losses(config)
    header = (f"Spurious probe (seed {config.seed}): {config.data.name}, {config.data.num_train} training "
              f"examples, teacher {config.teacher.model.name}, students {config.student.model.name} (exit "
              f"at block {config.student.exit_block}); test accuracies in %.")
    if rundir.is_writer():
        plot_group_accuracy(summary, roles, os.path.join(workdir, "group_accuracy.png"),
                            labels=group_labels(config.data.name), title=f"seed {config.seed}")
        panels = [(m, w) for m, w in (("kd_margin", "margin"), ("kd_laplace", "laplace")) if m in results]
        if panels:  # the weights each reweighted student trains with
            plot_exit_weights(results, panels, os.path.join(workdir, "exit_weights.png"))
    summary = {"seed": config.seed, **summary, "wall_time_s": time.time() - t0}
    rundir.report(workdir, header, results_table(summary, roles), progress=config.progress)
    return summary


# ----------------------------------------------------------------------------- reports

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


ROLE_LABELS = {"teacher": "teacher (labels, ERM)", "ce": "ce: labels only", "kd": "kd: Hinton KD",
               "kd_margin": "kd_margin: KD, exit-margin weights", "kd_laplace": "kd_laplace: KD, Laplace weights"}


def group_labels(data_name: str) -> list[str]:
    """Tick labels of the four groups (GROUP_NAMES order); the synthetic data's say shape, tint, majority."""
    if data_name != "spurious_synthetic":
        return [f"y={g[1]}, a={g[4]}" for g in GROUP_NAMES]
    return [f"y={g[1]} {'+x'[int(g[1])]!r}, a={g[4]} {('red', 'blue')[int(g[4])]}\n"
            f"{'majority' if g[1] == g[4] else 'MINORITY'}" for g in GROUP_NAMES]


def plot_group_accuracy(summary: dict, roles: list[str], path: str, *, labels: list[str] | None = None,
                        title: str = "") -> None:
    """Bars -> PNG: every model's accuracy (%) on each of the four groups (tick labels `labels`, default
    'y=., a=.'), its worst group and its average, from a spurious-probe summary; `title` ends the title."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    ticks = (labels or group_labels("")) + ["worst group", "average"]
    cols, width = [f"{g}_acc" for g in GROUP_NAMES] + ["worst_group_acc", "avg_acc"], 0.8 / len(roles)
    fig, ax = plt.subplots(figsize=(10, 3.9))
    for i, role in enumerate(roles):
        vals = [100 * summary[f"{role}/{m}"] for m in cols]
        x = np.arange(len(ticks)) + (i - (len(roles) - 1) / 2) * width
        ax.bar(x, vals, width, label=ROLE_LABELS.get(role, role))
        for xi, v in zip(x[4:], vals[4:]):  # the two summary columns carry their numbers
            ax.text(xi, v + 1, f"{v:.0f}", ha="center", va="bottom", fontsize=6)
    ax.axvline(3.5, color="0.6", lw=0.8)
    ax.set_xticks(range(len(ticks)), ticks, fontsize=8)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 105))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("accuracy per (label y, attribute a) group, balanced test set" + (f": {title}" if title else ""),
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_exit_weights(results: dict, panels: list[tuple[str, str]], path: str) -> None:
    """Histograms -> PNG, one per (student, scheme) in panels: the weights that student's early exit gives
    the training examples at the end of training, majority vs minority groups (log counts)."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    minority = results["_train_minority"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.2), squeeze=False)
    for ax, (method, name) in zip(axes[0], panels):
        w = results[method]["weights"][name]
        bins = np.linspace(1.0, max(float(w.max()), 1.01), 30)
        ax.hist([w[~minority], w[minority]], bins=bins, log=True,
                label=[f"majority groups ({(~minority).sum()})", f"minority groups ({minority.sum()})"])
        ax.set_title(f"{method}: {name} weights (minority / majority mean "
                     f"{w[minority].mean() / w[~minority].mean():.2f}x)", fontsize=9)
        ax.set(xlabel="per-example weight (1 = exit right)", ylabel="training examples (log)")
        ax.legend(fontsize=7)
    fig.suptitle("Weights each student's early exit gives the training examples, at the end of training", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_figures(records: list[dict], out_dir: str, group_of) -> list[str]:
    """jkd.sweep hook: per-group accuracy bars (mean over each group of points) and a table of paired
    differences between the students (<out_dir>/group_accuracy_<i>.png, paired_differences.md)."""
    groups: dict = {}
    for rec in records:
        if any(k.endswith("/y0_a1_acc") for k in rec["metrics"]):
            groups.setdefault(group_of(rec), []).append(rec["metrics"])
    paths, lines = [], []
    for i, (label, ms) in enumerate(groups.items()):
        roles = list(dict.fromkeys(k.split("/")[0] for k in ms[0] if k.endswith("/y0_a1_acc")))
        mean = {k: float(np.mean([m[k] for m in ms if k in m])) for k in ms[0]}
        path = os.path.join(out_dir, f"group_accuracy_{i}.png")
        plot_group_accuracy(mean, roles, path, title=f"mean over {len(ms)} runs ({label})")
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
        rundir.write_text(out_dir, "paired_differences.md", "\n".join(lines))
        paths.append(os.path.join(out_dir, "paired_differences.md"))
    return paths
