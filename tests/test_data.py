import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd.data import make_data
from jkd.data.augment import augment_batch, mixup, random_resized_crop
from jkd.data.digits import labelled_subset_mask, load_digits_split
from jkd.errors import ConfigError
from jkd.config import base_config


def test_digits_split_is_fixed_and_stratified():
    x1, y1 = load_digits_split("train")
    x2, y2 = load_digits_split("train")
    xt, yt = load_digits_split("test")
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert len(y1) == 1347 and len(yt) == 450
    # Stratified: each class's share of the test set is within one example of 25%.
    for c in range(10):
        n_c = (y1 == c).sum() + (yt == c).sum()
        assert abs((yt == c).sum() - 0.25 * n_c) <= 1
    assert x1.shape == (1347, 16, 16, 1) and x1.dtype == np.float32
    assert -1.0 <= x1.min() and x1.max() <= 1.0  # (x - 0.5) / 0.5 on [0, 1]


def test_digits_upsampling_and_channels():
    x, _ = load_digits_split("test", image_size=32, channels=3)
    assert x.shape == (450, 32, 32, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_labelled_subset_is_stratified():
    _, y = load_digits_split("train")
    mask = labelled_subset_mask(y, 0.1, seed=0)
    for c in range(10):
        assert mask[y == c].sum() == round(0.1 * (y == c).sum())
    np.testing.assert_array_equal(mask, labelled_subset_mask(y, 0.1, seed=0))


def test_train_batches_are_a_function_of_seed_and_step():
    cfg = base_config().data
    data = make_data(cfg, seed=3, global_batch_size=32)
    again = make_data(cfg, seed=3, global_batch_size=32)
    np.testing.assert_array_equal(data.train_batch(57)["label"], again.train_batch(57)["label"])
    other = make_data(cfg, seed=4, global_batch_size=32)
    assert not np.array_equal(data.train_batch(0)["image"], other.train_batch(0)["image"])
    # One epoch visits every example once.
    steps = data.num_train // 32
    seen = np.concatenate([data.train_batch(s)["label"] for s in range(steps)])
    assert len(seen) == steps * 32


def test_process_slices_are_disjoint_and_cover_the_global_batch():
    cfg = base_config().data
    full = make_data(cfg, seed=0, global_batch_size=32, process_index=0, process_count=1).train_batch(5)
    parts = [make_data(cfg, seed=0, global_batch_size=32, process_index=i, process_count=2).train_batch(5)
             for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), full["image"])


def test_eval_batches_pad_with_mask():
    data = make_data(base_config().data, seed=0, global_batch_size=32, eval_batch_size=128)
    batches = list(data.eval_batches())
    assert sum(b["mask"].sum() for b in batches) == 450
    assert all(b["image"].shape[0] == 128 for b in batches)


def test_labelled_only_restricts_to_subset():
    cfg = base_config().data
    cfg.labelled_fraction, cfg.labelled_only = 0.1, True
    data = make_data(cfg, seed=0, global_batch_size=32)
    assert data.num_train == data.num_labelled == 136  # per-class rounding of 10% of 1,347


def test_bad_labelled_fraction():
    cfg = base_config().data
    cfg.labelled_fraction = 0.0
    with pytest.raises(ConfigError, match="config.data.labelled_fraction"):
        make_data(cfg, seed=0, global_batch_size=32)


def test_random_resized_crop_identity_at_full_scale():
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
    y = random_resized_crop(jax.random.key(1), x, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(y, x, atol=1e-5)


def test_random_resized_crop_scale_one_is_no_crop_with_any_ratio():
    """torchvision semantics: at scale (1, 1) only aspect 1 fits a square image, so draws that do
    not fit are retried and then fall back to the whole image; nothing is clipped or stretched."""
    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 2))
    np.testing.assert_allclose(random_resized_crop(jax.random.key(1), x, scale=(1.0, 1.0)), x, atol=1e-5)


def test_crop_boxes_follow_torchvision():
    from jkd.data.augment import crop_boxes
    h, w, n = 16, 24, 4096
    top, left, ch, cw = (np.asarray(v) for v in crop_boxes(jax.random.key(0), n, h, w, (0.08, 1.0)))
    assert np.all(top == np.round(top)) and np.all(ch == np.round(ch))  # integer boxes
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + ch <= h) and np.all(left + cw <= w)
    # The accepted draws: area fraction in scale and aspect in ratio up to the integer rounding.
    area = ch * cw / (h * w)
    assert area.min() > 0.08 * 0.75 and area.max() <= 1.0
    aspect = cw / ch
    assert aspect.min() >= 0.75 * 0.8 and aspect.max() <= 4 / 3 * 1.25
    # Positions uniform over the free range: the mean offset is half of it.
    free = ch < h
    np.testing.assert_allclose(np.mean(top[free] / (h - ch[free])), 0.5, atol=0.05)
    # A lighter range is honoured for every example (no clipping that shrinks the area).
    _, _, ch, cw = (np.asarray(v) for v in crop_boxes(jax.random.key(1), n, 16, 16, (0.9, 1.0)))
    assert (ch * cw / 256).min() >= 0.9 * 0.9
    # No draw can fit (wide boxes on a square image at full area): torchvision's centre-crop fallback.
    top, left, ch, cw = (np.asarray(v) for v in crop_boxes(jax.random.key(2), 8, 16, 16, (1.0, 1.0), (2.0, 3.0)))
    assert np.all(cw == 16) and np.all(ch == 8) and np.all(top == 4) and np.all(left == 0)
    # Per-example ranges (class-conditional crops): each row its own minimum.
    lo = jnp.array([1.0, 0.1] * 512)
    _, _, ch, cw = (np.asarray(v) for v in crop_boxes(jax.random.key(3), 1024, 16, 16, (lo, 1.0)))
    assert np.all(ch[::2] * cw[::2] == 256) and (ch[1::2] * cw[1::2]).min() < 64


def test_random_resized_crop_zooms_in():
    x = jnp.broadcast_to(jnp.arange(16.0)[None, :, None, None], (4, 16, 16, 1))  # a horizontal ramp
    y = random_resized_crop(jax.random.key(2), x, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    # A quarter-area crop spans half the ramp: the per-image range shrinks to about half.
    ranges = y.max(axis=(1, 2, 3)) - y.min(axis=(1, 2, 3))
    assert np.all(ranges < 9.0) and np.all(ranges > 6.0)


def test_mixup_mixes_images_and_labels_the_same_way():
    x = jax.random.normal(jax.random.key(0), (4, 2, 2, 1))
    p = jax.nn.one_hot(jnp.arange(4), 4)
    mx, mp, lam = mixup(jax.random.key(3), x, p, alpha=0.4)
    np.testing.assert_allclose(mx, lam * x + (1 - lam) * x[::-1], atol=1e-6)
    np.testing.assert_allclose(mp.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(mp[0, 0], lam, atol=1e-6)


def test_augment_batch_is_deterministic_given_key():
    batch = {"image": jax.random.normal(jax.random.key(0), (4, 8, 8, 1)), "label": jnp.arange(4),
             "label_mask": jnp.ones(4)}
    a = augment_batch(jax.random.key(5), batch, num_classes=10, crop_scale=(0.5, 1.0), flip=True, mixup_alpha=0.2)
    b = augment_batch(jax.random.key(5), batch, num_classes=10, crop_scale=(0.5, 1.0), flip=True, mixup_alpha=0.2)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["label_probs"].shape == (4, 10)
