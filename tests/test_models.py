import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jkd.errors import ConfigError
from jkd.models import check_model, count_params, create_model
from jkd.models.convnext import depthwise_conv


@pytest.mark.parametrize("name,expected", [
    ("vit_s16", 22_050_664), ("vit_b16", 86_567_656), ("convnext_t", 28_589_128)])
def test_parameter_counts_match_the_papers(name, expected):
    model = nnx.eval_shape(lambda: create_model(name, num_classes=1000, image_size=224))
    assert count_params(model) == expected


def test_vit_shapes_and_features():
    model = create_model("vit_atto4", num_classes=7, image_size=16, in_channels=1)
    x = jnp.ones((3, 16, 16, 1))
    assert model(x).shape == (3, 7)
    feats = model(x, return_features=True)
    assert len(feats["tokens"]) == 2  # one per block
    assert feats["tokens"][0].shape == (3, 16 + 1, 32)  # 4x4 patches + CLS
    assert feats["final_tokens"].shape == (3, 17, 32)
    assert feats["pre_logits"].shape == (3, 32)
    np.testing.assert_allclose(feats["logits"], model(x), atol=1e-6)


def test_vit_gap_pool_has_no_cls_token():
    model = create_model("vit_atto4", num_classes=5, image_size=8, pool="gap")
    feats = model(jnp.ones((2, 8, 8, 3)), return_features=True)
    assert model.num_prefix_tokens == 0
    assert feats["tokens"][-1].shape == (2, 4, 32)


def test_vit_any_patch_and_image_size():
    model = create_model("vit_atto6", num_classes=3, image_size=24)
    assert model(jnp.zeros((1, 24, 24, 3))).shape == (1, 3)
    assert model.pos_embed[...].shape == (1, 17, 32)


def test_vit_dtype_bf16_compute_fp32_params():
    model = create_model("vit_atto4", num_classes=3, image_size=8, dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    feats = model(jnp.ones((1, 8, 8, 3)), return_features=True)
    assert feats["tokens"][0].dtype == jnp.bfloat16 and feats["logits"].dtype == jnp.float32


def test_convnext_shapes_and_stage_features():
    model = create_model("convnext_atto", num_classes=4, image_size=16, in_channels=1, stem_stride=2)
    feats = model(jnp.ones((2, 16, 16, 1)), return_features=True)
    assert feats["logits"].shape == (2, 4)
    assert [s.shape for s in feats["stages"]] == [(2, 8, 8, 40), (2, 4, 4, 80), (2, 2, 2, 160), (2, 1, 1, 320)]


@pytest.mark.parametrize("size", [1, 2, 5, 9])
def test_depthwise_shift_equals_grouped_conv(size):
    kx, kk, kb = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, size, size + 1, 6))
    kernel = jax.random.normal(kk, (7, 7, 1, 6))
    bias = jax.random.normal(kb, (6,))
    np.testing.assert_allclose(depthwise_conv(x, kernel, bias, "shift"), depthwise_conv(x, kernel, bias, "conv"),
                               rtol=1e-5, atol=1e-5)


def test_stochastic_depth_only_with_key():
    model = create_model("vit_atto4", num_classes=3, image_size=8, drop_path_rate=0.5)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    feats = lambda key: model(x, key=key, return_features=True)["pre_logits"]  # noqa: E731 (head is zero-init)
    np.testing.assert_array_equal(feats(None), feats(None))
    assert not np.allclose(feats(jax.random.key(0)), feats(jax.random.key(1)))


@pytest.mark.parametrize("name", ["vit_q16", "resnet50", "convnext_xxl", "vit_s"])
def test_unknown_model_name(name):
    with pytest.raises(ConfigError, match=r"config\.model\.name: unknown model"):
        check_model(name, image_size=224)


def test_image_size_not_divisible_by_patch():
    with pytest.raises(ConfigError, match="not divisible by the patch size 16"):
        check_model("vit_s16", image_size=200)
