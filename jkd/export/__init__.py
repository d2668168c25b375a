"""Export a trained student to ONNX (and a TensorRT engine), prove it computes the same function,
and time it. The CLI (`python -m jkd.export`) and the export notebook both call `export`:

    from jkd.export import export
    result = export("/tmp/jkd_quickstart/kd_hinton", "vit", benchmark=True)
    result["onnx_path"], result["parity"]["rows"], result["latency"]

Steps, each fatal when it fails (no artifact is left looking valid):
  1. load the student (run.json + latest orbax checkpoint), eval mode, preprocessing folded in;
  2. trace it with jax2onnx (symbolic batch 'B' unless --batch), opset 20 by default;
  3. static TensorRT-10 compatibility check of the graph (ops, opset, no control flow);
  4. onnxruntime vs JAX on random and real eval images (fp32: 1e-4 abs on logits);
  5. (tensorrt) build the engine, check it the same way; write the trtexec command next to it;
  6. (quantize='int8') onnxruntime static quantisation of the verified file (QDQ, int8 per-channel
     weights, activations calibrated on the run's training images), the static TensorRT check again,
     accuracy on the whole test split vs fp32 and JAX: refused past max_accuracy_drop points
     (jkd/export/quantize.py); <name>.int8.onnx next to <name>.onnx; a TensorRT engine is then
     built from the INT8 file;
  7. (benchmark) JAX jit vs onnxruntime (vs INT8, vs TensorRT) at batch 1 and 32, table into the workdir.
Library pieces: load_student, inference_fn, to_onnx_model, check_tensorrt_compat, parity,
verify_onnx, build_engine, benchmark, quantize_int8 (see their modules).
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from jkd.errors import ConfigError
from jkd.export.bench import benchmark as benchmark_latency
from jkd.export.bench import format_int8_table, format_table, machine
from jkd.export.errors import ExportError, ParityError, QuantizationError, TensorRTCompatError, TensorRTError
from jkd.export.quantize import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, check_quantize_args,
                                 int8_data, quantize_int8, resolve_float_ops, write_int8)
from jkd.export.onnx import (DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, check_opset, read_metadata, save_onnx,
                             set_metadata, staged_file, to_onnx_model)
from jkd.export.student import Student, inference_fn, load_student
from jkd.export.tensorrt import DEFAULT_MAX_BATCH, build_engine, engine_runner, import_tensorrt, trtexec_command
from jkd.export.trt_compat import TRT_MAX_OPSET, assert_tensorrt_compat, check_tensorrt_compat
from jkd.export.verify import (DEFAULT_ATOL, DEFAULT_MAX_ACCURACY_DROP, check_int8, check_parity, format_int8,
                               format_parity, int8_verification, ort_fn, ort_session, parity, verification_inputs,
                               verify_onnx)

__all__ = ["export", "load_student", "inference_fn", "to_onnx_model", "read_metadata", "check_tensorrt_compat",
           "parity", "verify_onnx", "build_engine", "benchmark_latency", "quantize_int8", "ExportError", "ParityError",
           "TensorRTCompatError", "TensorRTError", "QuantizationError"]

FP16_RTOL = 1e-2  # fp16 engines: ~11-bit mantissa over a deep net; 1% of the logit scale, plus top-1 shown


def _check_args(format, batch, dtype, atol, max_batch):
    if format not in ("onnx", "tensorrt"):
        raise ConfigError(f"--format: must be onnx or tensorrt, got {format!r}")
    if dtype not in ("fp32", "fp16"):
        raise ConfigError(f"--dtype: must be fp32 or fp16, got {dtype!r}")
    if dtype == "fp16" and format == "onnx":
        raise ConfigError("--dtype: fp16 applies to TensorRT engines (--format tensorrt builds fp16 kernels from the "
                          "fp32 graph); an fp16 ONNX file is not exported: onnxruntime's CPU provider has few fp16 "
                          "kernels and jax2onnx 0.17 keeps LayerNorm outputs fp32 in an fp16 ConvNeXt")
    if batch is not None and batch < 1:
        raise ConfigError(f"--batch: must be >= 1, got {batch}")
    if not atol > 0:
        raise ConfigError(f"--atol: must be > 0, got {atol}")
    if max_batch < 1:
        raise ConfigError(f"--max-batch: must be >= 1, got {max_batch}")


def _paths(st: Student, format: str, out: str | None, int8: bool = False) -> tuple[str, str | None]:
    """(fp32 onnx path, engine path or None). Default: <workdir>/export/<student>.onnx / .engine
    (.int8.engine for an INT8 engine; the INT8 ONNX file is int8_path(fp32 onnx path))."""
    default_dir = os.path.join(st.workdir, "export")
    if format == "onnx":
        return out or os.path.join(default_dir, f"{st.name}.onnx"), None
    engine = out or os.path.join(default_dir, f"{st.name}{'.int8' if int8 else ''}.engine")
    base = os.path.splitext(engine)[0]
    return (base[:-len(".int8")] if base.endswith(".int8") else base) + ".onnx", engine


def _check_writable(path: str) -> None:
    """Fail before tracing when the artifact's directory cannot be made or written (ConfigError)."""
    out_dir = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".jkd_write_check."):
            pass
    except OSError as e:
        raise ConfigError(f"--out: cannot write {path}: {e.strerror or e} ({out_dir})") from None


