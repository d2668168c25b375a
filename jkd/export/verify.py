"""Numerical parity of an exported graph against the JAX model it came from.

Both run on the same inputs: random [0, 1] pixels at batch 1 and at the chunk size, and real
eval images from the workdir's dataset (digits test split; a TFDS eval split when prepared
offline, else the report says it fell back to random inputs). Reported per input set: max abs
error of the logits, max relative error (max abs error / max |JAX logit|, so near-zero logits do
not blow it up), top-1 agreement, and accuracy of both when labels exist.

Tolerance: fp32 1e-4 abs on logits. jax2onnx maps each op 1:1, so the remaining differences are
float reassociation in matmuls/convs (measured ~1e-6 on the tiny students and ConvNeXt-T); 1e-4
leaves headroom for ViT-S/ConvNeXt-T logits of magnitude ~10 while a wrong weight, a dropped
op or a wrong layout shows up as errors of order 1e-2 and above.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from jkd.errors import ConfigError
from jkd.export.errors import ExportError, ParityError, QuantizationError

DEFAULT_ATOL = 1e-4
DEFAULT_MAX_ACCURACY_DROP = 1.0  # INT8 files: points of test accuracy they may lose vs the JAX model (issue 19 sets 1)
CHUNK = 32  # the batch the real images are fed in (also the benchmark's large batch)


@dataclasses.dataclass
class InputSet:
    label: str
    images: np.ndarray        # [N, H, W, C] in the graph's input space (pixels if folded)
    labels: np.ndarray | None  # [N] int, or None for random inputs
    batch: int                # fed in chunks of this size (last chunk padded)


def random_inputs(image_shape, preprocessing, n: int, seed: int) -> np.ndarray:
    """n random images in the graph's input space: uniform [0, 1] pixels (normalised if not folded)."""
    pixels = np.random.default_rng(seed).uniform(0.0, 1.0, (n, *image_shape)).astype(np.float32)
    return pixels if preprocessing is None or preprocessing.fold else preprocessing.normalise(pixels).astype(np.float32)


def real_eval_images(config: dict, image_shape, preprocessing, n: int, split: str = "eval"):
    """(images [n', H, W, C] in the graph's input space, labels [n'], description) or None + reason.

    split 'eval': the run's eval split (digits: test), the parity check's and the INT8 check's
    images; 'train': its training split (digits: train), un-augmented, for INT8 calibration."""
    data = config.get("data", {})
    name = data.get("name", "digits")
    size, _, channels = image_shape
    norm = dict(image_size=size, channels=channels, mean=preprocessing.mean if preprocessing else data.get("mean", 0.5),
                std=preprocessing.std if preprocessing else data.get("std", 0.5))
    try:
        if name == "digits":
            from jkd.data.digits import load_digits_split
            which = "train" if split == "train" else "test"
            images, labels = load_digits_split(which, **{**norm, "mean": np.asarray(norm["mean"], np.float32),
                                                         "std": np.asarray(norm["std"], np.float32)})
            desc = f"digits {which} split (first {min(n, len(labels))} of {len(labels)})"
        else:
            import ml_collections

            from jkd.data import make_data
            # make_data's eval stream is in order and un-augmented: pointing it at the train split
            # gives the training images as the model saw them before augmentation.
            which = data.get("train_split", "train") if split == "train" else data.get("eval_split", "test")
            cfg = ml_collections.ConfigDict({**data, "labelled_fraction": 1.0, "labelled_only": False,
                                             "eval_split": which})
            d = make_data(cfg, seed=0, global_batch_size=CHUNK, eval_batch_size=CHUNK, process_index=0, process_count=1)
            images, labels = [], []
            for batch in d.eval_batches():
                keep = batch["mask"] > 0
                images.append(np.asarray(batch["image"])[keep])
                labels.append(np.asarray(batch["label"])[keep])
                if sum(len(x) for x in labels) >= n:
                    break
            images, labels = np.concatenate(images), np.concatenate(labels)
            desc = f"{name} {which} split (first {min(n, len(labels))})"
    except Exception as e:  # best effort: TFDS raises many types for unprepared/missing data; say why, go on
        return None, f"real {split} images unavailable ({type(e).__name__}: {str(e).splitlines()[0]})"
    images, labels = images[:n].astype(np.float32), labels[:n]
    if preprocessing is not None and preprocessing.fold:
        images = preprocessing.to_pixels(images).astype(np.float32)
    return (images, labels, desc), None


