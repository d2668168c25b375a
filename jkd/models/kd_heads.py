"""Trainable heads that feature distillation adds on top of a student (dropped after training).

ViTKDHeads (Yang et al. 2022, "ViTKD: practical guidelines for ViT feature knowledge distillation"):
  mimic     one Linear(D_s -> D_t) per shallow block (blocks 0 and 1), regressed onto the teacher's
            patch tokens of the same blocks;
  generate  Linear(D_s -> D_t) on the student's last-block patch tokens (after the final norm), a
            random mask of ratio `mask_ratio` replaced by a learnable mask token, reshaped to the
            patch grid, Conv3x3 -> ReLU -> Conv3x3, regressed onto the teacher's tokens at the
            masked positions only (exactly N - int(N * (1 - mask_ratio)) per example, as the reference).
AlignHead (ViT teacher -> ConvNeXt student): a 1x1 projection of a student stage map to the
  teacher's width, resized (bilinear) to the teacher's patch grid.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def random_token_mask(key: jax.Array, batch: int, tokens: int, mask_ratio: float) -> jax.Array:
    """[batch, tokens] bool, True = masked: per example exactly tokens - int(tokens * (1 - mask_ratio))
    tokens, chosen uniformly (the reference's MAE-style random_masking: argsort of uniform noise keeps
    the int(N * (1 - ratio)) smallest), so every batch has the same masked count."""
    keep = int(tokens * (1 - mask_ratio))
    noise = jax.random.uniform(key, (batch, tokens))
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # rank of each token's noise within its example
    return rank >= keep


class ViTKDHeads(nnx.Module):
    """mimic: list of [B, N, D_s] -> list of [B, N, D_t]; generate: [B, N, D_s] -> ([B, N, D_t], mask [B, N])."""

    def __init__(self, student_dim: int, teacher_dim: int, grid: int, *, num_mimic: int = 2,
                 mask_ratio: float = 0.5, rngs: nnx.Rngs):
        self.grid, self.mask_ratio = grid, mask_ratio
        self.mimic = nnx.List([nnx.Linear(student_dim, teacher_dim, rngs=rngs) for _ in range(num_mimic)])
        self.gen_proj = nnx.Linear(student_dim, teacher_dim, rngs=rngs)
        self.mask_token = nnx.Param(jnp.zeros((1, 1, teacher_dim), jnp.float32))
        self.gen1 = nnx.Conv(teacher_dim, teacher_dim, (3, 3), padding="SAME", rngs=rngs)
        self.gen2 = nnx.Conv(teacher_dim, teacher_dim, (3, 3), padding="SAME", rngs=rngs)

    def mimic_shallow(self, student_tokens: list) -> list:
        return [proj(x.astype(jnp.float32)) for proj, x in zip(self.mimic, student_tokens)]

    def generate_deep(self, student_tokens: jax.Array, key: jax.Array | None = None,
                      mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """student_tokens [B, N, D_s] -> (generated [B, N, D_t], mask [B, N] float, 1 = masked).
        The mask is drawn from `key` (random_token_mask) unless given ([B, N] bool, True = masked)."""
        x = self.gen_proj(student_tokens.astype(jnp.float32))  # [B, N, D_t]
        b, n, d = x.shape
        if mask is None:
            mask = random_token_mask(key, b, n, self.mask_ratio)  # True = masked, to be generated
        mask = mask.astype(bool)
        x = jnp.where(mask[..., None], self.mask_token[...], x)
        x = x.reshape(b, self.grid, self.grid, d)
        x = self.gen2(jax.nn.relu(self.gen1(x)))
        return x.reshape(b, n, d), mask.astype(jnp.float32)


class AlignHead(nnx.Module):
    """[B, h, w, C_s] student stage map -> [B, g, g, D_t] on the teacher's patch grid."""

    def __init__(self, student_channels: int, teacher_dim: int, grid: int, *, rngs: nnx.Rngs):
        self.grid = grid
        self.proj = nnx.Linear(student_channels, teacher_dim, rngs=rngs)

    def __call__(self, student_map: jax.Array) -> jax.Array:
        x = self.proj(student_map.astype(jnp.float32))
        b, _, _, d = x.shape
        return jax.image.resize(x, (b, self.grid, self.grid, d), method="linear")
