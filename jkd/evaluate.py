"""Class- and group-level metrics on predictions (numpy; no model code).

Inputs are integer arrays: predictions [N] (argmax of logits), labels [N] in 0..K-1 and, for group
metrics, a sensitive attribute [N] in 0..A-1 (or a group id). Accuracies are fractions in [0, 1];
a class or group with no example gives NaN (never a silent 0).

Definitions (docs/FAIRNESS.md):
  per-class accuracy      acc_c = P(pred = c | label = c)
  per-class delta         student acc_c - teacher acc_c (negative = the class lost under KD)
  confusion matrix        C[a, b] = #(label = a, pred = b); row-normalised: P(pred = b | label = a)
  false-positive rate of pair a -> b: P(pred = b | label = a), a != b (class b's false positives
                          taken from class a)
  group accuracy          acc_g = P(pred = label | group = g); worst-group = min_g acc_g;
                          disparity = max_g acc_g - min_g acc_g
  statistical-parity gap  max over classes c and attribute values s, s' of
                          |P(pred = c | attr = s) - P(pred = c | attr = s')|; for binary labels and a
                          binary attribute this is the usual |P(pred=1 | s=0) - P(pred=1 | s=1)|
  equal-opportunity gap   the same on the true-positive rates: max over c (or only c =
                          positive_class) and s, s' of |P(pred = c | label = c, attr = s) -
                          P(pred = c | label = c, attr = s')|
"""
from __future__ import annotations

import numpy as np


def _ints(*arrays):
    return [np.asarray(a).astype(np.int64).reshape(-1) for a in arrays]


