"""What each student learns from the teacher(s): the KD family behind one config switch each.

Per student, `config.kd` (logit loss) and `config.feature_kd` (feature loss) give the defaults and a
student entry may override fields: `config.students.vit.kd.method = 'dkd'`. A field left unset
(None) takes the method's published value for `config.kd.setting` ('cifar' or 'imagenet'):
PAPER_DEFAULTS below, every value with its source in docs/METHODS.md.

Logit losses (kd.method), each in its reference's form  ce_weight * CE(labels) + weight * KD:
  hinton  T^2 KL(teacher_T || student_T)                     (Hinton et al. 2015; mdistiller KD)
  hard    CE on the teacher's argmax                          (DeiT's hard distillation)
  dkd     alpha TCKD + beta NCKD, T^2, linear warm-up         (Zhao et al. 2022; mdistiller DKD)
  nkd     -t_y log s_y + gamma T^2 CE over non-targets        (Yang et al. 2023; yzd-v/cls_KD)
  fm      KL(teacher || student) at T = 1, no label term      (Beyer et al. 2022, function matching)
  dist    T^2 (beta inter + gamma intra) Pearson relations     (Huang et al. 2022; hunto/DIST_KD)
A ViT student built with `distillation_token=True` (DeiT) takes the KD term on its distillation
head and CE on its CLS head (DeiT's defaults: soft 0.9 CE + 0.1 tau^2 KL at tau = 3, the KL scaled as
DeiT's code scales it, hard 0.5/0.5); at inference the two heads are averaged.
Feature losses (feature_kd.method): 'vitkd' (ViT -> ViT: mimic blocks 0-1, generate the last; the
reference's sum reduction and alpha/beta) and 'align' (ViT -> ConvNeXt: a student stage projected
onto the teacher's patch-token map).
Several teachers: each term gets the ensemble quantity its formula needs (mean probabilities at T for
the KL terms, mean probabilities at T = 1 for NKD's t_y and the hard target: teacher_targets), with
ensemble='mean_probs'; or the per-teacher losses are averaged (ensemble='mean_loss'). Feature KD uses
the first teacher.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jkd import losses, ranges
from jkd.errors import ConfigError
from jkd.models import parse_model_name
from jkd.models.kd_heads import AlignHead, ViTKDHeads

KD_METHODS = ("hinton", "hard", "dkd", "nkd", "fm", "dist")
SETTINGS = ("cifar", "imagenet")
FEATURE_METHODS = ("none", "vitkd", "align")
ENSEMBLE_MODES = ("mean_probs", "mean_loss")

# The published value of every kd field a user leaves unset, per method and setting. Sources (paper
# section or reference config file) are in docs/METHODS.md; a test checks this table against it.
_DKD = dict(weight=1.0, ce_weight=1.0, dkd_alpha=1.0)
PAPER_DEFAULTS = {
    ("hinton", "cifar"): dict(temperature=4.0, weight=0.9, ce_weight=0.1),      # mdistiller CFG.KD
    ("hinton", "imagenet"): dict(temperature=1.0, weight=0.5, ce_weight=0.5),   # mdistiller imagenet kd.yaml
    ("hard", "cifar"): dict(temperature=1.0, weight=0.5, ce_weight=0.5),        # DeiT hard distillation
    ("hard", "imagenet"): dict(temperature=1.0, weight=0.5, ce_weight=0.5),
    ("dkd", "cifar"): dict(_DKD, temperature=4.0, dkd_beta=8.0, dkd_warmup_fraction=20 / 240),  # CFG.DKD
    ("dkd", "imagenet"): dict(_DKD, temperature=1.0, dkd_beta=0.5, dkd_warmup_fraction=1 / 100),  # dkd.yaml
    ("nkd", "cifar"): dict(temperature=3.0, weight=1.0, ce_weight=1.0, nkd_gamma=3.5),  # cls_KD cifar100 config
    ("nkd", "imagenet"): dict(temperature=1.0, weight=1.0, ce_weight=1.0, nkd_gamma=1.5),  # cls_KD imagenet
    ("fm", "cifar"): dict(temperature=1.0, weight=1.0, ce_weight=0.0),          # big_vision distill
    ("fm", "imagenet"): dict(temperature=1.0, weight=1.0, ce_weight=0.0),
    ("dist", "cifar"): dict(temperature=4.0, weight=2.0, ce_weight=1.0, dist_beta=1.0, dist_gamma=1.0),  # dist_cifar
    ("dist", "imagenet"): dict(temperature=1.0, weight=2.0, ce_weight=1.0, dist_beta=1.0, dist_gamma=1.0),  # resnet_dist
}
# A DeiT student (distillation token): the DeiT paper's values for its soft and hard variants.
DEIT_DEFAULTS = {"hinton": dict(temperature=3.0, weight=0.1, ce_weight=0.9),
                 "hard": dict(temperature=1.0, weight=0.5, ce_weight=0.5)}
NKD_GAMMA_VIT = 1.0  # cls_KD's ImageNet configs for DeiT (ViT) students use gamma = 1.0
DEIT_SOFT_SCALES = ("reference", "paper")  # DeiT's code: summed KL / (B * K); the paper's formula: / B
VITKD_DEFAULTS = dict(vitkd_alpha=3e-5, vitkd_beta=3e-6, mask_ratio=0.5)  # cls_KD ViTKDLoss
CONVEX_METHODS = ("hinton", "hard")  # weight alone given: ce_weight = 1 - weight (Hinton's a, 1 - a)

@dataclasses.dataclass(frozen=True)
class Objective:
    """One student's resolved loss settings (static: part of the compiled step)."""
    method: str = "hinton"
    temperature: float = 4.0
    weight: float = 0.9       # of the KD term
    ce_weight: float = 0.1    # of the label CE term
    hard_label_smoothing: float = 0.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup_steps: int = 0
    nkd_gamma: float = 1.5
    dist_beta: float = 1.0    # DIST inter-class (per-example) relation weight
    dist_gamma: float = 1.0   # DIST intra-class (per-class, across the batch) relation weight
    deit: bool = False
    deit_soft_scale: str = "reference"  # DeiT soft KD: 'reference' = DeiT's code (/ (B * K)), 'paper' = / B
    feature: str = "none"
    vitkd_alpha: float = 3e-5
    vitkd_beta: float = 3e-6
    mask_ratio: float = 0.5
    align_stage: int = -1
    align_loss: str = "cosine"
    align_weight: float = 1.0
    ensemble: str = "mean_probs"
    teacher_prefix: int = 1   # leading non-patch tokens of the (first) teacher
    student_prefix: int = 1   # of a ViT student


