"""Class-level costs of random-resized crops, the class-conditional remedy, and their passage through KD
(config.trainer = 'augmentation'; Balestriero, Bottou & LeCun 2022; Kirichenko et al. 2023).

    python -m jkd.main --config configs/fairness/augmentation.py --workdir /tmp/jkd_aug

On jkd.data.synthetic.make_fine_grained (fine-grained pairs 0/1, 2/3; co-occurring pair 4 -> 5),
every stack of models trained at once by jkd.probes.multiseed.train_stack:
  1. uniform policies: one model per RRC minimum scale in crop.min_scales (same init, same batches,
     one vmapped program); per-class accuracy and per-pair false-positive rates
     fp(a -> b) = P(pred = b | label = a) on the uncropped test set.
  2. affected pairs: fp(a -> b) at the strongest crop minus at the lightest >= remedy.fp_rise; each
     is classified from the data's own annotations: fine_grained (same superclass), co_occurring
     (the multi-label ground truth puts both classes in >= half of one class's training images),
     else unexplained. Two views of who is affected: the classes that LOSE (the true classes a
     of those pairs: their recall falls to the confusion, Kirichenko et al.'s "affected classes")
     and the classes that RECEIVE (the predicted classes b: their false positives rise).
  3. class_conditional: the strongest crop for every class except the remedied ones, which get
     the light scale (remedy.light_scale; -1 = the lightest of crop.min_scales); remedy.light_for
     'losing' (default: the classes that lose, as the paper) or 'receiving' (jkd's first form).
  4. KD students (student.model, trained with the light crop), one per teacher in
     config.student_teachers: from the strongest-crop teacher ('strong': kd_from_strong) and from the
     lightest-crop teacher ('light': kd_from_light), on the same crops the teacher sees: does a
     strong-augmentation teacher pass its class bias on?
Summary keys '<policy>/<measure>' with policy 'scale=<s>', 'class_conditional', 'kd_from_strong',
'kd_from_light' and measures avg_acc, losing_acc (mean recall over the classes that lose in this
run), receiving_acc (mean recall over the classes that receive), fine_grained_acc (classes 0-3),
co_occurring_acc (4, 5), other_acc (6-9), affected_fp (mean fp over the affected pairs),
fine_grained_fp (mean fp within the fine-grained pairs), co_occurring_fp (fp(5 -> 4): diamonds
called '+'); plus num_affected_pairs, num_losing_classes, num_receiving_classes. `run(config,
workdir)` returns that summary and writes summary.json, results.json, results.md, metrics.jsonl and
figures into the workdir; a rerun of the same config returns the stored summary.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jkd import checks, evaluate, losses, rundir
from jkd.data import synthetic
from jkd.data.augment import random_resized_crop
from jkd.errors import ConfigError
from jkd.probes.multiseed import check_teacher_student, forward_all, model_spec, normalise, stack, train_stack, unstack
from jkd.train.state import apply_model, graphdef_and_shapes, init_params, make_optimizer

TEACHERS = {"strong": "kd_from_strong", "light": "kd_from_light"}  # config.student_teachers -> summary policy
_FG_CLASSES, _CO_CLASSES, _OTHER = [0, 1, 2, 3], [4, 5], [6, 7, 8, 9]
_FG_PAIRS = [(0, 1), (1, 0), (2, 3), (3, 2)]
_K = synthetic.FINE_GRAINED_CLASSES
# make_fine_grained's classes in a word each (plots): 1 and 3 carry the mark, 4 the small diamond
CLASS_NAMES = ("ring", "ring+mark", "disc", "disc+mark", "plus", "diamond", "2 bars", "x", "triangle", "L")
LIGHT_FOR = ("losing", "receiving")  # which side of the affected pairs the class-conditional remedy lightens
RENAMED = {"students": "student_teachers (which teacher each KD student learns from: 'strong,light'; "
                       "config.students is a dict of student models everywhere else in jkd)"}


def min_scales(config) -> list[float]:
    try:
        values = [float(v) for v in str(config.crop.min_scales).split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) < 2 or not all(0 < v <= config.crop.max_scale for v in values):
        raise ConfigError(f"config.crop.min_scales: need >= 2 comma-separated scales in (0, crop.max_scale = "
                          f"{config.crop.max_scale}], got {config.crop.min_scales!r}")
    return sorted(values)


def light_scale(config) -> float:
    return min_scales(config)[-1] if config.remedy.light_scale < 0 else float(config.remedy.light_scale)


def check_config(config) -> None:
    """Every start-up check of an augmentation-probe config (ConfigError naming the field)."""
    checks.check_renamed(config, RENAMED)
    check_teacher_student(config)
    if config.data.name != "fine_grained_synthetic":
        raise ConfigError(f"config.data.name: the augmentation probe reads 'fine_grained_synthetic', "
                          f"got {config.data.name!r}")
    # the ranges (jkd/ranges.py) were checked by check_teacher_student; these are the relations
    if config.student.min_scale > config.crop.max_scale:
        raise ConfigError(f"config.student.min_scale: must be in (0, crop.max_scale], got {config.student.min_scale}")
    min_scales(config)
    if config.remedy.light_scale > config.crop.max_scale:
        raise ConfigError(f"config.remedy.light_scale: -1 or in (0, crop.max_scale], got {config.remedy.light_scale}")
    kd_students(config)
    if checks.has(config, "remedy.light_for"):  # absent: 'losing'
        checks.one_of(config, "remedy.light_for", LIGHT_FOR)


def kd_students(config) -> list[str]:
    """The KD students' summary names, one per config.student_teachers entry ('strong' -> 'kd_from_strong')."""
    return [TEACHERS[t] for t in checks.comma_list(config.student_teachers, tuple(TEACHERS), "student_teachers")]


