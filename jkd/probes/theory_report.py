"""Measurements and reports of the multi-view theory probe (jkd/probes/theory.py): accuracies, which
views each model learned, the flat summary, the markdown table, the plots and jkd.sweep's figures.

Pure functions of logits, view correlations and result dicts: nothing here trains or reads a config.
"""
from __future__ import annotations

import json
import os

import numpy as np

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


def measure(logits, data, corr=None, learned=None) -> dict:
    """One method's results: {'acc': {split: [R]}} (accuracies), plus with the view correlations
    corr [R, k, 2] and learned [R, k, 2]: 'views', 'learned', 'view_fractions' and the single-view
    accuracy split by whether the sample's strong view was learned."""
    out = {"acc": accuracies(logits, data)}
    if corr is not None:
        out["views"], out["learned"] = np.asarray(corr), np.asarray(learned)
        out["view_fractions"] = view_fractions(learned)
        out["acc"].update({f"single_view_{k}": v for k, v in
                           single_view_by_view(logits["single_view"], data.test_single, learned).items()})
    return out


# ----------------------------------------------------------------------------- reports

_MEASURES = (("train", "train_acc"), ("multi_view", "multi_view_acc"), ("single_view", "single_view_acc"),
             ("test", "test_acc"), ("single_view_view_learned", "sv_view_learned_acc"),
             ("single_view_view_missed", "sv_view_missed_acc"))


def serialisable(results: dict) -> dict:
    """{variant: {method: r}} of run_variant -> plain lists (results.json's 'results')."""
    return {v: {m: {"acc": {s: np.asarray(a).tolist() for s, a in r["acc"].items()},
                    **({"views": r["views"].tolist(), "learned": r["learned"].tolist(),
                        "view_fractions": {n: np.asarray(a).tolist() for n, a in r["view_fractions"].items()}}
                       if "views" in r else {})}
                for m, r in ms.items()} for v, ms in results.items()}


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


