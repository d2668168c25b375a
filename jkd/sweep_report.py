"""jkd.sweep's reports: records -> mean ± std table (table.md), plots, and the trainer's own figures.

    rows = aggregate(records, group_over=("seed",))   # one row per point group, stats per metric
    text = table(rows)                               # markdown, accuracies in %
    report(records, swept, workdir, trainer)         # table.md + plots/ (+ the trainer's sweep_figures)

A record is {'point': {field: value}, 'metrics': {'a/b/acc': float}, ...}, one per sweep point.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

_PERCENT = re.compile(r"(acc|accuracy|agreement|views_both|views_one|views_none)$")
# What a point cost, not what it measured: left out of table.md (its header gives the seconds per point);
# as rows they read as stray results, e.g. the theory probe's 'net/wall_time_s' and 'wall_time_s'.
_RUN_COST = re.compile(r"(^|/)(wall_time_s|train_loop_s)$")


def canonical(point: dict) -> str:
    """A point's key: its overrides as sorted JSON."""
    return json.dumps(point, sort_keys=True)


def aggregate(records: list[dict], group_over=("seed",), metrics: str | None = None) -> list[dict]:
    """Group records by their non-`group_over` overrides: [{'group': {...}, 'n', 'stats': {metric:
    (mean, std, values)}}] in first-seen order; std is the sample std (0 for one value)."""
    pattern = re.compile(metrics) if metrics else None
    groups: dict = {}
    for rec in records:
        group = {k: v for k, v in rec["point"].items() if k not in group_over}
        groups.setdefault(canonical(group), {"group": group, "records": []})["records"].append(rec)
    rows = []
    for g in groups.values():
        names = []
        for rec in g["records"]:
            names += [m for m in rec["metrics"] if m not in names]
        names = [m for m in names if "seed" not in m.rsplit("/", 1)[-1] and (not pattern or pattern.search(m))]
        stats = {}
        for m in names:
            vals = np.array([r["metrics"][m] for r in g["records"] if m in r["metrics"]], dtype=float)
            stats[m] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, vals.tolist())
        rows.append({"group": g["group"], "n": len(g["records"]), "stats": stats})
    return rows


def _fmt(metric: str, mean: float, std: float, n: int) -> str:
    if _PERCENT.search(metric):
        return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if n > 1 else "")
    return f"{mean:.4g}" + (f" ± {std:.2g}" if n > 1 else "")


