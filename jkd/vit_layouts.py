"""Public ViT weight layouts (timm / DINOv2, Hugging Face transformers, big_vision) <-> jkd's layout.

    fmt, flat, found = convert(read_weights(path))   # flat: {'blocks/0/attn/qkv/kernel': array, ...}
    write_safetensors(to_timm(params), "vit.safetensors")   # the way back: a jkd ViT as a timm file

Each converter maps a file's {name: array} to jkd's flat names with jkd's layouts (Linear kernels
[in, out], Conv kernel [p, p, C, D]) and reports the architecture it read off the file; used by
jkd/pretrained.py, which checks it against the requested model and writes the teacher workdir.
to_timm is the inverse of the timm converter, for jkd ViTs without register tokens.
"""
from __future__ import annotations

import re

import jax
import numpy as np

from jkd.errors import ConfigError
# Each converter maps a file's {name: array} to jkd's flat names ('blocks/0/attn/qkv/kernel') with
# jkd's layouts (Linear kernels [in, out], Conv kernel [p, p, C, D]), and reports what it found.

def _taker(weights: dict):
    """take(name) pops a weight; names asked for but absent are collected in `missing`."""
    left, missing = dict(weights), []

    def take(name, optional=False):
        if name in left:
            return np.asarray(left.pop(name))
        if not optional:
            missing.append(name)
        return None
    return take, left, missing


def _linear(flat, name, w, b=None):
    """torch Linear weight [out, in] -> kernel [in, out]."""
    if w is not None:
        flat[f"{name}/kernel"] = w.T
    if b is not None:
        flat[f"{name}/bias"] = b


def _norm(flat, name, w, b):
    flat[f"{name}/scale"], flat[f"{name}/bias"] = w, b


