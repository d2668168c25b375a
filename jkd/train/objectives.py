"""What each student learns from the teacher(s): the KD family behind one config switch each.

Per student, `config.kd` (logit loss) and `config.feature_kd` (feature loss) give the defaults and a
student entry may override fields: `config.students.vit.kd.method = 'dkd'`.

Logit losses (kd.method), mixed with label CE as  kd.weight * KD + (1 - kd.weight) * CE:
  hinton  T^2 KL(teacher_T || student_T)                     (Hinton et al. 2015)
  hard    CE on the teacher's argmax                          (DeiT's hard distillation)
  dkd     alpha TCKD + beta NCKD, T^2, linear warm-up         (Zhao et al. 2022)
  nkd     -t_y log s_y + gamma T^2 CE over non-targets        (Yang et al. 2023)
A ViT student built with `distillation_token=True` (DeiT) takes the KD term on its distillation
head and CE on its CLS head; at inference the two heads are averaged.
Feature losses (feature_kd.method): 'vitkd' (ViT -> ViT: mimic blocks 0-1, generate the last) and
'align' (ViT -> ConvNeXt: a student stage projected onto the teacher's patch-token map).
Several teachers: targets are the mean of their probabilities (ensemble='mean_probs') or the
per-teacher losses are averaged (ensemble='mean_loss'); feature KD uses the first teacher.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jkd import losses
from jkd.errors import ConfigError
from jkd.models import parse_model_name
from jkd.models.kd_heads import AlignHead, ViTKDHeads

KD_METHODS = ("hinton", "hard", "dkd", "nkd")
FEATURE_METHODS = ("none", "vitkd", "align")
ENSEMBLE_MODES = ("mean_probs", "mean_loss")


@dataclasses.dataclass(frozen=True)
class Objective:
    """One student's resolved loss settings (static: part of the compiled step)."""
    method: str = "hinton"
    temperature: float = 4.0
    weight: float = 0.9
    hard_label_smoothing: float = 0.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup_steps: int = 0
    nkd_gamma: float = 1.5
    deit: bool = False
    feature: str = "none"
    mimic_weight: float = 2.0
    generate_weight: float = 0.2
    mask_ratio: float = 0.5
    align_stage: int = -1
    align_loss: str = "cosine"
    align_weight: float = 1.0
    ensemble: str = "mean_probs"
    teacher_prefix: int = 1   # leading non-patch tokens of the (first) teacher
    student_prefix: int = 1   # of a ViT student


def _prefix_tokens(vit_kwargs: dict) -> int:
    """Leading non-patch tokens of a ViT: CLS (pool='cls'), distillation token, registers."""
    return (int(vit_kwargs.get("pool", "cls") == "cls") + int(bool(vit_kwargs.get("distillation_token", False)))
            + int(vit_kwargs.get("num_register_tokens", 0)))


def _merged(defaults, override) -> dict:
    out = dict(defaults)
    out.update(dict(override or {}))
    return out


