"""ConvNeXt (Liu et al. 2022) in flax.nnx, channels-last.

Layout of timm's `convnext_*`: 4x4/4 stem conv + LayerNorm, per-stage LayerNorm + 2x2/2 downsample,
blocks of depthwise 7x7 -> LayerNorm -> 4x MLP (GELU) -> layer scale -> stochastic depth, and a
global-average-pool -> LayerNorm -> linear head. ConvNeXt-T @224, 1000 classes: 28,589,128 params.

The depthwise 7x7 conv has two implementations of the same parameters (kernel [7, 7, 1, C]):
  'conv'  : lax grouped convolution (feature_group_count=C) -> a plain grouped ONNX `Conv` on export.
  'shift' : 49 shifted multiply-adds (taps that only see padding skipped). XLA's CPU grouped conv
            is slow: the convnext_atto train step at the quickstart size (batch 64, 16 px, stem 2)
            took 313 ms with 'conv' and 99 ms with 'shift' (`python benchmarks/cpu_step.py`).
  'auto'  : 'shift' on CPU, 'conv' on GPU/TPU (the default). An ONNX export should trace 'conv'.
All compute the same function (tested).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jkd.models.layers import drop_path, split_key

# name: (depths, widths). T/S/B/L from the paper; atto..nano are timm's small variants for CPU work;
# zepto is jkd's own one-block-per-stage size (not a published model): fast tests, and the
# quickstart's ConvNeXt student (233,114 params at 16 px, 1 channel, 10 classes; its teacher vit_pico4 has 675,562).
CONVNEXT_SIZES = {
    "zepto": ((1, 1, 1, 1), (16, 32, 64, 128)),
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "t": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "s": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "b": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "l": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}


def depthwise_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, impl: str) -> jax.Array:
    """Depthwise 'SAME' conv. x [B, H, W, C], kernel [k, k, 1, C], bias [C] -> [B, H, W, C]."""
    k = kernel.shape[0]
    if impl == "auto":
        impl = "shift" if jax.default_backend() == "cpu" else "conv"
    if impl == "conv":
        y = jax.lax.conv_general_dilated(
            x, kernel, window_strides=(1, 1), padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
        return y + bias
    if impl == "shift":
        h, w = x.shape[1], x.shape[2]
        # Taps that only ever see padding are skipped: on maps smaller than the kernel (late stages
        # at small resolution) a 7x7 conv on a 2x2 map needs 3x3 taps, on 1x1 just the centre.
        ph, pw = min(k // 2, h - 1), min(k // 2, w - 1)
        xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        y = bias
        for i in range(2 * ph + 1):
            for j in range(2 * pw + 1):
                tap = kernel[k // 2 - ph + i, k // 2 - pw + j, 0]
                y = y + xp[:, i:i + h, j:j + w, :] * tap
        return y
    raise ValueError(f"depthwise impl must be 'auto', 'conv' or 'shift', got {impl!r}")


class Block(nnx.Module):
    """ConvNeXt block. [B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, dim, drop_path_rate, layer_scale_init, dw_impl, *, dtype, rngs):
        self.dw_kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (7, 7, 1, dim)))
        self.dw_bias = nnx.Param(jnp.zeros((dim,)))
        self.norm = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(dim, 4 * dim, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(4 * dim, dim, dtype=dtype, rngs=rngs)
        self.gamma = nnx.Param(jnp.full((dim,), layer_scale_init, jnp.float32))  # not weak-typed: no recompiles
        self.drop_path_rate, self.dw_impl, self.dtype = drop_path_rate, dw_impl, dtype

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        h = depthwise_conv(x, self.dw_kernel[...].astype(self.dtype), self.dw_bias[...].astype(self.dtype),
                           self.dw_impl)
        h = self.fc2(jax.nn.gelu(self.fc1(self.norm(h)), approximate=False))
        return x + drop_path(h * self.gamma[...].astype(self.dtype), self.drop_path_rate, key)


class ConvNeXt(nnx.Module):
    """ConvNeXt classifier on images [B, H, W, C] -> logits [B, num_classes].

    stem_stride: 4 as in the paper; 2 (or 1) lets small images (16-32 px digits) keep a spatial map
    through all four stages. With return_features=True the call returns a dict:
      logits [B, K]; stages: list of 4 stage outputs [B, H_i, W_i, C_i]; pre_logits [B, C_3].
    """

    def __init__(self, *, depths, widths, in_channels: int = 3, num_classes: int = 1000,
                 stem_stride: int = 4, drop_path_rate: float = 0.0, layer_scale_init: float = 1e-6,
                 dw_impl: str = "auto", dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.stem = nnx.Conv(in_channels, widths[0], (stem_stride, stem_stride),
                             strides=(stem_stride, stem_stride), padding="VALID", dtype=dtype, rngs=rngs)
        self.stem_norm = nnx.LayerNorm(widths[0], epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.down_norms = nnx.List([nnx.LayerNorm(widths[i - 1], epsilon=1e-6, dtype=dtype, rngs=rngs)
                                    for i in range(1, 4)])
        self.down_convs = nnx.List([nnx.Conv(widths[i - 1], widths[i], (2, 2), strides=(2, 2), padding="VALID",
                                             dtype=dtype, rngs=rngs) for i in range(1, 4)])
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.stages = nnx.List()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.stages.append(nnx.List([
                Block(widths[i], rates[first + j], layer_scale_init, dw_impl, dtype=dtype, rngs=rngs)
                for j in range(depth)]))
        self.head_norm = nnx.LayerNorm(widths[-1], epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(widths[-1], num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, images: jax.Array, key: jax.Array | None = None, return_features: bool = False):
        x = self.stem_norm(self.stem(images.astype(self.dtype)))
        keys = split_key(key, sum(len(s) for s in self.stages))
        stage_outputs = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.down_convs[i - 1](self.down_norms[i - 1](x))
            for block in stage:
                x = block(x, keys.pop(0))
            stage_outputs.append(x)
        pre_logits = self.head_norm(x.mean(axis=(1, 2)))
        logits = self.head(pre_logits).astype(jnp.float32)
        if not return_features:
            return logits
        return {"logits": logits, "stages": stage_outputs, "pre_logits": pre_logits}
