"""The quickstart pipeline: teacher -> KD students -> label-only twins -> results table.

Stages (each its own workdir under the pipeline's workdir, each resumable on rerun):
  teacher/              supervised config.teacher.model on every training label, config.teacher.steps
  kd_<method>/          for each preset of config.kd_methods (comma-separated): the students it
                        applies to, distilled together from one teacher forward per batch; the KD
                        term covers every training image (the transfer set), the CE term only the
                        labelled subset (config.data.labelled_fraction), as in Hinton et al.
  label_only_<name>/    each student trained on the labelled subset alone: same steps, batch, seed
config.data.exclude_classes leaves classes out of every student stage's training data (KD transfer
set and label-only twins alike); the teacher still trains on all classes (jkd/probes/omitted.py).

Presets (PRESETS below; each method takes its paper's loss form and defaults unless config.kd.*
sets them, jkd/train/objectives.py and docs/METHODS.md):
  hinton, hard, dkd, nkd   kd.method for every student
  dist                     kd.method for every student (DIST: correlation of the probabilities)
  deit                     ViT students get a distillation token (soft KD on its head: DeiT's
                           0.9 CE + 0.1 tau^2 KL, tau = 3; config.kd.method=hard gives DeiT's hard form)
  vitkd                    ViT students: CE + NKD + ViTKD feature losses (cls_KD's DeiT recipe)
  align                    ConvNeXt students: Hinton KD (or config.kd.method) + alignment to the teacher's tokens
  fm                       function matching: KL only (no labels), T=1, mixup Beta(1, 1) on every batch
A field a preset sets (kd.method, feature_kd.method, also in a student's overrides) must be left
unset: setting it is a ConfigError naming the field, never silently overridden.
Writes <workdir>/results.md and results.json and prints the table.
"""

from __future__ import annotations

import dataclasses
import os

from jkd import checks, ranges, rundir
from jkd.config import check_model_entry, check_renamed
from jkd.errors import ConfigError
from jkd.train.stages import check_stage, run_stage


@dataclasses.dataclass(frozen=True)
class Preset:
    """What one kd_methods preset sets on the distill config of its stage."""
    kd_method: str | None = None        # config.kd.method
    feature_method: str | None = None   # config.feature_kd.method
    family: str | None = None           # only students of this family ('vit_' / 'convnext_'); None = all
    distillation_token: bool = False    # ViT students get DeiT's distillation token


PRESETS = {
    "hinton": Preset(kd_method="hinton"), "hard": Preset(kd_method="hard"), "dkd": Preset(kd_method="dkd"),
    "nkd": Preset(kd_method="nkd"), "fm": Preset(kd_method="fm"),
    "dist": Preset(kd_method="dist"),
    "deit": Preset(family="vit_", distillation_token=True),
    "vitkd": Preset(kd_method="nkd", feature_method="vitkd", family="vit_"),  # cls_KD's DeiT configs: CE + NKD + ViTKD
    "align": Preset(feature_method="align", family="convnext_"),
}
METHODS = tuple(PRESETS)


def parse_methods(config) -> list[str]:
    """config.kd_methods as a list of preset names (ConfigError naming the field)."""
    return checks.comma_list(config.kd_methods, METHODS, "kd_methods")


def check_presets(config) -> None:
    """A field a chosen preset sets must be unset in the config (and in every student's overrides)."""
    for method in parse_methods(config):
        preset = PRESETS[method]
        for field, value in (("kd.method", preset.kd_method), ("feature_kd.method", preset.feature_method)):
            if value is None:
                continue
            where = [("config", config)] + [(f"config.students.{n}", e) for n, e in config.students.items()]
            for prefix, node in where:
                if checks.has(node, field) and checks.get(node, field) is not None:
                    raise ConfigError(f"{prefix}.{field}: the quickstart's preset {method!r} sets it to {value!r} "
                                      f"(config.kd_methods = {config.kd_methods!r}); leave it unset and choose "
                                      f"the method with --config.kd_methods=... (the presets that read "
                                      f"config.kd.method, deit and align, take it in a quickstart of their own)")


def method_config(config, method: str):
    """The distill config of one method preset (students it does not apply to are dropped)."""
    preset = PRESETS[method]
    keep = [n for n, e in config.students.items() if preset.family is None or e.name.startswith(preset.family)]
    if not keep:
        raise ConfigError(f"config.kd_methods: {method!r} applies to no student of config.students")
    kd = config.copy_and_resolve_references()
    with kd.unlocked():
        kd.trainer = "distill"
        if preset.kd_method:
            kd.kd.method = preset.kd_method
        if preset.feature_method:
            kd.feature_kd.method = preset.feature_method
        for n in list(kd.students):
            if n not in keep:
                del kd.students[n]
            elif preset.distillation_token:
                kd.students[n].kwargs.distillation_token = True
    return kd