def _depth(keys, pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def _from_timm(weights: dict):
    """timm (`vit_*`, `deit_*`, `deit3_*`, `vit_*_dinov2`) and original DINOv2 (`dinov2_vit*14*.pth`) names."""
    take, left, missing = _taker(weights)
    flat = {}
    w = take("patch_embed.proj.weight")
    flat["patch_embed/kernel"] = w.transpose(2, 3, 1, 0) if w is not None else None
    flat["patch_embed/bias"] = take("patch_embed.proj.bias")
    tokens = dict(cls=take("cls_token", True), dist=take("dist_token", True),
                  regs=take("reg_token", True) if "reg_token" in weights else take("register_tokens", True),
                  pos=take("pos_embed"))
    take("mask_token", True)  # DINOv2's masked-image-modelling token: unused by a classifier
    depth = _depth(weights, r"blocks\.(\d+)\.")
    qkv_bias, layer_scale = "blocks.0.attn.qkv.bias" in weights, "blocks.0.ls1.gamma" in weights
    for i in range(depth):
        p, q = f"blocks.{i}.", f"blocks/{i}/"
        _norm(flat, q + "norm1", take(p + "norm1.weight"), take(p + "norm1.bias"))
        _linear(flat, q + "attn/qkv", take(p + "attn.qkv.weight"), take(p + "attn.qkv.bias") if qkv_bias else None)
        _linear(flat, q + "attn/proj", take(p + "attn.proj.weight"), take(p + "attn.proj.bias"))
        _norm(flat, q + "norm2", take(p + "norm2.weight"), take(p + "norm2.bias"))
        _linear(flat, q + "fc1", take(p + "mlp.fc1.weight"), take(p + "mlp.fc1.bias"))
        _linear(flat, q + "fc2", take(p + "mlp.fc2.weight"), take(p + "mlp.fc2.bias"))
        if layer_scale:
            flat[q + "ls1"], flat[q + "ls2"] = take(p + "ls1.gamma"), take(p + "ls2.gamma")
    _norm(flat, "norm", take("norm.weight"), take("norm.bias"))
    for name in ("head", "head_dist"):  # absent from backbones (DINOv2, num_classes=0 exports)
        if f"{name}.weight" in weights:
            _linear(flat, name, take(f"{name}.weight"), take(f"{name}.bias"))
    fmt = "dinov2" if "mask_token" in weights or "register_tokens" in weights else "timm"
    return fmt, flat, tokens, depth, None, left, missing


def to_timm(params) -> dict[str, np.ndarray]:
    """A jkd ViT's params (nested dict, as load_teacher or load_pretrained_vit return) -> timm's
    VisionTransformer state_dict names and layouts as numpy arrays: `patch_embed.proj.weight`
    [D, C, p, p], `cls_token` [1, 1, D], `pos_embed` [1, n_prefix + g*g, D] (over CLS (+ dist) +
    patches: timm's default, `no_embed_class=False`), `blocks.{i}.attn.qkv.weight` [3D, D] (rows q | k
    | v), ..., `head.weight` [K, D]; `dist_token` / `head_dist` for a DeiT-distilled ViT, `ls1.gamma`
    for layer scale. The inverse of _from_timm: converting the result back gives the same arrays.
    Register tokens raise ValueError: timm's register ViTs place their position rows differently
    (no_embed_class), which this writer does not produce."""
    flat = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(leaf, np.float32)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    if "register_tokens" in flat:
        raise ValueError("to_timm: register tokens are not written (timm's register ViTs use no_embed_class)")
    sd = {name: flat[name] for name in ("cls_token", "dist_token") if name in flat}
    sd["pos_embed"] = flat["pos_embed"]
    sd["patch_embed.proj.weight"] = flat["patch_embed/kernel"].transpose(3, 2, 0, 1)  # [p, p, C, D] -> [D, C, p, p]
    sd["patch_embed.proj.bias"] = flat["patch_embed/bias"]

    def linear(timm_name, jkd_name):  # kernel [in, out] -> torch Linear weight [out, in]
        sd[f"{timm_name}.weight"] = flat[f"{jkd_name}/kernel"].T
        if f"{jkd_name}/bias" in flat:
            sd[f"{timm_name}.bias"] = flat[f"{jkd_name}/bias"]

    def norm(timm_name, jkd_name):
        sd[f"{timm_name}.weight"], sd[f"{timm_name}.bias"] = flat[f"{jkd_name}/scale"], flat[f"{jkd_name}/bias"]
    for i in range(_depth(flat, r"blocks/(\d+)/")):
        p, q = f"blocks.{i}.", f"blocks/{i}/"
        norm(p + "norm1", q + "norm1")
        linear(p + "attn.qkv", q + "attn/qkv")
        linear(p + "attn.proj", q + "attn/proj")
        if q + "ls1" in flat:
            sd[p + "ls1.gamma"], sd[p + "ls2.gamma"] = flat[q + "ls1"], flat[q + "ls2"]
        norm(p + "norm2", q + "norm2")
        linear(p + "mlp.fc1", q + "fc1")
        linear(p + "mlp.fc2", q + "fc2")
    norm("norm", "norm")
    for name in ("head", "head_dist"):
        if f"{name}/kernel" in flat:
            linear(name, name)
    return sd


def _from_hf(weights: dict):
    """Hugging Face transformers ViT (`vit.`), DeiT (`deit.`), Dinov2 / Dinov2WithRegisters names."""
    anchor = next(k for k in weights if k.endswith("embeddings.patch_embeddings.projection.weight"))
    pre = anchor[: -len("embeddings.patch_embeddings.projection.weight")]
    take, left, missing = _taker(weights)
    flat = {}
    e = pre + "embeddings."
    flat["patch_embed/kernel"] = take(anchor).transpose(2, 3, 1, 0)
    flat["patch_embed/bias"] = take(e + "patch_embeddings.projection.bias")
    tokens = dict(cls=take(e + "cls_token", True), dist=take(e + "distillation_token", True),
                  regs=take(e + "register_tokens", True), pos=take(e + "position_embeddings"))
    take(e + "mask_token", True)  # masked-image-modelling token: unused by a classifier
    take(pre + "pooler.dense.weight", True), take(pre + "pooler.dense.bias", True)  # ViTModel's unused tanh pooler
    dinov2 = f"{pre}encoder.layer.0.norm1.weight" in weights
    names = (("norm1", "norm2", "mlp.fc1", "mlp.fc2") if dinov2 else
             ("layernorm_before", "layernorm_after", "intermediate.dense", "output.dense"))
    depth = _depth(weights, re.escape(pre) + r"encoder\.layer\.(\d+)\.")
    qkv_bias = f"{pre}encoder.layer.0.attention.attention.query.bias" in weights
    for i in range(depth):
        p, q = f"{pre}encoder.layer.{i}.", f"blocks/{i}/"
        _norm(flat, q + "norm1", take(p + names[0] + ".weight"), take(p + names[0] + ".bias"))
        a = p + "attention.attention."
        qkv = [take(f"{a}{n}.weight") for n in ("query", "key", "value")]
        if all(x is not None for x in qkv):
            flat[q + "attn/qkv/kernel"] = np.concatenate([x.T for x in qkv], axis=1)
        if qkv_bias:
            qkv = [take(f"{a}{n}.bias") for n in ("query", "key", "value")]
            flat[q + "attn/qkv/bias"] = np.concatenate(qkv) if all(x is not None for x in qkv) else None
        o = p + "attention.output.dense."
        _linear(flat, q + "attn/proj", take(o + "weight"), take(o + "bias"))
        _norm(flat, q + "norm2", take(p + names[1] + ".weight"), take(p + names[1] + ".bias"))
        _linear(flat, q + "fc1", take(p + names[2] + ".weight"), take(p + names[2] + ".bias"))
        _linear(flat, q + "fc2", take(p + names[3] + ".weight"), take(p + names[3] + ".bias"))
        if f"{pre}encoder.layer.0.layer_scale1.lambda1" in weights:
            flat[q + "ls1"], flat[q + "ls2"] = take(p + "layer_scale1.lambda1"), take(p + "layer_scale2.lambda1")
    _norm(flat, "norm", take(pre + "layernorm.weight"), take(pre + "layernorm.bias"))
    if "cls_classifier.weight" in weights:  # DeiTForImageClassificationWithTeacher
        _linear(flat, "head", take("cls_classifier.weight"), take("cls_classifier.bias"))
        _linear(flat, "head_dist", take("distillation_classifier.weight"), take("distillation_classifier.bias"))
    elif "classifier.weight" in weights:
        _linear(flat, "head", take("classifier.weight"), take("classifier.bias"))
    return "hf", flat, tokens, depth, None, left, missing


def _from_big_vision(weights: dict):
    """big_vision `.npz` (`params/` prefix, `pos_embedding`, optionally scanned `encoderblock/`) and the
    AugReg / original vision_transformer layout (`Transformer/posembed_input/pos_embedding`,
    `MultiHeadDotProductAttention_1`, `MlpBlock_3`). Keys outside the params prefix (optimizer state) are ignored."""
    anchor = min((k for k in weights if k.endswith("embedding/kernel") and "posembed" not in k), key=len)
    pre = anchor[: -len("embedding/kernel")]
    weights = {k[len(pre):]: v for k, v in weights.items() if k.startswith(pre)}
    scanned = "Transformer/encoderblock/"  # scan_layers=True stacks every block's arrays on a leading axis
    for k in [k for k in weights if k.startswith(scanned)]:
        stacked = weights.pop(k)
        weights.update({f"Transformer/encoderblock_{i}/{k[len(scanned):]}": x for i, x in enumerate(stacked)})
    take, left, missing = _taker(weights)
    flat = {"patch_embed/kernel": take("embedding/kernel"), "patch_embed/bias": take("embedding/bias")}
    pos_name = "pos_embedding" if "pos_embedding" in weights else "Transformer/posembed_input/pos_embedding"
    tokens = dict(cls=take("cls", True), dist=None, regs=None, pos=take(pos_name))
    old = any("MlpBlock_3" in k for k in weights)  # AugReg / vision_transformer numbering
    mha, ln2, mlp = ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3") if old else \
        ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
    depth = _depth(weights, r"Transformer/encoderblock_(\d+)/")
    num_heads = None
    for i in range(depth):
        p, q = f"Transformer/encoderblock_{i}/", f"blocks/{i}/"
        _norm(flat, q + "norm1", take(p + "LayerNorm_0/scale"), take(p + "LayerNorm_0/bias"))
        qkv = [take(f"{p}{mha}/{n}/kernel") for n in ("query", "key", "value")]  # [D, heads, head_dim]
        if all(x is not None for x in qkv):
            num_heads = qkv[0].shape[1]
            flat[q + "attn/qkv/kernel"] = np.concatenate([x.reshape(x.shape[0], -1) for x in qkv], axis=1)
        qkv = [take(f"{p}{mha}/{n}/bias") for n in ("query", "key", "value")]  # [heads, head_dim]
        if all(x is not None for x in qkv):
            flat[q + "attn/qkv/bias"] = np.concatenate([x.reshape(-1) for x in qkv])
        out = take(f"{p}{mha}/out/kernel")  # [heads, head_dim, D]
        flat[q + "attn/proj/kernel"] = None if out is None else out.reshape(-1, out.shape[-1])
        flat[q + "attn/proj/bias"] = take(f"{p}{mha}/out/bias")
        _norm(flat, q + "norm2", take(f"{p}{ln2}/scale"), take(f"{p}{ln2}/bias"))
        for j, name in enumerate(("fc1", "fc2")):  # flax Dense kernels are [in, out] already
            flat[f"{q}{name}/kernel"] = take(f"{p}{mlp}/Dense_{j}/kernel")
            flat[f"{q}{name}/bias"] = take(f"{p}{mlp}/Dense_{j}/bias")
    _norm(flat, "norm", take("Transformer/encoder_norm/scale"), take("Transformer/encoder_norm/bias"))
    if "head/kernel" in weights:
        flat["head/kernel"], flat["head/bias"] = take("head/kernel"), take("head/bias")
    return "big_vision", flat, tokens, depth, num_heads, left, missing


# Keys of variants that are not covered, with what they are (shown when such a key is left over).
_NOT_COVERED = {"fc_norm.": "timm's avg pooling with the norm after pooling (fc_norm)",
                "norm_pre.": "a norm before the blocks (CLIP-style ViTs)",
                "attn_pool.": "attention pooling (MAP head, SigLIP)", "MAPHead": "attention pooling (MAP head, SigLIP)",
                "mlp.w12": "a SwiGLU MLP (DINOv2 giant)", "q_norm": "qk-norm", "k_norm": "qk-norm",
                "q_bias": "separate q/v biases (BEiT/EVA)", "rope": "rotary position embeddings (EVA, RoPE-ViT)",
                "pre_logits": "a pre-logits representation layer (original ImageNet-21k ViTs)",
                "relative_position": "relative position biases (BEiT)"}


def convert(weights: dict, field: str = "--src"):
    """File weights -> (format, flat jkd weights, found): found has the architecture read off the file
    (width, depth, patch_size, in_channels, mlp_dim, pool, distillation_token, num_register_tokens,
    layer_scale, qkv_bias, num_heads if the file records it, head_classes)."""
    keys = list(weights)
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        result = _from_hf(weights)
    elif "patch_embed.proj.weight" in weights:
        result = _from_timm(weights)
    elif any(k.endswith("embedding/kernel") and "posembed" not in k for k in keys):
        result = _from_big_vision(weights)
    else:
        raise ConfigError(f"{field}: no ViT patch embedding found (looked for timm `patch_embed.proj.weight`, "
                          f"transformers `embeddings.patch_embeddings.projection.weight`, big_vision "
                          f"`embedding/kernel`); the file has {len(keys)} keys, e.g. {sorted(keys)[:8]}")
    fmt, flat, tokens, depth, num_heads, left, missing = result
    if missing or left:
        hints = sorted({v for k in left for pat, v in _NOT_COVERED.items() if pat in k})
        raise ConfigError(
            f"{field}: the {fmt} weights do not match jkd's ViT layout. "
            + (f"Missing keys ({len(missing)}): {name_listing(missing)}. " if missing else "")
            + (f"Unexpected keys ({len(left)}): {name_listing(sorted(left))}. " if left else "")
            + (f"These belong to a ViT variant jkd does not cover: {'; '.join(hints)} (docs/PRETRAINED.md)."
               if hints else ""))
    kernel = flat["patch_embed/kernel"]
    flat = {k: np.asarray(v, np.float32) for k, v in flat.items() if v is not None}
    found = dict(width=kernel.shape[3], depth=depth, patch_size=kernel.shape[0], in_channels=kernel.shape[2],
                 mlp_dim=flat["blocks/0/fc1/kernel"].shape[1] if depth else None,
                 pool="cls" if tokens["cls"] is not None else "gap",
                 distillation_token=tokens["dist"] is not None,
                 num_register_tokens=0 if tokens["regs"] is None else tokens["regs"].shape[1],
                 layer_scale="blocks/0/ls1" in flat, qkv_bias="blocks/0/attn/qkv/bias" in flat,
                 num_heads=num_heads, head_classes=flat["head/kernel"].shape[1] if "head/kernel" in flat else None)
    if kernel.shape[0] != kernel.shape[1]:
        raise ConfigError(f"{field}: non-square patches {kernel.shape[:2]} are not covered")
    flat.update(_place_tokens(tokens, found["num_register_tokens"], field))
    n_emb = int(tokens["cls"] is not None) + int(tokens["dist"] is not None)
    found["grid"] = int(round((flat["pos_embed"].shape[1] - n_emb) ** 0.5))  # the file's patch grid
    return fmt, flat, found


def _place_tokens(tokens: dict, n_reg: int, field: str) -> dict:
    """Prefix tokens and the position embedding in jkd's layout, from any of the file layouts:
    pos covers CLS (+dist) (ViT, DeiT, AugReg, HF, original DINOv2); pos covers patches only (timm
    no_embed_class: DeiT-3, timm's DINOv2-reg; big_vision); pos covers CLS + registers (other timm reg models)."""
    pos = np.asarray(tokens["pos"], np.float32)
    cls, dist, regs = (None if tokens[k] is None else np.asarray(tokens[k], np.float32)
                       for k in ("cls", "dist", "regs"))
    n_emb = int(cls is not None) + int(dist is not None)
    # Rows the file's position embedding covers besides the patches; the first that leaves a square grid.
    covered = next((c for c in (n_emb, 0, n_emb + n_reg) if pos.shape[1] > c and _is_square(pos.shape[1] - c)), None)
    if covered is None:
        raise ConfigError(f"{field}: position embedding of {pos.shape[1]} rows is not a square patch grid after "
                          f"{n_emb} CLS/distillation and {n_reg} register rows")
    if covered == 0 and n_emb:  # the file adds no position to CLS/dist: a zero row is the same
        pos = np.concatenate([np.zeros((1, n_emb, pos.shape[2]), np.float32), pos], axis=1)
    elif covered > n_emb:  # registers with position rows: fold each constant row into its register
        regs = regs + pos[:, n_emb:covered]
        pos = np.concatenate([pos[:, :n_emb], pos[:, covered:]], axis=1)
    out = {"pos_embed": pos}
    for name, t in (("cls_token", cls), ("dist_token", dist), ("register_tokens", regs)):
        if t is not None:
            out[name] = t
    return out


def _is_square(n: int) -> bool:
    return int(round(n ** 0.5)) ** 2 == n


def name_listing(names, limit: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... and {len(names) - limit} more" if len(names) > limit else "")
