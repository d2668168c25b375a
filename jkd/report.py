"""Aggregate quickstart-style results over seeds into a mean +- std markdown table.

    python -m jkd.report /tmp/q_seed0 /tmp/q_seed1 /tmp/q_seed2
    python -m jkd.report --methods /tmp/m_s0 /tmp/m_s1 /tmp/m_s2

Each argument is a quickstart workdir (one seed). The default table matches the rows of results.json
by (model, role) across workdirs. --methods writes one row per (student, KD method) from the stages'
summaries (kd_<method>/summary.json, label_only_<student>/summary.json): accuracy, the paired
difference to the same seed's label-only twin, teacher agreement and KL.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np


def aggregate(workdirs: list[str]) -> str:
    """Markdown table: one row per (model, role), accuracy mean +- std (sample std, ddof=1) and
    per-seed values, mean wall time."""
    runs = []
    for w in workdirs:
        with open(os.path.join(w, "results.json")) as f:
            runs.append(json.load(f))
    keys = [(r["model"], r["role"]) for r in runs[0]["rows"]]
    lines = [f"| model | role | params | test accuracy, mean ± std over {len(runs)} seeds | per seed | "
             "wall time (s), mean |", "|---|---|---:|---:|---|---:|"]
    for model, role in keys:
        rows = [next(r for r in run["rows"] if (r["model"], r["role"]) == (model, role)) for run in runs]
        acc = 100 * np.array([r["accuracy"] for r in rows])
        std = acc.std(ddof=1) if len(acc) > 1 else 0.0
        per_seed = ", ".join(f"{a:.2f}" for a in acc)
        lines.append(f"| {model} | {role} | {rows[0]['params']:,} | {acc.mean():.2f} ± {std:.2f} | {per_seed} | "
                     f"{np.mean([r['wall_time_s'] for r in rows]):.1f} |")
    seeds = ", ".join(str(run["seed"]) for run in runs)
    return f"Seeds: {seeds}\n\n" + "\n".join(lines)


def _summary(workdir: str, stage: str) -> dict | None:
    path = os.path.join(workdir, stage, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _mean_std(values) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"


def methods_table(workdirs: list[str], methods: list[str] | None = None) -> str:
    """Markdown: per student, its label-only row then one row per KD method found in every workdir
    (kd_<method>/): test accuracy mean ± std (sample std) over the workdirs (seeds), the mean ± std
    of the per-seed difference to that seed's label-only twin, the per-seed values, mean teacher
    agreement and KL(teacher || student) at T = 1 (nats). Accuracies in %."""
    found = sorted({d[3:] for w in workdirs for d in os.listdir(w)
                    if d.startswith("kd_") and os.path.exists(os.path.join(w, d, "summary.json"))})
    from jkd.train.quickstart import METHODS  # the quickstart's order, then variants (e.g. fm_x4)
    found = [m for m in METHODS if m in found] + [m for m in found if m not in METHODS]
    methods = [m for m in (methods or found) if all(_summary(w, f"kd_{m}") for w in workdirs)]
    students = sorted({d[len("label_only_"):] for d in os.listdir(workdirs[0]) if d.startswith("label_only_")})
    lines = [f"| student | method | test accuracy, mean ± std over {len(workdirs)} seeds | vs label-only (paired) | "
             "per seed | teacher agreement | KL(teacher‖student) |", "|---|---|---:|---:|---|---:|---:|"]
    for student in students:
        twin = [100 * _summary(w, f"label_only_{student}")["models"]["model"]["accuracy"] for w in workdirs]
        lines.append(f"| {student} | label only | {_mean_std(twin)} | – | {', '.join(f'{a:.2f}' for a in twin)} | – | – |")
        for m in methods:
            rows = [_summary(w, f"kd_{m}")["models"].get(student) for w in workdirs]
            if any(r is None for r in rows):
                continue
            acc = [100 * r["accuracy"] for r in rows]
            diff = [a - t for a, t in zip(acc, twin)]
            lines.append(f"| {student} | {m} | {_mean_std(acc)} | {'+' if np.mean(diff) >= 0 else ''}{_mean_std(diff)} | "
                         f"{', '.join(f'{a:.2f}' for a in acc)} | {100 * np.mean([r['teacher_agreement'] for r in rows]):.2f} | "
                         f"{np.mean([r['teacher_kl'] for r in rows]):.3f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if not argv or argv == ["--methods"]:
        sys.exit("usage: python -m jkd.report [--methods] WORKDIR [WORKDIR ...]")
    if argv[0] == "--methods":
        print(methods_table(argv[1:]))
        return
    print(aggregate(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
