"""Vision Transformer (Dosovitskiy et al. 2021; DeiT sizes from Touvron et al. 2021) in flax.nnx.

Pre-norm blocks, fused qkv, exact-erf GELU, LayerNorm eps 1e-6 and a learned position embedding
that covers the CLS token: the layout of timm's `vit_*_patch16_224`, so that public weights map 1:1
and parameter counts match (ViT-S/16 @224, 1000 classes: 22,050,664; ViT-B/16: 86,567,656).
Parameters are fp32; `dtype` is the compute dtype (bf16 on accelerators).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jkd.models.layers import drop_path, dropout, split_key

# name: (width, depth, heads). ti..h follow ViT/DeiT; the smaller ones are for CPU tests and the
# digits quickstart (same code path, just narrow and shallow).
VIT_SIZES = {
    "atto": (32, 2, 2),
    "femto": (64, 4, 4),
    "pico": (96, 6, 4),
    "ti": (192, 12, 3),
    "s": (384, 12, 6),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
    "h": (1280, 32, 16),
}


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection. [B, T, D] -> [B, T, D]."""

    def __init__(self, dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, heads, head_dim]
        out = jax.nn.dot_product_attention(q, k, v)
        return self.proj(out.reshape(b, t, d))


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)). [B, T, D] -> [B, T, D]."""

    def __init__(self, dim, num_heads, mlp_ratio, drop_path_rate, dropout_rate, *, dtype, rngs):
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(int(dim * mlp_ratio), dim, dtype=dtype, rngs=rngs)
        self.drop_path_rate = drop_path_rate
        self.dropout_rate = dropout_rate

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        k_attn, k_mlp, k_drop = split_key(key, 3)
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, k_attn)
        h = jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False)
        h = self.fc2(dropout(h, self.dropout_rate, k_drop))
        return x + drop_path(h, self.drop_path_rate, k_mlp)


class ViT(nnx.Module):
    """ViT classifier on images [B, H, W, C] -> logits [B, num_classes].

    pool: 'cls' (CLS token, timm/DeiT layout) or 'gap' (mean of patch tokens, no CLS token).
    With return_features=True the call returns a dict:
      logits [B, K]; tokens: list over blocks of [B, T, D] (T = patches (+1 with CLS));
      final_tokens [B, T, D] (after the final norm); pre_logits [B, D].
    `model.num_prefix_tokens` says how many leading tokens are not patches (1 with CLS, else 0).
    """

    def __init__(self, *, width: int, depth: int, num_heads: int, patch_size: int, image_size: int,
                 in_channels: int = 3, num_classes: int = 1000, pool: str = "cls",
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, dropout_rate: float = 0.0,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        if pool not in ("cls", "gap"):
            raise ValueError(f"pool must be 'cls' or 'gap', got {pool!r}")
        self.patch_size, self.image_size, self.pool, self.dtype = patch_size, image_size, pool, dtype
        self.grid = image_size // patch_size
        self.num_prefix_tokens = 1 if pool == "cls" else 0
        num_tokens = self.grid ** 2 + self.num_prefix_tokens
        self.patch_embed = nnx.Conv(in_channels, width, (patch_size, patch_size),
                                    strides=(patch_size, patch_size), padding="VALID",
                                    dtype=dtype, rngs=rngs)
        init = nnx.initializers.normal(0.02)
        if pool == "cls":
            self.cls_token = nnx.Param(jnp.zeros((1, 1, width)))
        self.pos_embed = nnx.Param(init(rngs.params(), (1, num_tokens, width)))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nnx.List([Block(width, num_heads, mlp_ratio, r, dropout_rate, dtype=dtype, rngs=rngs)
                                for r in rates])
        self.norm = nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, kernel_init=nnx.initializers.zeros_init(),
                               dtype=dtype, rngs=rngs)

    def __call__(self, images: jax.Array, key: jax.Array | None = None, return_features: bool = False):
        x = self.patch_embed(images.astype(self.dtype))  # [B, g, g, D]
        b, _, _, d = x.shape
        x = x.reshape(b, -1, d)
        if self.pool == "cls":
            cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, d))
            x = jnp.concatenate([cls, x], axis=1)
        x = x + self.pos_embed[...].astype(x.dtype)
        tokens = []
        for block, k in zip(self.blocks, split_key(key, len(self.blocks))):
            x = block(x, k)
            tokens.append(x)
        x = self.norm(x)
        pre_logits = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        logits = self.head(pre_logits).astype(jnp.float32)
        if not return_features:
            return logits
        return {"logits": logits, "tokens": tokens, "final_tokens": x, "pre_logits": pre_logits}
