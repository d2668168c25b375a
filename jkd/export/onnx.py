"""JAX inference function -> ONNX through jax2onnx, with metadata, written only once verified.

    proto = to_onnx_model(fn, image_shape=(16, 16, 1), batch=None, opset=20)   # batch None: symbolic 'B'
    set_metadata(proto, {...})
    with staged_file(path) as tmp:    # tmp is moved onto `path` only if the block finishes
        save_onnx(proto, tmp)
        ... verify tmp ...

Opset 20 is the default: the highest TensorRT 10.0 parses (10.15 parses up to 24), and the first
with a native `Gelu`; `LayerNormalization` is native from 17 (`normalization_mode="prefer_native"`;
jax2onnx's default would decompose it into ReduceMean/Sub/Sqrt/Div). ONNX Runtime parses 7-23+.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings

import onnx

from jkd.errors import ConfigError

DEFAULT_OPSET = 20
MIN_OPSET = 17  # native LayerNormalization; below it the graph is larger and no more portable
MAX_OPSET = 23  # what jax2onnx 0.17 and onnxruntime 1.2x both handle
INPUT_NAME, OUTPUT_NAME = "images", "logits"
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a file at 2 GiB: bigger weights go to <file>.data


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset: {opset} is outside {MIN_OPSET}-{MAX_OPSET} (17: native LayerNormalization; "
                          f"20: also native Gelu, the highest TensorRT 10.0 parses; default {DEFAULT_OPSET})")


def to_onnx_model(fn, *, image_shape: tuple, batch: int | None = None, opset: int = DEFAULT_OPSET,
                  model_name: str = "jkd_student") -> onnx.ModelProto:
    """Trace fn(images [B, H, W, C] float32) -> logits [B, K] into an ONNX ModelProto.

    batch=None gives a symbolic batch dimension 'B' (any batch size at run time).
    """
    from jax2onnx import to_onnx

    check_opset(opset)
    h, w, c = image_shape
    # onnx_ir warns for every shape tensor it leaves untyped; harmless and very noisy.
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    with warnings.catch_warnings():  # jax2onnx 0.17's nnx plugins still read `.value` (deprecated in flax 0.12)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"jax2onnx\.")
        return to_onnx(fn, [("B" if batch is None else int(batch), h, w, c)], opset=opset, model_name=model_name,
                       input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], normalization_mode="prefer_native")


def set_metadata(model: onnx.ModelProto, meta: dict) -> None:
    """Replace the model's metadata_props with `meta` (values JSON-encoded unless strings)."""
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def read_metadata(path_or_model) -> dict:
    """metadata_props of an ONNX file or ModelProto as {key: value} (JSON values decoded)."""
    model = (path_or_model if isinstance(path_or_model, onnx.ModelProto)
             else onnx.load(path_or_model, load_external_data=False))
    out = {}
    for entry in model.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            out[entry.key] = entry.value
    return out


def save_onnx(model: onnx.ModelProto, path: str) -> list[str]:
    """Write `model` to `path` (weights over ~1.8 GB into `<path>.data`); returns the files written."""
    if model.ByteSize() < _EXTERNAL_DATA_BYTES:
        onnx.save_model(model, path)
        return [path]
    data = os.path.basename(path) + ".data"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    return [path, os.path.join(os.path.dirname(path), data)]


@contextlib.contextmanager
def staged_file(path: str):
    """Yield a path in a private directory next to `path`; on success move everything written
    there (e.g. x.onnx and x.onnx.data) to path's directory. On any error nothing is moved and a
    stale artifact at `path` from an earlier run is removed, so no file is left looking valid."""
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=out_dir)
    try:
        yield os.path.join(stage, os.path.basename(path))
        for name in os.listdir(stage):
            os.replace(os.path.join(stage, name), os.path.join(out_dir, name))
    except BaseException:
        for stale in (path, path + ".data"):
            if os.path.exists(stale):
                os.remove(stale)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
