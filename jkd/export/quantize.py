"""INT8 students: onnxruntime static quantisation of the verified fp32 ONNX file, calibrated on the
run's own training images (the accuracy check that decides whether the file is kept is
jkd.export.verify.int8_verification; jkd.export.export runs both).

    images, calibration = calibration_set(st.config, image_shape, st.preprocessing, n=256, seed=0)
    info = quantize_int8(fp32_path, int8_path, images, method="minmax", float_ops=("LayerNormalization", "Add"))

The format is QDQ (QuantizeLinear/DequantizeLinear pairs around the quantised ops), which onnxruntime
runs (fusing what it can into QLinearConv/QGemm kernels) and TensorRT builds as explicit quantisation:
  * weights int8, symmetric, one scale per output channel (per_channel=True);
  * activations int8, symmetric, one scale per tensor: TensorRT's QuantizeLinear/DequantizeLinear
    require a zero point of 0 (onnx-tensorrt docs/operators.md), so the asymmetric uint8 activations
    onnxruntime prefers on x86 are not used; the measured CPU cost of that choice is in
    docs/RESULTS.md (INT8 students);
  * biases stay fp32: onnxruntime's default int32 bias DequantizeLinear is not in TensorRT's list
    (its DequantizeLinear takes int8, fp8 and int4).
`float_ops` are op types onnxruntime inserts no QDQ for; they compute in float (a tensor they share with
a quantised neighbour is still rounded there). 'AttentionMatMul' names the MatMuls whose inputs are
both activations (q @ k^T, attn @ v) as opposed to the weight MatMuls/Gemms. GELU (`Gelu`) and the
normalisation arithmetic are never quantised by onnxruntime and so are always float.

Calibration methods: minmax (range of every activation over the calibration images), entropy
(TensorRT's: the clipping threshold minimising the KL divergence between the 2048-bin histogram and
its 128-level quantisation) and percentile (99.999th percentile of |x|). onnxruntime's own entropy
defaults use 128 histogram bins for 128 levels, which leaves one candidate threshold, the full range,
i.e. minmax; the ranges are therefore computed here with 2048 bins and handed to the quantiser.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import time

import numpy as np

from jkd.errors import ConfigError
from jkd.export.verify import (CHUNK, InputSet, check_int8, format_int8, int8_verification, ort_fn, ort_session,
                               real_eval_images, summary)

METHODS = ("minmax", "entropy", "percentile")
ATTENTION_MATMUL = "AttentionMatMul"
# A budget choice, not a paper's: 256 un-augmented training images (about 25 per digit class); not swept
# over N here. minmax: measured equal to percentile and no worse than entropy on the quickstart students,
# at ~1 s instead of 30-80 s (docs/RESULTS.md, "INT8 students (issue 19)").
DEFAULT_CALIBRATION_IMAGES = 256
DEFAULT_CALIBRATION_METHOD = "minmax"
CALIBRATION_POOL = 2048          # calibration images are drawn from the first this-many training images
# Measured on the quickstart students (docs/RESULTS.md, "INT8 students (issue 19)"): test accuracy stays
# within a few digits of fp32 for every choice (calibration-seed noise is as large); leaving LayerNorm and
# the residual Adds in float gave the lowest logit error for both architectures, so one default serves
# both. Softmax and the attention MatMuls alone change nothing in these graphs (their tensors are
# quantised anyway as inputs/outputs of the neighbouring Transpose/MatMul), so they are not listed.
DEFAULT_FLOAT_OPS = {"vit": ("LayerNormalization", "Add"), "convnext": ("LayerNormalization", "Add")}


def quantizable_ops() -> list[str]:
    """Op types onnxruntime's QDQ quantiser can quantise (what float_ops may name), plus 'AttentionMatMul'."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry)) + [ATTENTION_MATMUL]