def resolve_objective(config, name: str, entry, student_spec, teacher_specs: list) -> Objective:
    """Merge config.kd / config.feature_kd with the student's overrides and check them against the
    models (before anything is built). Raises ConfigError naming the field."""
    field = f"config.students.{name}"
    kd = _merged(config.kd, entry.get("kd"))
    feat = _merged(config.feature_kd, entry.get("feature_kd"))
    if kd["method"] not in KD_METHODS:
        raise ConfigError(f"{field}.kd.method: unknown {kd['method']!r} (known: {', '.join(KD_METHODS)})")
    if feat["method"] not in FEATURE_METHODS:
        raise ConfigError(f"{field}.feature_kd.method: unknown {feat['method']!r} "
                          f"(known: {', '.join(FEATURE_METHODS)})")
    if config.teacher.ensemble not in ENSEMBLE_MODES:
        raise ConfigError(f"config.teacher.ensemble: unknown {config.teacher.ensemble!r} "
                          f"(known: {', '.join(ENSEMBLE_MODES)})")
    family, arch = parse_model_name(student_spec.name, f"{field}.name")
    kwargs = dict(student_spec.kwargs)
    deit = bool(kwargs.get("distillation_token", False))
    teacher_family, teacher_arch = parse_model_name(teacher_specs[0].name, "config.teacher.checkpoint")
    teacher_prefix = _prefix_tokens(dict(teacher_specs[0].kwargs))
    student_prefix = _prefix_tokens(kwargs) if family == "vit" else 0
    if feat["method"] != "none":
        if teacher_family != "vit":
            raise ConfigError(f"{field}.feature_kd.method: {feat['method']!r} needs a ViT teacher, "
                              f"the teacher is {teacher_specs[0].name!r}")
        t_grid = teacher_specs[0].image_size // teacher_arch["patch_size"]
        if feat["method"] == "vitkd":
            if family != "vit":
                raise ConfigError(f"{field}.feature_kd.method: 'vitkd' distils ViT blocks into a ViT student; "
                                  f"{student_spec.name!r} is a {family} (use 'align' for ConvNeXt students)")
            if arch["depth"] < 2 or teacher_arch["depth"] < 2:
                raise ConfigError(f"{field}.feature_kd.method: 'vitkd' mimics blocks 0 and 1; student depth "
                                  f"{arch['depth']}, teacher depth {teacher_arch['depth']} (both need >= 2)")
            s_grid = student_spec.image_size // arch["patch_size"]
            if s_grid != t_grid:
                raise ConfigError(f"{field}.feature_kd.method: 'vitkd' needs the same patch grid; student "
                                  f"{s_grid}x{s_grid}, teacher {t_grid}x{t_grid}")
        if feat["method"] == "align":
            if family != "convnext":
                raise ConfigError(f"{field}.feature_kd.method: 'align' projects a ConvNeXt stage; "
                                  f"{student_spec.name!r} is a {family} (use 'vitkd' for ViT students)")
            if feat["align_stage"] not in (-4, -3, -2, -1, 0, 1, 2, 3):
                raise ConfigError(f"{field}.feature_kd.align_stage: ConvNeXt has stages 0..3, got "
                                  f"{feat['align_stage']}")
            if feat["align_loss"] not in ("cosine", "mse"):
                raise ConfigError(f"{field}.feature_kd.align_loss: 'cosine' or 'mse', got {feat['align_loss']!r}")
    if kd["method"] in ("dkd", "nkd") and kd["temperature"] <= 0:
        raise ConfigError(f"{field}.kd.temperature: must be > 0")
    return Objective(
        method=kd["method"], temperature=float(kd["temperature"]), weight=float(kd["weight"]),
        hard_label_smoothing=float(kd.get("hard_label_smoothing", 0.0)), dkd_alpha=float(kd.get("dkd_alpha", 1.0)),
        dkd_beta=float(kd.get("dkd_beta", 8.0)), dkd_warmup_steps=int(kd.get("dkd_warmup_steps", 0)),
        nkd_gamma=float(kd.get("nkd_gamma", 1.5)), deit=deit, feature=feat["method"],
        mimic_weight=float(feat["mimic_weight"]), generate_weight=float(feat["generate_weight"]),
        mask_ratio=float(feat["mask_ratio"]), align_stage=int(feat["align_stage"]), align_loss=feat["align_loss"],
        align_weight=float(feat["align_weight"]), ensemble=config.teacher.ensemble,
        teacher_prefix=teacher_prefix, student_prefix=student_prefix)


