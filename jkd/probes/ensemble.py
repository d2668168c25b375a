"""Ensemble, KD from the ensemble and self-distillation with real networks on real images: the
deep-net counterpart of the multi-view probe (Allen-Zhu & Li, ICLR 2023, Figure 1 protocol).

Stages (each its own resumable workdir under the probe's workdir; jkd's usual trainers):
  single_<i>/       i < ensemble.size: config.model trained from labels, seed 1000*seed + i
                    (independent init, data order and augmentation per member)
  kd_ensemble/      one fresh config.model distilled from all single_* together (the teacher target
                    is the mean of their probabilities at T); its eval also scores the ensemble
  self_distill/     one fresh config.model distilled from single_0 alone (born-again network);
                    config.generations > 1 chains generations (gen k+1 learns from gen k); 0 skips it
Every student sees every training label: loss = kd.weight * KD + (1 - kd.weight) * CE, as in the
paper's knowledge-distillation and self-distillation experiments.

    python -m jkd.main --config configs/ensemble_kd.py --workdir /tmp/jkd_ens
    python -m jkd.sweep --config configs/ensemble_kd.py --workdir /tmp/jkd_ens_sweep --sweep 'seed=0:5'
Writes <workdir>/results.md and summary.json: single models (mean and each), the ensemble, KD from
the ensemble and self-distillation (per generation).
"""
from __future__ import annotations

import os

import numpy as np

from jkd import checks, ranges, rundir
from jkd.errors import ConfigError
from jkd.train.stages import check_stage, run_stage


def _stage(config, trainer: str, seed: int):
    stage = config.copy_and_resolve_references()
    with stage.unlocked():
        stage.trainer = trainer
        stage.seed = seed
        stage.generations = 1
        if trainer == "distill":
            stage.students = {"model": config.model}
    return stage


def stage_configs(config, workdir: str) -> dict:
    """{stage name: (config, workdir)} for every stage of the probe, in run order."""
    if not checks.has(config, "ensemble.size"):
        raise ConfigError("config.ensemble.size: the ensemble probe needs its number of members")
    checks.int_at_least(config, "ensemble.size", 2, "the ensemble's members")
    checks.int_at_least(config, "generations", 0, "self-distillation generations (0 = skip)")
    size, gens = config.ensemble.size, config.generations
    # Fields each stage sets itself: a value here would be silently replaced, so it is refused.
    if config.get("students"):
        raise ConfigError("config.students: the ensemble probe trains config.model in every stage; "
                          f"remove config.students (got {list(config.students)})")
    if config.teacher.get("checkpoint"):
        raise ConfigError("config.teacher.checkpoint: the ensemble probe's teachers are its own members "
                          f"(single_*); got {config.teacher.checkpoint!r}")
    base = 1000 * config.seed
    singles = {f"single_{i}": (_stage(config, "supervised", base + i), os.path.join(workdir, f"single_{i}"))
               for i in range(size)}
    stages = dict(singles)
    kd = _stage(config, "distill", base + 100)
    with kd.unlocked():
        kd.teacher.checkpoint = ",".join(d for _, d in singles.values())
    stages["kd_ensemble"] = (kd, os.path.join(workdir, "kd_ensemble"))
    if gens:
        sd = _stage(config, "distill", base + 200)
        with sd.unlocked():
            sd.teacher.checkpoint = singles["single_0"][1]
            sd.generations = gens
        stages["self_distill"] = (sd, os.path.join(workdir, "self_distill"))
    return stages


def check_config(config) -> None:
    """Every stage's start-up checks (run before any training; also used by jkd.sweep)."""
    ranges.check(config)  # ensemble.size, generations and every other numeric field (jkd/ranges.py)
    for stage, _ in stage_configs(config, "/unused").values():
        # the teachers are checked when their stage loads them
        check_stage(stage)


def results_table(summary: dict) -> str:
    """Markdown: one row per method with test accuracy (and teacher agreement for students)."""
    lines = ["| method | test accuracy | teacher agreement |", "|---|---:|---:|"]
    singles = summary["single"]
    lines.append(f"| single model (mean of {len(singles['each'])}) | {100 * singles['accuracy']:.2f}% "
                 f"(min {100 * min(singles['each']):.2f}, max {100 * max(singles['each']):.2f}) | – |")
    lines.append(f"| ensemble of {len(singles['each'])} (mean probabilities) | "
                 f"{100 * summary['ensemble']['accuracy']:.2f}% | – |")
    kd = summary["kd_ensemble"]
    lines.append(f"| KD from the ensemble | {100 * kd['accuracy']:.2f}% | {100 * kd['teacher_agreement']:.2f}% |")
    for k, g in enumerate(summary.get("self_distill", {}).get("generations", []), 1):
        lines.append(f"| self-distillation, generation {k} | {100 * g['accuracy']:.2f}% | "
                     f"{100 * g['teacher_agreement']:.2f}% |")
    return "\n".join(lines)


def run_ensemble(config, workdir: str) -> dict:
    """Run every stage (finished ones are skipped on rerun); returns and writes the summary:
    {'single': {'accuracy', 'each'}, 'ensemble': {'accuracy'}, 'kd_ensemble': {'accuracy',
    'teacher_agreement'}, 'self_distill': {'accuracy', 'generations': [...]}} (accuracies in [0, 1])."""
    check_config(config)
    stages = stage_configs(config, workdir)
    runs = {}
    for name, (stage, stage_dir) in stages.items():
        runs[name] = run_stage(stage, stage_dir, desc=name.replace("_", " "))

    each = [runs[n]["models"]["model"]["accuracy"] for n in stages if n.startswith("single_")]
    kd = runs["kd_ensemble"]
    summary = {
        "model": config.model.name, "ensemble_size": len(each),
        "single": {"accuracy": float(np.mean(each)), "each": each},
        "ensemble": {"accuracy": kd["teacher"]["accuracy"]},
        "kd_ensemble": {k: kd["models"]["model"][k] for k in ("accuracy", "teacher_agreement")},
    }
    if "self_distill" in runs:
        sd = runs["self_distill"]
        gens = [g["models"]["model"] for g in sd.get("generations", [sd])]
        summary["self_distill"] = {"accuracy": gens[-1]["accuracy"],
                                   "generations": [{k: g[k] for k in ("accuracy", "teacher_agreement")}
                                                   for g in gens]}
    header = (f"Ensemble / KD / self-distillation on {config.data.name} ({config.model.name}, seed "
              f"{config.seed}, {config.steps} steps each)")
    rundir.write_json(workdir, "summary.json", summary)
    rundir.report(workdir, header, results_table(summary), progress=config.get("progress", True))
    return summary
