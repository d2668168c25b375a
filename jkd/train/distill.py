"""Distillation: frozen teacher(s) (jkd workdirs) into one or more students trained in one step.

Every teacher runs once per batch on the same augmented view that every student sees; each student
has its own params, optimizer state and objective (jkd/train/objectives.py: hinton, hard, dkd, nkd,
dist, fm, DeiT distillation token, ViTKD, ViT->ConvNeXt alignment). Several teachers (comma-separated
config.teacher.checkpoint) form an ensemble. config.generations > 1 runs self-distillation
(born-again networks): generation k+1 learns from generation k, in <workdir>/gen_<k>, each generation
from its own seed (generation_seed: new init, data order and augmentation draws; in its run.json).
config.teacher_cache.dir distils from stored teacher outputs instead (FKD; jkd/train/teacher_cache.py):
teacher_cache.build=True writes the cache and stops; a run without it reads the cache and trains.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jkd import checkpoint, checks, rundir, sharding
from jkd.config import check_model_entry, check_run
from jkd.data import make_data, preprocess
from jkd.errors import ConfigError
from jkd.models import check_model, parse_model_name
from jkd.train import teacher_cache
from jkd.train.cache_format import VALUE_DTYPES
from jkd.train.loop import fit, teacher_views
from jkd.train.objectives import build_heads, check_objective_fields, resolve_augment, resolve_objective
from jkd.train.state import graphdef_and_shapes
from jkd.train.supervised import model_spec


def split_paths(text: str) -> list[str]:
    """Comma-separated paths -> list, where a path may itself contain commas (jkd.sweep names point
    workdirs `a=1,b=2`): pieces are re-joined while that makes an existing path. Pieces that form no
    existing path are returned as split, so the error names them."""
    pieces, out, i = [p.strip() for p in str(text).split(",")], [], 0
    while i < len(pieces):
        for j in range(len(pieces), i, -1):  # the longest run of pieces that is an existing path
            candidate = ",".join(pieces[i:j])
            if j - i > 1 and os.path.exists(candidate):
                out.append(candidate)
                i = j
                break
        else:
            out.append(pieces[i])
            i += 1
    return [p for p in out if p]


def load_teachers(config, mesh) -> list:
    """[(spec, graphdef, params, ModelInput)] for every comma-separated path of
    config.teacher.checkpoint; ModelInput (checkpoint.teacher_preprocessing) is the input the
    teacher expects, which the step makes from the students' view (jkd.data.preprocess)."""
    paths = split_paths(config.teacher.checkpoint)
    if not paths:
        raise ConfigError("config.teacher.checkpoint: no teacher given (a teacher workdir or checkpoint dir; "
                          "several comma-separated for an ensemble)")
    shardings_fn = lambda s: sharding.tree_shardings(s, mesh, config.mesh.min_shard_size)  # noqa: E731
    teachers = []
    for path in paths:
        spec, graphdef, params = checkpoint.load_teacher(path, model_key=config.teacher.model_key,
                                                         shardings_fn=shardings_fn)
        teachers.append(teacher_compute_options((spec, graphdef, params, checkpoint.teacher_preprocessing(path, spec)),
                                                config))
    return teachers


def teacher_compute_options(teacher: tuple, config) -> tuple:
    """(spec, graphdef, params[, ModelInput]) of a ViT teacher with config.teacher.attention_impl /
    attention_pad_to applied (how it computes, not what: params unchanged; jkd.train.state.COMPUTE_OPTIONS)."""
    spec, graphdef, params, *model_input = teacher
    options = {}
    if config.teacher.get("attention_impl", ""):
        options["attention_impl"] = config.teacher.attention_impl
    if config.teacher.get("attention_pad_to", -1) >= 0:
        options["attention_pad_to"] = config.teacher.attention_pad_to
    if not options or parse_model_name(spec.name)[0] != "vit":
        return teacher
    spec = dataclasses.replace(spec, kwargs=tuple(sorted({**dict(spec.kwargs), **options}.items())))
    check_model(spec.name, image_size=spec.image_size, field="config.teacher", **dict(spec.kwargs))
    return (spec, graphdef_and_shapes(spec)[0], params, *model_input)


def check_teachers(teachers: list, config, num_classes: int) -> None:
    """Teachers must agree with each other and with the data on classes; each teacher's input is made
    from the students' (another size is resized, grey repeated to RGB: jkd.data.preprocess)."""
    classes = {t[0].num_classes for t in teachers}
    if len(classes) > 1:
        raise ConfigError(f"config.teacher.checkpoint: the teachers have different class counts "
                          f"{[t[0].num_classes for t in teachers]}")
    spec = teachers[0][0]
    if spec.num_classes != num_classes:
        raise ConfigError(f"config.teacher.checkpoint: the teacher has {spec.num_classes} classes but the "
                          f"students ({config.data.name}) have {num_classes}")
    students = preprocess.data_input(config.data)
    for t in teachers:
        teacher_input = t[3] if len(t) > 3 else preprocess.model_input(
            None, None, image_size=t[0].image_size, channels=t[0].in_channels)
        preprocess.check_view(students, teacher_input, f"config.teacher.checkpoint ({t[0].name})")


