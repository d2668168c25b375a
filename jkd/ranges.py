"""The range of every numeric config field, in one table, checked at start-up before anything compiles.

    ranges.check(config)      # ConfigError 'config.optimizer.lr: must be a finite number > 0, got nan'
    ranges.spec_of('students.vit.kd.temperature')   # ('> 0 or None', ''): a student's override has kd's range
    python -m jkd.ranges      # the markdown rows of docs/INPUTS.md ("Numeric fields")

NUMERIC_RANGES maps a dotted field path (of any recipe: the shared base_config fields and every
trainer's own groups) to its range, in the words of jkd.checks.in_range ('> 0', '[0, 1)', 'int >= 1',
'-1 or (0, 1]', 'each ...' for a tuple per channel, '... or None' for a field whose None means 'the
default'). Every float range excludes nan and +-inf. A key may hold '*' for any part of a path
(model options: '*.kwargs.drop_path_rate' is the option of config.model, a student, a teacher).

Only the range of one field lives here; relations between fields (warmup_steps < steps, a student's
min_scale <= crop.max_scale, num_students <= ensemble.size, a stricter range one trainer needs, e.g.
the probes' kd.weight in [0, 1]) stay in the trainer's check, which runs after this one and so sees
finite numbers of the right type. tests/test_ranges.py fails when a recipe has a numeric field with
no row here, or when docs/INPUTS.md lists other rows than markdown() prints.
"""
from __future__ import annotations

import fnmatch

from jkd import checks
from jkd.errors import ConfigError

NUMERIC_RANGES = {
    # ---- shared: jkd/config.py base_config (supervised, distill, quickstart, omitted, ensemble)
    "seed": "int >= 0",
    "steps": "int >= 1",
    "batch_size": "int >= 1",
    "eval_batch_size": "int >= 1",
    "label_smoothing": "[0, 1)",
    "generations": "int >= 0",              # distill needs >= 1; the ensemble probe: 0 = no self-distillation arm
    "log_every": "int >= 1",
    "eval_every": "int >= 0",               # 0 = only at the end
    "checkpoint_every": "int >= 1",
    "keep_checkpoints": "int >= 1",
    "data.image_size": "int >= 1",
    "data.channels": "1 or 3",
    "data.mean": "each any",                # a number, or one per channel
    "data.std": "each > 0",
    "data.labelled_fraction": "(0, 1]",
    "data.labelled_seed": "int >= 0",
    "data.eval_fraction": "[0, 1)",         # image_folder: 0 = the split folders
    "augment.crop_scale": "each (0, 1] or None",  # (min, max), min <= max: config.check_run
    "augment.mixup_alpha": ">= 0 or None",
    "teacher.attention_pad_to": "int >= -1",  # -1 = as trained
    "teacher_cache.top_k": "int >= 0",  # 0 = all classes
    "teacher_cache.draws": "int >= 0",  # 0 = as many as config.steps needs
    "teacher_cache.seed": "int >= 0 or None",  # None = config.seed
    "kd.temperature": "> 0 or None",        # None (kd.*, feature_kd.*): the method's published value
    "kd.weight": ">= 0 or None",
    "kd.ce_weight": ">= 0 or None",
    "kd.hard_label_smoothing": "[0, 1)",
    "kd.dkd_alpha": ">= 0 or None",
    "kd.dkd_beta": ">= 0 or None",
    "kd.dkd_warmup_fraction": "[0, 1] or None",
    "kd.nkd_gamma": ">= 0 or None",
    "kd.dist_beta": ">= 0 or None",
    "kd.dist_gamma": ">= 0 or None",
    "feature_kd.vitkd_alpha": ">= 0 or None",
    "feature_kd.vitkd_beta": ">= 0 or None",
    "feature_kd.mask_ratio": "(0, 1) or None",
    "feature_kd.align_stage": "int in [-4, 3]",
    "feature_kd.align_weight": ">= 0",
    "optimizer.lr": "> 0",
    "optimizer.warmup_steps": "int >= 0",   # < steps: config.check_run
    "optimizer.final_lr_ratio": "[0, 1]",
    "optimizer.weight_decay": ">= 0",
    "optimizer.b1": "[0, 1)",
    "optimizer.b2": "[0, 1)",
    "optimizer.momentum": "[0, 1)",         # sgd (absent: 0.9)
    "optimizer.grad_clip": ">= 0",          # 0 = off
    "mesh.data": "-1 or int >= 1",          # -1 = all remaining devices
    "mesh.fsdp": "int >= 1",
    "mesh.min_shard_size": "int >= 0",
    "distributed.num_processes": "int >= 0",  # 0 = from JKD_NUM_PROCESSES
    "distributed.process_id": "int >= -1",    # -1 = from JKD_PROCESS_ID
    # model options of config.model, config.students.<name>, config.teacher.model, config.student.model
    "*.kwargs.drop_path_rate": "[0, 1)",
    "*.kwargs.dropout_rate": "[0, 1)",
    "*.kwargs.input_dropout_rate": "[0, 1)",
    "*.kwargs.stem_stride": "int >= 1",
    "*.kwargs.mlp_ratio": "> 0",
    "*.kwargs.layer_scale_init": "> 0 or None",  # None: a ViT without layer scale
    "*.kwargs.num_register_tokens": "int >= 0",
    "*.kwargs.attention_pad_to": "int >= 0",
    # ---- pipelines and probes that train their own teacher / members
    "teacher.steps": "int >= 1",
    "student.steps": "int >= 1",
    "ensemble.size": "int >= 2",            # the ensemble probe's members, the theory probe's L
    # ---- the spurious and augmentation probes (configs/fairness/*.py)
    "data.num_train": "int >= 1",
    "data.num_test": "int >= 1",
    "data.noise": ">= 0",
    "data.spurious_corr": "[0.5, 1)",
    "data.core_size": "int >= 1",           # <= data.image_size: the spurious probe's check
    "data.core_contrast": "> 0",
    "data.min_shape_size": "int in [0, 11]",  # 0 = always the 11 px shape
    "student.exit_block": "int >= 0",       # an early block of the student: the spurious probe's check
    "reweight.beta": ">= 0",
    "laplace.prior_precision": "> 0",
    "laplace.mc_samples": "int >= 1",
    "laplace.fit_examples": "int >= 1",
    "crop.max_scale": "(0, 1]",
    "student.min_scale": "(0, 1]",          # <= crop.max_scale: the augmentation probe's check
    "remedy.fp_rise": "(0, 1)",
    "remedy.light_scale": "-1 or (0, 1]",   # -1 = the lightest of crop.min_scales; <= crop.max_scale
    # ---- the theory probe (configs/theory/multiview.py; relations between data fields: jkd.data.multiview)
    "data.seed": "int >= -1",               # -1 = follow config.seed
    "data.num_classes": "int >= 2",
    "data.dim": "int >= 1",
    "data.num_patches": "int >= 1",
    "data.view_patches": "int >= 1",
    "data.mu": ("[0, 1]", "a probability"),
    "data.off_class_prob": ("[0, 1]", "a probability"),
    "data.view_strength": "> 0",
    "data.rho": ">= 0",
    "data.off_class_strength": ">= 0",
    "data.off_class_strength_single": ">= 0",
    "data.feature_noise": ">= 0",
    "data.noise_std": ">= 0",
    "data.noise_norm": ">= 0",              # > 0 replaces noise_std
    "net.channels": "int >= 1",
    "net.q": ("int >= 3", "the smoothed ReLU's power"),
    "net.varrho": "> 0",
    "net.init_std": "> 0",
    "net.steps": "int >= 1",
    "net.lr": "> 0",
    "net.batch_size": "int >= 0",           # 0 = full batch; <= data.num_train: the theory probe's check
    "rf.features": "int >= 1",
    "rf.init_std": "> 0",
    "rf.lr": "> 0",
    "rf.steps": "int >= 1",
    "ntk.init_std": "> 0",
    "ntk.lr": "> 0",
    "ntk.steps": "int >= 1",
    "kd.num_students": "int >= 1",          # <= ensemble.size: the theory probe's check
    "probe.view_threshold": "(0, 1]",
}

