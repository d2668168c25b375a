"""Weight files <-> {name: numpy array} with the file's own names, without torch or TensorFlow.

    weights = read_weights("model.safetensors")   # also .pth/.bin/.pt (torch zip), .npz, an HF model dir
    write_safetensors(weights, "out.safetensors")  # what safetensors.torch.save_file writes, read by torch/timm

The readers behind jkd/pretrained.py: safetensors headers are parsed directly, torch zip pickles
are unpickled with a restricted unpickler that rebuilds tensors from their storages (no code runs).
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

from jkd.errors import ConfigError

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


def write_safetensors(tensors: dict, path: str) -> None:
    """{name: array} -> a .safetensors file: u64 little-endian header size, a JSON header (name ->
    dtype, shape, byte offsets; padded with spaces to a multiple of 8 bytes, as the reference writer
    does, so every tensor starts aligned), then the tensors' little-endian bytes in header order.
    dtypes: those _ST_DTYPES names (fp32, fp16, bf16, ints, ...)."""
    names = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, x in tensors.items():
        x = np.asarray(x)
        if x.dtype.byteorder == ">":  # the format is little-endian
            x = x.astype(x.dtype.newbyteorder("<"))
        if x.dtype not in names:
            raise ValueError(f"write_safetensors: {name!r} has dtype {x.dtype}, not one of {sorted(map(str, names))}")
        blob = np.ascontiguousarray(x).tobytes()
        header[name] = {"dtype": names[x.dtype], "shape": list(x.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for blob in blobs:
            f.write(blob)


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
