"""Multi-view synthetic data (Allen-Zhu & Li, ICLR 2023, "Towards Understanding Ensemble, Knowledge
Distillation and Self-Distillation in Deep Learning", Definition 3.1, at small sizes).

Class j owns two "views" v_{j,1}, v_{j,2}: 2k orthonormal vectors in R^d. An input is P patches
x_1..x_P in R^d. Every class-feature that an input carries occupies `view_patches` patches of its
own (distinct features never share a patch); its coefficients there are a random split of the
feature's strength:

  multi-view  (prob. 1 - mu): both own views at `view_strength`;
  single-view (prob. mu):     one own view (uniformly chosen) at `view_strength`, the other at `rho`;
  both kinds:                 each view of every other class independently with prob.
                              `off_class_prob`, at `off_class_strength` (multi-view) or
                              `off_class_strength_single` (single-view) — the weak off-class
                              features that make an ensemble's soft labels informative;
  every patch:                uniform [0, feature_noise] of every view, plus Gaussian noise
                              N(0, noise_std^2 I_d); with `noise_orthogonal` the noise's component
                              in the span of the 2k views is removed (see below).

Why `noise_orthogonal` exists: in the paper d = poly(k) is huge, so the noise has norm ~1 (enough to
memorise a sample with) while its projection on any one view is ~1/sqrt(d), negligible. At the small
d a CPU affords (hundreds), a trained channel w ~ a v with a ~ 10 sees a projection a <v, xi> of
order a * noise_std that keeps switching on the other view's patches and slowly teaches the view
the theory says stays unlearned. Projecting the views out of the noise is that d -> infinity limit
at small d; set it False for the plain isotropic noise (docs/RESULTS.md shows both).

Everything is a pure function of the seed (numpy PCG64), generated on the host.

    views = make_views(d=64, num_classes=10, seed=0)              # [2k, d], row 2j+l = v_{j,l+1}
    split = sample_split(cfg, views, n=1000, seed=1, mu=0.2)      # dict of arrays (below)
    data = make_multiview(cfg, seed=0)                            # train + both test sets
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jkd import checks
from jkd.errors import ConfigError


def check_config(cfg, field: str = "config.data") -> None:
    """Reject impossible data settings before anything is generated (ConfigError naming the field)."""
    checks.positive_ints(cfg, "num_classes", "dim", "num_patches", "view_patches", "num_train", "num_test",
                         root=field)
    k, d = cfg.num_classes, cfg.dim
    if k < 2:
        raise ConfigError(f"{field}.num_classes: need at least 2 classes, got {k}")
    if d < 2 * k:
        raise ConfigError(f"{field}.dim: the 2k = {2 * k} views must be orthonormal in R^d, so dim >= {2 * k}; "
                          f"got dim = {d}")
    if cfg.num_patches < 2 * cfg.view_patches:
        raise ConfigError(f"{field}.num_patches: both views of the class need {2 * cfg.view_patches} disjoint "
                          f"patches (2 x view_patches), got num_patches = {cfg.num_patches}")
    if not isinstance(cfg.noise_orthogonal, bool):
        raise ConfigError(f"{field}.noise_orthogonal: must be True or False, got {cfg.noise_orthogonal!r}")
    for name in ("mu", "off_class_prob"):
        if not 0.0 <= cfg[name] <= 1.0:
            raise ConfigError(f"{field}.{name}: a probability, must be in [0, 1], got {cfg[name]}")
    for name in ("rho", "off_class_strength", "off_class_strength_single", "feature_noise", "noise_std",
                 "noise_norm"):
        if cfg.get(name, 0.0) < 0:
            raise ConfigError(f"{field}.{name}: must be >= 0, got {cfg[name]}")
    if cfg.view_strength <= 0:
        raise ConfigError(f"{field}.view_strength: must be > 0, got {cfg.view_strength}")


def noise_std(cfg) -> float:
    """Per-coordinate std of the Gaussian patch noise: data.noise_std, or, when data.noise_norm > 0,
    noise_norm / sqrt(d) (the same expected noise norm at every d: the large-d control sweeps d)."""
    norm = float(cfg.get("noise_norm", 0.0))
    return norm / np.sqrt(cfg.dim) if norm > 0 else float(cfg.noise_std)


def make_views(dim: int, num_classes: int, seed: int) -> np.ndarray:
    """2k orthonormal views [2k, d] (float32): row 2j + l is v_{j, l+1}; a random rotation (QR)."""
    rng = np.random.default_rng([seed, 1])
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2 * num_classes)))
    return np.ascontiguousarray(q.T).astype(np.float32)


def _split_strength(rng, total: np.ndarray, parts: int) -> np.ndarray:
    """Random non-negative split of total [...] into `parts` coefficients summing to it: [..., parts]."""
    w = rng.exponential(size=total.shape + (parts,))  # Dirichlet(1, ..., 1) after normalising
    return total[..., None] * w / w.sum(-1, keepdims=True)


def sample_split(cfg, views: np.ndarray, n: int, seed: int, mu: float) -> dict:
    """n samples, each single-view with probability mu. Returns (numpy):

    x [n, P, d] f32 patches; label [n] i32; single_view [n] bool; strong_view [n] i32 (the own view at
    full strength in single-view samples: 0 or 1; -1 for multi-view); coeffs [n, P, 2k] f32 (the
    planted feature coefficients, feature noise excluded); owner [n, P] i32 (index 2j + l of the
    feature planted in the patch, -1 for a noise-only patch).
    """
    k, P, C = cfg.num_classes, cfg.num_patches, cfg.view_patches
    rng = np.random.default_rng([seed, 2])
    label = rng.integers(0, k, size=n).astype(np.int32)
    single = rng.random(n) < mu
    strong = np.where(single, rng.integers(0, 2, size=n), -1).astype(np.int32)

    # Which features each sample carries: its own two views always, off-class views at random.
    rows = np.arange(n)[:, None]
    own = np.stack([2 * label, 2 * label + 1], axis=1)
    present = rng.random((n, 2 * k)) < cfg.off_class_prob
    present[rows, own] = True
    # Features get disjoint patches, in a random order that puts the own views first; off-class
    # features beyond the P // view_patches that fit are dropped (never the own views).
    order_key = rng.random((n, 2 * k))
    order_key[rows, own] = -1.0
    slot = np.argsort(np.argsort(np.where(present, order_key, np.inf), axis=1), axis=1)
    present &= slot < P // C

    strength = np.where(present, np.where(single, cfg.off_class_strength_single, cfg.off_class_strength)[:, None], 0.0)
    for l in (0, 1):
        weak = single & (strong != l)
        strength[np.arange(n), 2 * label + l] = np.where(weak, cfg.rho, cfg.view_strength)

    # Feature in slot s takes patches perm[s*C:(s+1)*C] of a random permutation of the P patches.
    perm = np.argsort(rng.random((n, P)), axis=1)
    coeffs = np.zeros((n, P, 2 * k), np.float32)
    owner = np.full((n, P), -1, np.int32)
    split = _split_strength(rng, strength, C)  # [n, 2k, C]
    sample, feat = np.nonzero(present)
    for c in range(C):
        patch = perm[sample, slot[sample, feat] * C + c]
        coeffs[sample, patch, feat] = split[sample, feat, c]
        owner[sample, patch] = feat

    feature_noise = rng.uniform(0.0, cfg.feature_noise, size=(n, P, 2 * k)).astype(np.float32)
    noise = (noise_std(cfg) * rng.standard_normal((n, P, views.shape[1]))).astype(np.float32)
    if cfg.noise_orthogonal:
        noise -= (noise @ views.T) @ views
    x = (coeffs + feature_noise) @ views + noise
    return {"x": x.astype(np.float32), "label": label, "single_view": single, "strong_view": strong,
            "coeffs": coeffs, "owner": owner}


@dataclasses.dataclass(frozen=True)
class MultiViewData:
    """Train set (mixed, mu single-view) and separate all-multi-view / all-single-view test sets.

    views [2k, d]; each split is a dict as returned by `sample_split`.
    """
    views: np.ndarray
    train: dict
    test_multi: dict
    test_single: dict
    num_classes: int
    mu: float


def make_multiview(cfg, seed: int) -> MultiViewData:
    """The whole data set from one seed (views, train set, both test sets); checks cfg first."""
    check_config(cfg)
    views = make_views(cfg.dim, cfg.num_classes, seed)
    return MultiViewData(
        views=views,
        train=sample_split(cfg, views, cfg.num_train, seed=seed * 3 + 0, mu=cfg.mu),
        test_multi=sample_split(cfg, views, cfg.num_test, seed=seed * 3 + 1, mu=0.0),
        test_single=sample_split(cfg, views, cfg.num_test, seed=seed * 3 + 2, mu=1.0),
        num_classes=cfg.num_classes, mu=float(cfg.mu))