def family(model_name: str) -> str:
    """'vit' or 'convnext' (the architectures with a measured default), else the name itself."""
    return next((f for f in DEFAULT_FLOAT_OPS if model_name.startswith(f)), model_name)


def resolve_float_ops(float_ops, model_name: str) -> tuple[str, ...]:
    """float_ops as given ('auto'/None: the measured default of the model's family; 'none' or ''
    : quantise everything onnxruntime can; else op types, comma-separated or a sequence).
    ConfigError naming --float-ops for an op onnxruntime's quantiser does not know."""
    if float_ops is None or float_ops == "auto":
        return DEFAULT_FLOAT_OPS.get(family(model_name), DEFAULT_FLOAT_OPS["vit"])
    if isinstance(float_ops, str):
        float_ops = [] if float_ops.strip() in ("", "none") else [op.strip() for op in float_ops.split(",")]
    known = quantizable_ops()
    bad = [op for op in float_ops if op not in known]
    if bad:
        raise ConfigError(f"--float-ops: {bad} are not op types onnxruntime's quantiser handles (so they stay "
                          f"float anyway, or are misspelt); choose from {', '.join(known)}, or 'auto' / 'none'")
    return tuple(dict.fromkeys(float_ops))


def check_quantize_args(quantize, calibration_images, calibration_method, max_accuracy_drop, dtype) -> None:
    """ConfigError naming the flag for every INT8 setting that cannot work (before any work is done)."""
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize: must be int8 (or left out for fp32), got {quantize!r}")
    if quantize is None:
        return
    if dtype != "fp32":
        raise ConfigError("--dtype: --quantize int8 keeps its float ops in fp32; leave --dtype at fp32")
    if not isinstance(calibration_images, int) or calibration_images < 1:
        raise ConfigError(f"--calibration-images: must be a positive integer, got {calibration_images!r}")
    if calibration_images > CALIBRATION_POOL:
        raise ConfigError(f"--calibration-images: at most {CALIBRATION_POOL} (drawn from the first {CALIBRATION_POOL} "
                          f"training images), got {calibration_images}")
    if calibration_method not in METHODS:
        raise ConfigError(f"--calibration-method: must be one of {', '.join(METHODS)}, got {calibration_method!r}")
    if not isinstance(max_accuracy_drop, (int, float)) or not math.isfinite(max_accuracy_drop):
        raise ConfigError(f"--max-accuracy-drop: must be a finite number of points, got {max_accuracy_drop!r}")


def calibration_set(config: dict, image_shape, preprocessing, n: int, seed: int = 0):
    """(images [n, H, W, C] in the graph's input space, record for the metadata): n training images
    drawn without replacement (seed) from the first CALIBRATION_POOL of the run's train split,
    un-augmented. ConfigError naming --calibration-images when the split cannot be read or is too small."""
    real, why = real_eval_images(config, image_shape, preprocessing, CALIBRATION_POOL, split="train")
    if real is None:
        raise ConfigError(f"--calibration-images: INT8 calibration needs the run's training images: {why}")
    images, _, desc = real
    if n > len(images):
        raise ConfigError(f"--calibration-images: {n} requested, but the train split has {len(images)} images")
    pick = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    data = config.get("data", {})
    name = data.get("name", "digits")
    record = {"dataset": name, "split": "train" if name == "digits" else data.get("train_split", "train"),
              "n": int(n), "seed": int(seed), "drawn_from": desc, "augmented": False}
    return images[pick].astype(np.float32), record


