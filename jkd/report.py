"""Aggregate quickstart-style results over seeds into a mean +- std markdown table.

    python -m jkd.report /tmp/q_seed0 /tmp/q_seed1 /tmp/q_seed2

Each argument is a workdir holding results.json (rows of model, role, params, accuracy,
wall_time_s). Rows are matched by (model, role) across workdirs.
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


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m jkd.report WORKDIR [WORKDIR ...]")
    print(aggregate(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
