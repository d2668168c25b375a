"""Serialized TensorRT engine from the verified ONNX file (TensorRT 10 Python API), and the
equivalent `trtexec` command written next to it.

    trt = import_tensorrt()                       # ConfigError with install instructions if missing
    info = build_engine("vit.onnx", "vit.engine", image_shape=(16, 16, 1), batch=None, fp16=True)
    run = engine_runner("vit.engine")             # images [B, H, W, C] float32 -> logits [B, K]

Precision: fp32 engines are built with TF32 switched off (TensorRT enables it by default on Ampere
and newer, and its 10-bit mantissa would break the 1e-4 parity); fp16 sets BuilderFlag.FP16 on the
fp32 graph, so TensorRT picks fp16 kernels where they are faster and keeps fp32 I/O. TensorRT 11
removed BuilderFlag.FP16 (strong typing only), so fp16 is refused there with a message.
INT8 (`--quantize int8`): the engine is built from the QDQ file, i.e. TensorRT's explicit quantisation
(the Q/DQ nodes fix where int8 is used and their scales); TensorRT 10 needs BuilderFlag.INT8 set for a
Q/DQ network, TensorRT 11 removed the flag (Q/DQ alone). TF32 stays off for the layers left in float.
A symbolic-batch ONNX gets one optimization profile: min 1, opt min(32, max), max `max_batch`.

Running an engine needs CUDA memory from Python: `cuda-python` (cuda.bindings.runtime).
"""
from __future__ import annotations

import os
import shlex

import numpy as np

from jkd.errors import ConfigError
from jkd.export.errors import TensorRTError
from jkd.export.onnx import INPUT_NAME, OUTPUT_NAME

INSTALL_HINT = ("install TensorRT 10 on a Linux machine with an NVIDIA GPU and driver: `pip install tensorrt-cu12` "
                "(or use NVIDIA's nvcr.io/nvidia/tensorrt container), and `pip install cuda-python` so the engine "
                "can be run for the parity check and the benchmark")