def verification_inputs(image_shape, preprocessing, config: dict | None, *, batch: int | None,
                        n_random: int = CHUNK, n_real: int = 256, seed: int = 0):
    """Input sets for `parity` and a list of notes (e.g. why no real images were used).

    batch=None (symbolic): random inputs at batch 1 and at CHUNK, real images in chunks of CHUNK;
    a fixed batch B: everything in chunks of B.
    """
    notes = []
    sets = []
    label = "random pixels U[0,1]" + ("" if preprocessing is None or preprocessing.fold else ", normalised")
    if batch is None:
        sets.append(InputSet(label, random_inputs(image_shape, preprocessing, 1, seed), None, 1))
        sets.append(InputSet(label, random_inputs(image_shape, preprocessing, n_random, seed + 1), None, CHUNK))
    else:
        sets.append(InputSet(label, random_inputs(image_shape, preprocessing, max(batch, n_random), seed), None, batch))
    if config is not None and n_real > 0:
        real, why = real_eval_images(config, image_shape, preprocessing, n_real)
        if real is None:
            notes.append(f"{why}; random inputs only")
        else:
            images, labels, desc = real
            sets.append(InputSet(desc, images, labels, batch or CHUNK))
    return sets, notes


def _chunked(fn, images: np.ndarray, batch: int) -> np.ndarray:
    """fn on fixed-size chunks (last one padded by repetition), so each backend sees one shape."""
    outs = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        outs.append(np.asarray(fn(chunk))[:real])
    return np.concatenate(outs)