def plot_accuracy(results: dict, path: str) -> None:
    """Bars per variant: multi-view and single-view test accuracy of every method (mean ± std over the
    method's models, the mean printed on each bar) -> PNG."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    variants = list(results)
    fig, axes = plt.subplots(1, len(variants), figsize=(4.8 * len(variants), 3.9), squeeze=False,
                             layout="constrained")
    for ax, variant in zip(axes[0], variants):
        methods = list(results[variant])
        pos = np.arange(len(methods))
        for i, (split, label) in enumerate((("multi_view", "multi-view test"), ("single_view", "single-view test"))):
            vals = [100 * np.asarray(results[variant][m]["acc"][split]) for m in methods]
            means = [v.mean() for v in vals]
            bars = ax.bar(pos + (i - 0.5) * 0.38, means, 0.38, label=label,
                          yerr=[v.std(ddof=1) if v.size > 1 else 0 for v in vals], capsize=3)
            if split == "single_view":  # the column the theory is about: its value on the bar
                ax.bar_label(bars, [f"{m:.0f}" for m in means], label_type="center", fontsize=7, color="white")
        ax.set_xticks(pos, [m.replace("_", "-") for m in methods], rotation=30)
        ax.set_ylim(0, 100)
        ax.set_title(f"{variant}: test accuracy (mean ± std over each method's models)", fontsize=9)
        ax.set_ylabel("test accuracy (%)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_view_matrices(panels: list[tuple], path: str, *, vmax=None, label="") -> None:
    """Heatmaps on one colour scale, one per panel (title, matrix [k, 2][, learned bool [k, 2]]): the
    two views on the rows, classes on the columns; learned cells get a white dot (explained under the
    colour bar, which sits below the panels so it never covers one)."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    k = panels[0][1].shape[0]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.4, 0.5 * k + 1.5), 1.0 * len(panels) + 1.3),
                             squeeze=False, layout="constrained")
    vmax = vmax or max(float(np.nanmax(p[1])) for p in panels)
    dots = False
    for ax, panel in zip(axes[:, 0], panels):
        title, m = panel[:2]
        im = ax.imshow(np.asarray(m).T, vmin=0, vmax=vmax, cmap="viridis", aspect="auto")
        if len(panel) > 2:
            cls, view = np.nonzero(np.asarray(panel[2]))
            ax.scatter(cls, view, s=14, c="white", edgecolors="black", linewidths=0.5)
            dots = True
        ax.set_yticks([0, 1], ["view 1", "view 2"])
        ax.set_xticks(range(k), [str(j) for j in range(k)])
        ax.tick_params(labelbottom=ax is axes[-1, 0])  # class numbers once, at the bottom
        ax.set_title(title, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("class")
    fig.colorbar(im, ax=axes[:, 0].tolist(), location="bottom", aspect=40, shrink=0.9,
                 label=label + ("\nwhite dot: view counted as learned" if dots else ""))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def relative_views(views: np.ndarray) -> np.ndarray:
    """views [R, k, 2] -> each model's view correlations as a fraction of its largest one (the scale
    views_learned thresholds; models trained differently, e.g. 'average' at lr x L, grow different norms)."""
    views = np.asarray(views, dtype=float)
    return views / np.maximum(views.max(axis=(1, 2), keepdims=True), 1e-12)


_VIEW_PANEL = {
    "single": "single model 0 (of {R})",
    "ensemble": "ensemble of {L} (a view counts when a member learned it)",
    "kd": "KD student 0 (of {R}), taught by the ensemble",
    "self_distill": "self-distilled student 0 (of {R}), taught by single model 0",
    "average": "average of {L} members trained jointly",
    "wide": "wide: one model with {L}x the channels",
}


def plot_views(results: dict, path: str, ensemble_size: int) -> None:
    """The net's view-learning matrices of one model per method (model 0; the ensemble as the union of
    its members; 'average' and 'wide' as one model with all members' channels) -> PNG. The colour is
    each view's correlation relative to that model's strongest view; titles count that model's classes
    with both views learned (the table has the mean over all of a method's models)."""
    panels = []
    for m, r in results.get("net", {}).items():
        if "views" not in r:
            continue
        both = int(np.asarray(r["learned"][0]).all(-1).sum())
        name = _VIEW_PANEL[m].format(R=len(r["views"]), L=ensemble_size)
        panels.append((f"{name}: both views in {both}/{r['views'].shape[1]} classes",
                       relative_views(r["views"])[0], r["learned"][0]))
    if panels:
        plot_view_matrices(panels, path, vmax=1.0,
                           label="correlation of the class's best channel with the view,\n"
                                 "as a fraction of the model's strongest view (no unit)")


_METHOD_NAME = {"single": "single models", "ensemble": "ensembles (union of members)", "kd": "KD students",
                "self_distill": "self-distilled students", "average": "averages (all members' channels)",
                "wide": "wide models"}


def sweep_figures(records: list[dict], out_dir: str, group_of) -> list[str]:
    """jkd.sweep hook: view-learning heatmaps over a sweep of the theory probe.

    For each group of points (group_of(record) -> label, e.g. 'data.mu=0.2'), the fraction of the
    net's models (over every seed and model in the group) that learned view l of class j, one panel
    per method. Writes <out_dir>/view_learning_<i>.png per group; returns the paths.
    """
    groups: dict = {}
    runs: dict = {}
    for rec in records:
        path = os.path.join(rec["workdir"], "results.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            res = json.load(f)
        runs[group_of(rec)] = runs.get(group_of(rec), 0) + 1
        for method, r in res.get("results", {}).get("net", {}).items():
            if "learned" in r:
                groups.setdefault(group_of(rec), {}).setdefault(method, []).extend(r["learned"])
    paths = []
    for i, (label, methods) in enumerate(groups.items()):
        panels = [(f"{label}: {_METHOD_NAME.get(m, m)}, {len(v)} from {runs[label]} runs",
                   np.mean(np.asarray(v, dtype=float), axis=0)) for m, v in methods.items()]
        path = os.path.join(out_dir, f"view_learning_{i}.png")
        plot_view_matrices(panels, path, vmax=1.0, label="fraction of the models that learned the view")
        paths.append(path)
    return paths
