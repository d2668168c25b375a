"""jkd's KD losses against their reference implementations, from committed fixtures (no torch needed).

tests/fixtures/make_loss_reference.py ran the references in PyTorch (float64) on fixed random float32
inputs and stored their values and gradients in tests/fixtures/losses/*.npz. Each test feeds the same
inputs to jkd (float32) and compares value and jax.grad with rtol = atol = 1e-5:

  hinton    jkd.losses.kd_kl / cross_entropy       mdistiller KD.py kd_loss (T 4) and 0.1 CE + 0.9 KD;
                                                   torchdistill's KDLoss on the same inputs
  dkd       jkd.losses.dkd                         mdistiller DKD.py dkd_loss (T 4, beta 8; T 1, beta 0.5)
  nkd       jkd.losses.nkd                         cls_KD NKDLoss (temp 1, gamma 1.5; temp 4, gamma 1)
  vitkd     ViTKDHeads + vitkd_mimic/_generate     cls_KD ViTKDLoss with its weights and its drawn
                                                   mask; gradients w.r.t. inputs and every weight
  deit      cross_entropy + kd_kl / hard_kd        DeiT losses.py DistillationLoss, soft and hard
  ensemble  objectives.teacher_targets, kd_term    the formulas with the teachers' mean probabilities
                                                   (mean_probs) or the mean of per-teacher losses
  dist      jkd.losses.dist, kd_term               DIST_KD's DIST (image_classification_sota dist_kd.py):
                                                   tau 4 / 1 / 2, a far sharper teacher, a uniform
                                                   student row; torchdistill's DISTLoss; three teachers

DeiT's soft term divides the summed KL by outputs.numel() = B * K, the paper's formula by B: jkd's DeiT
objective follows the code by default (kd.deit_soft_scale='reference'), and losses.kd_kl is the
per-example mean, K times DeiT's term.

Regenerate the fixtures (needs torch and torchdistill, in a separate venv):
    python tests/fixtures/make_loss_reference.py
A missing fixture fails these tests; it does not skip them.
"""
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jkd import losses
from jkd.models.kd_heads import ViTKDHeads
from jkd.train.objectives import Objective, kd_term, teacher_targets

FIXTURES = Path(__file__).parent / "fixtures" / "losses"
REGENERATE = "python tests/fixtures/make_loss_reference.py"
RTOL = ATOL = 1e-5


def load(name: str) -> dict:
    """The arrays of fixtures/losses/<name>.npz; a missing file is a failure, not a skip."""
    path = FIXTURES / f"{name}.npz"
    assert path.is_file(), f"missing fixture {path}: regenerate with `{REGENERATE}`"
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def close(actual, expected, what: str):
    """jkd (float32) against the reference (float64) at rtol = atol = 1e-5."""
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=RTOL, atol=ATOL, err_msg=what)


def f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def i32(x) -> jax.Array:
    return jnp.asarray(x, jnp.int32)


def test_fixtures_match_manifest():
    """The .npz files are the ones make_loss_reference.py wrote (sha256 in MANIFEST.json): a fixture
    edited by hand, or one left over from an older run, fails here rather than passing silently."""
    manifest_path = FIXTURES / "MANIFEST.json"
    assert manifest_path.is_file(), f"missing {manifest_path}: regenerate with `{REGENERATE}`"
    manifest = json.loads(manifest_path.read_text())
    on_disk = {p.name for p in FIXTURES.glob("*.npz")}
    assert on_disk == set(manifest["files"]), (sorted(on_disk), sorted(manifest["files"]))
    for name, sha in manifest["files"].items():
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == sha, f"{name} differs from MANIFEST.json"


