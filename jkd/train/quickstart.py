"""The quickstart pipeline: teacher -> KD students -> label-only twins -> results table.

Stages (each its own workdir under the pipeline's workdir, each resumable on rerun):
  teacher/              supervised teacher on every training label
  kd/                   all students distilled together from one teacher forward per batch; the
                        KD term covers every training image (the transfer set), the CE term only
                        the labelled subset (config.data.labelled_fraction), as in Hinton et al.
  label_only_<name>/    each student trained on the labelled subset alone: same steps, batch, seed
Writes <workdir>/results.md and results.json and prints the table.
"""
from __future__ import annotations

import json
import os

import jax

from jkd.errors import ConfigError
from jkd.models import check_model
from jkd.train.distill import train_distill
from jkd.train.supervised import train_supervised


def stage_configs(config) -> dict:
    """Derive the stage configs {'teacher': ..., 'kd': ..., 'label_only_<name>': ...}."""
    teacher = config.copy_and_resolve_references()
    with teacher.unlocked():
        teacher.trainer = "supervised"
        teacher.model = config.teacher_model
        teacher.steps = config.teacher_steps
        teacher.data.labelled_fraction = 1.0
        teacher.data.labelled_only = False
    stages = {"teacher": teacher}
    kd = config.copy_and_resolve_references()
    with kd.unlocked():
        kd.trainer = "distill"
    stages["kd"] = kd
    for name, entry in config.students.items():
        base = config.copy_and_resolve_references()
        with base.unlocked():
            base.trainer = "supervised"
            base.model = entry
            base.data.labelled_only = True
        stages[f"label_only_{name}"] = base
    return stages


def results_table(rows: list[dict]) -> str:
    """Markdown table of the pipeline's rows."""
    lines = ["| model | role | params | test accuracy | train wall time (s) |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['role']} | {r['params']:,} | {100 * r['accuracy']:.2f}% | "
                     f"{r['wall_time_s']:.1f} |")
    return "\n".join(lines)


def run_quickstart(config, workdir: str) -> dict:
    """Run every stage (skipping finished ones) and write results.md/.json; returns the results."""
    check_model(config.teacher_model.name, image_size=config.data.image_size, field="config.teacher_model",
                **dict(config.teacher_model.get("kwargs", {})))
    if not config.students:
        raise ConfigError("config.students: the quickstart needs at least one student")
    stages = stage_configs(config)
    from jkd.config import validate
    for cfg in stages.values():  # every stage is checked before the first one trains
        validate(cfg)
    teacher_dir = os.path.join(workdir, "teacher")
    teacher = train_supervised(stages["teacher"], teacher_dir, desc="teacher")
    with stages["kd"].unlocked():
        stages["kd"].teacher.checkpoint = teacher_dir
    kd = train_distill(stages["kd"], os.path.join(workdir, "kd"), desc="kd students")
    baselines = {name: train_supervised(stages[f"label_only_{name}"], os.path.join(workdir, f"label_only_{name}"),
                                        desc=f"label-only {name}")
                 for name in config.students}

    t = teacher["models"]["model"]
    rows = [{"model": t["model"], "role": "teacher (all labels)", "params": t["params"], "accuracy": t["accuracy"],
             "wall_time_s": teacher["wall_time_s"]}]
    for name in config.students:
        b, k = baselines[name]["models"]["model"], kd["models"][name]
        rows.append({"model": b["model"], "role": "label-only student", "params": b["params"],
                     "accuracy": b["accuracy"], "wall_time_s": baselines[name]["wall_time_s"]})
        rows.append({"model": k["model"], "role": f"KD student ({len(config.students)} students share one teacher forward)",
                     "params": k["params"], "accuracy": k["accuracy"], "wall_time_s": kd["wall_time_s"],
                     "teacher_agreement": k.get("teacher_agreement")})
    frac = config.data.labelled_fraction
    header = (f"jkd quickstart on {config.data.name} (seed {config.seed}): teacher on all labels; students see "
              f"{frac:.0%} of the labels, KD students also the teacher's soft targets (T="
              f"{config.kd.temperature}) on every training image.")
    table = results_table(rows)
    results = {"seed": config.seed, "labelled_fraction": frac, "rows": rows}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(header + "\n\n" + table + "\n")
        print("\n" + header + "\n\n" + table + "\n")
    return results