def _metadata(st: Student, batch, opset, compat) -> dict:
    import flax
    import jax

    from jkd.checkpoint import read_run_info

    p = st.preprocessing
    h = w = st.spec.image_size
    # run.json records the data's class names since issue 16; older runs and imported teachers have none
    class_names = list((read_run_info(st.workdir) or {}).get("class_names") or [])
    if len(class_names) != st.spec.num_classes:
        class_names = []
    c = st.spec.in_channels
    value_range = ("[0, 1] pixels; the graph computes (x - mean) / std itself" if p.fold else
                   "normalised: (pixels - mean) / std with pixels in [0, 1]")
    return {
        "jkd.input": f"{INPUT_NAME}: float32 [{'B' if batch is None else batch}, {h}, {w}, {c}] (NHWC)",
        "jkd.input_layout": "NHWC",
        "jkd.input_value_range": value_range,
        "jkd.preprocessing_folded": p.fold, "jkd.mean": list(p.mean), "jkd.std": list(p.std),
        "jkd.resize": p.resize,
        "jkd.output": f"{OUTPUT_NAME}: float32 [B, {st.spec.num_classes}], pre-softmax",
        "jkd.num_classes": st.spec.num_classes,
        "jkd.class_names": class_names,  # output index i's name ([] when the run recorded none)
        "jkd.eval_mode": "no dropout or stochastic depth; a distillation-token ViT averages its two heads",
        "jkd.student": st.name, "jkd.model_spec": st.spec.to_json(), "jkd.workdir": st.workdir,
        "jkd.checkpoint_step": st.step, "jkd.dataset": st.config.get("data", {}).get("name", "digits"),
        "jkd.opset": opset,
        "jkd.exporter": f"jax2onnx {_version('jax2onnx')}, jax {jax.__version__}, flax {flax.__version__}",
        "jkd.tensorrt_static_check": {k: v for k, v in compat.items() if k != "op_counts"},
    }


def _version(pkg: str) -> str:
    from importlib.metadata import version
    return version(pkg)


def _compact(report: dict) -> dict:
    keep = ("inputs", "n", "batch", "max_abs_err", "max_rel_err", "top1_agree", "accuracy_exported", "accuracy_jax")
    return {"atol": report["atol"], "rtol": report.get("rtol", 0.0), "ok": report["ok"],
            "rows": [{k: r[k] for k in keep if k in r} for r in report["rows"]]}