def check_config(config) -> None:
    """Start-up checks of a distill run (ConfigError naming the field); the teachers and each
    student's objective are checked when they are loaded, before anything is compiled."""
    check_run(config)
    if not config.students:
        raise ConfigError("config.students: a distill run needs at least one student")
    for name, entry in config.students.items():
        kwargs = dict(entry.get("kwargs", {}))
        if kwargs.get("distillation_token") and not entry.name.startswith("vit_"):
            raise ConfigError(f"config.students.{name}.kwargs.distillation_token: the DeiT distillation "
                              f"token is a ViT option; {entry.name!r} is not a ViT")
        check_model_entry(entry, config, f"config.students.{name}")
    checks.int_at_least(config, "generations", 1)
    if config.get("teacher_cache") and config.teacher_cache.dir:
        if config.teacher_cache.dtype not in VALUE_DTYPES:
            raise ConfigError(f"config.teacher_cache.dtype: one of {VALUE_DTYPES}, "
                              f"got {config.teacher_cache.dtype!r}")
        if config.generations > 1:
            raise ConfigError("config.teacher_cache.dir: self-distillation (config.generations > 1) changes the "
                              "teacher every generation; one cache cannot serve it")
    if config.generations > 1 and len(config.students) != 1:
        raise ConfigError(f"config.generations: self-distillation over generations trains one student; "
                          f"config.students has {len(config.students)}")
    check_objective_fields(config)  # the KD settings, before a pipeline trains the teacher


def _distill_once(config, workdir: str, desc: str) -> dict:
    data = make_data(config.data, seed=config.seed, global_batch_size=config.batch_size,
                     eval_batch_size=config.eval_batch_size)
    specs = {name: model_spec(entry, config, data.num_classes) for name, entry in config.students.items()}
    mesh = sharding.make_mesh(config.mesh)
    teachers = load_teachers(config, mesh)
    check_teachers(teachers, config, data.num_classes)
    teacher_specs = [t[0] for t in teachers]
    objectives = {name: resolve_objective(config, name, entry, specs[name], teacher_specs)
                  for name, entry in config.students.items()}
    heads = {name: h for name in specs
             if (h := build_heads(objectives[name], specs[name], teacher_specs[0], config.seed)) is not None}
    cache_info = None
    if config.teacher_cache.dir:  # FKD-style: the teachers' outputs come from a cache (jkd/train/teacher_cache.py)
        teacher_cache.check_config(config, objectives)
        augment_cfg = resolve_augment(config.augment, objectives)
        if config.teacher_cache.build:
            return teacher_cache.build(config, config.teacher_cache.dir, teachers=tuple(teachers),
                                       teacher_params=tuple(t[2] for t in teachers),
                                       teacher_views=teacher_views(config, teachers), data=data,
                                       augment_cfg=augment_cfg, mesh=mesh, desc=f"{desc} cache")
        reader, cache_info = teacher_cache.open_reader(config, config.teacher_cache.dir, teachers=tuple(teachers),
                                                       data=data, augment_cfg=augment_cfg)
        data = dataclasses.replace(data, train_batch=reader)
    return fit(config, workdir, specs=specs, data=data, teachers=tuple(teachers), objectives=objectives,
               heads=heads, desc=desc, mesh=mesh, cache_info=cache_info)[0]


def generation_seed(seed: int, generation: int) -> int:
    """The seed of generation k (1-based) of a self-distillation run (config.generations > 1) started
    with `seed`: independent of `seed` and of every other generation's, derived from (seed, k).

    Each generation then starts from its own init, data order and augmentation draws, as born-again
    networks and Allen-Zhu & Li's self-distillation assume; generation 1 too, since the teacher it
    learns from was most likely trained with `seed` itself (with the same architecture it would
    otherwise start from the teacher's own init). A rerun or resume derives the same seeds.
    """
    return int(np.random.SeedSequence([int(seed), int(generation)]).generate_state(1)[0] % (2 ** 31 - 1))


def generations_table(summaries: list[dict], student: str) -> str:
    """Markdown: one row per generation (teacher accuracy, student accuracy, agreement)."""
    lines = ["| generation | seed | teacher | teacher accuracy | student accuracy | teacher agreement |",
             "|---:|---:|---|---:|---:|---:|"]
    for k, s in enumerate(summaries, 1):
        m = s["models"][student]
        lines.append(f"| {k} | {s.get('seed', '')} | {s['teacher']['model']} | {100 * s['teacher']['accuracy']:.2f}% | "
                     f"{100 * m['accuracy']:.2f}% | {100 * m['teacher_agreement']:.2f}% |")
    return "\n".join(lines)


def train_distill(config, workdir: str, *, desc: str = "distill") -> dict:
    """Distill config.teacher into config.students; returns the run summary (the last generation's
    when config.generations > 1, with all generations under 'generations')."""
    check_config(config)
    if config.generations == 1:
        return _distill_once(config, workdir, desc)
    student = next(iter(config.students))
    summaries = []
    for k in range(1, config.generations + 1):
        gen = config.copy_and_resolve_references()
        with gen.unlocked():
            gen.seed = generation_seed(config.seed, k)
            if k > 1:  # born-again: the previous generation's student is the teacher
                gen.teacher.checkpoint = os.path.join(workdir, f"gen_{k - 1}")
                gen.teacher.model_key = student
        summaries.append({**_distill_once(gen, os.path.join(workdir, f"gen_{k}"), f"{desc} gen {k}"),
                          "seed": gen.seed})
    table = generations_table(summaries, student)
    summary = {**summaries[-1], "generations": summaries}
    header = f"Self-distillation over {config.generations} generations ({student}: {config.students[student].name})"
    rundir.write_json(workdir, "summary.json", summary)
    rundir.report(workdir, header, table, progress=True)
    return summary