def paper_defaults(method: str, setting: str, *, deit: bool = False, vit_student: bool = False) -> dict:
    """The published value of every kd field of `method` in `setting` ('cifar' | 'imagenet') for a
    student with a DeiT distillation token (deit) or a ViT student (NKD's gamma). See docs/METHODS.md."""
    out = {"hard_label_smoothing": 0.0, "dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_warmup_fraction": 0.0,
           "nkd_gamma": 1.5, "dist_beta": 1.0, "dist_gamma": 1.0}
    out.update(PAPER_DEFAULTS[(method, setting)])
    if deit and method in DEIT_DEFAULTS:
        out.update(DEIT_DEFAULTS[method])
    if method == "nkd" and setting == "imagenet" and (deit or vit_student):
        out["nkd_gamma"] = NKD_GAMMA_VIT
    return out


def resolve_kd(kd: dict, *, deit: bool, vit_student: bool, field: str) -> dict:
    """Fill the unset (None) fields of one student's kd block with paper_defaults; a weight given
    without ce_weight keeps the method's form (1 - weight for hinton/hard, the paper's otherwise)."""
    setting = kd.get("setting", "cifar")
    if setting not in SETTINGS:
        raise ConfigError(f"{field}.kd.setting: unknown {setting!r} (known: {', '.join(SETTINGS)})")
    paper = paper_defaults(kd["method"], setting, deit=deit, vit_student=vit_student)
    out = {k: (paper[k] if kd.get(k) is None else kd[k]) for k in paper}
    for k in paper:  # the resolved values (1 - weight may be < 0) against each field's range, jkd/ranges.py
        ranges.check_value(out[k], f"kd.{k}", f"{field}.kd.{k}")
    if kd.get("weight") is not None and kd.get("ce_weight") is None and kd["method"] in CONVEX_METHODS:
        if out["weight"] > 1:
            raise ConfigError(f"{field}.kd.weight: {kd['method']} with only kd.weight set uses 1 - weight as the "
                              f"label CE weight, so weight must be <= 1 (or set kd.ce_weight); got {out['weight']}")
        out["ce_weight"] = 1.0 - float(out["weight"])
    out["deit_soft_scale"] = kd.get("deit_soft_scale", "reference")
    if out["deit_soft_scale"] not in DEIT_SOFT_SCALES:
        raise ConfigError(f"{field}.kd.deit_soft_scale: unknown {out['deit_soft_scale']!r} "
                          f"(known: {', '.join(DEIT_SOFT_SCALES)})")
    return out


