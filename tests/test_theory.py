"""Theory probes (issue 5): multi-view data, the smoothed-ReLU net and its kernel contrasts, vmapped
training, and a tiny end-to-end probe. Sizes are tiny: the whole file runs in well under a minute."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd.data import multiview
from jkd.errors import ConfigError, NonFiniteError
from jkd.models import theory as tm
from jkd.probes import theory as th
from jkd.probes import theory_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/theory/multiview.py")


def _config(arg="tiny"):
    import importlib.util
    spec = importlib.util.spec_from_file_location("theory_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture
def data_cfg():
    c = _config().data
    c.update(dict(num_classes=5, dim=40, num_patches=12, view_patches=2, off_class_prob=0.3, mu=0.3,
                  feature_noise=0.0))
    return c


# ----------------------------------------------------------------------------- data

def test_views_are_orthonormal():
    v = multiview.make_views(dim=40, num_classes=5, seed=3)
    assert v.shape == (10, 40)
    np.testing.assert_allclose(v @ v.T, np.eye(10), atol=1e-5)


def test_single_view_fraction_is_mu(data_cfg):
    views = multiview.make_views(data_cfg.dim, data_cfg.num_classes, 0)
    split = multiview.sample_split(data_cfg, views, n=4000, seed=1, mu=0.3)
    assert abs(split["single_view"].mean() - 0.3) < 0.03  # 4 sigma at n = 4000
    assert set(np.unique(split["strong_view"][split["single_view"]])) == {0, 1}
    assert (split["strong_view"][~split["single_view"]] == -1).all()
    # every class, roughly uniformly
    assert np.bincount(split["label"], minlength=5).min() > 4000 / 5 * 0.85


def test_patch_assignment_and_strengths(data_cfg):
    c = data_cfg
    views = multiview.make_views(c.dim, c.num_classes, 0)
    s = multiview.sample_split(c, views, n=500, seed=2, mu=0.3)
    coeffs, owner, y = s["coeffs"], s["owner"], s["label"]
    # a patch carries at most one feature, and `owner` says which
    assert ((coeffs > 0).sum(-1) <= 1).all()
    carried = coeffs.sum(1) > 0                                    # [n, 2k]
    patches_per_feature = (owner[:, :, None] == np.arange(2 * c.num_classes)).sum(1)
    assert (patches_per_feature[carried] == c.view_patches).all()
    assert (patches_per_feature[~carried] == 0).all()
    assert (carried.sum(1) <= c.num_patches // c.view_patches).all()
    sums = coeffs.sum(1)                                           # strength of each feature
    rows = np.arange(len(y))
    for l in (0, 1):
        own = sums[rows, 2 * y + l]
        weak = s["single_view"] & (s["strong_view"] != l)
        np.testing.assert_allclose(own[~weak], c.view_strength, rtol=1e-5)
        np.testing.assert_allclose(own[weak], c.rho, rtol=1e-5)
    off = carried.copy()
    off[rows, 2 * y] = off[rows, 2 * y + 1] = False
    assert off.any()
    expected = np.where(s["single_view"], c.off_class_strength_single, c.off_class_strength)
    np.testing.assert_allclose(sums[off], np.broadcast_to(expected[:, None], off.shape)[off], rtol=1e-5)
    # the off-class views appear with about off_class_prob each
    assert abs(off.sum() / (len(y) * (2 * c.num_classes - 2)) - c.off_class_prob) < 0.05


def test_data_is_deterministic_and_noise_orthogonal(data_cfg):
    a, b = multiview.make_multiview(data_cfg, seed=4), multiview.make_multiview(data_cfg, seed=4)
    for split in ("train", "test_multi", "test_single"):
        np.testing.assert_array_equal(getattr(a, split)["x"], getattr(b, split)["x"])
    assert not np.array_equal(a.train["x"], multiview.make_multiview(data_cfg, seed=5).train["x"])
    assert not a.test_multi["single_view"].any() and a.test_single["single_view"].all()
    # with noise_orthogonal (and no feature noise) the views see exactly the planted coefficients
    np.testing.assert_allclose(a.train["x"] @ a.views.T, a.train["coeffs"], atol=1e-4)
    data_cfg.noise_orthogonal = False
    iso = multiview.make_multiview(data_cfg, seed=4)
    assert np.abs(iso.train["x"] @ iso.views.T - iso.train["coeffs"]).max() > 0.05


def test_noise_norm_is_the_same_at_every_dim(data_cfg):
    """data.noise_norm fixes the expected noise norm per patch across d (the large-d control)."""
    data_cfg.noise_orthogonal = False
    data_cfg.noise_norm = 2.0
    norms = []
    for d in (64, 512):
        data_cfg.dim = d
        data = multiview.make_multiview(data_cfg, seed=0)
        noise = data.train["x"] - data.train["coeffs"] @ data.views  # no feature noise in the tiny setting
        norms.append(np.linalg.norm(noise, axis=-1).mean())
    np.testing.assert_allclose(norms, 2.0, rtol=0.03)
    data_cfg.noise_norm = 0.0  # off: data.noise_std per coordinate, the norm grows with sqrt(d)
    assert multiview.noise_std(data_cfg) == data_cfg.noise_std


@pytest.mark.parametrize("field, value, message", [
    ("noise_norm", -1.0, r"config\.data\.noise_norm: must be >= 0"),
    ("dim", 9, r"config\.data\.dim: the 2k = 10 views must be orthonormal in R\^d, so dim >= 10"),
    ("mu", 1.5, r"config\.data\.mu: a probability, must be in \[0, 1\]"),
    ("mu", -0.1, r"config\.data\.mu"),
    ("num_patches", 3, r"config\.data\.num_patches: both views of the class need 4 disjoint patches"),
    ("noise_std", -1.0, r"config\.data\.noise_std: must be >= 0"),
    ("num_classes", 1, r"config\.data\.num_classes: need at least 2"),
])
def test_impossible_data_settings(data_cfg, field, value, message):
    data_cfg[field] = value
    with pytest.raises(ConfigError, match=message):
        multiview.make_multiview(data_cfg, seed=0)


# ----------------------------------------------------------------------------- model

def test_smoothed_relu_values_and_continuity():
    q, rho = 3, 0.5
    f = lambda z: tm.smoothed_relu(jnp.asarray(z, jnp.float32), q, rho)  # noqa: E731
    np.testing.assert_allclose(f([-1.0, 0.0]), [0.0, 0.0])
    np.testing.assert_allclose(f(0.25), 0.25 ** 3 / (3 * 0.5 ** 2), rtol=1e-6)
    np.testing.assert_allclose(f(2.0), 2.0 - (1 - 1 / 3) * 0.5, rtol=1e-6)
    eps = 1e-4
    for knot in (0.0, rho):  # value and derivative continuous at both knots
        assert abs(float(f(knot + eps) - f(knot - eps))) < 1e-3
        d = jax.vmap(jax.grad(lambda z: tm.smoothed_relu(z, q, rho)))(jnp.array([knot - eps, knot + eps]))
        assert abs(float(d[1] - d[0])) < 1e-3
    z = jnp.linspace(-1.0, 2.0, 301)
    np.testing.assert_allclose(jax.vmap(jax.grad(lambda t: tm.smoothed_relu(t, 4, rho)))(z),
                               tm.smoothed_relu_grad(z, 4, rho), atol=1e-6)


def test_ntk_variant_is_the_linearised_net():
    mc = tm.ModelCfg(variant="ntk", q=3, varrho=1.0, init_std=0.3, channels=2)
    params, frozen = tm.init_params(jax.random.PRNGKey(0), mc, num_classes=3, dim=8)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 8))
    np.testing.assert_allclose(tm.apply(params, frozen, x, mc), 0.0, atol=1e-6)  # centred at init
    delta = 0.01 * jax.random.normal(jax.random.PRNGKey(2), frozen["w0"].shape)
    _, jvp = jax.jvp(lambda w: tm.net_logits(w, x, 3, 1.0), (frozen["w0"],), (delta,))
    np.testing.assert_allclose(tm.apply({"w": frozen["w0"] + delta}, frozen, x, mc), jvp, rtol=1e-4, atol=1e-6)


def test_view_correlations_pick_each_class_own_views():
    views = jnp.eye(6, 8)                         # k = 3 classes, d = 8
    w = jnp.zeros((3, 2, 8)).at[1, 0].set(2.0 * views[3]).at[1, 1].set(0.5 * views[2])
    corr = tm.view_correlations({"w": w}, views)
    np.testing.assert_allclose(corr, [[0, 0], [0.5, 2.0], [0, 0]])
    learned = theory_report.views_learned(np.asarray(corr)[None], 0.5, 0.1)
    np.testing.assert_array_equal(learned[0], [[False, False], [False, True], [False, False]])


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("variant, teacher, batch", [("net", None, 0), ("net", "per_model", 8), ("rf", "shared", 0),
                                                     ("ntk", None, 0)])
def test_vmap_over_seeds_equals_per_seed_training(variant, teacher, batch):
    c = _config().data
    c.update(dict(num_classes=3, dim=16, num_patches=4, num_train=24))
    data = multiview.make_multiview(c, seed=0)
    mc = tm.ModelCfg(variant=variant, q=3, varrho=1.0, init_std=0.3 if variant != "net" else 0.1, channels=2,
                     features=16)
    params, frozen = th.init_models(jax.random.PRNGKey(0), mc, 3, num_classes=3, dim=16)
    t = {None: None, "shared": np.ones((24, 3)) * np.arange(3),
         "per_model": np.random.default_rng(0).normal(size=(3, 24, 3))}[teacher]
    kw = dict(steps=7, lr=0.5, batch_size=batch, chunk=4, progress=False, kd_temperature=2.0, kd_weight=0.7)
    together, _ = th.train_models(params, frozen, data.train["x"], data.train["label"], mc, teacher_logits=t, **kw)
    for i in range(3):
        one = jax.tree.map(lambda a: a[i:i + 1], (params, frozen))
        ti = t[i:i + 1] if teacher == "per_model" else t
        alone, _ = th.train_models(*one, data.train["x"], data.train["label"], mc, teacher_logits=ti, **kw)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b[0], rtol=2e-5, atol=1e-6), together, alone)


def test_train_models_stops_on_a_non_finite_loss():
    """A diverging run raises NonFiniteError naming desc, the step and the loss. (A large finite lr
    does not do it here: cross-entropy saturates at 0; an infinite one overflows the weights.)"""
    c = _config().data
    c.update(dict(num_classes=3, dim=16, num_patches=4, num_train=24))
    data = multiview.make_multiview(c, seed=0)
    mc = tm.ModelCfg(variant="net", q=3, varrho=1.0, init_std=0.1, channels=2)
    params, frozen = th.init_models(jax.random.PRNGKey(0), mc, 2, num_classes=3, dim=16)
    kw = dict(steps=40, batch_size=0, chunk=10, progress=False)
    _, history = th.train_models(params, frozen, data.train["x"], data.train["label"], mc, lr=0.5, **kw)
    assert len(history) == 4 and np.isfinite(history).all()
    with pytest.raises(NonFiniteError, match=r"net: 2 single models: the loss is (nan|inf) at step 10; .*"
                                             r"config\.net\.lr"):
        th.train_models(params, frozen, data.train["x"], data.train["label"], mc, lr=float("inf"),
                        desc="net: 2 single models", **kw)


def test_average_members_combine():
    mc = tm.ModelCfg(variant="net", q=3, varrho=1.0, init_std=0.5, channels=2)
    params, frozen = th.init_models(jax.random.PRNGKey(0), mc, 1, num_classes=3, dim=8, members=4)
    x = np.random.default_rng(0).normal(size=(5, 4, 8)).astype(np.float32)
    each = jax.vmap(lambda p: tm.apply(p, {}, jnp.asarray(x), mc))(jax.tree.map(lambda a: a[0], params))
    np.testing.assert_allclose(th.logits_of(params, frozen, x, mc, members=4)[0], each.mean(0), rtol=1e-5)
    np.testing.assert_allclose(th.logits_of(params, frozen, x, mc, members=4, combine="sum")[0], each.sum(0),
                               rtol=1e-5)


# ----------------------------------------------------------------------------- the probe

def test_bad_theory_config_fails_before_any_work(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("work started before the bad config was reported")
    monkeypatch.setattr(th, "make_multiview", refuse)
    monkeypatch.setattr(th, "train_models", refuse)
    cases = [("net.q", 2, r"config\.net\.q: .* >= 3"), ("methods", "single,bagging", r"config\.methods"),
             ("kd.num_students", 9, r"config\.kd\.num_students"), ("data.dim", 7, r"config\.data\.dim"),
             ("ensemble.average", "votes", r"config\.ensemble\.average"), ("variants", "", r"config\.variants"),
             ("net.batch_size", 101, r"config\.net\.batch_size"), ("log_every", 0, r"config\.log_every")]
    for field, value, message in cases:
        c = _config()
        section, _, name = field.rpartition(".")
        (c[section] if section else c)[name] = value
        with pytest.raises(ConfigError, match=message):
            th.run(c, str(tmp_path))


@pytest.mark.parametrize("old, value, new", [
    ("model.channels", 2, "net.channels"), ("model.q", 3, "net.q"), ("model.varrho", 2.0, "net.varrho"),
    ("model.init_std", 0.005, "net.init_std"), ("train.steps", 300, "net.steps"), ("train.lr", 30.0, "net.lr"),
    ("train.batch_size", 0, "net.batch_size"), ("train.log_every", 100, "log_every"),
    ("kd.students", 2, "kd.num_students"),
])
def test_renamed_theory_fields_fail_with_the_new_name(old, value, new):
    import ml_collections
    c = _config()
    section, _, name = old.rpartition(".")
    if section not in c:
        c[section] = ml_collections.ConfigDict()
    c[section][name] = value
    with pytest.raises(ConfigError, match=rf"config\.{old}: renamed to {new} \("):
        th.check_config(c)


def test_cli_reports_bad_theory_config_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jkd.main", "--config", CONFIG + ":tiny", "--workdir",
                           str(tmp_path), "--config.data.mu=1.5"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "config.data.mu: a probability, must be in [0, 1], got 1.5" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tiny_probe_end_to_end(tmp_path):
    """The net at tiny sizes: every model fits, and the ensemble beats the mean single model on
    single-view data (each single model misses one view of some classes)."""
    c = _config()
    c.variants, c.methods = "net", "single,ensemble,kd"
    summary = th.run(c, str(tmp_path))
    assert summary["net/single/train_acc"] > 0.95
    assert summary["net/single/multi_view_acc"] > 0.9
    assert summary["net/ensemble/single_view_acc"] > summary["net/single/single_view_acc"] + 0.03
    assert summary["net/single/views_both"] < summary["net/ensemble/views_both"]
    for name in ("summary.json", "results.json", "results.md", "accuracy.png", "view_learning.png", "metrics.jsonl"):
        assert os.path.getsize(tmp_path / name) > 0
    with open(tmp_path / "results.json") as f:
        res = json.load(f)["results"]["net"]
    assert np.asarray(res["single"]["views"]).shape == (c.ensemble.size, 4, 2)
    assert len(res["kd"]["acc"]["single_view"]) == c.kd.num_students
    # rerunning the same config reports the stored summary without training
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(th, "train_models", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
        assert th.run(c, str(tmp_path)) == summary


def test_view_figure_scale_is_the_one_learned_is_decided_on():
    """view_learning.png colours each view as a fraction of its model's strongest view (models whose
    weights grew to different norms share one scale); the 'learned' dots are the cells at >= half."""
    from jkd.probes.theory_report import relative_views, views_learned
    corr = np.array([[[10.0, 4.0], [6.0, 1.0]], [[40.0, 30.0], [2.0, 25.0]]])  # [R = 2 models, k = 2, 2 views]
    rel = relative_views(corr)
    np.testing.assert_allclose(rel.max(axis=(1, 2)), 1.0)
    np.testing.assert_array_equal(views_learned(corr, 0.5, 2.0), rel >= 0.5)  # the floor 2 is below every half-max