def class_scales(num_classes: int, strong: float, light: float, light_classes) -> np.ndarray:
    """Per-class RRC minimum scale [K]: `light` for light_classes, `strong` for the others."""
    s = np.full(num_classes, strong, np.float32)
    s[list(light_classes)] = light
    return s


def crop_by_class(key, images, labels, scale_per_class, max_scale: float):
    """RRC whose minimum area of example i is scale_per_class[labels[i]]. [B, H, W, C] -> same."""
    return random_resized_crop(key, images, (scale_per_class[labels], max_scale))


def affected_pairs(fp_strong: np.ndarray, fp_light: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """[(a, b, rise)] with fp_strong[a, b] - fp_light[a, b] >= threshold, a != b, largest rise first."""
    rise = np.asarray(fp_strong) - np.asarray(fp_light)
    np.fill_diagonal(rise, -np.inf)
    pairs = [(int(a), int(b), float(rise[a, b])) for a, b in zip(*np.nonzero(rise >= threshold))]
    return sorted(pairs, key=lambda p: -p[2])


def pair_kind(a: int, b: int, multi_label: np.ndarray, labels: np.ndarray, superclass: np.ndarray) -> str:
    """'fine_grained' (same superclass), 'co_occurring' (>= half of class a's or b's training images
    are also labelled with the other class), else 'unexplained'."""
    if superclass[a] == superclass[b]:
        return "fine_grained"
    co = max(multi_label[labels == a, b].mean(), multi_label[labels == b, a].mean())
    return "co_occurring" if co >= 0.5 else "unexplained"


def pair_sides(pairs) -> tuple[list[int], list[int]]:
    """(losing, receiving): the sorted true classes a and predicted classes b of the pairs (a, b, rise)."""
    return sorted({a for a, _, _ in pairs}), sorted({b for _, b, _ in pairs})


def _measures(preds, labels, k, pairs) -> tuple[dict, np.ndarray, np.ndarray]:
    conf = evaluate.confusion_matrix(preds, labels, k)
    r = evaluate.rates(conf)
    acc = np.diag(r)
    m = {"avg_acc": float((preds == labels).mean()),
         "fine_grained_acc": float(acc[_FG_CLASSES].mean()), "co_occurring_acc": float(acc[_CO_CLASSES].mean()),
         "other_acc": float(acc[_OTHER].mean()),
         "fine_grained_fp": float(np.mean([r[a, b] for a, b in _FG_PAIRS])), "co_occurring_fp": float(r[5, 4])}
    if pairs:
        losing, receiving = pair_sides(pairs)
        m["losing_acc"] = float(acc[losing].mean())
        m["receiving_acc"] = float(acc[receiving].mean())
        m["affected_fp"] = float(np.mean([r[a, b] for a, b, _ in pairs]))
    return m, acc, conf


def run(config, workdir: str) -> dict:
    """The probe: check, train, measure; write the reports into workdir; return the flat summary
    (the stored one when this exact config already ran there)."""
    check_config(config)
    return rundir.cached_run(workdir, config, lambda log: _measured_run(config, workdir, log))


def _measured_run(config, workdir: str, log) -> dict:
    """train_and_measure, timed, with the report (rundir.cached_run writes summary.json)."""
    t0 = time.time()
    summary, (header, table) = train_and_measure(config, workdir, log=log)
    summary = {"seed": config.seed, **summary, "wall_time_s": time.time() - t0}
    rundir.report(workdir, header, table, progress=config.progress)
    return summary


def train_and_measure(config, workdir: str, log=None) -> tuple[dict, tuple[str, str]]:
    """Steps 1-4 of the module docstring; writes results.json and figures (process 0);
    returns (summary, (report header, markdown table))."""
    c, d = config, config.data
    gen = dict(image_size=d.image_size, min_shape_size=d.min_shape_size, noise=d.noise)
    train = synthetic.make_fine_grained(d.num_train, seed=2 * c.seed, **gen)
    test = synthetic.make_fine_grained(d.num_test, seed=2 * c.seed + 1, **gen)
    t_spec = model_spec(c.teacher.model, _K, d.image_size, 1)
    teacher = (t_spec, graphdef_and_shapes(t_spec)[0])
    uniform, preds = _uniform_policies(c, teacher, train, test, log)  # 1.
    pairs, found = _affected(c, preds, train, test["label"])  # 2.
    preds["class_conditional"] = _class_conditional(c, teacher, found["remedied_classes"], train, test, log)  # 3.
    preds.update(_kd_students(c, teacher[1], uniform, train, test, log))  # 4.
    summary, results = _summarise(c, preds, test["label"], pairs, found)
    rundir.write_json(workdir, "results.json", {"summary": summary, "results": results}, indent=None)
    if rundir.is_writer():
        _figures(results, summary, workdir, kd_students(c), c.seed)
    return summary, _report(c, results, summary, kd_students(c))


def _uniform_policies(c, teacher: tuple, train: dict, test: dict, log) -> tuple[dict, dict]:
    """Step 1: one teacher per scale in crop.min_scales, the same crop for every class. Returns (their
    params stacked [len(scales), ...], {'scale=<s>': test predictions [N]})."""
    scales = min_scales(c)
    uniform = _train_teachers(c, teacher, train, [class_scales(_K, s, s, []) for s in scales],
                              f"{len(scales)} crop scales", log)
    preds = _predict(c, teacher[1], uniform, test)  # [M, N]
    return uniform, {f"scale={s:g}": preds[i] for i, s in enumerate(scales)}


def _affected(c, preds: dict, train: dict, test_labels: np.ndarray) -> tuple[list, dict]:
    """Step 2: which pairs' false positives rise with stronger crops (fp [K, K] at the strongest and the
    lightest scale), and what the data says they are. Returns (pairs [(a, b, rise)], the results' entries
    'affected_pairs', 'losing_classes', 'receiving_classes', 'remedied_classes')."""
    scales = min_scales(c)
    fp = {s: evaluate.rates(evaluate.confusion_matrix(preds[f"scale={s:g}"], test_labels, _K)) for s in scales}
    pairs = affected_pairs(fp[scales[0]], fp[scales[-1]], float(c.remedy.fp_rise))
    kinds = [pair_kind(a, b, train["multi_label"], train["label"], train["superclass"]) for a, b, _ in pairs]
    losing, receiving = pair_sides(pairs)
    remedied = losing if c.remedy.get("light_for", "losing") == "losing" else receiving
    return pairs, {"affected_pairs": [{"true": a, "predicted": b, "fp_rise": r, "kind": kind}
                                      for (a, b, r), kind in zip(pairs, kinds)],
                   "losing_classes": losing, "receiving_classes": receiving, "remedied_classes": remedied}


def _class_conditional(c, teacher: tuple, remedied: list, train: dict, test: dict, log) -> np.ndarray:
    """Step 3: the class-conditional remedy (same init and batches as the uniform teachers): the strongest
    crop except the light one for the remedied classes. Returns its test predictions [N]."""
    policy = class_scales(_K, min_scales(c)[0], light_scale(c), remedied)
    cc = _train_teachers(c, teacher, train, [policy], "class-conditional", log)
    return _predict(c, teacher[1], cc, test)[0]


def _kd_students(c, t_graph, uniform: dict, train: dict, test: dict, log) -> dict:
    """Step 4: KD students with light crops from the strongest / lightest uniform teacher (uniform: params
    stacked [len(scales), ...]), on the views the teacher sees. Returns {'kd_from_<t>': test predictions [N]}."""
    kd_names, mean, std, hi = kd_students(c), float(c.data.mean), float(c.data.std), float(c.crop.max_scale)
    s_spec = model_spec(c.student.model, _K, c.data.image_size, 1)
    s_graph, _ = graphdef_and_shapes(s_spec)
    teacher_idx = {"kd_from_strong": 0, "kd_from_light": len(min_scales(c)) - 1}
    temp, kd_w = float(c.kd.temperature), float(c.kd.weight)
    student_scale = jnp.asarray(class_scales(_K, c.student.min_scale, c.student.min_scale, []))

    def kd_loss(p, batch, key, aux):
        x = normalise(crop_by_class(key, batch["image"], batch["label"], student_scale, hi), mean, std)
        t_logits = jax.lax.stop_gradient(apply_model(t_graph, aux["teacher"], x))
        s_logits = apply_model(s_graph, p["model"], x)
        return losses.hinton_kd(s_logits, t_logits, batch["label"], temperature=temp, kd_weight=kd_w)[0], {}

    students = stack([{"model": init_params(s_spec, c.seed + 1)}] * len(kd_names))
    teachers = stack([unstack(uniform["model"], teacher_idx[n]) for n in kd_names])
    students, _ = train_stack(kd_loss, students, make_optimizer(c.optimizer, c.student.steps), train["image"],
                              train["label"], steps=c.student.steps, seed=c.seed + 1, aux={"teacher": teachers},
                              desc="KD students", **_common(c, log))
    preds = _predict(c, s_graph, students, test)  # [len(kd_names), N]
    return {n: preds[i] for i, n in enumerate(kd_names)}


def _summarise(c, preds: dict, labels: np.ndarray, pairs: list, found: dict) -> tuple[dict, dict]:
    """_measures of every policy's test predictions [N] against labels [N]. Returns (flat summary
    '<policy>/<measure>', results: found plus per-class accuracies [K] and confusion matrices [K, K])."""
    scales = min_scales(c)
    summary, acc, conf = {"num_affected_pairs": len(pairs), "num_losing_classes": len(found["losing_classes"]),
                          "num_receiving_classes": len(found["receiving_classes"])}, {}, {}
    for policy, p in preds.items():
        m, acc[policy], conf[policy] = _measures(p, labels, _K, pairs)
        summary.update({f"{policy}/{name}": v for name, v in m.items()})
    results = {"scales": scales, "strong": scales[0], "light": light_scale(c), **found,
               "per_class_acc": {n: a.tolist() for n, a in acc.items()},
               "confusion": {n: cm.tolist() for n, cm in conf.items()},
               "top_confused": {n: evaluate.top_confused_pairs(cm) for n, cm in conf.items()}}
    return summary, results


def _train_teachers(c, teacher: tuple, train: dict, scale_rows: list, desc: str, log):
    """One teacher per row of per-class RRC minimum scales scale_rows [M][K], trained by CE from one init
    (paired comparisons) on the same batches; teacher = (spec, graphdef). Returns params stacked [M, ...]."""
    (t_spec, t_graph), mean, std, hi = teacher, float(c.data.mean), float(c.data.std), float(c.crop.max_scale)

    def ce_loss(p, batch, key, aux):
        x = crop_by_class(key, batch["image"], batch["label"], aux["scale"], hi)
        return losses.cross_entropy(apply_model(t_graph, p["model"], normalise(x, mean, std)), batch["label"]), {}

    params = stack([{"model": init_params(t_spec, c.seed)}] * len(scale_rows))
    params, _ = train_stack(ce_loss, params, make_optimizer(c.optimizer, c.teacher.steps), train["image"],
                            train["label"], steps=c.teacher.steps, seed=c.seed,
                            aux={"scale": jnp.asarray(np.stack(scale_rows))}, desc=desc, **_common(c, log))
    return params


def _predict(c, graph, params, test: dict) -> np.ndarray:
    """Test-set predictions [M, N] of M stacked models (argmax of logits [M, N, K])."""
    logits, _ = forward_all(graph, params, test["image"], mean=float(c.data.mean), std=float(c.data.std))
    return logits.argmax(-1)


def _common(c, log) -> dict:
    """train_stack's keyword arguments shared by every stack of the probe."""
    return dict(batch_size=c.batch_size, log_every=c.log_every, progress=c.progress, log=log)


def _report(c, results, summary, kd_names) -> tuple[str, str]:
    pairs = ", ".join(f"{p['true']}->{p['predicted']} (+{100 * p['fp_rise']:.1f} pp, {p['kind']})"
                      for p in results["affected_pairs"]) or "none"
    policies = [f"scale={s:g}" for s in results["scales"]] + ["class_conditional"] + kd_names
    cols = ["avg_acc", "losing_acc", "receiving_acc", "fine_grained_acc", "co_occurring_acc", "other_acc",
            "fine_grained_fp", "co_occurring_fp"]
    header = (f"Augmentation probe (seed {c.seed}): strongest crop {results['strong']:g}, light {results['light']:g}; "
              f"affected pairs (true->predicted): {pairs}; classes that lose (true side): "
              f"{results['losing_classes']}, that receive false positives: {results['receiving_classes']}; "
              f"the class-conditional policy lightens the crops of {results['remedied_classes']}.")
    lines = ["| policy | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for p in policies:
        cells = [summary.get(f"{p}/{col}") for col in cols]
        lines.append(f"| {p} | " + " | ".join("–" if v is None else (f"{100 * v:.1f}" if col.endswith("acc")
                                                                        else f"{v:.3f}")
                                              for v, col in zip(cells, cols)) + " |")
    return header, "\n".join(lines)


def _figures(results, summary, workdir, kd_names, seed: int) -> None:
    strong, light = f"scale={results['strong']:g}", f"scale={results['scales'][-1]:g}"
    acc = {n: np.asarray(a) for n, a in results["per_class_acc"].items()}
    deltas = {f"class-cond. − uniform {results['strong']:g}": acc["class_conditional"] - acc[strong]}
    for name, scale in (("kd_from_strong", results["strong"]), ("kd_from_light", results["scales"][-1])):
        if name in acc:  # a KD student minus its teacher
            deltas[f"KD from {scale:g} − teacher"] = evaluate.per_class_delta(acc[name], acc[f"scale={scale:g}"])
    losing = set(results["losing_classes"])
    names = [f"{c}{'*' if c in losing else ''}\n{n}" for c, n in enumerate(CLASS_NAMES)]
    evaluate.plot_class_deltas(deltas, os.path.join(workdir, "class_deltas.png"), class_names=names,
                               title="per-class test accuracy change (percentage points); * = a class that loses")
    plot_confusion_rise(np.asarray(results["confusion"][light]), np.asarray(results["confusion"][strong]),
                        (results["scales"][-1], results["strong"]),
                        [(p["true"], p["predicted"]) for p in results["affected_pairs"]],
                        os.path.join(workdir, "confusion_strong.png"))
    plot_scale_curves({m: [(s, summary[f"scale={s:g}/{m}"], 0.0) for s in results["scales"]]
                       for m in ("avg_acc", "losing_acc", "receiving_acc", "fine_grained_acc", "co_occurring_acc")
                       if f"{strong}/{m}" in summary},
                      {m: (results["strong"], summary[f"class_conditional/{m}"], 0.0)
                       for m in ("avg_acc", "losing_acc", "receiving_acc") if f"class_conditional/{m}" in summary},
                      os.path.join(workdir, "accuracy_vs_scale.png"),
                      title=f"seed {seed}: {len(results['losing_classes'])} of {_K} classes lose")


def plot_confusion_rise(conf_light: np.ndarray, conf_strong: np.ndarray, scales: tuple, pairs: list,
                        path: str) -> None:
    """Three heatmaps -> PNG: off-diagonal P(pred | true) (%) of the lightest- and the strongest-crop
    model on one colour scale (confusions [K, K] as counts), and the rise strong − light (pp), the
    affected pairs [(true, predicted)] outlined. scales = (light, strong) RRC minimum scales."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)
    from matplotlib.patches import Rectangle

    k = len(conf_light)
    off = [np.where(np.eye(k, dtype=bool), np.nan, 100 * evaluate.rates(c)) for c in (conf_light, conf_strong)]
    rise = off[1] - off[0]
    vmax, rmax = max(np.nanmax(off[0]), np.nanmax(off[1]), 1.0), max(np.nanmax(np.abs(rise)), 1.0)
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.3))
    panels = [(off[0], f"trained with min scale {scales[0]:g}", "magma_r", 0, vmax, "P(pred | true) (%)"),
              (off[1], f"trained with min scale {scales[1]:g}", "magma_r", 0, vmax, "P(pred | true) (%)"),
              (rise, "rise: right minus left; boxes = affected pairs", "RdBu_r", -rmax, rmax, "rise (pp)")]
    for ax, (m, title, cmap, lo, hi, label) in zip(axes, panels):
        im = ax.imshow(m, cmap=cmap, vmin=lo, vmax=hi)
        ax.set_xticks(range(k)), ax.set_yticks(range(k))
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label=label, fraction=0.046, pad=0.04)
    for a, b in pairs:
        axes[2].add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, lw=1.2, ec="k"))
    fig.suptitle("Off-diagonal confusions on the uncropped test set (diagonal blank; left and middle share "
                 "one colour scale)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_MEASURE_LABELS = {"avg_acc": "all classes", "losing_acc": "classes that lose", "receiving_acc": "classes that receive",
                   "fine_grained_acc": "fine-grained (0-3)", "co_occurring_acc": "co-occurring (4, 5)"}


def plot_scale_curves(curves: dict, remedy: dict, path: str, title: str = "") -> None:
    """Accuracy (%) vs RRC minimum scale: curves {measure: [(scale, mean, std)]}; remedy {measure:
    (strong scale, mean, std)} drawn as stars (the class-conditional policy at the strongest crop)."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    fig, ax = plt.subplots(figsize=(8.2, 3.8))
    colors = {}
    for m, pts in curves.items():
        x, y, e = (np.array(v, dtype=float) for v in zip(*sorted(pts)))
        line = ax.errorbar(x, 100 * y, yerr=100 * e, marker="o", capsize=3,
                           label=f"uniform crops: {_MEASURE_LABELS.get(m, m)}")
        colors[m] = line[0].get_color()
    for m, (x, y, e) in remedy.items():
        ax.errorbar([x], [100 * y], yerr=[100 * e], marker="*", ms=13, ls="none", capsize=3, mec="k", mew=0.6,
                    color=colors.get(m), label=f"class-conditional: {_MEASURE_LABELS.get(m, m)}")
    ax.set_xscale("log")
    scales = sorted({float(x) for pts in curves.values() for x, _, _ in pts})
    ax.set_xticks(scales, [f"{x:g}" for x in scales])
    ax.minorticks_off()
    ax.set_xlabel("RRC minimum scale (log axis; smaller = stronger crops; 1 = no crop)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("test accuracy vs crop strength" + (f" ({title})" if title else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_figures(records: list[dict], out_dir: str, group_of=None) -> list[str]:
    """jkd.sweep hook: accuracy vs crop scale, mean ± std over the records (seeds) that hold the
    augmentation probe's summary (all records pooled: group_of is not used). Writes
    <out_dir>/accuracy_vs_scale.png; returns [path] or []."""
    recs = [r["metrics"] for r in records if "class_conditional/avg_acc" in r["metrics"]]
    if not recs:
        return []
    scales = sorted({float(k.split("/")[0][6:]) for k in recs[0] if k.startswith("scale=")})

    def stat(key):
        v = np.array([m[key] for m in recs if key in m], dtype=float)
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    curves = {m: [(s, *stat(f"scale={s:g}/{m}")) for s in scales]
              for m in ("avg_acc", "losing_acc", "receiving_acc", "fine_grained_acc", "co_occurring_acc")
              if all(f"scale={s:g}/{m}" in recs[0] for s in scales)}
    remedy = {m: (scales[0], *stat(f"class_conditional/{m}")) for m in ("avg_acc", "losing_acc", "receiving_acc")
              if f"class_conditional/{m}" in recs[0]}
    path = os.path.join(out_dir, "accuracy_vs_scale.png")
    plot_scale_curves(curves, remedy, path, title=f"mean ± std over {len(recs)} runs")
    return [path]