class _Reader:
    """onnxruntime CalibrationDataReader over images in chunks of `batch` (last chunk padded by
    repetition, so a fixed-batch graph gets its shape; repeats do not move a min/max or percentile
    noticeably)."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int):
        self.input_name, self.images, self.batch = input_name, images, batch
        self.rewind()

    def rewind(self):
        chunks = []
        for start in range(0, len(self.images), self.batch):
            chunk = self.images[start:start + self.batch]
            if len(chunk) < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(chunk), axis=0)])
            chunks.append({self.input_name: np.ascontiguousarray(chunk, np.float32)})
        self._it = iter(chunks)

    def get_next(self):
        return next(self._it, None)


def _activation_ranges(model_path: str, op_types: list[str], images, batch: int, method: str, tmp: str) -> dict:
    """{tensor name: (rmin, rmax)} of the activations feeding/leaving the quantised ops (entropy and
    percentile from 2048-bin histograms, symmetric around 0)."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    options = {"minmax": (CalibrationMethod.MinMax, {"symmetric": True}),
               "entropy": (CalibrationMethod.Entropy, {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128}),
               "percentile": (CalibrationMethod.Percentile,
                              {"symmetric": True, "num_bins": 2048, "percentile": 99.999})}
    calib_method, extra = options[method]
    input_name = _input_name(model_path)
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
        calibrator = create_calibrator(model_path, op_types, augmented_model_path=os.path.join(tmp, "augmented.onnx"),
                                       calibrate_method=calib_method, extra_options=extra)
        calibrator.collect_data(_Reader(input_name, images, batch))
        ranges = calibrator.compute_data()
    return {name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in ranges[name].range_value) for name in ranges}