def export(workdir: str, student: str | None = None, *, format: str = "onnx", batch: int | None = None,
           opset: int = DEFAULT_OPSET, dtype: str = "fp32", out: str | None = None, atol: float = DEFAULT_ATOL,
           fold_preprocessing: bool = True, benchmark: bool = False, max_batch: int = DEFAULT_MAX_BATCH,
           trt_max_opset: int = TRT_MAX_OPSET, n_real: int = 256, repeats: int = 20, quantize: str | None = None,
           calibration_images: int = DEFAULT_CALIBRATION_IMAGES, calibration_method: str = DEFAULT_CALIBRATION_METHOD,
           calibration_seed: int = 0, max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP, float_ops="auto",
           log=print) -> dict:
    """Export, verify (and optionally quantise, build the engine and benchmark) one student of `workdir`.

    batch=None exports a symbolic batch dimension. quantize='int8' also writes <name>.int8.onnx
    (calibration_images training images drawn with calibration_seed, calibration_method, float_ops:
    'auto' = the measured default of the architecture, 'none', or op types), refused when its test
    accuracy is more than max_accuracy_drop points below JAX's; with format='tensorrt' the engine is
    the INT8 one. Returns a dict with the artifact paths, the TensorRT static check, parity reports,
    (int8) the INT8 check, timings and (benchmark) latency rows; also written to <artifact>.export.json.
    Raises ConfigError (user mistake), ParityError, TensorRTCompatError, TensorRTError,
    QuantizationError or ExportError; on any of them no artifact is left at the output path that
    failed (a refused INT8 file leaves the verified fp32 file it was made from in place).
    """
    log = log or (lambda *a, **k: None)
    check_quantize_args(quantize, calibration_images, calibration_method, max_accuracy_drop, dtype)
    _preflight(format, batch, dtype, atol, max_batch, opset, trt_max_opset)
    if quantize and float_ops not in (None, "auto"):
        float_ops = resolve_float_ops(float_ops, "")  # spelling checked before any work
    timings = {}
    st, onnx_path, engine_path, jax_fn = _load(workdir, student, fold_preprocessing, format, out, timings, log,
                                               int8=bool(quantize))
    image_shape = (st.spec.image_size, st.spec.image_size, st.spec.in_channels)
    # INT8 needs real images (training split to calibrate, test split to check): read them before any work
    int8_inputs = int8_data(st, image_shape, batch, calibration_images, calibration_seed) if quantize else None
    proto, compat = _trace(st, image_shape, batch, opset, trt_max_opset, timings, log)
    result = {"student": st.name, "model": st.spec.name, "workdir": st.workdir, "step": st.step, "format": format,
              "batch": batch, "opset": opset, "dtype": dtype, "onnx_path": onnx_path, "engine_path": engine_path,
              "tensorrt_static_check": compat, "preprocessing_folded": st.preprocessing.fold}
    meta = _metadata(st, batch, opset, compat)
    session, sets = _write_and_verify_onnx(proto, meta, st, onnx_path, image_shape, batch, jax_fn, atol=atol,
                                           n_real=n_real, result=result, timings=timings, log=log)
    _write_trtexec_command(onnx_path, None if quantize else engine_path, image_shape, batch, max_batch,
                           dtype == "fp16", result)
    int8_session = test_set = None
    if quantize:
        try:
            int8_session, test_set = write_int8(
                meta, onnx_path, session, jax_fn, int8_inputs, batch, trt_max_opset, method=calibration_method,
                max_accuracy_drop=max_accuracy_drop, float_ops=resolve_float_ops(float_ops, st.spec.name),
                result=result, timings=timings, log=log)
        except ExportError as e:
            e.fp32_kept = onnx_path  # the CLI says which file is left (verified) and which is not
            raise
        _write_trtexec_command(result["int8_onnx_path"], engine_path, image_shape, batch, max_batch, False, result,
                               int8=True)
    runner = None
    if format == "tensorrt":
        verify = (_int8_check(test_set, jax_fn, max_accuracy_drop=max_accuracy_drop, log=log) if quantize else
                  _parity_check(sets, jax_fn, batch=batch, max_batch=max_batch, atol=atol, dtype=dtype, log=log))
        runner = _build_and_verify_engine(result["int8_onnx_path"] if quantize else onnx_path, engine_path, image_shape,
                                          batch, max_batch, "int8" if quantize else dtype, verify, result=result,
                                          timings=timings, log=log)
    if benchmark:
        backends = {"jax (jit)": jax_fn, "onnxruntime": ort_fn(session)}
        if int8_session is not None:
            backends["onnxruntime int8"] = ort_fn(int8_session)
        if runner is not None:
            backends[f"tensorrt {'int8' if quantize else dtype}"] = runner
        _benchmark(st, backends, image_shape, batch, repeats, result, log)
    result["timings"] = timings
    return _write_report(result, engine_path or onnx_path)


def _preflight(format, batch, dtype, atol, max_batch, opset, trt_max_opset) -> None:
    """Every check that needs no checkpoint (ConfigError), and TensorRT importable when it is the target."""
    _check_args(format, batch, dtype, atol, max_batch)
    check_opset(opset)
    if opset > trt_max_opset:
        raise ConfigError(f"--opset: {opset} is above {trt_max_opset}, the highest opset the targeted TensorRT "
                          f"parses (TensorRT 10.0: 20, 10.15: 24; set trt_max_opset to target a newer one)")
    if format == "tensorrt":
        import_tensorrt(dtype == "fp16")  # fail before any work when TensorRT is missing


