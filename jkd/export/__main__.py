"""Command line: export a trained student to ONNX or a TensorRT engine, verified, optionally timed.

    python -m jkd.export --workdir /tmp/jkd_quickstart/kd_hinton --student vit --format onnx --benchmark
    python -m jkd.export --workdir DIR --student convnext --format tensorrt --dtype fp16
    python -m jkd.export --workdir DIR --student vit --quantize int8 --benchmark

Exit status: 0 exported and verified; 2 a mistake in the flags or the workdir (message names the
flag); 1 the export failed a check (TensorRT compatibility, parity, engine build, INT8 accuracy), in
which case no artifact is left at the output path (a refused INT8 file leaves the verified fp32 file
it was made from). Messages go to stderr without a traceback.
"""
from __future__ import annotations

import argparse
import sys

from jkd.errors import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    from jkd.export.onnx import DEFAULT_OPSET
    from jkd.export.quantize import DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, DEFAULT_FLOAT_OPS, METHODS
    from jkd.export.verify import DEFAULT_MAX_ACCURACY_DROP
    from jkd.export.tensorrt import DEFAULT_MAX_BATCH
    from jkd.export.verify import DEFAULT_ATOL

    p = argparse.ArgumentParser(prog="python -m jkd.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="trained workdir (has run.json and checkpoints/)")
    p.add_argument("--student", default=None, help="model name in run.json (default: the only one)")
    p.add_argument("--format", default="onnx", choices=("onnx", "tensorrt"), help="artifact (default onnx)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--batch", type=int, default=None, help="fixed batch size")
    size.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension 'B' (the default)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, 17-23 (default {DEFAULT_OPSET}, the highest TensorRT 10.0 parses)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"),
                   help="precision (default fp32; fp16: tensorrt only)")
    p.add_argument("--out", default=None, help="artifact path (default <workdir>/export/<student>.onnx|.engine)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help=f"max abs logit error vs JAX (default {DEFAULT_ATOL:g})")
    p.add_argument("--no-fold-preprocessing", action="store_true",
                   help="graph takes normalised inputs instead of [0, 1] pixels")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"TensorRT profile max batch (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--benchmark", action="store_true", help="time JAX, onnxruntime (and TensorRT) at batch 1 and 32")
    p.add_argument("--repeats", type=int, default=20,
                   help="timed calls per backend and batch, median reported (default 20)")
    q = p.add_argument_group("INT8 (--quantize int8: <name>.int8.onnx next to the fp32 file, docs/EXPORT.md)")
    q.add_argument("--quantize", default=None, choices=("int8",),
                   help="also write the onnxruntime static-quantised QDQ model, checked on the whole test split")
    q.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                   help=f"training images that calibrate the activation ranges (default {DEFAULT_CALIBRATION_IMAGES})")
    q.add_argument("--calibration-method", default=DEFAULT_CALIBRATION_METHOD, choices=METHODS,
                   help=f"activation range: min/max, KL entropy or 99.999th percentile "
                        f"(default {DEFAULT_CALIBRATION_METHOD})")
    q.add_argument("--calibration-seed", type=int, default=0, help="which training images calibrate (default 0)")
    q.add_argument("--max-accuracy-drop", type=float, default=DEFAULT_MAX_ACCURACY_DROP,
                   help=f"refuse the INT8 file when its test accuracy is more than this many points below the "
                        f"JAX model's (default {DEFAULT_MAX_ACCURACY_DROP:g})")
    defaults = "; ".join(f"{k}: {','.join(v)}" for k, v in DEFAULT_FLOAT_OPS.items())
    q.add_argument("--float-ops", default="auto",
                   help=f"comma-separated op types left in float ('none': quantise all onnxruntime can; "
                        f"AttentionMatMul: activation x activation MatMuls); default 'auto' = measured per "
                        f"architecture ({defaults})")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from jkd.export import ExportError, export

    try:
        result = export(args.workdir, args.student, format=args.format, batch=args.batch, opset=args.opset,
                        dtype=args.dtype, out=args.out, atol=args.atol,
                        fold_preprocessing=not args.no_fold_preprocessing, benchmark=args.benchmark,
                        max_batch=args.max_batch, repeats=args.repeats, quantize=args.quantize,
                        calibration_images=args.calibration_images, calibration_method=args.calibration_method,
                        calibration_seed=args.calibration_seed, max_accuracy_drop=args.max_accuracy_drop,
                        float_ops=args.float_ops)
    except ConfigError as e:
        print(f"jkd.export: error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        kept = getattr(e, "fp32_kept", None)  # the INT8 stage failed after the fp32 file was verified
        if kept:
            print(f"jkd.export: INT8 export failed, no INT8 file written (the verified fp32 file stays at {kept}): "
                  f"{e}", file=sys.stderr)
            return 1
        print(f"jkd.export: export failed, nothing written: {e}", file=sys.stderr)
        return 1
    print(f"report: {result['report_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
