"""Model registry: build any jkd model from a config string.

Names:
  vit_<size><patch>  size in atto, femto, pico, ti, s, b, l, h; patch any integer
                     (vit_s16 = ViT-S/16, vit_l16, vit_h14, vit_femto4 for 16-px digits)
  convnext_<size>    size in atto, femto, pico, nano, t, s, b, l
  mlp_<width>x<depth> ReLU MLP on the flattened image (mlp_800x2, mlp_1200x2: Hinton et al. 2015)

    model = create_model("vit_s16", num_classes=1000, image_size=224)
    logits = model(images)            # images [B, 224, 224, 3] -> [B, 1000]

Models hold parameters only; forward passes take an optional dropout/stochastic-depth `key`.
"""
from __future__ import annotations

import re

import jax.numpy as jnp
from flax import nnx

from jkd.errors import ConfigError
from jkd.models.convnext import CONVNEXT_SIZES, ConvNeXt
from jkd.models.mlp import MLP
from jkd.models.vit import VIT_SIZES, ViT

_VIT_RE = re.compile(r"^vit_([a-z]+?)(\d+)$")
_CONVNEXT_RE = re.compile(r"^convnext_([a-z]+)$")
_MLP_RE = re.compile(r"^mlp_(\d+)x(\d+)$")


def available_models() -> list[str]:
    """Examples of valid names (ViT patch size is free; 16 shown)."""
    return ([f"vit_{s}16" for s in VIT_SIZES] + [f"convnext_{s}" for s in CONVNEXT_SIZES]
            + ["mlp_800x2", "mlp_1200x2"])


def parse_model_name(name: str, field: str = "config.model.name") -> tuple[str, dict]:
    """'vit_s16' -> ('vit', dict(width=384, depth=12, num_heads=6, patch_size=16)). Raises ConfigError."""
    m = _VIT_RE.match(name or "")
    if m and m.group(1) in VIT_SIZES:
        width, depth, heads = VIT_SIZES[m.group(1)]
        return "vit", dict(width=width, depth=depth, num_heads=heads, patch_size=int(m.group(2)))
    m = _CONVNEXT_RE.match(name or "")
    if m and m.group(1) in CONVNEXT_SIZES:
        depths, widths = CONVNEXT_SIZES[m.group(1)]
        return "convnext", dict(depths=depths, widths=widths)
    m = _MLP_RE.match(name or "")
    if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
        return "mlp", dict(width=int(m.group(1)), depth=int(m.group(2)))
    raise ConfigError(f"{field}: unknown model {name!r}. Known: vit_<{'|'.join(VIT_SIZES)}><patch> "
                      f"(e.g. vit_s16), convnext_<{'|'.join(CONVNEXT_SIZES)}> (e.g. convnext_t), "
                      f"mlp_<width>x<depth> (e.g. mlp_800x2)")


def check_model(name: str, *, image_size: int, field: str = "config.model", **kwargs) -> str:
    """Validate a model spec without building it (cheap; run at start-up). Returns the family."""
    family, arch = parse_model_name(name, f"{field}.name")
    if family == "vit" and image_size % arch["patch_size"]:
        raise ConfigError(f"{field}: image size {image_size} is not divisible by the patch size "
                          f"{arch['patch_size']} of {name!r} (set config.data.image_size to a multiple)")
    if family == "vit" and kwargs.get("distillation_token") and kwargs.get("pool", "cls") != "cls":
        raise ConfigError(f"{field}.kwargs.distillation_token: needs pool='cls' (DeiT reads the CLS and "
                          f"distillation tokens), got pool={kwargs['pool']!r}")
    if family == "vit" and kwargs.get("attention_impl", "xla") not in ("xla", "cudnn"):
        raise ConfigError(f"{field}.kwargs.attention_impl: must be 'xla' or 'cudnn' (GPU), "
                          f"got {kwargs['attention_impl']!r}")
    pad_to = kwargs.get("attention_pad_to", 0)
    if family == "vit" and (not isinstance(pad_to, int) or pad_to < 0):
        raise ConfigError(f"{field}.kwargs.attention_pad_to: must be an integer >= 0 (0 = no padding), got {pad_to!r}")
    if family == "convnext":
        stride = kwargs.get("stem_stride", 4)
        if image_size % (stride * 8):
            raise ConfigError(f"{field}: image size {image_size} must be divisible by stem_stride*8 = "
                              f"{stride * 8} for {name!r} (three 2x downsamplings after the stem)")
    if family == "mlp":
        for rate in ("dropout_rate", "input_dropout_rate"):
            if not 0.0 <= float(kwargs.get(rate, 0.0)) < 1.0:
                raise ConfigError(f"{field}.kwargs.{rate}: must be in [0, 1), got {kwargs[rate]!r}")
    unknown = set(kwargs) - _ALLOWED_KWARGS[family]
    if unknown:
        raise ConfigError(f"{field}.kwargs: unknown option(s) {sorted(unknown)} for {family}; "
                          f"allowed: {sorted(_ALLOWED_KWARGS[family])}")
    return family


_ALLOWED_KWARGS = {
    "vit": {"pool", "mlp_ratio", "drop_path_rate", "dropout_rate", "distillation_token", "num_register_tokens",
            "layer_scale_init", "qkv_bias", "attention_impl", "attention_pad_to"},
    "convnext": {"stem_stride", "drop_path_rate", "layer_scale_init", "dw_impl"},
    "mlp": {"dropout_rate", "input_dropout_rate"},
}


def create_model(name: str, *, num_classes: int, image_size: int, in_channels: int = 3,
                 dtype: str = "float32", seed: int = 0, field: str = "config.model", **kwargs) -> nnx.Module:
    """Build a model by name with fp32 params and `dtype` compute. kwargs: family options
    (ViT: pool, mlp_ratio, drop_path_rate, dropout_rate, distillation_token, num_register_tokens,
    layer_scale_init, qkv_bias, attention_impl, attention_pad_to; ConvNeXt: stem_stride, drop_path_rate,
    layer_scale_init, dw_impl; MLP: dropout_rate, input_dropout_rate)."""
    family = check_model(name, image_size=image_size, field=field, **kwargs)
    _, arch = parse_model_name(name)
    rngs = nnx.Rngs(params=seed)
    compute_dtype = jnp.dtype(dtype)
    if family == "vit":
        return ViT(**arch, image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                   dtype=compute_dtype, rngs=rngs, **kwargs)
    if family == "mlp":
        return MLP(**arch, in_features=image_size * image_size * in_channels, num_classes=num_classes,
                   dtype=compute_dtype, rngs=rngs, **kwargs)
    return ConvNeXt(**arch, in_channels=in_channels, num_classes=num_classes, dtype=compute_dtype,
                    rngs=rngs, **kwargs)


def count_params(model_or_params) -> int:
    """Total number of parameter scalars of an nnx module or a params pytree."""
    import jax
    tree = nnx.state(model_or_params, nnx.Param) if isinstance(model_or_params, nnx.Module) else model_or_params
    return sum(int(x.size) for x in jax.tree.leaves(tree))
