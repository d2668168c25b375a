"""Fairness probes (issue 8): metric definitions on hand-computed cases, the last-layer Laplace
predictive against closed forms, the generators' group proportions, class-conditional crops, the
early-exit weights, the shared multi-seed trainer (jkd.probes.multiseed), the renamed fields, and
one tiny end-to-end run of each probe (jkd.probes.spurious, jkd.probes.augmentation)."""
import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import evaluate
from jkd.data import synthetic
from jkd.data.augment import random_resized_crop
from jkd.errors import ConfigError, NonFiniteError
from jkd.probes import augmentation as aug
from jkd.probes import laplace, multiseed
from jkd.probes import spurious as spur
from jkd.train.state import apply_model, graphdef_and_shapes, init_params, make_optimizer, model_features

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, arg="tiny"):
    spec = importlib.util.spec_from_file_location(f"fairness_{name}", os.path.join(REPO, f"configs/fairness/{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# ----------------------------------------------------------------------------- metrics

def test_class_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 1, 0])
    cm = evaluate.confusion_matrix(preds, labels, 4)
    assert cm.tolist() == [[1, 2, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    acc = evaluate.per_class_accuracy(preds, labels, 4)
    np.testing.assert_allclose(acc[:3], [1 / 3, 1.0, 0.0])
    assert np.isnan(acc[3])  # no examples: NaN, not 0
    np.testing.assert_allclose(evaluate.per_class_delta(acc[:3], [0.5, 0.5, 0.5]), [1 / 3 - 0.5, 0.5, -0.5])
    # off-diagonal rates: 2->0 is 1.0, 0->1 is 2/3
    assert evaluate.top_confused_pairs(cm, top=2) == [(2, 0, 1.0), (0, 1, pytest.approx(2 / 3))]


def test_group_metrics_by_hand():
    # binary label y, binary attribute a; groups g = 2y + a
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    a = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    p = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    g = 2 * y + a
    np.testing.assert_allclose(evaluate.group_accuracy(p, y, g, 4), [1.0, 0.0, 0.5, 1.0])
    # P(pred=1 | a=0) = 1/4, P(pred=1 | a=1) = 4/4 -> 0.75
    assert evaluate.statistical_parity_gap(p, a, 2) == pytest.approx(0.75)
    # TPR for y=1: a=0 -> 1/2, a=1 -> 1 ; for y=0 (TNR): a=0 -> 1, a=1 -> 0
    assert evaluate.equal_opportunity_gap(p, y, a, 2, positive_class=1) == pytest.approx(0.5)
    assert evaluate.equal_opportunity_gap(p, y, a, 2) == pytest.approx(1.0)
    r = evaluate.group_report(p, y, g, a, num_classes=2, num_groups=4, positive_class=1)
    assert r["avg_acc"] == pytest.approx(5 / 8) and r["worst_group_acc"] == 0.0 and r["disparity"] == 1.0


# ----------------------------------------------------------------------------- Laplace

def _tiny_logistic(seed=0, n=30, d=3, k=2):
    rng = np.random.default_rng(seed)
    phi = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    head = {"kernel": jnp.asarray(rng.normal(size=(d, k)), jnp.float32), "bias": jnp.asarray(rng.normal(size=k),
                                                                                             jnp.float32)}
    return phi, head


def test_laplace_precision_is_the_exact_hessian():
    """For a linear softmax head the GGN equals the Hessian of the summed CE (+ prior)."""
    phi, head = _tiny_logistic(k=3)
    labels = jnp.array(np.arange(30) % 3)
    tau, scale = 0.7, 2.0

    def loss(w):  # w [(D+1) K] row-major over [kernel; bias]
        wk = w.reshape(4, 3)
        logits = phi @ wk[:3] + wk[3]
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).sum()
        return scale * ce + 0.5 * tau * (w ** 2).sum()

    w0 = jnp.concatenate([head["kernel"], head["bias"][None]]).reshape(-1)
    np.testing.assert_allclose(laplace.laplace_precision(phi, head, tau, scale), jax.hessian(loss)(w0), atol=1e-4)


def test_laplace_predictive_against_quadrature():
    """Two classes: the logit difference is Gaussian, so E[softmax] is a 1-d integral (Gauss-Hermite)."""
    phi, head = _tiny_logistic()
    cov = jnp.linalg.inv(laplace.laplace_precision(phi, head, 1.0))
    x = phi[:5]
    mean = spur.exit_logits(head, x)
    fcov = laplace.logit_covariance(x, cov, 2)
    # logit covariance = J cov J^T with the explicit Jacobian of f = W~^T phi~
    jac = jax.vmap(jax.jacobian(lambda w, p: jnp.concatenate([p, jnp.ones(1)]) @ w.reshape(4, 2), 0), (None, 0))(
        jnp.zeros(8), x)  # [5, K, P]
    np.testing.assert_allclose(fcov, jnp.einsum("nkp,pq,nlq->nkl", jac, cov, jac), atol=1e-5)
    m = mean[:, 1] - mean[:, 0]
    s2 = fcov[:, 1, 1] + fcov[:, 0, 0] - 2 * fcov[:, 0, 1]
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    exact = (weights[None] * jax.nn.sigmoid(m[:, None] + np.sqrt(s2)[:, None] * nodes[None])).sum(1) / math.sqrt(
        2 * math.pi)
    mc = laplace.laplace_predictive(mean, fcov, method="mc", key=jax.random.PRNGKey(0), samples=20000)
    np.testing.assert_allclose(mc[:, 1], exact, atol=0.01)
    probit = laplace.laplace_predictive(mean, fcov, method="probit")
    np.testing.assert_allclose(probit[:, 1], exact, atol=0.05)  # an approximation, but close
    assert float(jnp.abs(probit[:, 1] - 0.5).max()) < float(jnp.abs(jax.nn.softmax(mean)[:, 1] - 0.5).max())


def test_exit_weights():
    logits = jnp.array([[3.0, 0.0], [0.0, 3.0], [0.2, 0.0]])
    labels = jnp.array([1, 1, 1])  # wrong-confident, right, wrong-unsure
    w = spur.exit_weights(logits, labels, mode=1, beta=2.0)
    p = jax.nn.softmax(logits)
    np.testing.assert_allclose(w, [math.exp(2 * float(p[0, 0] - p[0, 1])), 1.0,
                                   math.exp(2 * float(p[2, 0] - p[2, 1]))], rtol=1e-5)
    np.testing.assert_allclose(spur.exit_weights(logits, labels, mode=0, beta=2.0), 1.0)
    uniform = jnp.full((3, 2), 0.5)  # Laplace predictive at maximum entropy: confidence 0 -> weight 1
    np.testing.assert_allclose(spur.exit_weights(logits, labels, mode=2, beta=2.0, laplace_probs=uniform), 1.0)


def test_reweighting_multiplies_the_kd_term_only_by_default():
    """Tiwari et al. reweight the distillation loss: with terms='kd' the CE part is the plain mean;
    'kd_and_ce' (the old form) weights both; the `ce` student ignores the weights."""
    from jkd import losses
    rng = np.random.default_rng(0)
    logits, teacher = jnp.asarray(rng.normal(size=(6, 2))), jnp.asarray(rng.normal(size=(6, 2)))
    labels, w = jnp.array([0, 1, 1, 0, 1, 0]), jnp.array([1.0, 7.0, 1.0, 1.0, 3.0, 1.0])
    kw = dict(kd_weight=0.9, temperature=4.0)
    kd_w = losses.kd_kl(logits, teacher, temperature=4.0, weights=w)
    ce, ce_w = losses.cross_entropy(logits, labels), losses.cross_entropy(logits, labels, weights=w)
    assert abs(float(ce - ce_w)) > 1e-3  # the weights matter for CE on this batch
    got = spur.student_objective(logits, labels, teacher, w, kd_on=1.0, **kw)
    np.testing.assert_allclose(got, 0.9 * kd_w + 0.1 * ce, rtol=1e-6)
    old = spur.student_objective(logits, labels, teacher, w, kd_on=1.0, terms="kd_and_ce", **kw)
    np.testing.assert_allclose(old, 0.9 * kd_w + 0.1 * ce_w, rtol=1e-6)
    np.testing.assert_allclose(spur.student_objective(logits, labels, teacher, w, kd_on=0.0, **kw), ce, rtol=1e-6)
    c = _config("spurious")
    assert c.reweight.terms == "kd"
    c.reweight.terms = "ce"
    with pytest.raises(ConfigError, match="config.reweight.terms"):
        spur.check_config(c)


# ----------------------------------------------------------------------------- generators, crops

def test_spurious_group_proportions():
    train = synthetic.make_spurious(1000, spurious_corr=0.95, seed=0)
    assert np.bincount(train["group"], minlength=4).tolist() == [475, 25, 25, 475]
    assert (train["group"] == 2 * train["label"] + train["attribute"]).all()
    assert np.mean(train["label"] == train["attribute"]) == 0.95
    test = synthetic.make_spurious(400, spurious_corr=0.5, seed=1)
    assert np.bincount(test["group"], minlength=4).tolist() == [100] * 4
    assert train["image"].shape == (1000, 16, 16, 3) and 0 <= train["image"].min() and train["image"].max() <= 1
    again = synthetic.make_spurious(50, seed=3)["image"]
    np.testing.assert_array_equal(synthetic.make_spurious(50, seed=3)["image"], again)


def test_fine_grained_generator():
    d = synthetic.make_fine_grained(200, seed=0)
    assert np.bincount(d["label"]).tolist() == [20] * 10
    ml = d["multi_label"]
    assert ml[np.arange(200), d["label"]].all()
    assert ml[d["label"] == 4, 5].all() and ml.sum(1)[d["label"] != 4].max() == 1  # only 4 co-occurs (with 5)
    assert aug.pair_kind(0, 1, ml, d["label"], d["superclass"]) == "fine_grained"
    assert aug.pair_kind(5, 4, ml, d["label"], d["superclass"]) == "co_occurring"
    assert aug.pair_kind(6, 7, ml, d["label"], d["superclass"]) == "unexplained"


def test_class_conditional_crop_applies_each_class_scale():
    x = jax.random.uniform(jax.random.PRNGKey(0), (12, 16, 16, 1))
    labels = jnp.arange(12) % 3
    scales = aug.class_scales(3, strong=0.1, light=0.9, light_classes=[1])
    np.testing.assert_allclose(scales, [0.1, 0.9, 0.1])
    key = jax.random.PRNGKey(1)
    out = aug.crop_by_class(key, x, labels, jnp.asarray(scales), 1.0)
    strong = random_resized_crop(key, x, (0.1, 1.0))
    light = random_resized_crop(key, x, (0.9, 1.0))
    is_light = np.asarray(labels == 1)
    np.testing.assert_allclose(out[is_light], light[is_light], atol=1e-6)
    np.testing.assert_allclose(out[~is_light], strong[~is_light], atol=1e-6)
    assert float(jnp.abs(strong - light).max()) > 0.1  # the two scales do crop differently


def test_both_sides_of_the_affected_pairs():
    """'Losing' classes are the true classes of the confused pairs, 'receiving' the predicted ones;
    losing_acc is their recall, so a confusion 0 -> 1 costs class 0, not class 1."""
    pairs = [(0, 1, 0.2), (4, 5, 0.1), (0, 5, 0.05)]
    assert aug.pair_sides(pairs) == ([0, 4], [1, 5])
    labels = np.repeat(np.arange(10), 10)
    preds = labels.copy()
    preds[:4] = 1  # 4 of the ten 0s called 1
    m, acc, _ = aug._measures(preds, labels, 10, [(0, 1, 0.2)])
    assert m["losing_acc"] == pytest.approx(0.6) and m["receiving_acc"] == pytest.approx(1.0)
    c = _config("augmentation")
    c.remedy.light_for = "both"
    with pytest.raises(ConfigError, match="config.remedy.light_for"):
        aug.check_config(c)


def test_affected_pairs():
    light = np.full((3, 3), 0.05)
    strong = light.copy()
    strong[0, 1], strong[2, 1], strong[1, 0] = 0.2, 0.06, 0.1
    assert aug.affected_pairs(strong, light, 0.02) == [(0, 1, pytest.approx(0.15)), (1, 0, pytest.approx(0.05))]


# ----------------------------------------------------------------------------- configs, end to end

def test_forward_all_shapes_and_padding():
    from jkd.config import model_config
    spec = multiseed.model_spec(model_config("vit_atto4"), 3, 8, 1)
    graph, _ = graphdef_and_shapes(spec)
    params = multiseed.stack([{"model": init_params(spec, s)} for s in (0, 1)])
    x = np.random.default_rng(0).uniform(size=(5, 8, 8, 1)).astype(np.float32)
    logits, early = multiseed.forward_all(graph, params, x, mean=0.5, std=0.5, exit_block=0, batch=4)
    assert logits.shape == (2, 5, 3) and early.shape == (2, 5, 32)
    one = model_features(graph, multiseed.unstack(params, 1)["model"], (jnp.asarray(x) - 0.5) / 0.5)
    np.testing.assert_allclose(early[1], one["tokens"][0].mean(1), atol=1e-5)  # padding and stacking change nothing
    assert not np.allclose(early[0], early[1])  # two different models


def test_config_errors_name_the_field():
    c = _config("spurious")
    c.student.exit_block = 1  # vit_atto4 has 2 blocks: the exit must be before the last
    with pytest.raises(ConfigError, match="config.student.exit_block"):
        spur.check_config(c)
    c = _config("augmentation")
    c.crop.min_scales = "0.5"
    with pytest.raises(ConfigError, match="config.crop.min_scales"):
        aug.check_config(c)
    c = _config("spurious")
    c.student_losses = "kd,distill"
    with pytest.raises(ConfigError, match=r"config\.student_losses: .*unknown 'distill'"):
        spur.check_config(c)
    c = _config("augmentation")
    c.student_teachers = "strong,medium"
    with pytest.raises(ConfigError, match=r"config\.student_teachers: .*unknown 'medium'"):
        aug.check_config(c)
    c = _config("augmentation")
    c.kd.weight = 1.5  # a shared teacher/student field: jkd.probes.multiseed.check_teacher_student
    with pytest.raises(ConfigError, match=r"config\.kd\.weight: must be in \[0, 1\]"):
        aug.check_config(c)
    c = _config("spurious", "celeb_a")
    spur.check_config(c)  # the accelerator recipe is config-valid (data is only opened at run time)
    assert (_config("spurious").trainer, _config("augmentation").trainer) == ("spurious", "augmentation")


@pytest.mark.parametrize("probe, old, value, new", [
    ("spurious", "students", "ce,kd", "student_losses"),
    ("augmentation", "students", "kd_from_strong,kd_from_light", "student_teachers"),
])
def test_renamed_fields_fail_with_the_new_name(probe, old, value, new):
    c = _config(probe)
    c[old] = value
    check = {"spurious": spur.check_config, "augmentation": aug.check_config}[probe]
    with pytest.raises(ConfigError, match=rf"config\.{old}: renamed to {new} \("):
        check(c)


@pytest.mark.parametrize("probe", ["spurious", "augmentation"])
def test_probe_field_is_gone(probe):
    c = _config(probe)
    c.probe = probe
    check = {"spurious": spur.check_config, "augmentation": aug.check_config}[probe]
    with pytest.raises(ConfigError, match=r"config\.probe: removed; config\.trainer names the probe "
                                          r"\('spurious' or 'augmentation'\)"):
        check(c)


def test_train_stack_stops_on_a_non_finite_loss():
    """A diverging stack raises NonFiniteError naming desc, step and metric, at a logged step."""
    from jkd import losses
    from jkd.config import base_config, model_config
    spec = multiseed.model_spec(model_config("vit_atto4"), 2, 8, 1)
    graph, _ = graphdef_and_shapes(spec)
    params = multiseed.stack([{"model": init_params(spec, 0)}] * 2)
    x = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype(np.float32)
    y = np.arange(16) % 2

    def loss_fn(p, batch, key, aux):  # model 1's loss is scaled by inf from the start
        logits = apply_model(graph, p["model"], batch["image"])
        return aux * losses.cross_entropy(logits, batch["label"]), {}

    opt = base_config().optimizer
    opt.warmup_steps = 0
    kw = dict(steps=6, batch_size=4, seed=0, log_every=3, progress=False)
    finite, history = multiseed.train_stack(loss_fn, params, make_optimizer(opt, 6), x, y,
                                            aux=jnp.array([1.0, 2.0]), **kw)
    assert [h["step"] for h in history] == [3, 6] and np.isfinite(history[-1]["loss"]).all()
    with pytest.raises(NonFiniteError, match=r"blowup: loss is (nan|inf) at step 3 \(model 1 of the stack\).*"
                                             r"config\.optimizer\.lr"):
        multiseed.train_stack(loss_fn, params, make_optimizer(opt, 6), x, y, aux=jnp.array([1.0, jnp.inf]),
                              desc="blowup", **kw)


def test_spurious_probe_end_to_end(tmp_path):
    c = _config("spurious")
    c.student_losses = "kd,kd_margin,kd_laplace"
    summary = spur.run(c, str(tmp_path))
    for role in ("teacher", "kd", "kd_margin", "kd_laplace"):
        assert 0 <= summary[f"{role}/worst_group_acc"] <= summary[f"{role}/avg_acc"] <= 1
    assert summary["kd_margin/margin_weight_ratio"] > 0
    assert os.path.exists(tmp_path / "group_accuracy.png") and os.path.exists(tmp_path / "results.md")
    assert spur.run(c, str(tmp_path)) == json.loads((tmp_path / "summary.json").read_text())  # rerun: stored summary


def test_augmentation_probe_end_to_end(tmp_path):
    summary = aug.run(_config("augmentation"), str(tmp_path))
    for policy in ("scale=0.1", "scale=1", "class_conditional", "kd_from_strong", "kd_from_light"):
        assert 0 <= summary[f"{policy}/avg_acc"] <= 1
    res = json.loads((tmp_path / "results.json").read_text())["results"]
    assert res["losing_classes"] == sorted({p["true"] for p in res["affected_pairs"]})
    assert res["receiving_classes"] == sorted({p["predicted"] for p in res["affected_pairs"]})
    assert res["remedied_classes"] == res["losing_classes"]  # the paper's remedy: the classes that lose
    assert all(os.path.exists(tmp_path / f) for f in ("class_deltas.png", "confusion_strong.png",
                                                      "accuracy_vs_scale.png"))


def test_celeb_a_recipe_runs_on_tfds_mock_data(tmp_path):
    """The accelerator recipe (configs/fairness/spurious.py:celeb_a) end to end on TFDS mock files:
    attributes -> label and group, the probe's models and metrics (tiny models, 8 px, 2 steps)."""
    import tensorflow_datasets as tfds
    from test_tfds_data import _write_metadata

    from jkd.config import model_config
    data_dir = str(tmp_path / "tfds")
    _write_metadata(data_dir, "celeb_a", {"train": 32, "test": 32})
    c = _config("spurious", "celeb_a")
    c.data.data_dir, c.data.image_size, c.data.num_train, c.data.num_test = data_dir, 8, 32, 32
    c.batch_size, c.teacher.steps, c.student.steps, c.optimizer.warmup_steps = 16, 2, 2, 1
    c.teacher.model, c.student.model = model_config("vit_atto4"), model_config("vit_atto4")
    c.student_losses, c.laplace.fit_examples, c.progress = "kd", 16, False
    with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir):
        summary = spur.run(c, str(tmp_path / "run"))
    for role in ("teacher", "kd"):
        assert 0 <= summary[f"{role}/worst_group_acc"] <= summary[f"{role}/avg_acc"] <= 1
