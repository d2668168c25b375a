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
