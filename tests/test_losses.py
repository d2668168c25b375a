import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import losses

S = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], np.float32)
T = np.array([[1.0, 1.5, 0.0], [-1.0, 2.0, 0.5]], np.float32)
Y = np.array([0, 2])


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_cross_entropy_by_hand():
    expected = np.mean([-np.log(softmax(S)[0, 0]), -np.log(softmax(S)[1, 2])])
    assert float(losses.cross_entropy(S, Y)) == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_label_smoothing_by_hand():
    eps = 0.1
    p = softmax(S)
    targets = np.full((2, 3), eps / 3)
    targets[0, 0] += 1 - eps
    targets[1, 2] += 1 - eps
    expected = np.mean(-(targets * np.log(p)).sum(-1))
    assert float(losses.cross_entropy(S, Y, label_smoothing=eps)) == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_weights_ignore_masked_examples():
    only_first = -np.log(softmax(S)[0, 0])
    assert float(losses.cross_entropy(S, Y, weights=jnp.array([1.0, 0.0]))) == pytest.approx(only_first, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_kl_by_hand(temperature):
    p, q = softmax(T / temperature), softmax(S / temperature)
    expected = temperature ** 2 * np.mean((p * (np.log(p) - np.log(q))).sum(-1))
    assert float(losses.kd_kl(S, T, temperature=temperature)) == pytest.approx(expected, rel=1e-5)


def test_kd_kl_is_zero_for_identical_logits():
    assert float(losses.kd_kl(S, S, temperature=3.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 8.0])
def test_kd_gradient_identity(temperature):
    """d(T^2 KL)/dz_student = T (q_T - p_T) per example (divided by B for the batch mean)."""
    grad = jax.grad(lambda s: losses.kd_kl(s, T, temperature=temperature))(jnp.asarray(S))
    expected = temperature * (softmax(S / temperature) - softmax(T / temperature)) / S.shape[0]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_hinton_kd_mixes_kd_and_masked_ce():
    mask = jnp.array([0.0, 1.0])
    loss, parts = losses.hinton_kd(S, T, Y, temperature=2.0, kd_weight=0.7, label_mask=mask)
    kd = float(losses.kd_kl(S, T, temperature=2.0))
    ce = -np.log(softmax(S)[1, 2])
    assert float(parts["kd"]) == pytest.approx(kd, rel=1e-6)
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-6)
    assert float(loss) == pytest.approx(0.7 * kd + 0.3 * ce, rel=1e-6)


def _kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_by_hand(temperature):
    loss, parts = losses.dkd(S, T, Y, temperature=temperature, alpha=1.0, beta=8.0)
    ps, pt = softmax(S / temperature), softmax(T / temperature)
    tckd, nckd = [], []
    for i, y in enumerate(Y):
        bs = np.array([ps[i, y], 1 - ps[i, y]])
        bt = np.array([pt[i, y], 1 - pt[i, y]])
        tckd.append(_kl(bt, bs))
        others = [k for k in range(3) if k != y]
        qs = ps[i, others] / ps[i, others].sum()
        qt = pt[i, others] / pt[i, others].sum()
        nckd.append(_kl(qt, qs))
    t2 = temperature ** 2
    assert float(parts["tckd"]) == pytest.approx(t2 * np.mean(tckd), rel=1e-4)
    assert float(parts["nckd"]) == pytest.approx(t2 * np.mean(nckd), rel=1e-4)
    assert float(loss) == pytest.approx(t2 * (np.mean(tckd) + 8 * np.mean(nckd)), rel=1e-4)


def test_dkd_parts_sum_to_kd_identity():
    """KD = TCKD + (1 - p_t^target) * NCKD per example (Zhao et al.'s decomposition)."""
    ps, pt = softmax(S), softmax(T)
    kd_rows = _kl(pt, ps)
    for i, y in enumerate(Y):
        bs, bt = np.array([ps[i, y], 1 - ps[i, y]]), np.array([pt[i, y], 1 - pt[i, y]])
        others = [k for k in range(3) if k != y]
        nckd = _kl(pt[i, others] / pt[i, others].sum(), ps[i, others] / ps[i, others].sum())
        assert kd_rows[i] == pytest.approx(_kl(bt, bs) + (1 - pt[i, y]) * nckd, rel=1e-5)


def test_nkd_by_hand():
    temperature, gamma = 2.0, 1.5
    loss, parts = losses.nkd(S, T, Y, temperature=temperature, gamma=gamma)
    ps, pt = softmax(S), softmax(T)
    target = np.mean([-pt[i, y] * np.log(ps[i, y]) for i, y in enumerate(Y)])
    non = []
    for i, y in enumerate(Y):
        others = [k for k in range(3) if k != y]
        qs = softmax(S[i, others] / temperature)
        qt = softmax(T[i, others] / temperature)
        non.append(-(qt * np.log(qs)).sum())
    assert float(parts["nkd_target"]) == pytest.approx(target, rel=1e-5)
    assert float(parts["nkd_non_target"]) == pytest.approx(gamma * temperature ** 2 * np.mean(non), rel=1e-5)
    assert float(loss) == pytest.approx(target + gamma * temperature ** 2 * np.mean(non), rel=1e-5)


def test_hard_kd_is_ce_on_teacher_argmax():
    assert float(losses.hard_kd(S, T)) == pytest.approx(float(losses.cross_entropy(S, np.argmax(T, -1))), rel=1e-6)


def test_ensemble_logits_give_mean_probabilities():
    rng = np.random.default_rng(0)
    teachers = rng.normal(size=(3, 4, 5)).astype(np.float32)
    for temperature in (1.0, 3.0):
        z = losses.ensemble_logits(jnp.asarray(teachers), temperature)
        np.testing.assert_allclose(softmax(np.asarray(z) / temperature),
                                   softmax(teachers / temperature).mean(0), rtol=1e-5, atol=1e-6)


def test_feature_losses_by_hand():
    a = np.array([[[1.0, 0.0], [0.0, 2.0]]], np.float32)  # [1, 2, 2]
    b = np.array([[[0.0, 0.0], [0.0, 1.0]]], np.float32)
    assert float(losses.feature_mse(a, b)) == pytest.approx((0.5 + 0.5) / 2)
    assert float(losses.feature_mse(a, b, mask=np.array([[0.0, 1.0]]))) == pytest.approx(0.5)
    c = np.array([[[2.0, 0.0], [0.0, -1.0]]], np.float32)
    assert float(losses.feature_cosine(a, c)) == pytest.approx((0.0 + 2.0) / 2, abs=1e-6)
