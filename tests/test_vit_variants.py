"""ViT variants: DeiT distillation token, registers, layer scale, qkv bias; position-embedding resize."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jkd.errors import ConfigError
from jkd.models import check_model, count_params, create_model
from jkd.models.vit import Block, resize_pos_embed


def _model(seed=0, **kwargs):
    """A vit_atto4 with random values in every parameter (heads included), so that each one shows in the
    output. Built abstractly and filled from numpy: no per-shape init compiles (slow on 2 cores)."""
    model = nnx.eval_shape(lambda: create_model("vit_atto4", **{"num_classes": 5, "image_size": 16, **kwargs}))
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(model)
    params = jax.tree.map(lambda x: jnp.asarray(0.2 * rng.normal(size=x.shape), jnp.float32), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


# One compile per variant instead of op-by-op dispatch: several times faster on 2 CPU cores.
_features = nnx.jit(lambda model, x: model(x, return_features=True))
_logits = nnx.jit(lambda model, x: model(x))


@pytest.mark.parametrize("name,kwargs,expected", [
    # timm deit_small_distilled_patch16_224: 22,436,432 (same count).
    ("vit_s16", dict(distillation_token=True), 22_436_432),
    # timm vit_small_patch14_reg4_dinov2 @518, no head: 22,057,344 + 384 for the CLS row of the position
    # embedding (timm folds it into cls_token, jkd keeps the DINOv2 layout; see jkd/pretrained.py).
    ("vit_s14", dict(num_register_tokens=4, layer_scale_init=1e-5), 22_057_728),
])
def test_parameter_counts_of_variants(name, kwargs, expected):
    num_classes, size = (1000, 224) if name == "vit_s16" else (0, 518)
    model = nnx.eval_shape(lambda: create_model(name, num_classes=num_classes, image_size=size, **kwargs))
    assert count_params(model) == expected


def test_distillation_token_heads_and_features():
    model = _model(distillation_token=True)
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    feats = _features(model, x)
    assert model.num_prefix_tokens == 2 and model.pos_embed[...].shape == (1, 16 + 2, 32)
    assert feats["tokens"][0].shape == feats["final_tokens"].shape == (3, 18, 32)
    assert feats["cls_logits"].shape == feats["dist_logits"].shape == (3, 5)
    assert not np.allclose(feats["cls_logits"], feats["dist_logits"])  # two different heads on two tokens
    np.testing.assert_allclose(feats["logits"], (feats["cls_logits"] + feats["dist_logits"]) / 2, atol=1e-6)
    np.testing.assert_allclose(_logits(model, x), feats["logits"], atol=1e-6)
    fin = feats["final_tokens"]
    np.testing.assert_allclose(feats["pre_logits"], (fin[:, 0] + fin[:, 1]) / 2, atol=1e-6)
    head_dist = model.head_dist
    np.testing.assert_allclose(feats["dist_logits"], fin[:, 1] @ head_dist.kernel[...] + head_dist.bias[...], atol=1e-5)


def test_distillation_token_needs_cls_pool():
    with pytest.raises(ValueError, match="distillation_token: needs pool='cls'"):  # a ConfigError at start-up
        create_model("vit_atto4", num_classes=5, image_size=8, distillation_token=True, pool="gap")


def test_registers_have_no_position_embedding():
    model = _model(num_register_tokens=3)
    assert model.num_prefix_tokens == 4 and model.pos_embed[...].shape == (1, 17, 32)
    assert model.register_tokens[...].shape == (1, 3, 32)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    feats = _features(model, x)
    assert feats["tokens"][-1].shape == (2, 1 + 3 + 16, 32)

    @nnx.jit
    def replay(model, x):  # registers after CLS, before the patches, without position embedding (DINOv2)
        emb = model.patch_embed(x).reshape(2, 16, 32)
        embedded = jnp.concatenate([jnp.broadcast_to(model.cls_token[...], (2, 1, 32)), emb], 1) + model.pos_embed[...]
        regs = jnp.broadcast_to(model.register_tokens[...], (2, 3, 32))
        return model.blocks[0](jnp.concatenate([embedded[:, :1], regs, embedded[:, 1:]], 1))
    np.testing.assert_allclose(feats["tokens"][0], replay(model, x), atol=1e-5)


def test_gap_pool_excludes_registers():
    model = _model(image_size=8, pool="gap", num_register_tokens=2)
    feats = _features(model, jnp.ones((2, 8, 8, 3)))
    assert model.num_prefix_tokens == 2
    np.testing.assert_allclose(feats["pre_logits"], feats["final_tokens"][:, 2:].mean(1), atol=1e-6)


def test_layer_scale_gammas_scale_the_branches():
    block = Block(32, 2, 4.0, 0.0, 0.0, layer_scale_init=0.25, dtype=jnp.float32, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(block.ls2[...], jnp.full(32, 0.25))
    model = _model(image_size=8, layer_scale_init=0.0)
    for block in model.blocks:
        block.ls1[...], block.ls2[...] = jnp.zeros(32), jnp.zeros(32)
    x = jnp.ones((2, 8, 8, 3))
    feats = _features(model, x)
    for tokens in feats["tokens"][1:]:  # zero gammas: every block is the identity
        np.testing.assert_array_equal(tokens, feats["tokens"][0])
    model.blocks[1].ls1[...] = jnp.ones(32)
    assert not np.allclose(_features(model, x)["tokens"][1], feats["tokens"][0])
    plain = count_params(nnx.eval_shape(lambda: create_model("vit_atto4", num_classes=5, image_size=8)))
    assert count_params(model) == plain + 2 * 2 * 32  # two gammas per block, two blocks


def test_qkv_bias_off():
    model = _model(image_size=8, qkv_bias=False)
    assert model.blocks[0].attn.qkv.bias is None
    assert _logits(model, jnp.ones((1, 8, 8, 3))).shape == (1, 5)


def test_variants_are_registry_options_and_keep_bf16_compute():
    check_model("vit_s16", image_size=224, distillation_token=True, num_register_tokens=4, layer_scale_init=1e-5,
                qkv_bias=False)
    with pytest.raises(ConfigError, match="unknown option"):
        check_model("vit_s16", image_size=224, register_tokens=4)
    model = _model(image_size=8, dtype="bfloat16", distillation_token=True, num_register_tokens=2,
                   layer_scale_init=1e-5)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    feats = _features(model, jnp.ones((1, 8, 8, 3)))
    assert feats["tokens"][0].dtype == jnp.bfloat16 and feats["dist_logits"].dtype == jnp.float32


def test_resize_pos_embed_keeps_prefix_rows_and_constants():
    pos = jnp.concatenate([jnp.full((1, 2, 4), 7.0), jnp.ones((1, 9, 4))], axis=1)  # 2 prefix rows, 3x3 grid
    out = resize_pos_embed(pos, 2, 5)
    assert out.shape == (1, 2 + 25, 4)
    np.testing.assert_array_equal(out[:, :2], pos[:, :2])
    np.testing.assert_allclose(out[:, 2:], 1.0, atol=1e-6)  # a constant field stays constant (normalised weights)
    assert resize_pos_embed(pos, 2, 3) is not None and np.array_equal(resize_pos_embed(pos, 2, 3), pos)
    with pytest.raises(ValueError, match="not a square grid"):
        resize_pos_embed(pos, 1, 4)