def _prefix_tokens(vit_kwargs: dict) -> int:
    """Leading non-patch tokens of a ViT: CLS (pool='cls'), distillation token, registers."""
    return (int(vit_kwargs.get("pool", "cls") == "cls") + int(bool(vit_kwargs.get("distillation_token", False)))
            + int(vit_kwargs.get("num_register_tokens", 0)))


def _merged(defaults, override) -> dict:
    out = dict(defaults)
    out.update(dict(override or {}))
    return out


def _student_blocks(config, name: str, entry) -> tuple[str, dict, dict]:
    """(field prefix, kd block, feature_kd block) of one student: config.kd / config.feature_kd with
    its overrides merged, unset method placeholders filled, names and the ensemble mode checked."""
    field = f"config.students.{name}"
    kd = _merged(config.kd, entry.get("kd"))
    feat = _merged(config.feature_kd, entry.get("feature_kd"))
    kd["method"] = kd["method"] or "hinton"  # unset placeholders (jkd/config.py): the defaults
    feat["method"] = feat["method"] or "none"
    if kd["method"] not in KD_METHODS:
        raise ConfigError(f"{field}.kd.method: unknown {kd['method']!r} (known: {', '.join(KD_METHODS)})")
    if feat["method"] not in FEATURE_METHODS:
        raise ConfigError(f"{field}.feature_kd.method: unknown {feat['method']!r} "
                          f"(known: {', '.join(FEATURE_METHODS)})")
    if config.teacher.ensemble not in ENSEMBLE_MODES:
        raise ConfigError(f"config.teacher.ensemble: unknown {config.teacher.ensemble!r} "
                          f"(known: {', '.join(ENSEMBLE_MODES)})")
    return field, kd, feat


def _feature_options(feat: dict, field: str) -> dict:
    """The ViTKD fields with unset ones at their published values; align and mask options checked."""
    if feat["method"] == "align":
        if feat["align_stage"] not in (-4, -3, -2, -1, 0, 1, 2, 3):
            raise ConfigError(f"{field}.feature_kd.align_stage: ConvNeXt has stages 0..3, got {feat['align_stage']}")
        if feat["align_loss"] not in ("cosine", "mse"):
            raise ConfigError(f"{field}.feature_kd.align_loss: 'cosine' or 'mse', got {feat['align_loss']!r}")
    out = {k: (VITKD_DEFAULTS[k] if feat.get(k) is None else feat[k]) for k in VITKD_DEFAULTS}
    for k in out:
        ranges.check_value(out[k], f"feature_kd.{k}", f"{field}.feature_kd.{k}")
    return out


