"""FLOPs of jkd models: an analytic count of the matmul/conv work (2 FLOPs per multiply-add) and
XLA's own count of a compiled computation, the two figures jkd.bench reports (docs/PERF.md).

    forward_flops(ModelSpec('vit_s16', 1000, 224, 3)) / 2e9   # 4.6 GMAC, as timm publishes

No JAX at import: jkd.bench imports this before it sets XLA_FLAGS.
"""
from __future__ import annotations


def vit_forward_flops(*, width: int, depth: int, patch_size: int, image_size: int, in_channels: int,
                      num_classes: int, mlp_ratio: float = 4.0, prefix_tokens: int = 1, heads: int = 1) -> int:
    """Matmul FLOPs (2 per multiply-add) of one image through a ViT forward.

    Patch embedding, per block qkv / QK^T / AV / output projection / MLP, and `heads` classifier
    heads. T = patches + prefix_tokens, counted unpadded (padding for cuDNN is not useful work).
    """
    n = (image_size // patch_size) ** 2
    t, d, hidden = n + prefix_tokens, width, int(width * mlp_ratio)
    block = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * hidden
    return 2 * n * patch_size ** 2 * in_channels * d + depth * block + heads * 2 * d * num_classes


def convnext_forward_flops(*, depths, widths, image_size: int, in_channels: int, num_classes: int,
                           stem_stride: int = 4) -> int:
    """Matmul/conv FLOPs (2 per multiply-add) of one image through a ConvNeXt forward.

    Stem conv, per block the 7x7 depthwise conv (all 49 taps, as XLA counts a SAME conv) and the
    4x MLP, the 2x2 downsampling convs, the head.
    """
    side = image_size // stem_stride
    flops = 2 * side * side * stem_stride ** 2 * in_channels * widths[0]
    for i, (depth, d) in enumerate(zip(depths, widths)):
        if i > 0:
            side //= 2
            flops += 2 * side * side * 4 * widths[i - 1] * d
        flops += depth * (2 * 49 * side * side * d + 2 * 2 * side * side * d * 4 * d)
    return flops + 2 * widths[-1] * num_classes


def forward_flops(spec) -> int:
    """Analytic forward FLOPs per image of a jkd.train.state.ModelSpec (ViT or ConvNeXt)."""
    from jkd.models import parse_model_name

    family, arch = parse_model_name(spec.name)
    kw = dict(spec.kwargs)
    if family == "vit":
        dist = bool(kw.get("distillation_token", False))
        prefix = int(kw.get("pool", "cls") == "cls") + int(dist) + int(kw.get("num_register_tokens", 0))
        return vit_forward_flops(width=arch["width"], depth=arch["depth"], patch_size=arch["patch_size"],
                                 image_size=spec.image_size, in_channels=spec.in_channels,
                                 num_classes=spec.num_classes, mlp_ratio=kw.get("mlp_ratio", 4.0),
                                 prefix_tokens=prefix, heads=1 + int(dist))
    return convnext_forward_flops(depths=arch["depths"], widths=arch["widths"], image_size=spec.image_size,
                                  in_channels=spec.in_channels, num_classes=spec.num_classes,
                                  stem_stride=kw.get("stem_stride", 4))


def train_step_flops(teacher_specs, student_specs) -> int:
    """Analytic FLOPs per image of one distillation step: teachers' forward + 3x students' forward."""
    return sum(forward_flops(s) for s in teacher_specs) + 3 * sum(forward_flops(s) for s in student_specs)


def xla_flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled computation (None where the backend gives none)."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # some backends/versions do not implement it
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    return float(ca["flops"]) if ca and "flops" in ca else None
