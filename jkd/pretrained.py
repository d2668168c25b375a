"""Import public ViT weights into jkd's ViT: timm, Hugging Face, DINOv2 and big_vision/AugReg files.

    spec, params = load_pretrained_vit("model.safetensors", model_name="vit_s16", num_classes=1000,
                                       image_size=224)
    graphdef, _ = graphdef_and_shapes(spec)                 # jkd.train.state
    logits = apply_model(graphdef, params, images)          # images [B, 224, 224, 3], normalised as
                                                            # the checkpoint expects (not done here)
    python -m jkd.pretrained --src FILE --model vit_b16 --num-classes 1000 --image-size 224 --workdir DIR
    # DIR is a teacher workdir: --config.teacher.checkpoint=DIR

Files: `.safetensors`, PyTorch `.pth/.bin/.pt` (zip format, read without torch), big_vision/AugReg
`.npz`, or a Hugging Face model directory. The naming is detected from the keys (timm / original
DINOv2 `blocks.0.attn.qkv.weight`; transformers `encoder.layer.0.attention.attention.query.weight`;
big_vision `Transformer/encoderblock_0/...`). Covered and not covered: docs/PRETRAINED.md.

Every file layout is mapped onto one jkd layout: the position embedding covers CLS (+ distillation
token) + patches, registers have none. Prefix tokens are constants added before the first block, so
moving a position row into its token (or a zero row out of it) is exact, not an approximation.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import pickle
import re
import struct
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jkd.errors import ConfigError
from jkd.models import check_model, parse_model_name
from jkd.models.vit import VIT_SIZES, resize_pos_embed
from jkd.train.state import ModelSpec, graphdef_and_shapes

# ----------------------------------------------------------------------------------------- readers

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_TORCH_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                 "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
                 "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
                 "BoolStorage": np.bool_}


def read_weights(path: str, field: str = "--src") -> dict[str, np.ndarray]:
    """A weight file (or a Hugging Face model directory) -> {name: array} with the file's own names."""
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in ("model.safetensors", "pytorch_model.bin")
                 if os.path.exists(os.path.join(path, f))]
        if not found:
            raise ConfigError(f"{field}: directory {path} has no model.safetensors or pytorch_model.bin")
        path = found[0]
    if not os.path.isfile(path):
        raise ConfigError(f"{field}: {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            return _read_safetensors(path)
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as f:
                # bf16 arrays saved from JAX come back as 2-byte voids (timm's load_bfloat16 does the same).
                return {k: f[k].view(ml_dtypes.bfloat16) if f[k].dtype.kind == "V" and f[k].dtype.itemsize == 2
                        else f[k] for k in f.files}
        if zipfile.is_zipfile(path):
            return _read_torch_zip(path)
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise ConfigError(f"{field}: cannot read {path}: {type(e).__name__}: {e}") from None
    raise ConfigError(f"{field}: {path} is not a .safetensors, .npz or zip-format PyTorch file (PyTorch files "
                      f"saved before torch 1.6 are not read: re-save them with a newer torch, or as .safetensors)")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The safetensors format (8-byte little-endian header size, JSON header, raw bytes), read directly:
    the `safetensors` package's numpy API refuses bf16 (safetensors 0.8.0)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        if t["dtype"] not in _ST_DTYPES or not 0 <= begin <= end <= data.size:
            raise ValueError(f"tensor {name!r}: unsupported dtype {t['dtype']} or offsets outside the file")
        out[name] = np.array(data[begin:end].view(_ST_DTYPES[t["dtype"]]).reshape(t["shape"]))
    return out


class _Opaque:
    """Stand-in for any class a checkpoint's pickle names that is not a tensor part (optimizer
    objects, argparse.Namespace, numpy scalars ...): nothing is imported or executed for them."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2: a strided view of a storage -> a fresh numpy array."""
    size, stride = tuple(size), tuple(stride)
    if any(s < 0 for s in stride) or (0 not in size and
                                      offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size):
        raise ValueError(f"tensor view (offset {offset}, size {size}, stride {stride}) outside its storage")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride)).copy()