def _load(workdir, student, fold_preprocessing, format, out, timings, log, int8=False):
    """(Student, onnx path, engine path or None, jitted reference fn): images float32 [B, H, W, C] ->
    logits [B, K], the model as trained (fp32 compute). Output paths checked writable; timings['load_s']."""
    import jax

    t0 = time.perf_counter()
    st = load_student(workdir, student, fold_preprocessing=fold_preprocessing)
    onnx_path, engine_path = _paths(st, format, out, int8)
    _check_writable(engine_path or onnx_path)
    image_shape = (st.spec.image_size, st.spec.image_size, st.spec.in_channels)
    log(f"student {st.name!r}: {st.spec.name}, {st.spec.num_classes} classes, input {list(image_shape)}, "
        f"checkpoint step {st.step} of {st.workdir}")
    # Reference: the model as trained (fp32 compute); exported: the same params traced with export_spec.
    jax_fn = jax.jit(inference_fn(st.reference_spec, st.params, st.preprocessing))
    timings["load_s"] = time.perf_counter() - t0
    return st, onnx_path, engine_path, jax_fn


def _trace(st: Student, image_shape, batch, opset, trt_max_opset, timings, log):
    """(ONNX ModelProto of the export_spec model, input [B or batch, H, W, C] -> [B, K]; its TensorRT static
    check, raising TensorRTCompatError). timings['trace_s']."""
    t0 = time.perf_counter()
    proto = to_onnx_model(inference_fn(st.export_spec, st.params, st.preprocessing), image_shape=image_shape,
                          batch=batch, opset=opset, model_name=f"jkd_{st.name}")
    timings["trace_s"] = time.perf_counter() - t0
    compat = assert_tensorrt_compat(proto, max_opset=trt_max_opset)
    log(f"TensorRT 10 static check: ok (opset {compat['opset']} within {compat['opset_range'][0]}-"
        f"{compat['opset_range'][1]}; ops: {', '.join(f'{k} {v}' for k, v in compat['op_counts'].items())})")
    return proto, compat


def _write_and_verify_onnx(proto, meta: dict, st: Student, onnx_path, image_shape, batch, jax_fn, *, atol, n_real,
                           result, timings, log):
    """Write the ONNX file (staged: only a verified file lands at onnx_path), onnxruntime vs jax_fn on
    the verification sets (ParityError past atol), the parity summary into its metadata.
    Returns (onnxruntime session, the input sets); parity into result; timings['write_and_verify_s']."""
    t0 = time.perf_counter()
    with staged_file(onnx_path) as tmp:
        set_metadata(proto, meta)
        save_onnx(proto, tmp)
        session = ort_session(tmp)
        sets, notes = verification_inputs(image_shape, st.preprocessing, st.config, batch=batch, n_real=n_real)
        for note in notes:
            log(f"note: {note}")
        report = parity(ort_fn(session), jax_fn, sets, atol=atol)
        log(format_parity(report))
        check_parity(report)
        meta["jkd.parity_onnxruntime"] = _compact(report)
        set_metadata(proto, meta)
        save_onnx(proto, tmp)
    timings["write_and_verify_s"] = time.perf_counter() - t0
    result.update(parity=report, parity_notes=notes, onnx_bytes=os.path.getsize(onnx_path))
    log(f"wrote {onnx_path} ({os.path.getsize(onnx_path) / 1e6:.2f} MB, opset {meta['jkd.opset']}, batch "
        f"{'symbolic B' if batch is None else batch})")
    return session, sets


def _write_trtexec_command(onnx_path, engine_path, image_shape, batch, max_batch, fp16: bool, result,
                           int8: bool = False) -> None:
    """The equivalent trtexec command, written next to the artifact (<artifact>.trtexec.txt) and into
    result (int8: the INT8 file's, under 'int8_trtexec_command')."""
    trt_cmd_path = os.path.splitext(engine_path or onnx_path)[0] + ".trtexec.txt"
    trt_cmd = trtexec_command(onnx_path, engine_path or os.path.splitext(onnx_path)[0] + ".engine",
                              image_shape=image_shape, batch=batch, max_batch=max_batch, fp16=fp16, int8=int8)
    flags = " --quantize int8" if int8 else " --dtype fp16" if fp16 else ""
    note = "; TensorRT 11's trtexec takes the Q/DQ file without --int8" if int8 else ""
    with open(trt_cmd_path, "w") as f:
        f.write(f"# TensorRT engine from the verified ONNX file (same settings as python -m jkd.export "
                f"--format tensorrt{flags}{note}).\n{trt_cmd}\n")
    prefix = "int8_" if int8 else ""
    result[f"{prefix}trtexec_command"], result[f"{prefix}trtexec_command_path"] = trt_cmd, trt_cmd_path