# Numeric fields whose one check lives with the code that knows their bounds (not a fixed range).
CHECKED_ELSEWHERE = {
    "data.exclude_classes": "class ids in 0..K-1 of the dataset, not all K (jkd.data.excluded_classes; digits at "
                            "start-up, TFDS when opened)",
}
_STUDENT_GROUPS = ("kd", "feature_kd")  # config.students.<name>.kd.* overrides: the range of config.kd.*


def _entry(value) -> tuple[str, str]:
    return (value, "") if isinstance(value, str) else value


def row_of(path: str) -> str | None:
    """The NUMERIC_RANGES key that holds the range of a dotted config path ('students.vit.kd.weight'
    -> 'kd.weight', 'teacher.model.kwargs.dropout_rate' -> '*.kwargs.dropout_rate'), or None."""
    parts = path.split(".")
    if len(parts) > 3 and parts[0] == "students" and parts[2] in _STUDENT_GROUPS:
        path = ".".join(parts[2:])
    if path in NUMERIC_RANGES:
        return path
    return next((key for key in NUMERIC_RANGES if "*" in key and fnmatch.fnmatchcase(path, key)), None)


def spec_of(path: str) -> tuple[str, str] | None:
    """(range, what) of a dotted config path, or None when the table has no row for it."""
    key = row_of(path)
    return None if key is None else _entry(NUMERIC_RANGES[key])


def leaves(config, prefix: str = ""):
    """(dotted path, value) of every leaf of a ConfigDict or dict (groups are walked, never created)."""
    for key in config.keys():
        value = config[key]
        if hasattr(value, "keys"):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check(config) -> None:
    """Every field of config that has a row in NUMERIC_RANGES is in its range (ConfigError naming the
    first that is not). Cheap (no data, no devices): each trainer's check and jkd.trainers.validate run it."""
    for path, value in leaves(config):
        entry = spec_of(path)
        if entry is not None:
            checks.in_range(value, entry[0], f"config.{path}", entry[1])


def check_value(value, path: str, field: str) -> None:
    """One value against the row of `path` (e.g. a resolved kd setting), named `field` in the error."""
    spec, what = spec_of(path)
    checks.in_range(value, spec, field, what)


def markdown() -> str:
    """The rows of docs/INPUTS.md's "Numeric fields" table: field | range | what a bad value gets."""
    lines = ["| field | range | a value outside it gets |", "|---|---|---|"]
    for key, value in NUMERIC_RANGES.items():
        spec, what = _entry(value)
        field = key.replace("*", "<model>")  # <model>: model, students.<name>, teacher.model, student.model
        bad = checks.outside_range(spec)  # nan for a float field, the first finite outside value for an int
        try:
            checks.in_range(bad[-1] if checks.integer_range(spec) else bad[0], spec, f"config.{field}", what)
        except ConfigError as e:
            message = str(e)
        lines.append(f"| `{field}` | {checks.describe_range(spec)} | `{message}` |")
    for key, why in CHECKED_ELSEWHERE.items():
        lines.append(f"| `{key}` | {why} | `config.{key}: [12] not in 0..9 (10 classes)` |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