# ------------------------------------------------------------------------------------------ Hinton
def test_hinton_matches_mdistiller_and_torchdistill():
    """kd_kl == mdistiller kd_loss, cross_entropy == F.cross_entropy, and 0.9 KD + 0.1 CE == KD's
    total == torchdistill KDLoss(alpha=0.1, beta=0.9), values and gradients."""
    f = load("hinton")
    s, t, y, temp = f32(f["student"]), f32(f["teacher"]), i32(f["labels"]), float(f["temperature"])
    kd_w, ce_w = float(f["kd_weight"]), float(f["ce_weight"])

    def kd(z):
        return losses.kd_kl(z, t, temperature=temp)

    def ce(z):
        return losses.cross_entropy(z, y)

    def total(z):
        return kd_w * kd(z) + ce_w * ce(z)

    for name, fn in (("kd", kd), ("ce", ce), ("loss", total)):
        value, grad = jax.value_and_grad(fn)(s)
        close(value, f[name], name)
        close(grad, f[f"grad_{name}"], f"grad_{name}")
    value, grad = jax.value_and_grad(total)(s)
    close(value, f["torchdistill_loss"], "torchdistill KDLoss")
    close(grad, f["torchdistill_grad_loss"], "torchdistill KDLoss gradient")


# --------------------------------------------------------------------------------------------- DKD
@pytest.mark.parametrize("setting", ["cifar", "imagenet"])
def test_dkd_matches_mdistiller(setting):
    """losses.dkd == mdistiller dkd_loss; parts tckd / nckd == dkd_loss with (alpha, beta) = (1, 0) / (0, 1)."""
    f = load("dkd")
    s, t, y = f32(f["student"]), f32(f["teacher"]), i32(f["labels"])
    p = lambda k: float(f[f"{setting}/{k}"])  # noqa: E731

    def fn(z):
        return losses.dkd(z, t, y, temperature=p("temperature"), alpha=p("alpha"), beta=p("beta"))

    (value, parts), grad = jax.value_and_grad(fn, has_aux=True)(s)
    close(value, f[f"{setting}/loss"], "loss")
    close(parts["tckd"], f[f"{setting}/tckd"], "tckd")
    close(parts["nckd"], f[f"{setting}/nckd"], "nckd")
    close(grad, f[f"{setting}/grad_loss"], "grad")


# --------------------------------------------------------------------------------------------- NKD
@pytest.mark.parametrize("setting", ["t1", "t4"])
def test_nkd_matches_cls_kd(setting):
    """losses.nkd == cls_KD NKDLoss; nkd_target == the loss at gamma = 0, nkd_non_target the rest."""
    f = load("nkd")
    s, t, y = f32(f["student"]), f32(f["teacher"]), i32(f["labels"])

    def fn(z):
        return losses.nkd(z, t, y, temperature=float(f[f"{setting}/temperature"]), gamma=float(f[f"{setting}/gamma"]))

    (value, parts), grad = jax.value_and_grad(fn, has_aux=True)(s)
    close(value, f[f"{setting}/loss"], "loss")
    close(parts["nkd_target"], f[f"{setting}/target"], "target part")
    close(parts["nkd_non_target"], f[f"{setting}/non_target"], "non-target part")
    close(grad, f[f"{setting}/grad_loss"], "grad")


# ------------------------------------------------------------------------------------------- ViTKD
# jkd parameter (path in ViTKDHeads) <- reference parameter name (ViTKDLoss.named_parameters()).
_VITKD_PARAMS = {("mimic", 0, "kernel"): "align2.0.weight", ("mimic", 0, "bias"): "align2.0.bias",
                 ("mimic", 1, "kernel"): "align2.1.weight", ("mimic", 1, "bias"): "align2.1.bias",
                 ("gen_proj", "kernel"): "align.weight", ("gen_proj", "bias"): "align.bias",
                 ("mask_token",): "mask_token",
                 ("gen1", "kernel"): "generation.0.weight", ("gen1", "bias"): "generation.0.bias",
                 ("gen2", "kernel"): "generation.2.weight", ("gen2", "bias"): "generation.2.bias"}


def _torch_to_jkd(path: tuple, w: np.ndarray) -> np.ndarray:
    """A torch weight in jkd's layout: Linear [out, in] -> [in, out]; Conv OIHW -> HWIO."""
    if path[-1] == "kernel":
        return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
    return w


def _jkd_to_torch(path: tuple, w: np.ndarray) -> np.ndarray:
    """The inverse of _torch_to_jkd (to compare jkd's weight gradients with the reference's)."""
    if path[-1] == "kernel":
        return w.transpose(3, 2, 0, 1) if w.ndim == 4 else w.T
    return w


