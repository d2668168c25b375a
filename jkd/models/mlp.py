"""Multilayer perceptrons: the nets of Hinton, Vinyals & Dean (2015, section 3) on MNIST.

The image is flattened and fed through `depth` fully connected ReLU layers of `width` units, then a
linear head. Dropout as Hinton et al. (2012) use it on MNIST: `input_dropout_rate` on the pixels,
`dropout_rate` after every hidden layer (the paper's teacher: 2 x 1200 units with dropout; its
students: 2 x 800 or 2 x 30 units without). Registry names `mlp_<width>x<depth>` (jkd/models).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jkd.models.layers import dropout, split_key


class MLP(nnx.Module):
    """MLP classifier on images [B, H, W, C] -> logits [B, num_classes].

    With return_features=True the call returns a dict: logits [B, K]; hidden: list of `depth`
    post-ReLU activations [B, width]; pre_logits [B, width] (the last of them).
    """

    def __init__(self, *, width: int, depth: int, in_features: int, num_classes: int = 10,
                 dropout_rate: float = 0.0, input_dropout_rate: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        sizes = [in_features] + [width] * depth
        self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = nnx.Linear(width, num_classes, dtype=dtype, rngs=rngs)
        self.dropout_rate, self.input_dropout_rate, self.dtype = dropout_rate, input_dropout_rate, dtype

    def __call__(self, images: jax.Array, key: jax.Array | None = None, return_features: bool = False):
        keys = split_key(key, len(self.layers) + 1)
        x = dropout(images.reshape(images.shape[0], -1).astype(self.dtype), self.input_dropout_rate, keys[0])
        hidden = []
        for layer, k in zip(self.layers, keys[1:]):
            x = jax.nn.relu(layer(x))
            hidden.append(x)
            x = dropout(x, self.dropout_rate, k)
        logits = self.head(x).astype(jnp.float32)
        if not return_features:
            return logits
        return {"logits": logits, "hidden": hidden, "pre_logits": hidden[-1]}