def confusion_matrix(preds, labels, num_classes: int) -> np.ndarray:
    """C [K, K] int: C[a, b] = number of examples with label a predicted as b."""
    preds, labels = _ints(preds, labels)
    return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def rates(confusion: np.ndarray) -> np.ndarray:
    """Row-normalised confusion [K, K]: P(pred = b | label = a); NaN rows for absent classes."""
    c = np.asarray(confusion, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return c / c.sum(1, keepdims=True)


def per_class_accuracy(preds, labels, num_classes: int) -> np.ndarray:
    """[K] accuracy of each class (NaN for classes without examples)."""
    return np.diag(rates(confusion_matrix(preds, labels, num_classes))).copy()


def per_class_delta(student_acc, teacher_acc) -> np.ndarray:
    """[K] student - teacher per-class accuracy (negative: the class pays for distillation)."""
    return np.asarray(student_acc, np.float64) - np.asarray(teacher_acc, np.float64)


def top_confused_pairs(confusion: np.ndarray, top: int = 5) -> list[tuple[int, int, float]]:
    """The `top` largest off-diagonal rates [(label a, predicted b, P(pred = b | label = a))], largest first."""
    r = rates(confusion)
    r = np.where(np.eye(len(r), dtype=bool) | ~np.isfinite(r), -1.0, r)
    order = np.argsort(-r, axis=None)[:top]
    return [(int(i // len(r)), int(i % len(r)), float(r.flat[i])) for i in order if r.flat[i] >= 0]


def group_accuracy(preds, labels, groups, num_groups: int) -> np.ndarray:
    """[G] accuracy within each group (NaN for empty groups)."""
    preds, labels, groups = _ints(preds, labels, groups)
    correct = np.bincount(groups, weights=(preds == labels).astype(np.float64), minlength=num_groups)
    count = np.bincount(groups, minlength=num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / count


def statistical_parity_gap(preds, attribute, num_classes: int, num_attributes: int = 2) -> float:
    """max_c max_{s, s'} |P(pred = c | attr = s) - P(pred = c | attr = s')| (attribute values present)."""
    preds, attribute = _ints(preds, attribute)
    table = confusion_matrix(preds, attribute, max(num_classes, num_attributes))[:num_attributes, :num_classes]
    p = rates(table)  # [A, K]: P(pred = c | attr = s)
    p = p[np.isfinite(p).all(1)]
    return float((p.max(0) - p.min(0)).max()) if len(p) else float("nan")


def equal_opportunity_gap(preds, labels, attribute, num_classes: int, num_attributes: int = 2,
                          positive_class: int | None = None) -> float:
    """max over classes c (or c = positive_class) of max_{s, s'} of the gap in true-positive rate
    P(pred = c | label = c, attr = s); pairs of attribute values without such examples are skipped."""
    preds, labels, attribute = _ints(preds, labels, attribute)
    classes = range(num_classes) if positive_class is None else [positive_class]
    gaps = []
    for c in classes:
        tpr = group_accuracy(preds[labels == c], labels[labels == c], attribute[labels == c], num_attributes)
        tpr = tpr[np.isfinite(tpr)]
        if len(tpr) >= 2:
            gaps.append(tpr.max() - tpr.min())
    return float(max(gaps)) if gaps else float("nan")


def group_report(preds, labels, groups, attribute, *, num_classes: int, num_groups: int,
                 num_attributes: int = 2, positive_class: int | None = None) -> dict:
    """Every group metric at once: {'avg_acc', 'worst_group_acc', 'disparity', 'group_acc' [G],
    'sp_gap', 'eo_gap'} (accuracies as fractions)."""
    preds, labels = _ints(preds, labels)
    g = group_accuracy(preds, labels, groups, num_groups)
    present = g[np.isfinite(g)]
    return {"avg_acc": float((preds == labels).mean()), "worst_group_acc": float(present.min()),
            "disparity": float(present.max() - present.min()), "group_acc": g,
            "sp_gap": statistical_parity_gap(preds, attribute, num_classes, num_attributes),
            "eo_gap": equal_opportunity_gap(preds, labels, attribute, num_classes, num_attributes, positive_class)}


# ----------------------------------------------------------------------------- plots

def plot_class_deltas(deltas: dict, path: str, *, class_names=None, title: str = "") -> None:
    """Grouped bars of per-class accuracy deltas (percentage points): deltas {name: [K]} -> PNG."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    names = list(deltas)
    k = len(next(iter(deltas.values())))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * k + 2), 3.4))
    for i, n in enumerate(names):
        ax.bar(np.arange(k) + (i - (len(names) - 1) / 2) * width, 100 * np.asarray(deltas[n]), width, label=n)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(k), class_names or [str(c) for c in range(k)])
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy change (pp)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(confusion: np.ndarray, path: str, *, class_names=None, title: str = "") -> None:
    """Heatmap of the row-normalised confusion matrix (off-diagonal rates are what matters) -> PNG."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    r = rates(confusion)
    k = len(r)
    fig, ax = plt.subplots(figsize=(0.42 * k + 2.2, 0.42 * k + 1.6))
    off = np.where(np.eye(k, dtype=bool), np.nan, 100 * r)
    im = ax.imshow(off, cmap="magma_r", vmin=0)
    names = class_names or [str(c) for c in range(k)]
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="P(pred | true) (%), off-diagonal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- omitted classes

def _class_thresholds(logits: np.ndarray, c: int, shifts: np.ndarray) -> np.ndarray:
    """Per example, the bias on class c above which argmax(logits + shifts) becomes c: [N]."""
    z = logits + shifts
    others = np.delete(z, c, axis=1).max(axis=1)
    return others - logits[:, c]


def _shift_for_count(thresholds: np.ndarray, count: int) -> float:
    """A bias b with exactly `count` thresholds below it (midway between neighbours)."""
    t = np.sort(thresholds)
    n = len(t)
    if count <= 0:
        return float(t[0] - 1.0)
    if count >= n:
        return float(t[-1] + 1.0)
    return float(0.5 * (t[count - 1] + t[count]))


def prior_matching_shift(logits, classes, target_freq, rounds: int = 20) -> np.ndarray:
    """Bias shifts [K] (non-zero only on `classes`) that make the predicted frequency of each class in
    `classes` on `logits` [N, K] equal `target_freq` [len(classes)] (fractions). Uses no labels.

    One class: exact (the shift puts round(f * N) examples above its threshold). Several: that
    step per class in turn, `rounds` times (coordinate-wise; each step is exact given the others).
    """
    logits = np.asarray(logits, np.float64)
    shifts = np.zeros(logits.shape[1])
    n = len(logits)
    for _ in range(rounds if len(classes) > 1 else 1):
        for c, f in zip(classes, target_freq):
            shifts[c] = 0.0
            shifts[c] = _shift_for_count(_class_thresholds(logits, c, shifts), int(round(float(f) * n)))
    return shifts


def oracle_shift(logits, labels, classes, rounds: int = 5) -> np.ndarray:
    """Bias shifts [K] on `classes` minimising the errors on (logits [N, K], labels [N]): what the
    paper reports ("increased by 3.5, which optimizes overall performance on the test set"). Uses
    the labels it is scored on, so it is a reference, not a method. Ties keep the smallest |shift|."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    shifts = np.zeros(logits.shape[1])
    for _ in range(rounds if len(classes) > 1 else 1):
        for c in classes:
            shifts[c] = 0.0
            t = np.sort(_class_thresholds(logits, c, shifts))
            candidates = np.concatenate([[0.0, t[0] - 1.0, t[-1] + 1.0], 0.5 * (t[1:] + t[:-1])])
            errors = [((logits + _with(shifts, c, b)).argmax(1) != labels).sum() for b in candidates]
            best = min(range(len(candidates)), key=lambda i: (errors[i], abs(candidates[i])))
            shifts[c] = candidates[best]
    return shifts


def _with(shifts: np.ndarray, c: int, b: float) -> np.ndarray:
    out = shifts.copy()
    out[c] = b
    return out


def omitted_class_errors(logits, labels, classes, shifts=None) -> dict:
    """Test errors of logits [N, K] (+ shifts [K]) split as in Hinton et al. (2015) section 3.

    Returns counts and rates: {'errors', 'omitted_errors', 'omitted_count', 'other_errors',
    'other_count', 'omitted_error_rate', 'other_error_rate', 'error_rate'}.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    preds = (logits + (0.0 if shifts is None else np.asarray(shifts))).argmax(1)
    wrong = preds != labels
    omitted = np.isin(labels, list(classes))
    out = {"errors": int(wrong.sum()), "omitted_errors": int(wrong[omitted].sum()), "omitted_count": int(omitted.sum()),
           "other_errors": int(wrong[~omitted].sum()), "other_count": int((~omitted).sum())}
    out["omitted_error_rate"] = out["omitted_errors"] / max(out["omitted_count"], 1)
    out["other_error_rate"] = out["other_errors"] / max(out["other_count"], 1)
    out["error_rate"] = out["errors"] / max(len(labels), 1)
    out["accuracy"] = 1.0 - out["error_rate"]
    return out


# ----------------------------------------------------------- paired comparisons and representations

def paired_bootstrap(correct_a, correct_b, *, samples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Accuracy difference of two models scored on the same test examples, with a bootstrap interval.

    correct_a, correct_b: bool [N] (model a / b right on example i). The N examples are resampled
    with replacement `samples` times (the same draw for both models: a paired interval, narrower than
    two separate ones). Returns {'diff': acc_a - acc_b, 'low', 'high': the central `level` interval
    of the resampled differences, 'n': N}. It covers test-set sampling only, not seed-to-seed noise.
    """
    a, b = (np.asarray(x, bool).reshape(-1) for x in (correct_a, correct_b))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_bootstrap: two equal, non-empty [N] arrays needed, got {a.shape} and {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, d.size, size=(samples, d.size))
    boot = d[idx].mean(axis=1)
    tail = (1.0 - level) / 2
    return {"diff": float(d.mean()), "low": float(np.quantile(boot, tail)), "high": float(np.quantile(boot, 1 - tail)),
            "n": int(d.size)}


def position_similarity(features) -> np.ndarray:
    """[B, N, N] cosine similarity between the N positions of each example's features [B, N, C]
    (a ViT's patch tokens, or a conv feature map [B, H, W, C] flattened to N = H * W positions)."""
    x = np.asarray(features, np.float64)
    if x.ndim == 4:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
    if x.ndim != 3:
        raise ValueError(f"position_similarity: features [B, N, C] or [B, H, W, C], got shape {x.shape}")
    x = x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)
    return x @ x.transpose(0, 2, 1)


def structure_correlation(sim_a, sim_b) -> np.ndarray:
    """[B] Pearson correlation of two models' position-similarity matrices [B, N, N] per example,
    over the off-diagonal entries only (the diagonal is 1 for every model: it would inflate the
    correlation of any two models). Models of different widths compare this way (same N needed)."""
    a, b = np.asarray(sim_a, np.float64), np.asarray(sim_b, np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1] != a.shape[2] or a.shape[1] < 3:
        raise ValueError(f"structure_correlation: two [B, N, N] arrays with N >= 3 needed, got {a.shape} and {b.shape}")
    off = ~np.eye(a.shape[1], dtype=bool)
    a, b = a[:, off], b[:, off]
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.sqrt((a * a).sum(1) * (b * b).sum(1)) + 1e-12)