def _nested_get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _vitkd_heads(f: dict):
    """ViTKDHeads with the reference module's weights: (graphdef, params state)."""
    grid = int(round(f["high_s"].shape[1] ** 0.5))
    heads = ViTKDHeads(f["low_s"].shape[-1], f["low_t"].shape[-1], grid, mask_ratio=float(f["mask_ratio"]),
                       rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(heads, nnx.Param)
    pure = nnx.to_pure_dict(params)
    for path, name in _VITKD_PARAMS.items():
        target = _nested_get(pure, path[:-1]) if len(path) > 1 else pure
        ref = _torch_to_jkd(path, f[f"weights/{name}"])
        assert target[path[-1]].shape == ref.shape, (path, target[path[-1]].shape, ref.shape)
        target[path[-1]] = f32(ref)
    nnx.replace_by_pure_dict(params, pure)
    return graphdef, params


@pytest.mark.parametrize("setting", ["paper", "unit"])
def test_vitkd_matches_cls_kd(setting):
    """ViTKDHeads + vitkd_mimic + vitkd_generate == cls_KD ViTKDLoss under the reference's weights and
    mask: loss, its mimic / generate parts, gradients w.r.t. low_s, high_s and every weight.
    'unit' (alpha = beta = 1) keeps the gradients O(1) so the 1e-5 tolerance is not vacuous."""
    f = load("vitkd")
    alpha, beta, ratio = float(f[f"{setting}/alpha"]), float(f[f"{setting}/beta"]), float(f["mask_ratio"])
    graphdef, params = _vitkd_heads(f)
    mask = jnp.asarray(f["mask"], bool)  # the mask the reference's random_masking drew

    def fn(params, low_s, high_s):
        heads = nnx.merge(graphdef, params)
        preds = heads.mimic_shallow([low_s[:, 0], low_s[:, 1]])
        mimic = losses.vitkd_mimic(preds, [f32(f["low_t"][:, 0]), f32(f["low_t"][:, 1])], alpha=alpha)
        generated, used_mask = heads.generate_deep(high_s, mask=mask)
        gen = losses.vitkd_generate(generated, f32(f["high_t"]), used_mask, beta=beta, mask_ratio=ratio)
        return mimic + gen, {"mimic": mimic, "generate": gen}

    (value, parts), grads = jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True)(
        params, f32(f["low_s"]), f32(f["high_s"]))
    close(value, f[f"{setting}/loss"], "loss")
    close(parts["mimic"], f[f"{setting}/mimic"], "mimic")
    close(parts["generate"], f[f"{setting}/generate"], "generate")
    g_params, g_low, g_high = grads
    close(g_low, f[f"{setting}/grad/low_s"], "grad low_s")
    close(g_high, f[f"{setting}/grad/high_s"], "grad high_s")
    g_pure = nnx.to_pure_dict(g_params)
    for path, name in _VITKD_PARAMS.items():
        close(_jkd_to_torch(path, np.asarray(_nested_get(g_pure, path))), f[f"{setting}/grad/{name}"],
              f"grad {name}")


# -------------------------------------------------------------------------------------------- DeiT
def test_deit_soft_matches_deit_up_to_numel():
    """Soft DeiT: the CE term and its gradient equal DeiT's base loss; jkd's KD term is exactly K times
    DeiT's distillation_loss (DeiT divides the summed KL by B * K, jkd and the paper by B), and so
    is its gradient w.r.t. the dist logits."""
    f = load("deit")
    c, d, t, y = f32(f["cls_logits"]), f32(f["dist_logits"]), f32(f["teacher"]), i32(f["labels"])
    alpha, tau, k = float(f["soft/alpha"]), float(f["soft/tau"]), f["dist_logits"].shape[1]

    def fn(cls_logits, dist_logits):
        ce = losses.cross_entropy(cls_logits, y)
        kd = losses.kd_kl(dist_logits, t, temperature=tau)
        return (1 - alpha) * ce + alpha * kd, {"ce": ce, "kd": kd}

    (value, parts), (g_cls, g_dist) = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(c, d)
    close(parts["ce"], f["soft/base"], "CE term == DeiT base_loss")
    close(parts["kd"], k * f["soft/distillation"], "kd_kl == K * DeiT distillation_loss")
    close(value, (1 - alpha) * f["soft/base"] + alpha * k * f["soft/distillation"], "total")
    close(g_cls, f["soft/grad_cls"], "grad cls logits")
    close(g_dist, k * f["soft/grad_dist"], "grad dist logits == K * DeiT's")


