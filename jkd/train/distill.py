"""Distillation: a frozen teacher (a jkd workdir) into one or more students trained in one step.

The teacher runs once per batch on the same augmented view that every student sees; each student
has its own params and optimizer state. Loss per student (Hinton et al. 2015):
    kd.weight * T^2 KL(softmax(teacher/T) || softmax(student/T)) + (1 - kd.weight) * CE(labels)
where CE only counts examples whose label is usable (config.data.labelled_fraction).
"""
from __future__ import annotations

from jkd import checkpoint, sharding
from jkd.config import validate
from jkd.data import make_data
from jkd.errors import ConfigError
from jkd.train.loop import fit
from jkd.train.supervised import model_spec


def train_distill(config, workdir: str, *, desc: str = "distill") -> dict:
    """Distill config.teacher into config.students (see module docstring); returns the run summary."""
    validate(config)
    data = make_data(config.data, seed=config.seed, global_batch_size=config.batch_size,
                     eval_batch_size=config.eval_batch_size)
    specs = {name: model_spec(entry, config, data.num_classes) for name, entry in config.students.items()}
    mesh = sharding.make_mesh(config.mesh)
    teacher_spec, graphdef, params = checkpoint.load_teacher(
        config.teacher.checkpoint, model_key=config.teacher.model_key,
        shardings_fn=lambda shapes: sharding.tree_shardings(shapes, mesh, config.mesh.min_shard_size))
    if teacher_spec.num_classes != data.num_classes:
        raise ConfigError(f"config.teacher.checkpoint: the teacher has {teacher_spec.num_classes} classes but the "
                          f"students ({config.data.name}) have {data.num_classes}")
    if (teacher_spec.image_size, teacher_spec.in_channels) != (config.data.image_size, config.data.channels):
        raise ConfigError(f"config.data: the teacher takes {teacher_spec.image_size}px x {teacher_spec.in_channels} "
                          f"channels, the data gives {config.data.image_size}px x {config.data.channels}")
    return fit(config, workdir, specs=specs, data=data, teacher=(teacher_spec, graphdef, params), desc=desc)[0]
