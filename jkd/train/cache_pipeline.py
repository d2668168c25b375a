"""The teacher-cache recipe (configs/teacher_cache.py): the quickstart's teacher, one live KD run, and per
k in config.cache_top_ks a cache (FKD: views + top-k teacher log-probabilities, jkd/train/teacher_cache.py)
with a KD run reading it; a table of accuracy, train-loop time and cache cost.

    python -m jkd.main --config configs/teacher_cache.py --workdir /tmp/jkd_cache

<workdir>/teacher, kd_live, cache_k<k>, kd_cached_k<k> (k 'all' for 0); results.md/.json. Every stage
resumes or is skipped when finished, like the quickstart's.
"""
from __future__ import annotations

import os

from jkd import rundir
from jkd.errors import ConfigError
from jkd.train import quickstart
from jkd.train.stages import run_stage


def top_ks(config) -> list[int]:
    """config.cache_top_ks ('1,3,5,0') as ints; 0 = every class. ConfigError naming the field otherwise."""
    try:
        ks = [int(k) for k in str(config.cache_top_ks).split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"config.cache_top_ks: comma-separated ints (0 = all classes), got "
                          f"{config.cache_top_ks!r}") from None
    if not ks or any(k < 0 for k in ks):
        raise ConfigError(f"config.cache_top_ks: one or more ints >= 0, got {config.cache_top_ks!r}")
    return ks


def check_config(config) -> None:
    """The quickstart's stage checks, one KD method, and the k list (ConfigError naming the field)."""
    top_ks(config)
    if len(quickstart.parse_methods(config)) != 1:
        raise ConfigError(f"config.kd_methods: the teacher-cache recipe compares one method live and cached, "
                          f"got {config.kd_methods!r}")
    quickstart.check_config(config)


def _epoch_seconds(summary: dict, steps_per_epoch: float) -> float:
    """Train-loop seconds per epoch after the compiling first step (evals and checkpoints included), over
    the steps this invocation ran (a resumed run ran fewer); nan when it ran fewer than two."""
    ran = summary["steps"] - (summary.get("resumed_from") or 0) - 1
    seconds = summary.get("train_loop_after_first_step_s")
    return float("nan") if seconds is None or ran < 1 else seconds / ran * steps_per_epoch


def results_table(rows: list[dict], students: list[str]) -> str:
    head = "| run | k | " + " | ".join(f"{s} accuracy" for s in students) + \
        " | train loop s / epoch | cache build s | cache bytes / example / epoch |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cache = r.get("cache")
        lines.append(f"| {r['run']} | {r['k']} | " + " | ".join(f"{100 * r['accuracy'][s]:.2f}%" for s in students)
                     + f" | {r['epoch_s']:.2f} | " + (f"{cache['build_seconds']:.1f} | {cache['bytes_per_record']:.0f} |"
                                                       if cache else "- | - |"))
    return "\n".join(lines)


def run(config, workdir: str) -> dict:
    """Teacher, live KD, then per k a cache and a cached KD run; writes results.md / results.json."""
    check_config(config)
    stages = quickstart.stage_configs(config)
    teacher_dir = os.path.join(workdir, "teacher")
    teacher = run_stage(stages["teacher"], teacher_dir, desc="teacher")
    kd = stages[f"kd_{quickstart.parse_methods(config)[0]}"]
    with kd.unlocked():
        kd.teacher.checkpoint = teacher_dir
    live = run_stage(kd, os.path.join(workdir, "kd_live"), desc="kd live")
    from jkd.data import make_data  # only its example count: an epoch of the students' stream
    steps_per_epoch = make_data(kd.data, seed=kd.seed, global_batch_size=kd.batch_size).num_train / kd.batch_size
    students = list(kd.students)
    rows = [{"run": "live", "k": "-", "accuracy": {s: live["models"][s]["accuracy"] for s in students},
             "epoch_s": _epoch_seconds(live, steps_per_epoch)}]
    for k in top_ks(config):
        name = f"k{k or 'all'}"
        stage = kd.copy_and_resolve_references()
        with stage.unlocked():
            stage.teacher_cache.dir = os.path.join(workdir, f"cache_{name}")
            stage.teacher_cache.top_k = k
            stage.teacher_cache.build = True
        cache = run_stage(stage, os.path.join(workdir, f"kd_cached_{name}"), desc=f"cache {name}")["teacher_cache"]
        with stage.unlocked():
            stage.teacher_cache.build = False
        cached = run_stage(stage, os.path.join(workdir, f"kd_cached_{name}"), desc=f"kd cached {name}")
        rows.append({"run": "cached", "k": k or "all", "accuracy": {s: cached["models"][s]["accuracy"] for s in students},
                     "epoch_s": _epoch_seconds(cached, steps_per_epoch), "cache": cache})
    results = {"seed": config.seed, "teacher_accuracy": next(iter(teacher["models"].values()))["accuracy"],
               "steps_per_epoch": steps_per_epoch, "rows": rows}
    header = (f"Teacher cache (seed {config.seed}): teacher {100 * results['teacher_accuracy']:.2f}%, "
              f"{config.steps} student steps of batch {config.batch_size}")
    rundir.write_json(workdir, "results.json", results)
    rundir.report(workdir, header, results_table(rows, students), progress=True)
    return results