def _input_name(model_path: str) -> str:
    import onnx
    model = onnx.load(model_path, load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def quantize_int8(fp32_path: str, out_path: str, images: np.ndarray, *, method: str = DEFAULT_CALIBRATION_METHOD,
                  float_ops=(), batch: int | None = None, pre_process: bool = False) -> dict:
    """Write the QDQ INT8 model of the fp32 file at `fp32_path` to `out_path`, activations calibrated
    on `images` [N, H, W, C] (the graph's input space). batch: the graph's fixed batch, or None
    (symbolic; calibrated in chunks of 32). pre_process: onnxruntime's quant_pre_process first
    (symbolic shape inference, constant folding); off by default: it changed no accuracy or latency
    on the quickstart students (docs/RESULTS.md). Returns what was done, for the metadata."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    float_ops = tuple(float_ops)
    op_types = [op for op in quantizable_ops() if op not in float_ops and op != ATTENTION_MATMUL]
    chunk = batch or 32
    quiet = logging.getLogger().level
    with tempfile.TemporaryDirectory(prefix="jkd_int8_") as tmp:
        src = fp32_path
        if pre_process:
            src = os.path.join(tmp, "pre.onnx")
            quant_pre_process(fp32_path, src)
        ranges = _activation_ranges(src, op_types, images, chunk, method, tmp)
        overrides = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for name, (lo, hi) in ranges.items()}
        logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" and per-tensor notes
        try:
            # The ranges above are final (TensorQuantOverrides); the quantiser's own min/max pass only
            # needs to see the graph run, so it gets one chunk.
            quantize_static(src, out_path, _Reader(_input_name(src), images[:chunk], chunk),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
                            calibrate_method=CalibrationMethod.MinMax,
                            use_external_data_format=os.path.exists(fp32_path + ".data"),  # weights > 1.8 GB
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False, "MatMulConstBOnly": ATTENTION_MATMUL in float_ops,
                                           "TensorQuantOverrides": overrides})
        finally:
            logging.getLogger().setLevel(quiet)
    _drop_unused_domains(out_path)
    import onnxruntime
    return {"format": "QDQ (QuantizeLinear/DequantizeLinear)", "method": method, "float_ops": list(float_ops),
            "weights": "int8, symmetric, per output channel",
            "activations": "int8, symmetric (zero point 0), per tensor",
            "bias": "fp32", "pre_process": pre_process, "calibrated_tensors": len(ranges),
            "quantizer": f"onnxruntime {onnxruntime.__version__} quantize_static"}


def _drop_unused_domains(path: str) -> None:
    """Remove opset imports of domains no node uses: onnxruntime's optimiser (quant_pre_process) declares
    every domain it knows (com.microsoft, ai.onnx.ml, ...), which reads as custom ops to a checker."""
    import onnx

    model = onnx.load(path)
    used = {n.domain for n in model.graph.node} | {"", "ai.onnx"}
    keep = [imp for imp in model.opset_import if imp.domain in used]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.save_model(model, path)


def int8_path(onnx_path: str) -> str:
    """<name>.int8.onnx next to the fp32 <name>.onnx it is made from."""
    return os.path.splitext(onnx_path)[0] + ".int8.onnx"


def int8_data(st, image_shape, batch, n: int, seed: int):
    """(calibration images [n, H, W, C], their record for the metadata, the whole test split as an
    InputSet) in the graph's input space; ConfigError naming the flag when the data is unavailable."""
    real, why = real_eval_images(st.config, image_shape, st.preprocessing, 10**9)
    if real is None:
        raise ConfigError(f"--quantize: the INT8 check needs the run's test images: {why}")
    images, labels, desc = real
    test_set = InputSet(desc.split(" (first")[0], images, labels, batch or CHUNK)
    calib_images, calibration = calibration_set(st.config, image_shape, st.preprocessing, n, seed)
    return calib_images, calibration, test_set


def write_int8(meta: dict, onnx_path, session, jax_fn, int8_inputs, batch, trt_max_opset, *, method,
               max_accuracy_drop, float_ops, result, timings, log):
    """Write <name>.int8.onnx (staged: only a checked file lands): quantise the verified fp32 file
    with onnxruntime (calibrated on the training images of int8_inputs), the static TensorRT check of
    the QDQ graph, then JAX vs fp32 vs INT8 on the whole test split (QuantizationError past
    max_accuracy_drop). Returns (INT8 onnxruntime session, the test InputSet); the check into result;
    timings['int8_s']."""
    import onnx

    from jkd.export.onnx import save_onnx, set_metadata, staged_file
    from jkd.export.trt_compat import assert_tensorrt_compat

    t0 = time.perf_counter()
    calib_images, calibration, test_set = int8_inputs
    n = len(calib_images)
    out = int8_path(onnx_path)
    with staged_file(out) as tmp:
        info = quantize_int8(onnx_path, tmp, calib_images, method=method, float_ops=float_ops, batch=batch)
        proto = onnx.load(tmp)
        compat = assert_tensorrt_compat(proto, max_opset=trt_max_opset)
        int8_meta = {k: v for k, v in meta.items() if k != "jkd.parity_onnxruntime"}
        int8_meta.update({"jkd.precision": "int8 (QDQ)", "jkd.quantization": {**info, "calibration": calibration},
                          "jkd.fp32_source": {"file": os.path.basename(onnx_path),
                                              "parity_onnxruntime": meta.get("jkd.parity_onnxruntime")},
                          "jkd.tensorrt_static_check": {k: v for k, v in compat.items() if k != "op_counts"}})
        set_metadata(proto, int8_meta)
        save_onnx(proto, tmp)
        int8_session = ort_session(tmp)
        report = int8_verification({"ONNX fp32 (onnxruntime)": ort_fn(session),
                                    "ONNX INT8 (onnxruntime)": ort_fn(int8_session)}, jax_fn, test_set,
                                   max_accuracy_drop=max_accuracy_drop)
        log(format_int8(report))
        check_int8(report)
        int8_meta["jkd.int8_check"] = summary(report)
        set_metadata(proto, int8_meta)
        save_onnx(proto, tmp)
    timings["int8_s"] = time.perf_counter() - t0
    result.update(int8_onnx_path=out, int8_onnx_bytes=os.path.getsize(out), int8_check=report,
                  int8_tensorrt_static_check=compat, quantization={**info, "calibration": calibration})
    log(f"wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB, INT8 QDQ; {n} {calibration['dataset']} training images, "
        f"{method}; float ops: {', '.join(float_ops) or 'none'})")
    return int8_session, test_set