def stage_configs(config) -> dict:
    """Derive the stage configs {'teacher': ..., 'kd_<method>': ..., 'label_only_<name>': ...}."""
    teacher = config.copy_and_resolve_references()
    with teacher.unlocked():
        teacher.trainer = "supervised"
        teacher.model = config.teacher.model
        teacher.steps = config.teacher.steps
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


def check_config(config) -> None:
    """Every stage's start-up checks, before the first one trains (ConfigError naming the field)."""
    check_renamed(config)
    ranges.check(config)  # teacher.steps and every other numeric field (jkd/ranges.py)
    if not checks.has(config, "teacher.model") or not checks.has(config, "teacher.steps"):
        raise ConfigError("config.teacher.model / config.teacher.steps: the quickstart trains its teacher; set both")
    check_model_entry(config.teacher.model, config, "config.teacher.model")
    # Fields each stage sets itself: a value here would be silently replaced, so it is refused.
    if config.teacher.get("checkpoint"):
        raise ConfigError(f"config.teacher.checkpoint: the {config.trainer} pipeline trains its own teacher "
                          f"(<workdir>/teacher, config.teacher.model); got {config.teacher.checkpoint!r}. To distil "
                          "from an existing teacher use a distill recipe (configs/digits_distill.py)")
    if "model" in config:
        raise ConfigError(f"config.model: the {config.trainer} pipeline derives each stage's model "
                          "(config.teacher.model, config.students); remove the field")
    if not config.students:
        raise ConfigError("config.students: the quickstart needs at least one student")
    check_presets(config)
    for stage in stage_configs(config).values():
        check_stage(stage)


def results_table(rows: list[dict]) -> str:
    """Markdown table of the pipeline's rows."""
    lines = ["| model | role | params | test accuracy | train wall time (s) |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['role']} | {r['params']:,} | {100 * r['accuracy']:.2f}% | "
                     f"{r['wall_time_s']:.1f} |")
    return "\n".join(lines)


def run_teacher(config, workdir: str) -> dict:
    """Only the teacher stage (<workdir>/teacher, skipped when finished): its summary. For a caller
    that needs the quickstart's teacher and nothing else (e.g. to export it as a weight file)."""
    check_config(config)
    return run_stage(stage_configs(config)["teacher"], os.path.join(workdir, "teacher"), desc="teacher")


def run_quickstart(config, workdir: str, *, baselines: bool = True) -> dict:
    """Run every stage (skipping finished ones) and write results.md/.json; returns the results.
    baselines=False skips the label-only twins (their rows are left out of the table)."""
    check_config(config)
    stages = stage_configs(config)
    teacher_dir = os.path.join(workdir, "teacher")
    teacher = run_stage(stages["teacher"], teacher_dir, desc="teacher")
    kd_runs = {}
    for method in parse_methods(config):
        stage = stages[f"kd_{method}"]
        with stage.unlocked():
            stage.teacher.checkpoint = teacher_dir
        kd_runs[method] = run_stage(stage, os.path.join(workdir, f"kd_{method}"), desc=f"kd {method}")
    twins = {name: run_stage(stages[f"label_only_{name}"], os.path.join(workdir, f"label_only_{name}"),
                             desc=f"label-only {name}")
             for name in config.students} if baselines else {}

    t = teacher["models"]["model"]
    rows = [{"model": t["model"], "role": "teacher (all labels)", "params": t["params"], "accuracy": t["accuracy"],
             "wall_time_s": teacher["wall_time_s"]}]
    for name in config.students:
        if name in twins:
            b = twins[name]["models"]["model"]
            rows.append({"model": b["model"], "role": "label-only student", "params": b["params"],
                         "accuracy": b["accuracy"], "wall_time_s": twins[name]["wall_time_s"], "student": name})
        for method, kd in kd_runs.items():
            if name not in kd["models"]:
                continue
            k = kd["models"][name]
            shared = f", {len(kd['models'])} students share one teacher forward" if len(kd["models"]) > 1 else ""
            rows.append({"model": k["model"], "role": f"KD student ({method}{shared})", "method": method, "student": name,
                         "params": k["params"], "accuracy": k["accuracy"], "wall_time_s": kd["wall_time_s"],
                         "teacher_agreement": k.get("teacher_agreement")})
    frac = config.data.labelled_fraction
    header = (f"jkd quickstart on {config.data.name} (seed {config.seed}): teacher on all labels; students see "
              f"{frac:.0%} of the labels, KD students also the teacher's outputs on every training image "
              f"(each method with its published loss form and defaults, docs/METHODS.md).")
    table = results_table(rows)
    results = {"seed": config.seed, "labelled_fraction": frac, "methods": parse_methods(config), "rows": rows}
    rundir.write_json(workdir, "results.json", results)
    rundir.report(workdir, header, table, progress=True)
    return results