def _build_and_verify_engine(onnx_path, engine_path, image_shape, batch, max_batch, dtype, verify, *, result,
                             timings, log):
    """Build the TensorRT engine (staged) in `dtype` (fp32, fp16, or int8 from a QDQ file) and check it:
    verify(runner, backend name) -> (report, result key), raising when the check fails (fp32/fp16: parity
    against JAX, fp16 at rtol FP16_RTOL; int8: the INT8 file's accuracy check). Returns the engine runner
    (images float32 [B, H, W, C] -> logits [B, K]); build info and the report into result;
    timings['tensorrt_build_and_verify_s']."""
    t0 = time.perf_counter()
    with staged_file(engine_path) as tmp:
        result["tensorrt"] = build_engine(onnx_path, tmp, image_shape=image_shape, batch=batch, max_batch=max_batch,
                                          fp16=dtype == "fp16", int8=dtype == "int8")
        runner = engine_runner(tmp)
        report, key = verify(runner, f"TensorRT {result['tensorrt']['tensorrt_version']} {dtype}")
    timings["tensorrt_build_and_verify_s"] = time.perf_counter() - t0
    result[key] = report
    log(f"wrote {engine_path}; trtexec equivalent in "
        f"{result['int8_trtexec_command_path' if dtype == 'int8' else 'trtexec_command_path']}")
    return runner


def _parity_check(sets, jax_fn, *, batch, max_batch, atol, dtype, log):
    """verify() of _build_and_verify_engine for fp32/fp16 engines: parity on the input sets the engine
    accepts (batch <= max_batch when symbolic)."""
    def verify(runner, backend):
        trt_sets = [s for s in sets if batch is not None or s.batch <= max_batch]
        report = parity(runner, jax_fn, trt_sets, atol=atol, rtol=FP16_RTOL if dtype == "fp16" else 0.0, backend=backend)
        log(format_parity(report))
        check_parity(report)
        return report, "parity_tensorrt"
    return verify


def _int8_check(test_set, jax_fn, *, max_accuracy_drop, log):
    """verify() of _build_and_verify_engine for INT8 engines: the INT8 ONNX file's accuracy check."""
    def verify(runner, backend):
        report = int8_verification({backend: runner}, jax_fn, test_set, max_accuracy_drop=max_accuracy_drop)
        log(format_int8(report))
        check_int8(report)
        return report, "int8_check_tensorrt"
    return verify


def _benchmark(st: Student, backends: dict, image_shape, batch, repeats, result, log) -> None:
    """Latency of each backend (images float32 [b, H, W, C] -> logits, b in 1 and 32, or batch) into
    <workdir>/export/latency_<student>.md / .json and result."""
    batches = (1, 32) if batch is None else (batch,)
    rows = benchmark_latency(backends, image_shape, batches, repeats=repeats)
    title = (f"Latency of {st.name!r} ({st.spec.name}, input {list(image_shape)}), median of {repeats} warm "
             f"calls, host arrays in and out. Machine: {machine()}.")
    table = format_table(rows, title)
    if "onnxruntime int8" in backends:
        table += "\n\n" + format_int8_table(rows, {"onnxruntime": result["onnx_bytes"],
                                                   "onnxruntime int8": result["int8_onnx_bytes"]})
        ms = {(r["backend"], r["batch"]): r["median_ms"] for r in rows}
        result["int8_speedup"] = {b: ms[("onnxruntime", b)] / ms[("onnxruntime int8", b)] for b in batches}
    log(table)
    bench_base = os.path.join(st.workdir, "export", f"latency_{st.name}")
    os.makedirs(os.path.dirname(bench_base), exist_ok=True)
    with open(bench_base + ".md", "w") as f:
        f.write(table + "\n")
    with open(bench_base + ".json", "w") as f:
        json.dump({"machine": machine(), "rows": rows}, f, indent=2)
    result.update(latency=rows, latency_table=table, latency_path=bench_base + ".md")


def _write_report(result: dict, artifact_path: str) -> dict:
    """result as JSON into <artifact>.export.json; returns it with 'report_path' added."""
    report_path = os.path.splitext(artifact_path)[0] + ".export.json"
    with open(report_path, "w") as f:
        json.dump(result, f, indent=2, default=str)
    result["report_path"] = report_path
    return result
