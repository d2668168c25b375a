"""Vision Transformer (Dosovitskiy et al. 2021; DeiT sizes from Touvron et al. 2021) in flax.nnx.

Pre-norm blocks, fused qkv, exact-erf GELU, LayerNorm eps 1e-6 and a learned position embedding
that covers the CLS token: the layout of timm's `vit_*_patch16_224`, so that public weights map 1:1
and parameter counts match (ViT-S/16 @224, 1000 classes: 22,050,664; ViT-B/16: 86,567,656).
Parameters are fp32; `dtype` is the compute dtype (bf16 on accelerators).

Variants, all off by default (jkd/pretrained.py maps public checkpoints onto them):
  distillation_token  DeiT (Touvron et al. 2021): a second token and head; the position embedding
                      covers CLS + distillation token + patches (timm `deit_*_distilled_patch16_224`).
  num_register_tokens "Vision Transformers Need Registers" (Darcet et al. 2024) / DINOv2-reg:
                      learned tokens inserted after CLS once the position embedding has been added
                      (they get no position embedding).
  layer_scale_init    per-channel gammas `ls1`, `ls2` on the attention and MLP branches (CaiT,
                      DeiT-3, DINOv2); the value initialises them.
  qkv_bias            bias on the fused qkv projection (on in ViT/DeiT/DINOv2).
Compute options (no parameters; see `Attention`): attention_impl 'xla' | 'cudnn' (cuDNN flash
attention on GPU), attention_pad_to (pad the token count to a multiple, keys masked; for cuDNN kernels
that reject odd counts such as 197).
Token order: [CLS][dist][registers][patches]; `model.num_prefix_tokens` counts the leading non-patch tokens.
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


ATTENTION_IMPLS = ("xla", "cudnn")


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection. [B, T, D] -> [B, T, D].

    attention_impl: 'xla' (default; any backend, the path ONNX export traces) or 'cudnn' (cuDNN
    flash attention through jax.nn.dot_product_attention; GPU only, bf16/fp16 compute).
    attention_pad_to: 0 (default) or k > 0: q, k, v are zero-padded along T to the next multiple
    of k and the padded keys are masked out (key_value_seq_lengths); the padded query rows are
    dropped before the output projection. The result equals the unpadded attention (tested): it
    exists for cuDNN fused kernels that reject some token counts (197 = 196 patches + CLS was
    reported rejected; `python -m jkd.bench --attention-probe` records which counts a GPU accepts).
    Neither option touches the parameters.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, attention_impl: str = "xla",
                 attention_pad_to: int = 0, dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.attention_impl, self.attention_pad_to = attention_impl, attention_pad_to
        self.qkv = nnx.Linear(dim, 3 * dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, heads, head_dim]
        if self.attention_impl == "xla" and not self.attention_pad_to:
            out = jax.nn.dot_product_attention(q, k, v)  # the default graph, unchanged (ONNX export)
        else:
            out = _padded_attention(q, k, v, self.attention_pad_to, self.attention_impl)
        return self.proj(out.reshape(b, t, d))


def _padded_attention(q, k, v, pad_to: int, implementation: str) -> jax.Array:
    """Attention over T tokens computed on T rounded up to a multiple of pad_to (0 = no padding).

    q, k, v [B, T, heads, head_dim] -> [B, T, heads, head_dim]. Padded keys are masked through
    key_value_seq_lengths (cuDNN's padding mask; XLA builds the same mask explicitly).
    """
    b, t = q.shape[:2]
    t_pad = -(-t // pad_to) * pad_to if pad_to else t
    if t_pad == t:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    widths = ((0, 0), (0, t_pad - t), (0, 0), (0, 0))
    q, k, v = (jnp.pad(a, widths) for a in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=jnp.full((b,), t, jnp.int32),
                                       implementation=implementation)
    return out[:, :t]


class Block(nnx.Module):
    """Pre-norm transformer block: x + ls1*attn(ln(x)), then x + ls2*mlp(ln(x)). [B, T, D] -> [B, T, D].

    The layer-scale gammas ls1, ls2 [D] exist only when layer_scale_init is not None.
    """

    def __init__(self, dim, num_heads, mlp_ratio, drop_path_rate, dropout_rate, *, qkv_bias=True,
                 layer_scale_init=None, attention_impl="xla", attention_pad_to=0, dtype, rngs):
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attention_impl=attention_impl,
                              attention_pad_to=attention_pad_to, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(int(dim * mlp_ratio), dim, dtype=dtype, rngs=rngs)
        gamma = lambda: nnx.Param(jnp.full((dim,), layer_scale_init, jnp.float32))  # noqa: E731
        self.ls1 = gamma() if layer_scale_init is not None else None
        self.ls2 = gamma() if layer_scale_init is not None else None
        self.drop_path_rate = drop_path_rate
        self.dropout_rate = dropout_rate

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        k_attn, k_mlp, k_drop = split_key(key, 3)
        h = _scale(self.attn(self.norm1(x)), self.ls1)
        x = x + drop_path(h, self.drop_path_rate, k_attn)
        h = jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False)
        h = _scale(self.fc2(dropout(h, self.dropout_rate, k_drop)), self.ls2)
        return x + drop_path(h, self.drop_path_rate, k_mlp)


def _scale(x: jax.Array, gamma: nnx.Param | None) -> jax.Array:
    return x if gamma is None else x * gamma[...].astype(x.dtype)


class ViT(nnx.Module):
    """ViT classifier on images [B, H, W, C] -> logits [B, num_classes].

    pool: 'cls' (CLS token, timm/DeiT layout) or 'gap' (mean of the patch tokens, no CLS token).
    With return_features=True the call returns a dict:
      logits [B, K]; tokens: list over blocks of [B, T, D] (T = patches + num_prefix_tokens);
      final_tokens [B, T, D] (after the final norm); pre_logits [B, D].
    With distillation_token=True, logits is the mean of the two heads (DeiT inference) and the dict
    also has cls_logits and dist_logits [B, K] (DeiT training uses them separately); pre_logits is
    the mean of the CLS and distillation tokens (as timm's forward_head(pre_logits=True)).
    `model.num_prefix_tokens` says how many leading tokens are not patches (CLS + dist + registers).
    """

    def __init__(self, *, width: int, depth: int, num_heads: int, patch_size: int, image_size: int,
                 in_channels: int = 3, num_classes: int = 1000, pool: str = "cls",
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, dropout_rate: float = 0.0,
                 distillation_token: bool = False, num_register_tokens: int = 0,
                 layer_scale_init: float | None = None, qkv_bias: bool = True,
                 attention_impl: str = "xla", attention_pad_to: int = 0,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        if pool not in ("cls", "gap"):
            raise ValueError(f"pool must be 'cls' or 'gap', got {pool!r}")
        if distillation_token and pool != "cls":
            raise ValueError(f"distillation_token=True needs pool='cls' (DeiT reads the CLS and distillation "
                             f"tokens), got pool={pool!r}")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}")
        if not isinstance(attention_pad_to, int) or attention_pad_to < 0:
            raise ValueError(f"attention_pad_to must be an integer >= 0, got {attention_pad_to!r}")
        self.patch_size, self.image_size, self.pool, self.dtype = patch_size, image_size, pool, dtype
        self.grid = image_size // patch_size
        # Tokens that carry a position embedding before the patches (CLS, dist); registers do not.
        self.num_embedded_prefix_tokens = int(pool == "cls") + int(distillation_token)
        self.num_prefix_tokens = self.num_embedded_prefix_tokens + num_register_tokens
        self.patch_embed = nnx.Conv(in_channels, width, (patch_size, patch_size),
                                    strides=(patch_size, patch_size), padding="VALID",
                                    dtype=dtype, rngs=rngs)
        init = nnx.initializers.normal(0.02)
        if pool == "cls":
            self.cls_token = nnx.Param(jnp.zeros((1, 1, width)))
        self.dist_token = nnx.Param(init(rngs.params(), (1, 1, width))) if distillation_token else None
        self.pos_embed = nnx.Param(init(rngs.params(), (1, self.grid ** 2 + self.num_embedded_prefix_tokens, width)))
        # Tiny random init as in DINOv2/timm: registers start (almost) equal but not identical, or
        # identical registers would get identical updates forever (they have no position embedding).
        self.register_tokens = (nnx.Param(nnx.initializers.normal(1e-6)(rngs.params(), (1, num_register_tokens, width)))
                                if num_register_tokens else None)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nnx.List([Block(width, num_heads, mlp_ratio, r, dropout_rate, qkv_bias=qkv_bias,
                                      layer_scale_init=layer_scale_init, attention_impl=attention_impl,
                                      attention_pad_to=attention_pad_to, dtype=dtype, rngs=rngs)
                                for r in rates])
        self.norm = nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, rngs=rngs)
        head = lambda: nnx.Linear(width, num_classes, kernel_init=nnx.initializers.zeros_init(),  # noqa: E731
                                  dtype=dtype, rngs=rngs)
        self.head = head()
        self.head_dist = head() if distillation_token else None

    def __call__(self, images: jax.Array, key: jax.Array | None = None, return_features: bool = False):
        x = self.patch_embed(images.astype(self.dtype))  # [B, g, g, D]
        b, _, _, d = x.shape
        x = x.reshape(b, -1, d)
        prefix = [self.cls_token] if self.pool == "cls" else []
        prefix += [self.dist_token] if self.dist_token is not None else []
        x = jnp.concatenate([jnp.broadcast_to(t[...].astype(x.dtype), (b, 1, d)) for t in prefix] + [x], axis=1)
        x = x + self.pos_embed[...].astype(x.dtype)
        if self.register_tokens is not None:
            n = self.num_embedded_prefix_tokens
            regs = jnp.broadcast_to(self.register_tokens[...].astype(x.dtype), (b,) + self.register_tokens.shape[1:])
            x = jnp.concatenate([x[:, :n], regs, x[:, n:]], axis=1)
        tokens = []
        for block, k in zip(self.blocks, split_key(key, len(self.blocks))):
            x = block(x, k)
            tokens.append(x)
        x = self.norm(x)
        feats = {"tokens": tokens, "final_tokens": x}
        if self.head_dist is not None:
            feats["cls_logits"] = self.head(x[:, 0]).astype(jnp.float32)
            feats["dist_logits"] = self.head_dist(x[:, 1]).astype(jnp.float32)
            feats["logits"] = (feats["cls_logits"] + feats["dist_logits"]) / 2
            feats["pre_logits"] = (x[:, 0] + x[:, 1]) / 2
        else:
            feats["pre_logits"] = x[:, 0] if self.pool == "cls" else x[:, self.num_prefix_tokens:].mean(axis=1)
            feats["logits"] = self.head(feats["pre_logits"]).astype(jnp.float32)
        return feats if return_features else feats["logits"]


def resize_pos_embed(pos_embed, num_prefix_tokens: int, new_grid: int, method: str = "bicubic") -> jax.Array:
    """Resample a learned position embedding to a new square patch grid (fine-tuning at another resolution).

    pos_embed [1, P + g*g, D] (P leading rows for CLS/dist, kept as they are) -> [1, P + new_grid^2, D].
    `jax.image.resize` with antialias: for 'bicubic' (Keys a=-0.5, half-pixel centres) this is
    torch's F.interpolate(mode='bicubic', antialias=True, align_corners=False), timm's default
    when it loads a checkpoint at another size. Computed in fp32.
    """
    pos_embed = jnp.asarray(pos_embed, jnp.float32)
    prefix, grid_part = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = int(round(grid_part.shape[1] ** 0.5))
    if old_grid ** 2 != grid_part.shape[1]:
        raise ValueError(f"position embedding has {grid_part.shape[1]} patch rows after {num_prefix_tokens} "
                         f"prefix rows: not a square grid")
    if old_grid == new_grid:
        return pos_embed
    d = pos_embed.shape[-1]
    grid_part = jax.image.resize(grid_part.reshape(old_grid, old_grid, d), (new_grid, new_grid, d), method=method,
                                 antialias=True)
    return jnp.concatenate([prefix, grid_part.reshape(1, new_grid * new_grid, d)], axis=1)