def _read_torch_zip(path: str) -> dict[str, np.ndarray]:
    """A torch.save zip (timm .pth, HF pytorch_model.bin) without torch: a restricted unpickler that
    maps each storage in the archive's data/ entries to a numpy array."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise ValueError("zip archive without data.pkl: not a torch.save file")
        root = pkl[: -len("data.pkl")]
        big_endian = root + "byteorder" in names and zf.read(root + "byteorder").strip() == b"big"
        storages = {}  # key -> 1-d array; tensors that share a storage reference it again

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return _rebuild_tensor
                if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
                    return lambda data, *unused: data
                if module == "torch._tensor" and name == "_rebuild_from_type_v2":
                    return lambda func, new_type, args, state: func(*args)
                if module == "torch" and name in _TORCH_DTYPES:
                    return np.dtype(_TORCH_DTYPES[name])
                if module == "collections" and name == "OrderedDict":
                    return collections.OrderedDict
                return type(name, (_Opaque,), {"origin": f"{module}.{name}"})

            def persistent_load(self, pid):
                kind, dtype, key, _location, _numel = pid
                if kind != "storage" or not isinstance(dtype, np.dtype):
                    raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
                if key not in storages:
                    stored = dtype.newbyteorder(">") if big_endian and dtype.itemsize > 1 else dtype
                    storages[key] = np.frombuffer(zf.read(f"{root}data/{key}"), stored).astype(dtype, copy=False)
                return storages[key]

        obj = Unpickler(io.BytesIO(zf.read(pkl))).load()
    for wrapper in ("model", "state_dict", "module"):  # DeiT releases {'model': sd}, training checkpoints
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"the pickle holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, np.ndarray)}


# -------------------------------------------------------------------------------------- converters
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
            + (f"Missing keys ({len(missing)}): {_listing(missing)}. " if missing else "")
            + (f"Unexpected keys ({len(left)}): {_listing(sorted(left))}. " if left else "")
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


def _listing(names, limit: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


# ------------------------------------------------------------------------------------------ import

def import_vit(path: str, *, model_name: str, num_classes: int, image_size: int, in_channels: int = 3,
               head: str = "keep", interpolation: str = "bicubic", dtype: str = "float32"):
    """load_pretrained_vit that also returns a description of the source (for run.json)."""
    if head not in ("keep", "reset"):
        raise ConfigError(f"--head: must be 'keep' or 'reset', got {head!r}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype: must be float32, bfloat16 or float16, got {dtype!r}")
    if interpolation not in ("bicubic", "linear"):
        raise ConfigError(f"--interpolation: must be 'bicubic' or 'linear', got {interpolation!r}")
    family, arch = parse_model_name(model_name, "--model")
    if family != "vit":
        raise ConfigError(f"--model: pretrained import is for ViTs (vit_<size><patch>), got {model_name!r}")
    fmt, flat, found = convert(read_weights(path))
    notes = []
    expected = {k: arch[k] for k in ("width", "depth", "patch_size")}
    if found["num_heads"] is not None:
        expected["num_heads"] = arch["num_heads"]
    wrong = {k: (v, found[k]) for k, v in expected.items() if found[k] != v}
    kwargs = {"pool": found["pool"]} if found["pool"] != "cls" else {}
    kwargs.update({k: found[k] for k in ("distillation_token", "num_register_tokens") if found[k]})
    if found["layer_scale"]:
        kwargs["layer_scale_init"] = 1e-5  # only initialises the gammas; the file's values replace them
    if not found["qkv_bias"]:
        kwargs["qkv_bias"] = False
    if found["mlp_dim"] and found["mlp_dim"] != 4 * found["width"]:
        kwargs["mlp_ratio"] = found["mlp_dim"] / found["width"]
    if image_size % found["patch_size"]:
        raise ConfigError(f"--image-size: {image_size} is not divisible by the checkpoint's patch size "
                          f"{found['patch_size']}")
    check_model(model_name, image_size=image_size, field="--model", **kwargs)
    spec = ModelSpec(name=model_name, num_classes=num_classes, image_size=image_size, in_channels=in_channels,
                     kwargs=tuple(sorted(kwargs.items())), dtype=dtype)

    if found["in_channels"] != in_channels:
        if in_channels != 1:
            raise ConfigError(f"--in-channels: the checkpoint takes {found['in_channels']} channels; only 1 "
                              f"(grey: the channels' kernels summed, as timm does) or {found['in_channels']} work")
        flat["patch_embed/kernel"] = flat["patch_embed/kernel"].sum(axis=2, keepdims=True)
        notes.append(f"patch embedding summed over {found['in_channels']} input channels for 1-channel images")
    new_grid = image_size // found["patch_size"]
    if not wrong and new_grid != found["grid"]:
        n_emb = int(found["pool"] == "cls") + int(found["distillation_token"])
        flat["pos_embed"] = np.asarray(resize_pos_embed(flat["pos_embed"], n_emb, new_grid, interpolation))
        notes.append(f"position embedding resized {found['grid']}x{found['grid']} -> {new_grid}x{new_grid} "
                     f"({interpolation}, antialiased)")
    heads = ["head"] + (["head_dist"] if found["distillation_token"] else [])
    if head == "reset":
        for h in heads:
            flat[f"{h}/kernel"] = np.zeros((found["width"], num_classes), np.float32)
            flat[f"{h}/bias"] = np.zeros((num_classes,), np.float32)
        notes.append(f"classifier head(s) reset to zeros for {num_classes} classes")
    else:
        if found["head_classes"] is None or any(f"{h}/kernel" not in flat for h in heads):
            raise ConfigError(f"--head: the checkpoint has no {' and '.join(heads)} (e.g. a backbone such as "
                              f"DINOv2, or a DeiT without its distillation head); use --head reset")
        if found["head_classes"] != num_classes:
            raise ConfigError(f"--num-classes: the checkpoint's head has {found['head_classes']} classes, not "
                              f"{num_classes}; use --head reset to start a zero head for {num_classes} classes")

    _, shapes = graphdef_and_shapes(spec)
    shapes = {"/".join(str(p.key) for p in path): s.shape
              for path, s in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    order = sorted(shapes, key=lambda k: k.startswith("blocks/"))  # embeddings and head first: most telling
    mismatched = [f"{k}: model {shapes[k]}, checkpoint {flat[k].shape}"
                  for k in order if k in flat and shapes[k] != flat[k].shape]
    if wrong:
        raise ConfigError(f"--model: {model_name} does not match the checkpoint ("
                          + ", ".join(f"{k} {v} vs {f} in the file" for k, (v, f) in wrong.items())
                          + f"); {_guess(found)}. Mismatched shapes ({len(mismatched)}): {_listing(mismatched, 8)}")
    if mismatched:  # e.g. a head over [CLS, mean patch] (HF Dinov2ForImageClassification): --head reset drops it
        raise ConfigError(f"--src: arrays of the checkpoint do not fit {model_name} (a variant jkd does not cover, "
                          f"see docs/PRETRAINED.md): {_listing(mismatched, 8)}")
    absent, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
    if absent or extra:  # a converter bug rather than a user mistake, but say what it is
        raise ConfigError(f"--src: converted weights do not fit {model_name}: missing {absent}, unexpected {extra}")
    params = _unflatten({k: jnp.asarray(v) for k, v in flat.items()})
    source = dict(src=os.path.abspath(path), format=fmt, sha256=_sha256(path), checkpoint=found, notes=notes,
                  head=head, interpolation=interpolation)
    return spec, params, source


def load_pretrained_vit(path: str, *, model_name: str, num_classes: int, image_size: int, in_channels: int = 3,
                        head: str = "keep", interpolation: str = "bicubic", dtype: str = "float32"):
    """Public ViT weights -> (ModelSpec, params) for jkd's ViT (params: nested dict of fp32 arrays).

    path: .safetensors / .pth / .bin / .npz file or HF model directory; model_name: 'vit_<size><patch>'
    (checked against the file's width, depth, patch size and, for big_vision, heads: timm and HF files
    do not record the head count, it comes from the name); image_size: a grid other than the file's
    resizes the position embedding (`interpolation`: 'bicubic' or 'linear', antialiased);
    in_channels: 3, or 1 (kernels summed over RGB); head: 'keep' (the file's head, which must have
    num_classes outputs) or 'reset' (zero head(s) for num_classes). Raises ConfigError naming the
    flag (--src, --model, --num-classes, --head, ...) and listing the keys or shapes that do not fit.
    """
    spec, params, _ = import_vit(path, model_name=model_name, num_classes=num_classes, image_size=image_size,
                                 in_channels=in_channels, head=head, interpolation=interpolation, dtype=dtype)
    return spec, params


def _guess(found: dict) -> str:
    """What the file looks like, as a jkd model name."""
    sizes = [s for s, (w, d, _h) in VIT_SIZES.items() if (w, d) == (found["width"], found["depth"])]
    if not sizes:
        return f"no jkd ViT size has width {found['width']} and depth {found['depth']}"
    return f"it looks like vit_{sizes[0]}{found['patch_size']}"


def _unflatten(flat: dict) -> dict:
    """{'blocks/0/fc1/kernel': x} -> {'blocks': {0: {'fc1': {'kernel': x}}}} (int keys as nnx.List's)."""
    out: dict = {}
    for name, value in flat.items():
        *parents, leaf = [int(p) if p.isdigit() else p for p in name.split("/")]
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _sha256(path: str) -> str:
    if os.path.isdir(path):
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- CLI

def write_teacher_workdir(workdir: str, spec: ModelSpec, params: dict, source: dict) -> None:
    """A jkd teacher workdir: run.json + an orbax checkpoint at step 0 (load with jkd.checkpoint.load_teacher)."""
    from jkd import checkpoint
    from jkd.train.state import TrainState

    ckpt = checkpoint.checkpoint_dir(workdir)
    if os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt)):
        raise ConfigError(f"--workdir: {workdir} already holds checkpoints; import into a fresh directory")
    checkpoint.write_run_info(workdir, {"trainer": "imported", "models": {"model": spec.to_json()},
                                        "teacher": None, "config": source})
    manager = checkpoint.make_manager(workdir)
    checkpoint.save(manager, TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0),
                                        params={"model": params}, opt_state={}))
    manager.wait_until_finished()
    manager.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jkd.pretrained", description=(
        "Import public ViT weights (timm / Hugging Face / DINOv2 / big_vision) as a jkd teacher workdir."))
    parser.add_argument("--src", required=True, help=".safetensors, .pth/.bin, .npz file or HF model directory")
    parser.add_argument("--model", required=True, help="jkd ViT name matching the file, e.g. vit_b16, vit_s14")
    parser.add_argument("--num-classes", type=int, required=True, help="classes of the teacher's head")
    parser.add_argument("--image-size", type=int, required=True, help="input resolution (px) of the teacher")
    parser.add_argument("--in-channels", type=int, default=3, help="3, or 1 for grey images (RGB kernels summed)")
    parser.add_argument("--head", choices=("keep", "reset"), default="keep", help="keep the file's head or zero it")
    parser.add_argument("--interpolation", default="bicubic", help="position-embedding resize: bicubic or linear")
    parser.add_argument("--dtype", default="float32", help="compute dtype recorded in the spec (params stay fp32)")
    parser.add_argument("--workdir", required=True, help="where the teacher workdir is written")
    args = parser.parse_args(argv)
    try:
        spec, params, source = import_vit(args.src, model_name=args.model, num_classes=args.num_classes,
                                          image_size=args.image_size, in_channels=args.in_channels, head=args.head,
                                          interpolation=args.interpolation, dtype=args.dtype)
        write_teacher_workdir(args.workdir, spec, params, source)
    except ConfigError as e:
        print(f"jkd: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote teacher {spec.name} ({source['format']} weights, {args.image_size}px, {args.num_classes} classes"
          f"{'; ' + '; '.join(source['notes']) if source['notes'] else ''}) to {os.path.abspath(args.workdir)}\n"
          f"use it with --config.teacher.checkpoint={os.path.abspath(args.workdir)}")


if __name__ == "__main__":
    main()