def build_heads(objective: Objective, student_spec, teacher_spec, seed: int):
    """The feature-KD heads of one student, or None: (graphdef, params) of an nnx module."""
    if objective.feature == "none":
        return None
    _, t_arch = parse_model_name(teacher_spec.name)
    s_family, s_arch = parse_model_name(student_spec.name)
    grid = teacher_spec.image_size // t_arch["patch_size"]
    rngs = nnx.Rngs(params=seed + 1)
    if objective.feature == "vitkd":
        heads = ViTKDHeads(s_arch["width"], t_arch["width"], grid, mask_ratio=objective.mask_ratio, rngs=rngs)
    else:
        heads = AlignHead(s_arch["widths"][objective.align_stage], t_arch["width"], grid, rngs=rngs)
    graphdef, state = nnx.split(heads)
    return graphdef, nnx.to_pure_dict(state)


def needs_features(objectives: dict) -> bool:
    return any(o.feature != "none" for o in objectives.values())


def teacher_targets(teacher_logits: jax.Array, objective: Objective) -> jax.Array:
    """[M, B, K] teachers' logits -> [B, K] logits whose softmax at T is the ensemble target."""
    if teacher_logits.shape[0] == 1:
        return teacher_logits[0]
    return losses.ensemble_logits(teacher_logits, objective.temperature)


def kd_term(obj: Objective, student_logits, teacher_logits_all, target_classes, step) -> tuple[jax.Array, dict]:
    """The logit KD loss of one student against all teachers ([M, B, K])."""
    def single(teacher_logits):
        if obj.method == "hinton":
            return losses.kd_kl(student_logits, teacher_logits, temperature=obj.temperature), {}
        if obj.method == "hard":
            return losses.hard_kd(student_logits, teacher_logits, label_smoothing=obj.hard_label_smoothing), {}
        if obj.method == "dkd":
            loss, parts = losses.dkd(student_logits, teacher_logits, target_classes, temperature=obj.temperature,
                                     alpha=obj.dkd_alpha, beta=obj.dkd_beta)
            if obj.dkd_warmup_steps:
                loss = loss * jnp.minimum(step / obj.dkd_warmup_steps, 1.0)
            return loss, parts
        return losses.nkd(student_logits, teacher_logits, target_classes, temperature=obj.temperature,
                          gamma=obj.nkd_gamma)

    if obj.ensemble == "mean_loss" and teacher_logits_all.shape[0] > 1:
        results = [single(teacher_logits_all[m]) for m in range(teacher_logits_all.shape[0])]
        loss = sum(r[0] for r in results) / len(results)
        return loss, {k: sum(r[1][k] for r in results) / len(results) for k in results[0][1]}
    return single(teacher_targets(teacher_logits_all, obj))


def feature_term(obj: Objective, student_out: dict, teacher_out: dict, head_graphdef, head_params, key):
    """Feature KD loss of one student: (loss, parts)."""
    heads = nnx.merge(head_graphdef, head_params)
    if obj.feature == "vitkd":
        sp, tp = obj.student_prefix, obj.teacher_prefix
        preds = heads.mimic_shallow([tok[:, sp:] for tok in student_out["tokens"][:2]])
        mimic = sum(losses.feature_mse(p, jax.lax.stop_gradient(t[:, tp:]))
                    for p, t in zip(preds, teacher_out["tokens"][:2])) / 2
        generated, mask = heads.generate_deep(student_out["final_tokens"][:, sp:], key)
        generate = losses.feature_mse(generated, teacher_out["final_tokens"][:, tp:], mask)
        return obj.mimic_weight * mimic + obj.generate_weight * generate, {"mimic": mimic, "generate": generate}
    tokens = teacher_out["final_tokens"][:, obj.teacher_prefix:]
    b, n, d = tokens.shape
    grid = int(round(n ** 0.5))
    target = tokens.reshape(b, grid, grid, d)
    pred = heads(student_out["stages"][obj.align_stage])
    align = losses.feature_cosine(pred, target) if obj.align_loss == "cosine" else losses.feature_mse(
        pred.reshape(b, n, d), tokens)
    return obj.align_weight * align, {"align": align}
