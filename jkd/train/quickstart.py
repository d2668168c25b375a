"""The quickstart pipeline: teacher -> KD students -> label-only twins -> results table.

Stages (each its own workdir under the pipeline's workdir, each resumable on rerun):
  teacher/              supervised teacher on every training label
  kd_<method>/          for each method of config.method (comma-separated): the students it
                        applies to, distilled together from one teacher forward per batch; the KD
                        term covers every training image (the transfer set), the CE term only the
                        labelled subset (config.data.labelled_fraction), as in Hinton et al.
  label_only_<name>/    each student trained on the labelled subset alone: same steps, batch, seed
config.data.exclude_classes leaves classes out of every student stage's training data (KD transfer
set and label-only twins alike); the teacher still trains on all classes (jkd/probes/omitted.py).

Methods (presets over the distill config; see jkd/train/objectives.py and docs/METHODS.md; each
takes its paper's loss form and defaults unless config.kd.* sets them):
  hinton, hard, dkd, nkd   kd.method for every student
  deit                     ViT students get a distillation token (soft KD on its head: DeiT's
                           0.9 CE + 0.1 tau^2 KL, tau = 3)
  vitkd                    ViT students: CE + NKD + ViTKD feature losses (cls_KD's DeiT recipe)
  align                    ConvNeXt students: Hinton KD + alignment to the teacher's token map
  fm                       function matching: KL only (no labels), T=1, mixup Beta(1, 1) on every batch
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


METHODS = ("hinton", "hard", "dkd", "nkd", "deit", "vitkd", "align", "fm")


def parse_methods(config) -> list[str]:
    methods = [m.strip() for m in str(config.method).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ConfigError(f"config.method: unknown {unknown or config.method!r} (known: {', '.join(METHODS)})")
    return methods


def method_config(config, method: str):
    """The distill config of one method preset (students it does not apply to are dropped)."""
    kd = config.copy_and_resolve_references()
    with kd.unlocked():
        kd.trainer = "distill"
        vits = [n for n, e in config.students.items() if e.name.startswith("vit_")]
        convnexts = [n for n, e in config.students.items() if e.name.startswith("convnext_")]
        keep = list(config.students)
        if method in ("hinton", "hard", "dkd", "nkd", "fm"):
            kd.kd.method = method
        elif method == "deit":
            keep = vits
            for n in vits:
                kd.students[n].kwargs.distillation_token = True
        elif method == "vitkd":  # cls_KD's DeiT configs: CE + NKD + ViTKD
            keep = vits
            kd.kd.method, kd.feature_kd.method = "nkd", "vitkd"
        elif method == "align":
            keep = convnexts
            kd.feature_kd.method = "align"
        if method == "fm":  # consistent views come from the shared augmentation; mixup on every batch
            kd.augment.mixup_alpha = config.get("fm_mixup_alpha", 1.0)
        if not keep:
            raise ConfigError(f"config.method: {method!r} applies to no student of config.students")
        for n in list(kd.students):
            if n not in keep:
                del kd.students[n]
    return kd


def stage_configs(config) -> dict:
    """Derive the stage configs {'teacher': ..., 'kd_<method>': ..., 'label_only_<name>': ...}."""
    teacher = config.copy_and_resolve_references()
    with teacher.unlocked():
        teacher.trainer = "supervised"
        teacher.model = config.teacher_model
        teacher.steps = config.teacher_steps
        teacher.data.labelled_fraction = 1.0
        teacher.data.labelled_only = False
        teacher.data.exclude_classes = ()  # the teacher learns every class; only the students' transfer set omits some
    stages = {"teacher": teacher}
    for method in parse_methods(config):
        stages[f"kd_{method}"] = method_config(config, method)
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
    stages = stage_configs(config)  # also checks config.method
    from jkd.config import validate
    for cfg in stages.values():  # every stage is checked before the first one trains
        validate(cfg)
    teacher_dir = os.path.join(workdir, "teacher")
    teacher = train_supervised(stages["teacher"], teacher_dir, desc="teacher")
    kd_runs = {}
    for method in parse_methods(config):
        stage = stages[f"kd_{method}"]
        with stage.unlocked():
            stage.teacher.checkpoint = teacher_dir
        kd_runs[method] = train_distill(stage, os.path.join(workdir, f"kd_{method}"), desc=f"kd {method}")
    baselines = {name: train_supervised(stages[f"label_only_{name}"], os.path.join(workdir, f"label_only_{name}"),
                                        desc=f"label-only {name}")
                 for name in config.students}

    t = teacher["models"]["model"]
    rows = [{"model": t["model"], "role": "teacher (all labels)", "params": t["params"], "accuracy": t["accuracy"],
             "wall_time_s": teacher["wall_time_s"]}]
    for name in config.students:
        b = baselines[name]["models"]["model"]
        rows.append({"model": b["model"], "role": "label-only student", "params": b["params"],
                     "accuracy": b["accuracy"], "wall_time_s": baselines[name]["wall_time_s"]})
        for method, kd in kd_runs.items():
            if name not in kd["models"]:
                continue
            k = kd["models"][name]
            shared = f", {len(kd['models'])} students share one teacher forward" if len(kd["models"]) > 1 else ""
            rows.append({"model": k["model"], "role": f"KD student ({method}{shared})", "method": method,
                         "params": k["params"], "accuracy": k["accuracy"], "wall_time_s": kd["wall_time_s"],
                         "teacher_agreement": k.get("teacher_agreement")})
    frac = config.data.labelled_fraction
    header = (f"jkd quickstart on {config.data.name} (seed {config.seed}): teacher on all labels; students see "
              f"{frac:.0%} of the labels, KD students also the teacher's outputs on every training image "
              f"(each method with its published loss form and defaults, docs/METHODS.md).")
    table = results_table(rows)
    results = {"seed": config.seed, "labelled_fraction": frac, "methods": parse_methods(config), "rows": rows}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(header + "\n\n" + table + "\n")
        print("\n" + header + "\n\n" + table + "\n")
    return results