def table(rows: list[dict], group_over=("seed",)) -> str:
    """Markdown: one row per (point group, metric prefix), one column per measure (last path part);
    accuracies and view fractions in %, mean ± std over the grouped-over fields. Prefix-less metrics
    (e.g. 'steps') form a row named '(run)'; run costs (wall_time_s, train_loop_s) are left out."""
    fields = list(dict.fromkeys(f for r in rows for f in r["group"]))
    prefixes, measures = [], []
    for r in rows:
        for m in r["stats"]:
            if _RUN_COST.search(m):
                continue
            prefix, _, measure = m.rpartition("/")
            prefixes += [prefix] if prefix not in prefixes else []
            measures += [measure] if measure not in measures else []
    over = ", ".join(group_over)
    head = fields + ["metrics", f"n ({over})"] + [m + (" (%)" if _PERCENT.search(m) else "") for m in measures]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(fields) + "---|---:|" + "---:|" * len(measures)]
    for r in rows:
        for prefix in prefixes:
            cells = []
            for measure in measures:
                s = r["stats"].get(f"{prefix}/{measure}" if prefix else measure)
                cells.append(_fmt(measure, s[0], s[1], len(s[2])) if s else "")
            if any(cells):
                row = [str(r["group"].get(f, "")) for f in fields] + [prefix or "(run)", str(r["n"])] + cells
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_sweep(rows: list[dict], sweeps: dict, out_dir: str, group_over=("seed",),
               plot_metrics: str = r"(acc|accuracy|views_both)$") -> list[str]:
    """For every swept numeric field (not grouped over) with >= 2 values and every measure matching
    plot_metrics: <out_dir>/<measure>_vs_<field>.png, one line per metric prefix and combination of
    the other swept fields, error bars = std over the grouped-over fields. Returns the paths."""
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg when headless, inline in notebooks)

    pattern = re.compile(plot_metrics)
    paths = []
    for field, values in sweeps.items():
        if field in group_over or len(values) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                             for v in values):
            continue
        metric_names = list(dict.fromkeys(m for r in rows for m in r["stats"] if pattern.search(m)))
        for measure in dict.fromkeys(m.rpartition("/")[2] for m in metric_names):
            lines: dict = {}
            for r in rows:
                others = ", ".join(f"{k}={v}" for k, v in r["group"].items() if k != field)
                for m, (mean, std, _) in r["stats"].items():
                    if m.rpartition("/")[2] == measure and pattern.search(m):
                        lines.setdefault((m.rpartition("/")[0], others), []).append((r["group"][field], mean, std))
            scale = 100.0 if _PERCENT.search(measure) else 1.0
            # One colour per metric prefix (e.g. the method), one line style per setting of the other
            # swept fields, so "method X under setting A vs B" reads as one colour, two styles.
            prefixes = list(dict.fromkeys(p for p, _ in lines))
            settings = list(dict.fromkeys(o for _, o in lines))
            colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            styles = ["-", "--", ":", "-."]
            fig, ax = plt.subplots(figsize=(8.4, 4.2))
            for (prefix, others), pts in lines.items():
                pts.sort()
                x, y, e = (np.array(v, dtype=float) for v in zip(*pts))
                label = " ".join(s for s in (prefix, others) if s) or measure
                ax.errorbar(x, scale * y, yerr=scale * e, marker="o", capsize=3, label=label,
                            color=colours[prefixes.index(prefix) % len(colours)],
                            linestyle=styles[settings.index(others) % len(styles)])
            xs = np.array(values, dtype=float)
            if xs.min() > 0 and xs.max() / xs.min() >= 8:  # e.g. a dimension or a learning rate
                ax.set_xscale("log", base=2 if all(float(v).is_integer() for v in values) else 10)
                ax.minorticks_off()
            if len(values) <= 12:  # ticks at the swept values, not between them
                ax.set_xticks(xs, [f"{v:g}" for v in values])
            ax.set_xlabel(field)
            ax.set_ylabel(measure + (" (%)" if scale == 100.0 else ""))
            ax.set_title(f"{measure} vs {field} (mean ± std over {', '.join(group_over)})", fontsize=10)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = os.path.join(out_dir, f"{measure}_vs_{field}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def report(records, swept, workdir, trainer=None, *, group_over=("seed",), metrics=None, header="") -> str:
    """Write <workdir>/table.md and plots/ for the given records; returns the table."""
    rows = aggregate(records, group_over, metrics)
    text = table(rows, group_over)
    sweep_desc = " ".join(f"--sweep '{k}={','.join(str(v) for v in vals)}'" for k, vals in swept.items())
    seconds = [r["seconds"] for r in records if "seconds" in r]
    cost = f" ({len(records)} points, {np.mean(seconds):.0f} s per point)" if seconds else ""
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(f"Sweep: {header} {sweep_desc}{cost}\n\n{text}\n")
    plots = os.path.join(workdir, "plots")
    os.makedirs(plots, exist_ok=True)
    plot_sweep(rows, swept, plots, group_over)
    if trainer is not None:  # the trainer's own figures (jkd/trainers.py), if it has some
        from jkd import trainers

        def group_of(rec):
            return ", ".join(f"{k}={v}" for k, v in rec["point"].items() if k not in group_over) or "all points"
        trainers.get(trainer).sweep_figures(records, plots, group_of)
    return text