@pytest.mark.parametrize("scale", ["reference", "paper"])
def test_deit_objective_kd_term_equals_deits_distillation_loss(scale):
    """The DeiT student's KD term as jkd's step computes it (kd_term, Objective(deit=True)): by default
    ('reference') exactly DeiT's distillation_loss, value and gradient; with deit_soft_scale='paper'
    the paper's per-example mean, K times it."""
    f = load("deit")
    d, t, y = f32(f["dist_logits"]), f32(f["teacher"]), i32(f["labels"])
    k = f["dist_logits"].shape[1]
    obj = Objective(method="hinton", temperature=float(f["soft/tau"]), deit=True, deit_soft_scale=scale)
    value, grad = jax.value_and_grad(lambda s: kd_term(obj, s, t[None], y, 0)[0])(d)
    factor = 1.0 if scale == "reference" else k
    close(value, factor * f["soft/distillation"], f"DeiT KD term ({scale})")
    # soft/grad_dist is the gradient of DeiT's total loss, alpha * distillation_loss in the dist logits
    close(grad, factor * f["soft/grad_dist"] / float(f["soft/alpha"]), f"grad dist logits ({scale})")


def test_deit_hard_matches_deit():
    """Hard DeiT: 0.5 CE(cls, labels) + 0.5 hard_kd(dist, teacher) == DistillationLoss('hard'), exactly."""
    f = load("deit")
    c, d, t, y = f32(f["cls_logits"]), f32(f["dist_logits"]), f32(f["teacher"]), i32(f["labels"])
    alpha = float(f["hard/alpha"])

    def fn(cls_logits, dist_logits):
        ce = losses.cross_entropy(cls_logits, y)
        kd = losses.hard_kd(dist_logits, t)
        return (1 - alpha) * ce + alpha * kd, {"ce": ce, "kd": kd}

    (value, parts), (g_cls, g_dist) = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(c, d)
    close(parts["ce"], f["hard/base"], "CE term == DeiT base_loss")
    close(parts["kd"], f["hard/distillation"], "hard_kd == DeiT distillation_loss")
    close(value, f["hard/loss"], "total")
    close(g_cls, f["hard/grad_cls"], "grad cls logits")
    close(g_dist, f["hard/grad_dist"], "grad dist logits")


# ---------------------------------------------------------------------------------------- Ensemble
@pytest.mark.parametrize("tag", ["m2", "m3"])
def test_teacher_targets_are_mean_probabilities(tag):
    """softmax(at_t / T) == mean_m softmax(z_m / T) and softmax(at_1) == mean_m softmax(z_m)."""
    f = load("ensemble")
    teachers = f32(f[f"{tag}/teachers"])
    for temp in sorted({float(f[f"config/{m}"][0]) for m in ("hinton", "fm", "hard", "dkd", "nkd")}):
        targets = teacher_targets(teachers, temp)
        close(jax.nn.softmax(targets["at_t"] / temp, -1), f[f"{tag}/mean_probs_t{temp:g}"], f"at_t, T = {temp:g}")
        close(jax.nn.softmax(targets["at_1"], -1), f[f"{tag}/mean_probs_1"], "at_1")