def ort_session(path_or_bytes, threads: int = 0):
    """onnxruntime CPU session; a file ORT cannot load raises ExportError (corrupt/truncated)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(path_or_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        where = path_or_bytes if isinstance(path_or_bytes, str) else "the model"
        raise ExportError(f"onnxruntime cannot load {where}: {type(e).__name__}: {str(e)[:500]}") from None


def ort_fn(session):
    """images -> logits through an onnxruntime session."""
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.ascontiguousarray(images, np.float32)})[0]


def parity(run_exported, run_jax, input_sets, *, atol: float = DEFAULT_ATOL, rtol: float = 0.0,
           backend: str = "onnxruntime") -> dict:
    """Compare two images -> logits functions on every input set; returns the report (no raising).

    A set passes when every logit is finite and max abs error <= atol + rtol * max |JAX logit|
    (rtol is for reduced-precision engines; fp32 uses atol alone)."""
    rows = []
    for s in input_sets:
        got = _chunked(run_exported, s.images, s.batch).astype(np.float32)
        ref = _chunked(run_jax, s.images, s.batch).astype(np.float32)
        if got.shape != ref.shape:
            rows.append({"inputs": s.label, "n": len(s.images), "batch": s.batch, "ok": False,
                         "error": f"shape {got.shape} != JAX {ref.shape}"})
            continue
        finite = bool(np.isfinite(got).all())
        err = float(np.abs(got - ref).max()) if finite else float("inf")
        scale = float(np.abs(ref).max())
        row = {"inputs": s.label, "n": len(s.images), "batch": s.batch, "max_abs_err": err,
               "mean_abs_err": float(np.abs(got - ref).mean()) if finite else float("inf"),
               "max_rel_err": err / max(scale, 1e-12),
               "top1_agree": int((got.argmax(-1) == ref.argmax(-1)).sum()), "ok": finite and err <= atol + rtol * scale}
        if s.labels is not None:
            row["accuracy_exported"] = float((got.argmax(-1) == s.labels).mean())
            row["accuracy_jax"] = float((ref.argmax(-1) == s.labels).mean())
        rows.append(row)
    return {"backend": backend, "atol": atol, "rtol": rtol, "ok": all(r["ok"] for r in rows), "rows": rows}


def format_parity(report: dict) -> str:
    tol = f"{report['atol']:g} abs" + (f" + {report['rtol']:g} x max |logit|" if report.get("rtol") else "")
    lines = [f"parity {report['backend']} vs JAX (tolerance {tol} on logits):",
             f"  {'inputs':<44} {'n':>5} {'batch':>5} {'max abs err':>12} {'max rel err':>12} "
             f"{'top-1 agree':>12}  accuracy (exported / JAX)"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"  {r['inputs']:<44} {r['n']:>5} {r['batch']:>5}  FAILED: {r['error']}")
            continue
        acc = (f"{100 * r['accuracy_exported']:.2f}% / {100 * r['accuracy_jax']:.2f}%" if "accuracy_jax" in r else "-")
        flag = "" if r["ok"] else "   <-- outside tolerance"
        lines.append(f"  {r['inputs']:<44} {r['n']:>5} {r['batch']:>5} {r['max_abs_err']:>12.2e} "
                     f"{r['max_rel_err']:>12.2e} {r['top1_agree']:>6}/{r['n']:<5}  {acc}{flag}")
    return "\n".join(lines)


def check_parity(report: dict) -> None:
    if not report["ok"]:
        raise ParityError("exported graph and JAX disagree beyond tolerance:\n" + format_parity(report))


def int8_verification(backends: dict, jax_fn, test_set, *, max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
                      check: str | None = None) -> dict:
    """Accuracy of JAX and of each backend {label: images -> logits} on test_set (an InputSet with
    labels), top-1 agreement and max |logit error| vs JAX. `check` (default: the last backend) is the
    one held to max_accuracy_drop points below JAX; ok also needs finite logits."""
    rows = []
    for label, fn in backends.items():
        row = parity(fn, jax_fn, [test_set], atol=math.inf, backend=label)["rows"][0]
        rows.append({"model": label, "n": row["n"], "accuracy": row.get("accuracy_exported"),
                     "accuracy_jax": row.get("accuracy_jax"), "top1_agree": row.get("top1_agree"),
                     "max_abs_err": row.get("max_abs_err"), "mean_abs_err": row.get("mean_abs_err"),
                     "finite": row["ok"], "error": row.get("error")})
    checked = next(r for r in rows if r["model"] == (check or rows[-1]["model"]))
    acc_jax = rows[0]["accuracy_jax"]
    # rounded: 100 * (1.0 - 0.98) is 2.0000000000000018, which must not fail a 2-point allowance
    drop = None if checked["accuracy"] is None else round(100 * (acc_jax - checked["accuracy"]), 9)
    ok = checked["finite"] and drop is not None and drop <= max_accuracy_drop
    return {"inputs": test_set.label, "n": len(test_set.images), "accuracy_jax": acc_jax, "rows": rows,
            "checked": checked["model"], "drop_points": drop, "max_accuracy_drop": max_accuracy_drop, "ok": ok}


def format_int8(report: dict) -> str:
    lines = [f"INT8 check on {report['inputs']} (all {report['n']} images), accuracy vs the JAX model as trained:",
             f"  {'model':<28} {'accuracy':>9} {'vs JAX (points)':>16} {'top-1 agree with JAX':>21} "
             f"{'max |logit err|':>16} {'mean |logit err|':>17}",
             f"  {'JAX (fp32, as trained)':<28} {100 * report['accuracy_jax']:>8.2f}% {'-':>16} {'-':>21} {'-':>16} "
             f"{'-':>17}"]
    for r in report["rows"]:
        if r["error"]:
            lines.append(f"  {r['model']:<28} FAILED: {r['error']}")
            continue
        agree = f"{r['top1_agree']}/{r['n']}"
        change = 100 * (r["accuracy"] - r["accuracy_jax"])
        lines.append(f"  {r['model']:<28} {100 * r['accuracy']:>8.2f}% {change:>+16.2f} "
                     f"{agree:>21} {r['max_abs_err']:>16.3g} {r['mean_abs_err']:>17.3g}"
                     + ("" if r["finite"] else "   <-- non-finite logits"))
    verdict = "ok" if report["ok"] else "REFUSED"
    d = report["drop_points"]
    drop = "n/a" if d is None else f"{d:.2f} points" + (" (it scored higher)" if d < 0 else "")
    lines.append(f"  {report['checked']}: accuracy drop vs JAX {drop}, allowed {report['max_accuracy_drop']:g} "
                 f"(--max-accuracy-drop): {verdict}")
    return "\n".join(lines)


def check_int8(report: dict) -> None:
    if not report["ok"]:
        raise QuantizationError("the INT8 model loses more accuracy than allowed:\n"
                                + format_int8(report))


def summary(report: dict) -> dict:
    """The INT8 check's numbers, for the file's metadata (jkd.int8_check) and the report."""
    keys = ("inputs", "n", "accuracy_jax", "checked", "drop_points", "max_accuracy_drop", "ok")
    return {**{k: report[k] for k in keys},
            "rows": [{k: r[k] for k in ("model", "accuracy", "top1_agree", "max_abs_err", "mean_abs_err")}
                     for r in report["rows"]]}


def verify_onnx(path: str, workdir: str | None = None, student: str | None = None, *,
                atol: float = DEFAULT_ATOL, n_real: int = 256) -> dict:
    """Check an existing .onnx file against a workdir's checkpoint (default: the workdir, student
    and step recorded in its metadata). Raises ExportError if unloadable or made from another
    model, ParityError if the numbers disagree; returns the parity report. An INT8 file (metadata
    jkd.quantization) is held to its recorded accuracy allowance on the whole test split instead
    (QuantizationError; returns the INT8 check's report)."""
    from jkd.export.onnx import read_metadata
    from jkd.export.student import inference_fn, load_student

    try:
        meta = read_metadata(path)
    except Exception as e:
        raise ExportError(f"cannot read {path} as ONNX: {type(e).__name__}: {str(e)[:300]}") from None
    workdir = workdir or meta.get("jkd.workdir")
    student = student or meta.get("jkd.student")
    if not workdir:
        raise ConfigError(f"--workdir: {path} records no workdir in its metadata; pass the workdir to check against")
    loaded = load_student(workdir, student, fold_preprocessing=meta.get("jkd.preprocessing_folded", True))
    recorded = meta.get("jkd.model_spec")
    if recorded is not None and recorded != loaded.spec.to_json():
        raise ParityError(f"{path} was exported from {recorded}, but {workdir} student {loaded.name!r} is "
                          f"{loaded.spec.to_json()}")
    session = ort_session(path)
    shape = session.get_inputs()[0].shape
    batch = shape[0] if isinstance(shape[0], int) else None
    image_shape = (loaded.spec.image_size, loaded.spec.image_size, loaded.spec.in_channels)
    if tuple(shape[1:]) != image_shape:
        raise ParityError(f"{path} takes inputs {shape}, but {loaded.name!r} takes "
                          f"[B, {', '.join(map(str, image_shape))}]")
    import jax
    jax_fn = jax.jit(inference_fn(loaded.reference_spec, loaded.params, loaded.preprocessing))
    if "jkd.quantization" in meta:  # an INT8 file: held to its accuracy allowance, not to a logit tolerance
        real, why = real_eval_images(loaded.config, image_shape, loaded.preprocessing, 10**9)
        if real is None:
            raise ConfigError(f"--workdir: checking the INT8 file {path} needs the run's test images: {why}")
        images, labels, desc = real
        allowed = (meta.get("jkd.int8_check") or {}).get("max_accuracy_drop", DEFAULT_MAX_ACCURACY_DROP)
        report = int8_verification({"ONNX INT8 (onnxruntime)": ort_fn(session)}, jax_fn,
                                   InputSet(desc.split(" (first")[0], images, labels, batch or CHUNK),
                                   max_accuracy_drop=allowed)
        check_int8(report)
        return report
    sets, _ = verification_inputs(image_shape, loaded.preprocessing, loaded.config, batch=batch, n_real=n_real)
    report = parity(ort_fn(session), jax_fn, sets, atol=atol)
    check_parity(report)
    return report


def eval_set_logits(workdir: str, student: str | None = None, *, n: int | None = None):
    """(logits [N, K], labels [N], pixels [N, H, W, C] in [0, 1]) of a trained model on its run's
    eval split (the first n examples; None = all), through the same jitted eval-mode function the
    export is checked against. Per-example predictions for paired comparisons (jkd.evaluate)."""
    import jax

    from jkd.export.student import inference_fn, load_student

    loaded = load_student(workdir, student)
    image_shape = (loaded.spec.image_size, loaded.spec.image_size, loaded.spec.in_channels)
    real, why = real_eval_images(loaded.config, image_shape, loaded.preprocessing, n or 10**9)
    if real is None:
        raise ConfigError(f"--workdir: {workdir}: {why}")
    pixels, labels, _ = real
    fn = jax.jit(inference_fn(loaded.reference_spec, loaded.params, loaded.preprocessing))
    return _chunked(fn, pixels, CHUNK), np.asarray(labels), pixels