DEFAULT_MAX_BATCH = 64


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def import_tensorrt(fp16: bool = False):
    """The tensorrt module, or ConfigError saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ConfigError(f"--format tensorrt: the `tensorrt` Python package is not importable here ({e}); "
                          f"{INSTALL_HINT}. On this machine `--format onnx` still writes the verified ONNX file "
                          f"and the equivalent trtexec command next to it.") from None
    if fp16 and int(trt.__version__.split(".")[0]) >= 11:
        raise ConfigError(f"--dtype: TensorRT {trt.__version__} removed BuilderFlag.FP16 (strongly typed networks "
                          f"only); build fp32, or use TensorRT 10 for an fp16 engine from the fp32 graph")
    return trt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise ConfigError(f"running a TensorRT engine needs `cuda-python` ({e}); {INSTALL_HINT}") from None
    return cudart


def batch_profile(batch: int | None, max_batch: int = DEFAULT_MAX_BATCH) -> tuple[int, int, int]:
    """(min, opt, max) batch of the optimization profile: fixed batch B -> (B, B, B)."""
    if batch is not None:
        return batch, batch, batch
    return 1, min(32, max_batch), max_batch


def trtexec_command(onnx_path: str, engine_path: str, *, image_shape, batch: int | None,
                    max_batch: int = DEFAULT_MAX_BATCH, fp16: bool = False, int8: bool = False) -> str:
    """The trtexec line that builds the same engine as build_engine (TensorRT 10's trtexec: its
    `--int8` is what BuilderFlag.INT8 is; TensorRT 11's trtexec builds a Q/DQ file without it)."""
    h, w, c = image_shape
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if batch is None:
        lo, opt, hi = batch_profile(None, max_batch)
        cmd += [f"--minShapes={INPUT_NAME}:{lo}x{h}x{w}x{c}", f"--optShapes={INPUT_NAME}:{opt}x{h}x{w}x{c}",
                f"--maxShapes={INPUT_NAME}:{hi}x{h}x{w}x{c}"]
    cmd += (["--int8"] if int8 else []) + (["--fp16"] if fp16 else ["--noTF32"])
    return " ".join(shlex.quote(p) for p in cmd)


def write_trtexec_command(path: str, command: str, note: str = "") -> None:
    with open(path, "w") as f:
        f.write("# Builds the TensorRT engine from the verified ONNX file (same settings as `python -m jkd.export "
                "--format tensorrt`).\n")
        if note:
            f.write(f"# {note}\n")
        f.write(command + "\n")


def build_engine(onnx_path: str, engine_path: str, *, image_shape, batch: int | None,
                 max_batch: int = DEFAULT_MAX_BATCH, fp16: bool = False, int8: bool = False,
                 workspace_gib: float | None = None) -> dict:
    """Parse `onnx_path`, build, write the serialized engine to `engine_path`. Parser and builder
    errors are raised as TensorRTError with TensorRT's own messages verbatim. int8: `onnx_path` is a
    QDQ file (explicit quantisation; BuilderFlag.INT8 on TensorRT 10)."""
    trt = import_tensorrt(fp16)

    class _Logger(trt.ILogger):  # keeps TensorRT's messages so errors can be reported verbatim
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []

        def log(self, severity, msg):
            self.messages.append((severity, msg))
            if int(severity) <= int(trt.ILogger.Severity.WARNING):  # pybind enums: compare as ints
                print(f"[TensorRT {getattr(severity, 'name', severity)}] {msg}")

    logger = _Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.path.abspath(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT {trt.__version__}'s ONNX parser rejected {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    legacy_precision_flags = int(trt.__version__.split(".")[0]) < 11
    if int8 and legacy_precision_flags:
        config.set_flag(trt.BuilderFlag.INT8)  # TensorRT 10 builds a Q/DQ network only with INT8 enabled
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    h, w, c = image_shape
    lo, opt, hi = batch_profile(batch, max_batch)
    if batch is None:
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, (lo, h, w, c), (opt, h, w, c), (hi, h, w, c))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = "\n".join(m for s, m in logger.messages
                           if int(s) <= int(trt.ILogger.Severity.ERROR)) or "(no error logged)"
        raise TensorRTError(f"TensorRT {trt.__version__}'s builder failed on {onnx_path}:\n{errors}")
    with open(engine_path, "wb") as f:
        f.write(serialized)
    precision = "fp16 (BuilderFlag.FP16)" if fp16 else "fp32 (TF32 off)"
    if int8:
        precision = ("int8, explicit Q/DQ" + (" (BuilderFlag.INT8)" if legacy_precision_flags else "")
                     + "; float layers " + precision)
    return {"tensorrt_version": trt.__version__, "precision": precision,
            "profile": {"min": lo, "opt": opt, "max": hi}, "engine_bytes": os.path.getsize(engine_path)}


def engine_runner(engine_path: str):
    """images [B, H, W, C] float32 (host) -> logits [B, K] float32 (host) through the engine,
    copies included. Device buffers are cached per batch size."""
    trt = import_tensorrt()
    cudart = _import_cudart()

    def check(result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise TensorRTError(f"CUDA error {err}")
        return rest[0] if rest else None

    logger = trt.Logger(trt.Logger.WARNING)
    with open(engine_path, "rb") as f:
        engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
    if engine is None:
        raise TensorRTError(f"cannot deserialize {engine_path} (built by another TensorRT version or GPU?)")
    context = engine.create_execution_context()
    stream = check(cudart.cudaStreamCreate())
    buffers = {}
    h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def run(images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, np.float32)
        context.set_input_shape(INPUT_NAME, images.shape)
        out = np.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), np.float32)
        if images.shape[0] not in buffers:
            buffers[images.shape[0]] = (check(cudart.cudaMalloc(images.nbytes)), check(cudart.cudaMalloc(out.nbytes)))
        d_in, d_out = buffers[images.shape[0]]
        check(cudart.cudaMemcpyAsync(d_in, images.ctypes.data, images.nbytes, h2d, stream))
        context.set_tensor_address(INPUT_NAME, int(d_in))
        context.set_tensor_address(OUTPUT_NAME, int(d_out))
        if not context.execute_async_v3(stream):
            raise TensorRTError("TensorRT execute_async_v3 failed")
        check(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, stream))
        check(cudart.cudaStreamSynchronize(stream))
        return out

    run.engine = engine  # keep the engine alive as long as the runner
    return run
