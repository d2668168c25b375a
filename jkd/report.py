"""Aggregate quickstart-style results over seeds into a mean +- std markdown table.

    python -m jkd.report /tmp/q_seed0 /tmp/q_seed1 /tmp/q_seed2
    python -m jkd.report --methods /tmp/m_s0 /tmp/m_s1 /tmp/m_s2
    python -m jkd.report --methods-vs /tmp/old_s0,/tmp/old_s1 /tmp/m_s0,/tmp/m_s1   # new - old, paired by seed
    python -m jkd.report --omitted /tmp/om_s0 /tmp/om_s1 /tmp/om_s2                  # configs/hinton_omitted.py
    python -m jkd.report --cache /tmp/jkd_cache_s0 /tmp/jkd_cache_s1 /tmp/jkd_cache_s2  # configs/teacher_cache.py

Each argument is a quickstart workdir (one seed). The default table matches the rows of results.json
by (model, role) across workdirs. --methods writes one row per (student, KD method) from the stages'
summaries (kd_<method>/summary.json, label_only_<student>/summary.json): accuracy, the paired
difference to the same seed's label-only twin, teacher agreement and KL. --methods-vs compares two
such sets run with the same seeds in the same order (e.g. two commits). --omitted aggregates the
omitted-class probe's omitted.json files. --cache aggregates the teacher-cache recipe's results.json
(accuracy per k and live, paired differences to live, train-loop time per epoch and its ratio to live).
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


def _student_rows(workdir: str) -> dict:
    """{(student, method): its summary row} of one quickstart workdir: every KD stage kd_<method>/
    (one row per student) and every label-only twin label_only_<student>/ (method 'label only')."""
    out = {}
    for stage in sorted(os.listdir(workdir)):
        summary = _summary(workdir, stage) if stage.startswith(("kd_", "label_only_")) else None
        if summary is None:
            continue
        if stage.startswith("label_only_"):
            out[(stage[len("label_only_"):], "label only")] = summary["models"]["model"]
        else:
            out.update({(student, stage[3:]): row for student, row in summary["models"].items()})
    return out


def _in_every(workdirs: list[str]) -> dict:
    """{(student, method): [row per workdir]} for the pairs present in every workdir."""
    per_dir = [_student_rows(w) for w in workdirs]
    return {k: [rows[k] for rows in per_dir] for k in per_dir[0] if all(k in rows for rows in per_dir)}


def methods_table(workdirs: list[str], methods: list[str] | None = None) -> str:
    """Markdown: per student, its label-only row then one row per KD method found in every workdir
    (kd_<method>/): test accuracy mean ± std (sample std) over the workdirs (seeds), the mean ± std
    of the per-seed difference to that seed's label-only twin, the per-seed values, mean teacher
    agreement and KL(teacher || student) at T = 1 (nats). Accuracies in %."""
    rows = _in_every(workdirs)
    from jkd.train.quickstart import METHODS  # the quickstart's order, then variants (e.g. fm_x4)
    found = sorted({m for _, m in rows if m != "label only"})
    found = [m for m in METHODS if m in found] + [m for m in found if m not in METHODS]
    methods = [m for m in (methods or found) if any(k[1] == m for k in rows)]
    students = sorted({s for s, m in rows if m == "label only"})
    lines = [f"| student | method | test accuracy, mean ± std over {len(workdirs)} seeds | vs label-only (paired) | "
             "per seed | teacher agreement | KL(teacher‖student) |", "|---|---|---:|---:|---|---:|---:|"]
    for student in students:
        twin = [100 * r["accuracy"] for r in rows[(student, "label only")]]
        lines.append(f"| {student} | label only | {_mean_std(twin)} | – | {', '.join(f'{a:.2f}' for a in twin)} | – | – |")
        for m in methods:
            if (student, m) not in rows:
                continue
            runs = rows[(student, m)]
            acc = [100 * r["accuracy"] for r in runs]
            diff = [a - t for a, t in zip(acc, twin)]
            lines.append(f"| {student} | {m} | {_mean_std(acc)} | {'+' if np.mean(diff) >= 0 else ''}{_mean_std(diff)} | "
                         f"{', '.join(f'{a:.2f}' for a in acc)} | {100 * np.mean([r['teacher_agreement'] for r in runs]):.2f} | "
                         f"{np.mean([r['teacher_kl'] for r in runs]):.3f} |")
    return "\n".join(lines)


def compare_methods(old: list[str], new: list[str]) -> str:
    """Markdown: per (student, method) in both sets, old and new accuracy mean ± std and the mean ±
    std of the per-seed difference new - old (workdirs paired by position, i.e. by seed)."""
    if len(old) != len(new):
        raise SystemExit(f"--methods-vs: {len(old)} old workdirs but {len(new)} new ones (pair them by seed)")
    a = {k: [100 * r["accuracy"] for r in v] for k, v in _in_every(old).items()}
    b = {k: [100 * r["accuracy"] for r in v] for k, v in _in_every(new).items()}
    lines = [f"| student | method | old, mean ± std over {len(old)} seeds | new | new - old (paired) | old per seed | "
             "new per seed |", "|---|---|---:|---:|---:|---|---|"]
    for key in sorted(set(a) & set(b), key=lambda k: (k[0], k[1] != "label only", k[1])):
        diff = [y - x for x, y in zip(a[key], b[key])]
        sign = "+" if np.mean(diff) >= 0 else ""
        lines.append(f"| {key[0]} | {key[1]} | {_mean_std(a[key])} | {_mean_std(b[key])} | {sign}{_mean_std(diff)} | "
                     f"{', '.join(f'{x:.2f}' for x in a[key])} | {', '.join(f'{x:.2f}' for x in b[key])} |")
    return "\n".join(lines)


def omitted_table(workdirs: list[str]) -> str:
    """Markdown: per model of the omitted-class probe (<workdir>/omitted.json, one seed each), test
    errors on the excluded classes without a shift, after the label-free prior shift and after the
    oracle shift, errors on the other classes, and the shifts: mean ± std over the workdirs."""
    runs = []
    for w in workdirs:
        with open(os.path.join(w, "omitted.json")) as f:
            runs.append(json.load(f))
    classes = runs[0]["excluded_classes"]
    if any(r["excluded_classes"] != classes for r in runs):
        raise SystemExit("--omitted: the workdirs exclude different classes")
    n_om = runs[0]["models"]["teacher"]["omitted_count"]
    n_other = runs[0]["models"]["teacher"]["other_count"]
    lines = [f"Excluded {classes}: {n_om} test images of them, {n_other} of the other classes; "
             f"{len(runs)} seeds, mean ± std of error counts.", "",
             f"| model | stage | errors on {classes}: no shift | prior shift (label-free) | oracle shift | "
             "errors on the others: no shift | prior shift | oracle shift | shift: prior | oracle |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    t = [r["models"]["teacher"] for r in runs]
    lines.append(f"| teacher | all classes | {_mean_std([x['omitted_errors'] for x in t])} | – | – | "
                 f"{_mean_std([x['other_errors'] for x in t])} | – | – | – | – |")
    for stage, first in runs[0]["models"].items():
        if stage == "teacher" or "prior" not in first:
            continue
        rows = [r["models"][stage] for r in runs]
        cells = [_mean_std([x[part][kind] for x in rows]) for kind in ("omitted_errors", "other_errors")
                 for part in ("before", "prior", "oracle")]
        shifts = [_mean_std([np.mean(x[k]) for x in rows]) for k in ("prior_shift", "oracle_shift")]
        lines.append(f"| {first['model']} | {stage} | " + " | ".join(cells + shifts) + " |")
    return "\n".join(lines)


def cache_table(workdirs: list[str]) -> str:
    """Markdown: per run of the teacher-cache recipe (live, then each k), each student's accuracy and its
    paired difference to the same seed's live run, train-loop seconds per epoch and live / cached time:
    mean ± std over the workdirs (one seed each)."""
    runs = []
    for w in workdirs:
        with open(os.path.join(w, "results.json")) as f:
            runs.append(json.load(f))
    students = list(runs[0]["rows"][0]["accuracy"])
    lines = [f"{len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}), mean ± std; teacher "
             f"{_mean_std([100 * r['teacher_accuracy'] for r in runs])}%.", "",
             "| run | k | " + " | ".join(f"{s} accuracy % | {s} − live" for s in students)
             + " | train loop s / epoch | live / this |",
             "|---|---|" + "---:|---:|" * len(students) + "---:|---:|"]
    for i, row in enumerate(runs[0]["rows"]):
        rows, live = [r["rows"][i] for r in runs], [r["rows"][0] for r in runs]
        cells = []
        for s in students:
            cells.append(_mean_std([100 * x["accuracy"][s] for x in rows]))
            cells.append("–" if i == 0 else _mean_std([100 * (x["accuracy"][s] - y["accuracy"][s])
                                                         for x, y in zip(rows, live)]))
        ratio = _mean_std([y["epoch_s"] / x["epoch_s"] for x, y in zip(rows, live)])
        lines.append(f"| {row['run']} | {row['k']} | " + " | ".join(cells)
                     + f" | {_mean_std([x['epoch_s'] for x in rows])} | {ratio} |")
    return "\n".join(lines)


USAGE = ("usage: python -m jkd.report [--methods | --omitted | --cache] WORKDIR [WORKDIR ...]\n"
         "       python -m jkd.report --methods-vs OLD1,OLD2,... NEW1,NEW2,...")


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    """(table, workdirs) from the command line (no program name), reading nothing: table is
    'quickstart', 'methods', 'omitted', 'cache' or 'methods-vs' (workdirs: the OLD and NEW lists as given).
    Anything else exits with the usage."""
    table = argv[0][2:] if argv and argv[0] in ("--methods", "--omitted", "--methods-vs", "--cache") else "quickstart"
    workdirs = argv[1:] if table != "quickstart" else argv
    if not workdirs or any(w.startswith("-") for w in workdirs) or (table == "methods-vs" and len(workdirs) != 2):
        sys.exit(USAGE)
    return table, workdirs


def main(argv: list[str]) -> None:
    table, workdirs = parse_args(argv)
    if table == "methods-vs":
        print(compare_methods(workdirs[0].split(","), workdirs[1].split(",")))
        return
    print({"quickstart": aggregate, "methods": methods_table, "omitted": omitted_table,
           "cache": cache_table}[table](workdirs))


if __name__ == "__main__":
    main(sys.argv[1:])