def check_objective_fields(config) -> None:
    """The teacher-independent checks of resolve_objective, for every student, at start-up (before a
    pipeline trains the teacher it will load): method names, setting, ensemble mode, every kd
    number, the feature options. The checks that need the teacher run when it is loaded."""
    for name, entry in config.students.items():
        field, kd, feat = _student_blocks(config, name, entry)
        family, _ = parse_model_name(entry.name, f"{field}.name")
        deit = bool(dict(entry.get("kwargs", {})).get("distillation_token", False))
        resolve_kd(kd, deit=deit, vit_student=family == "vit", field=field)
        _feature_options(feat, field)


def resolve_objective(config, name: str, entry, student_spec, teacher_specs: list) -> Objective:
    """Merge config.kd / config.feature_kd with the student's overrides and check them against the
    models (before anything is built). Raises ConfigError naming the field."""
    field, kd, feat = _student_blocks(config, name, entry)
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
        if feat["method"] == "align" and family != "convnext":
            raise ConfigError(f"{field}.feature_kd.method: 'align' projects a ConvNeXt stage; "
                              f"{student_spec.name!r} is a {family} (use 'vitkd' for ViT students)")
    resolved = resolve_kd(kd, deit=deit, vit_student=family == "vit", field=field)
    feat_fields = _feature_options(feat, field)
    return Objective(
        method=kd["method"], temperature=float(resolved["temperature"]), weight=float(resolved["weight"]),
        ce_weight=float(resolved["ce_weight"]), hard_label_smoothing=float(resolved["hard_label_smoothing"]),
        dkd_alpha=float(resolved["dkd_alpha"]), dkd_beta=float(resolved["dkd_beta"]),
        dkd_warmup_steps=int(round(float(resolved["dkd_warmup_fraction"]) * config.steps)),
        nkd_gamma=float(resolved["nkd_gamma"]), dist_beta=float(resolved["dist_beta"]),
        dist_gamma=float(resolved["dist_gamma"]), deit=deit, deit_soft_scale=resolved["deit_soft_scale"],
        feature=feat["method"],
        vitkd_alpha=float(feat_fields["vitkd_alpha"]), vitkd_beta=float(feat_fields["vitkd_beta"]),
        mask_ratio=float(feat_fields["mask_ratio"]), align_stage=int(feat["align_stage"]), align_loss=feat["align_loss"],
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


def resolve_augment(augment_cfg, objectives: dict | None):
    """config.augment with mixup_alpha resolved: an unset (None) mixup is 1.0 (Beta(1, 1) on every
    batch, big_vision's function matching) when any student uses kd.method='fm', else 0 (off).
    Mixup is one augmentation shared by every student of a run (consistent views)."""
    out = augment_cfg.copy_and_resolve_references()
    if out.get("mixup_alpha") is None:
        fm = any(o.method == "fm" for o in (objectives or {}).values())
        with out.unlocked():
            out.mixup_alpha = 1.0 if fm else 0.0
    return out


def teacher_targets(teacher_logits: jax.Array, temperature: float) -> dict:
    """[M, B, K] teachers' logits -> {'at_t', 'at_1'}: [B, K] logits whose softmax at T (at_t) and at
    T = 1 (at_1) is the teachers' mean probability at that temperature. One teacher: its logits for both.

    The mean of softmaxes at T, sharpened back to T = 1, is not the mean at T = 1, so each term asks
    for its own: KL terms (hinton, fm, dkd, NKD's non-target part) and DIST's relations at T; NKD's t_y
    and the hard target at T = 1.
    """
    if teacher_logits.shape[0] == 1:
        return {"at_t": teacher_logits[0], "at_1": teacher_logits[0]}
    return {"at_t": losses.ensemble_logits(teacher_logits, temperature),
            "at_1": losses.ensemble_logits(teacher_logits, 1.0)}


def kd_term(obj: Objective, student_logits, teacher_logits_all, target_classes, step) -> tuple[jax.Array, dict]:
    """The logit KD loss of one student against all teachers. student_logits [B, K], teacher_logits_all
    [M, B, K], target_classes [B] int (DKD/NKD's target), step: the optimizer step (DKD warm-up).
    Returns (unweighted KD loss, parts)."""
    def single(targets: dict):
        if obj.method in ("hinton", "fm"):
            kl = losses.kd_kl(student_logits, targets["at_t"], temperature=obj.temperature)
            if obj.deit and obj.deit_soft_scale == "reference":  # DeiT's losses.py: sum / outputs.numel()
                kl = kl / student_logits.shape[-1]
            return kl, {}
        if obj.method == "hard":
            return losses.hard_kd(student_logits, targets["at_1"], label_smoothing=obj.hard_label_smoothing), {}
        if obj.method == "dkd":
            loss, parts = losses.dkd(student_logits, targets["at_t"], target_classes, temperature=obj.temperature,
                                     alpha=obj.dkd_alpha, beta=obj.dkd_beta)
            if obj.dkd_warmup_steps:  # mdistiller: min(epoch / warmup, 1) with epoch from 1; here per step
                loss = loss * jnp.minimum((step + 1) / obj.dkd_warmup_steps, 1.0)
            return loss, parts
        if obj.method == "dist":  # the relations of the (ensemble's mean) probabilities at T
            return losses.dist(student_logits, targets["at_t"], temperature=obj.temperature, beta=obj.dist_beta,
                               gamma=obj.dist_gamma)
        t_y = jnp.take_along_axis(jax.nn.softmax(targets["at_1"], -1), target_classes[:, None], -1)[:, 0]
        return losses.nkd(student_logits, targets["at_t"], target_classes, temperature=obj.temperature,
                          gamma=obj.nkd_gamma, teacher_target_prob=t_y)

    if obj.ensemble == "mean_loss" and teacher_logits_all.shape[0] > 1:
        results = [single(teacher_targets(teacher_logits_all[m:m + 1], obj.temperature))
                   for m in range(teacher_logits_all.shape[0])]
        loss = sum(r[0] for r in results) / len(results)
        return loss, {k: sum(r[1][k] for r in results) / len(results) for k in results[0][1]}
    return single(teacher_targets(teacher_logits_all, obj.temperature))


def feature_term(obj: Objective, student_out: dict, teacher_out: dict, head_graphdef, head_params, key):
    """Feature KD loss of one student: (loss, parts). vitkd: mimic + generate, each already weighted by
    the reference's alpha / beta (the parts are the weighted terms, as the reference logs them)."""
    heads = nnx.merge(head_graphdef, head_params)
    if obj.feature == "vitkd":
        sp, tp = obj.student_prefix, obj.teacher_prefix
        preds = heads.mimic_shallow([tok[:, sp:] for tok in student_out["tokens"][:2]])
        mimic = losses.vitkd_mimic(preds, [jax.lax.stop_gradient(t[:, tp:]) for t in teacher_out["tokens"][:2]],
                                   alpha=obj.vitkd_alpha)
        generated, mask = heads.generate_deep(student_out["final_tokens"][:, sp:], key)
        generate = losses.vitkd_generate(generated, jax.lax.stop_gradient(teacher_out["final_tokens"][:, tp:]), mask,
                                         beta=obj.vitkd_beta, mask_ratio=obj.mask_ratio)
        return mimic + generate, {"mimic": mimic, "generate": generate}
    tokens = teacher_out["final_tokens"][:, obj.teacher_prefix:]
    b, n, d = tokens.shape
    grid = int(round(n ** 0.5))
    target = tokens.reshape(b, grid, grid, d)
    pred = heads(student_out["stages"][obj.align_stage])
    align = losses.feature_cosine(pred, target) if obj.align_loss == "cosine" else losses.feature_mse(
        pred.reshape(b, n, d), tokens)
    return obj.align_weight * align, {"align": align}