@pytest.mark.parametrize("mode", ["mean_probs", "mean_loss"])
@pytest.mark.parametrize("method", ["hinton", "fm", "hard", "dkd", "nkd"])
@pytest.mark.parametrize("tag", ["m2", "m3"])
def test_kd_term_ensemble_matches_reference(tag, method, mode):
    """kd_term against two / three teachers: mean_probs == the method's formula on the teachers' mean
    probabilities (at T; at T = 1 for NKD's t_y and the hard target); mean_loss == the mean of the
    per-teacher reference losses. Value, parts and gradient w.r.t. the student logits."""
    f = load("ensemble")
    temp, gamma = (float(v) for v in f[f"config/{method}"])
    obj = Objective(method=method, temperature=temp, nkd_gamma=gamma, ensemble=mode, dkd_warmup_steps=0,
                    dkd_alpha=float(f["config/dkd_alpha"]), dkd_beta=float(f["config/dkd_beta"]))
    teachers, y = f32(f[f"{tag}/teachers"]), i32(f["labels"])

    def fn(z):
        return kd_term(obj, z, teachers, y, 0)

    (value, parts), grad = jax.value_and_grad(fn, has_aux=True)(f32(f["student"]))
    key = f"{tag}/{method}/{mode}"
    close(value, f[f"{key}/loss"], "loss")
    close(grad, f[f"{key}/grad_loss"], "grad")
    expected_parts = {k.rsplit("/", 1)[1]: f[k] for k in f if k.startswith(f"{key}/parts/")}
    assert set(parts) == set(expected_parts), (set(parts), set(expected_parts))
    for name, ref in expected_parts.items():
        close(parts[name], ref, f"part {name}")


# -------------------------------------------------------------------------------------------- DIST
@pytest.mark.parametrize("case", ["cifar", "imagenet", "weighted", "sharp_t1", "sharp_t4", "uniform"])
def test_dist_matches_dist_kd(case):
    """losses.dist == DIST_KD's DIST(beta, gamma, tau); parts dist_inter / dist_intra == DIST with
    (beta, gamma) = (1, 0) / (0, 1). 'uniform': a student row with zero variance, where the reference's
    eps sets a gradient of order 1e6 (jkd's norm has torch's zero subgradient there, not NaN)."""
    f = load("dist")
    p = lambda k: float(f[f"{case}/{k}"])  # noqa: E731
    t = f32(f[f"{case}/teacher"])

    def fn(z):
        return losses.dist(z, t, temperature=p("tau"), beta=p("beta"), gamma=p("gamma"))

    (value, parts), grad = jax.value_and_grad(fn, has_aux=True)(f32(f[f"{case}/student"]))
    close(value, f[f"{case}/loss"], "loss")
    close(parts["dist_inter"], f[f"{case}/inter"], "inter part")
    close(parts["dist_intra"], f[f"{case}/intra"], "intra part")
    assert np.isfinite(np.asarray(grad)).all()
    close(grad, f[f"{case}/grad_loss"], "grad")


def test_dist_matches_torchdistill():
    """The same loss from a second implementation: torchdistill's DISTLoss, tau 4, beta = gamma = 1."""
    f = load("dist")
    t = f32(f["cifar/teacher"])
    value, grad = jax.value_and_grad(lambda z: losses.dist(z, t, temperature=4.0)[0])(f32(f["cifar/student"]))
    close(value, f["torchdistill/loss"], "torchdistill DISTLoss")
    close(grad, f["torchdistill/grad_loss"], "torchdistill DISTLoss gradient")


@pytest.mark.parametrize("mode", ["mean_probs", "mean_loss"])
def test_dist_kd_term_matches_reference(mode):
    """kd_term(method='dist'): one teacher == DIST; three teachers: mean_probs == DIST with y_t = the
    teachers' mean probabilities at tau, mean_loss == the mean of the per-teacher DIST losses."""
    f = load("dist")
    tau, beta, gamma = (float(f[f"ensemble/{k}"]) for k in ("tau", "beta", "gamma"))
    obj = Objective(method="dist", temperature=tau, dist_beta=beta, dist_gamma=gamma, ensemble=mode)
    y = i32(np.zeros(f["student"].shape[0]))  # DIST uses no target class

    def fn(teachers):
        return lambda z: kd_term(obj, z, teachers, y, 0)

    (value, parts), grad = jax.value_and_grad(fn(f32(f["cifar/teacher"])[None]), has_aux=True)(f32(f["student"]))
    close(value, f["cifar/loss"], "one teacher")
    close(grad, f["cifar/grad_loss"], "one teacher grad")
    close(parts["dist_inter"], f["cifar/inter"], "one teacher inter")
    (value, _), grad = jax.value_and_grad(fn(f32(f["ensemble/teachers"])), has_aux=True)(f32(f["student"]))
    close(value, f[f"ensemble/{mode}/loss"], "three teachers")
    close(grad, f[f"ensemble/{mode}/grad_loss"], "three teachers grad")
