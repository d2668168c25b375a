"""Throughput of the real jkd distillation step (and eval step) on synthetic on-device data.

    python -m jkd.bench --teacher vit_b16 --students vit_s16 --batch 256 --image 224 --dtype bfloat16 \
        --attention cudnn --attention-pad 64 --peak --peer
    python -m jkd.bench --teacher vit_femto4 --students vit_atto4,convnext_atto --batch 64 --image 16 \
        --channels 1 --classes 10 --stem-stride 2 --eval          (the quickstart sizes, CPU)

The step is the trainers' own, built by the function jkd.train.loop.fit uses
(jkd.train.loop.compile_steps: make_train_step with its optimizers, shardings, donated state and
non-finite guard) with objectives from jkd.train.objectives.resolve_objective on
jkd.config.base_config() defaults (Hinton KD, AdamW + global-norm clipping). The teacher runs once
per step in inference mode (key=None, stop_gradient). Augmentation is off unless --crop-scale /
--flip, as in the peer script's step.

Timing: --warmup steps (compilation excluded), then --repeats blocks of --steps steps, each block
closed by block_until_ready; step_ms is the median block time / steps; img_per_s = batch / step.
FLOPs (jkd.flops): an analytic count of the matmul/conv FLOPs (`forward_flops`; training = teacher
forward + 3x each student's forward, the usual fwd + 2x bwd convention), and XLA's own count of the
compiled step (cost_analysis; includes elementwise work; custom calls such as cuDNN attention count
0) as a cross-check. MFU = analytic FLOPs/s over the bf16 matmul peak measured in the same process
(--peak).

Every result is one JSON line on stdout (and appended to --out): kind = peak | jkd | jkd_eval | peer |
ratio | no_ratio. --peer runs PyTorch + timm's step (benchmarks/peer_timm_kd.py; jkd.bench_peer) with
the same shapes, dtype and timing protocol in a subprocess *before* JAX touches the device (JAX then
takes most of the GPU memory), on one device (--devices defaults to 1 with --peer), and prints a
ratio only where both sides timed the same work (else a no_ratio record saying why).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from jkd.bench_peer import PEER_SCRIPT, peer_names, ratio_record, run_peer, summarize
from jkd.flops import forward_flops, train_step_flops, xla_flops

def _sig(x: float, digits: int = 4) -> float:
    """x rounded to `digits` significant digits (JSON-friendly)."""
    return float(f"{x:.{digits}g}")


def matmul_peak(dtype: str, size: int, repeats: int = 20) -> dict:
    """Measured dense matmul rate: [size, size] @ [size, size] in `dtype`, median of `repeats`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(k2, (size, size), jnp.float32).astype(dtype)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    return {"kind": "peak", "dtype": dtype, "size": size, "tflops": _sig(2 * size ** 3 / sec / 1e12),
            "ms": round(1e3 * sec, 3)}


def attention_probe(batch: int, tokens: int, heads: int, head_dim: int, dtype: str, pads=(0, 8, 64, 128),
                    repeats: int = 20) -> list[dict]:
    """Forward + backward time of one attention [batch, tokens, heads, head_dim] per (impl, pad_to).

    The ViT's own attention function (jkd.models.vit._padded_attention); a variant that fails to
    compile (cuDNN rejecting a shape) is reported with its error instead of a time.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jkd.models.vit import _padded_attention

    q, k, v = (jax.random.normal(key, (batch, tokens, heads, head_dim), jnp.float32).astype(dtype)
               for key in jax.random.split(jax.random.PRNGKey(0), 3))
    out = []
    for impl in ("xla", "cudnn"):
        for pad in pads:
            rec = {"kind": "attention", "impl": impl, "pad_to": pad, "batch": batch, "tokens": tokens,
                   "heads": heads, "head_dim": head_dim, "dtype": dtype}
            try:
                f = jax.jit(jax.grad(lambda q, k, v: _padded_attention(q, k, v, pad, impl).astype(jnp.float32).sum(),
                                     argnums=(0, 1, 2)))
                jax.block_until_ready(f(q, k, v))
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(q, k, v))
                    times.append(time.perf_counter() - t0)
                rec["fwd_bwd_ms"] = _sig(1e3 * float(np.median(times)))
            except Exception as e:  # cuDNN rejects some shapes/dtypes/backends: record why
                rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            out.append(rec)
    return out


def make_specs(args):
    """(teacher ModelSpecs, {student name: ModelSpec}) from the CLI; the attention options go to every ViT."""
    from jkd.models import check_model
    from jkd.train.state import ModelSpec

    def spec(name):
        kw = {}
        if name.startswith("vit_"):
            if args.attention != "xla":
                kw["attention_impl"] = args.attention
            if args.attention_pad:
                kw["attention_pad_to"] = args.attention_pad
        else:
            if args.stem_stride:
                kw["stem_stride"] = args.stem_stride
            if args.dw_impl:
                kw["dw_impl"] = args.dw_impl
        check_model(name, image_size=args.image, field=f"--teacher/--students {name!r}", **kw)
        return ModelSpec(name, args.classes, args.image, args.channels, kwargs=tuple(sorted(kw.items())),
                         dtype=args.dtype)

    teachers = [spec(n) for n in args.teacher.split(",") if n]
    students = {f"s{i}_{n}": spec(n) for i, n in enumerate(args.students.split(","))}
    return teachers, students


def build(args, teacher_specs, student_specs) -> dict:
    """What jkd.train.loop.fit runs, built by the same jkd.train.loop.compile_steps: the steps
    (CompiledSteps), the mesh, the initial state, teacher params (random, seeds 1, 2, ...) and one
    synthetic batch (image [batch, image, image, channels], label, label_mask), all placed."""
    import jax
    import jax.numpy as jnp

    from jkd import sharding
    from jkd.config import base_config, model_config
    from jkd.train.loop import compile_steps
    from jkd.train.objectives import resolve_objective
    from jkd.train.state import graphdef_and_shapes, init_params

    config = base_config()
    config.trainer, config.dtype, config.batch_size = "distill", args.dtype, args.batch
    config.steps, config.optimizer.warmup_steps = 10_000, 10
    # Off by default: the peer step has no augmentation.
    config.augment.crop_scale = tuple(float(v) for v in args.crop_scale.split(",")) if args.crop_scale else None
    config.augment.flip = args.flip
    for name, s in student_specs.items():
        config.students[name] = model_config(s.name, **dict(s.kwargs))
    objectives = {n: resolve_objective(config, n, config.students[n], s, teacher_specs)
                  for n, s in student_specs.items()}
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:args.devices] if args.devices else None)
    sharding.check_batch_size(args.batch, mesh)
    teachers = tuple((s, graphdef_and_shapes(s)[0], init_params(s, 1 + i)) for i, s in enumerate(teacher_specs))
    steps = compile_steps(config, mesh, student_specs, num_classes=args.classes, teachers=teachers,
                          objectives=objectives)
    key = jax.random.PRNGKey(2)
    shape = (args.batch, args.image, args.image, args.channels)
    batch = jax.device_put({
        "image": jax.random.normal(key, shape, jnp.float32),
        "label": jax.random.randint(key, (args.batch,), 0, args.classes, jnp.int32),
        "label_mask": jnp.ones((args.batch,), jnp.float32)}, steps.batch_sharding)
    return dict(steps=steps, mesh=mesh, state=steps.init(), batch=batch,
                teacher_params=jax.device_put(tuple(t[2] for t in teachers), steps.teacher_shardings))


def _time_blocks(run_block, warmup: int, steps: int, repeats: int) -> tuple[list[float], list[float]]:
    """(wall seconds per step, process CPU seconds per step) for each of `repeats` blocks of `steps`
    calls, after `warmup` calls. The CPU time (all threads) is what a CPU step costs independent of
    other load on a shared machine; on a GPU it is only the host's dispatch work."""
    for _ in range(warmup):
        run_block(1)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        run_block(steps)
        wall.append((time.perf_counter() - t0) / steps)
        cpu.append((time.process_time() - c0) / steps)
    return wall, cpu


def peak_memory_gib() -> float | None:
    """Peak bytes in use on device 0 since start (None on backends without memory stats, e.g. CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return round(stats["peak_bytes_in_use"] / 2 ** 30, 3) if "peak_bytes_in_use" in stats else None


def bench_train(args, teacher_specs, student_specs, peak_tflops: float | None) -> tuple[dict, dict]:
    """Time the distillation step. Returns (JSON record, the built pieces for bench_eval)."""
    import jax
    import numpy as np

    from jkd.models import count_params

    b = build(args, teacher_specs, student_specs)
    t0 = time.perf_counter()
    compiled = b["steps"].train_step.lower(b["state"], b["batch"], b["teacher_params"]).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": b["state"]}

    def run_block(n):
        state = holder["state"]
        for _ in range(n):
            state, metrics, _ = compiled(state, b["batch"], b["teacher_params"])
        jax.block_until_ready((state, metrics))
        holder["state"] = state
        holder["metrics"] = metrics

    times, cpu_times = _time_blocks(run_block, args.warmup, args.steps, args.repeats)
    sec = float(np.median(times))
    flops_img = train_step_flops(teacher_specs, student_specs.values())
    xla = xla_flops(compiled)
    achieved = flops_img * args.batch / sec / 1e12
    losses = {k: float(v) for k, v in jax.device_get(holder["metrics"]).items() if k.endswith("/loss")}
    teacher_counts = [count_params(p) for p in b["teacher_params"]]
    rec = {
        "kind": "jkd", "teacher": args.teacher, "students": args.students, "batch": args.batch,
        "image": args.image, "dtype": args.dtype, "attention": args.attention, "attention_pad": args.attention_pad,
        "dw_impl": args.dw_impl or "auto", "crop_scale": args.crop_scale, "flip": args.flip,
        "img_per_s": round(args.batch / sec, 1), "step_ms": round(1e3 * sec, 3),
        "step_ms_blocks": [round(1e3 * t, 3) for t in times], "host_cpu_ms": _sig(1e3 * float(np.median(cpu_times))),
        "compile_s": round(compile_s, 2),
        "model_gflop_per_img": _sig(flops_img / 1e9),
        "xla_gflop_per_img": None if xla is None else _sig(xla / args.batch / 1e9),
        "tflops": _sig(achieved), "peak_tflops": peak_tflops,
        "mfu": None if not peak_tflops else _sig(achieved / peak_tflops, 3),
        "peak_memory_gib": peak_memory_gib(), "losses": losses,
        "finite": bool(np.all(np.isfinite(list(losses.values())))),
        "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # What jkd.bench_peer.pair_mismatch compares with the peer's record (XLA's CPU thread pool
        # spans the cores this process may use).
        "channels": args.channels, "classes": args.classes,
        "devices": int(b["mesh"].devices.size), "threads": len(os.sched_getaffinity(0)),
        "teacher_params": teacher_counts[0] if len(teacher_counts) == 1 else teacher_counts,
        "student_params": [count_params(b["state"].params[n]) for n in student_specs],
    }
    b["state"] = holder["state"]
    return rec, b


def bench_eval(args, b: dict, teacher_specs, student_specs) -> dict:
    """Time jkd.train.step.make_eval_step (teachers + every student, forward only) on the same batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    eval_step = b["steps"].eval_step
    batch = {"image": b["batch"]["image"], "label": b["batch"]["label"],
             "mask": jnp.ones_like(b["batch"]["label_mask"])}
    params = b["state"].params

    def run_block(n):
        outs = [eval_step(params, batch, b["teacher_params"]) for _ in range(n)]
        jax.block_until_ready(outs)

    times, cpu_times = _time_blocks(run_block, max(args.warmup, 1), args.steps, args.repeats)
    sec = float(np.median(times))
    flops_img = sum(forward_flops(s) for s in list(teacher_specs) + list(student_specs.values()))
    return {"kind": "jkd_eval", "teacher": args.teacher, "students": args.students, "batch": args.batch,
            "image": args.image, "dtype": args.dtype, "img_per_s": round(args.batch / sec, 1),
            "step_ms": round(1e3 * sec, 3), "host_cpu_ms": _sig(1e3 * float(np.median(cpu_times))),
            "model_gflop_per_img": _sig(flops_img / 1e9),
            "tflops": _sig(flops_img * args.batch / sec / 1e12), "backend": jax.default_backend()}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m jkd.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="vit_b16", help="jkd model name(s); comma-separated = an ensemble")
    ap.add_argument("--students", default="vit_s16", help="comma-separated jkd model names, trained in one step")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--stem-stride", type=int, default=0, help="ConvNeXt stem stride (0 = the model default, 4)")
    ap.add_argument("--dw-impl", default="", help="ConvNeXt depthwise conv: auto | conv | shift ('' = auto)")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype; params stay fp32")
    ap.add_argument("--attention", default="xla", choices=("xla", "cudnn"), help="ViT attention_impl")
    ap.add_argument("--attention-pad", type=int, default=0, help="ViT attention_pad_to (0 = no padding)")
    ap.add_argument("--crop-scale", default="", help="on-device random-resized crop area range 'min,max' in the step "
                    "('' = none, as the peer)")
    ap.add_argument("--flip", action="store_true", help="on-device random horizontal flips in the step")
    ap.add_argument("--devices", type=int, default=0, help="use the first N devices (0 = all, or 1 with --peer, "
                    "which runs on one device; data parallel)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks (the median is reported)")
    ap.add_argument("--eval", action="store_true", help="also time the eval step")
    ap.add_argument("--peak", action="store_true", help="measure the matmul peak (for MFU)")
    ap.add_argument("--attention-probe", default="", metavar="B,T,HEADS,HEAD_DIM",
                    help="only time one attention fwd+bwd per implementation/padding (e.g. 256,197,6,64)")
    ap.add_argument("--peak-size", type=int, default=0, help="peak probe matrix side (0: 8192 on GPU, 1024 on CPU)")
    ap.add_argument("--peer", nargs="?", const=str(PEER_SCRIPT), default=None,
                    help="first run the PyTorch + timm peer step (path; default: this repository's "
                    "benchmarks/peer_timm_kd.py) and print jkd's ratio to it where both timed the same work")
    ap.add_argument("--peer-python", default="", help="python for the peer (default: this one)")
    ap.add_argument("--peer-teacher", default="", help="timm teacher name (default: mapped from --teacher)")
    ap.add_argument("--peer-students", default="", help="timm student names (default: mapped)")
    ap.add_argument("--peer-modes", default="eager,compile", help="peer modes: eager, compile")
    ap.add_argument("--peer-device", default="auto", choices=("auto", "cpu", "cuda"), help="the peer's torch device "
                    "(auto: cuda if torch sees one)")
    ap.add_argument("--peer-timeout", type=int, default=600)
    ap.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before JAX starts its backend")
    ap.add_argument("--out", default="", help="also append the JSON lines to this file")
    ap.add_argument("--summary", default="", metavar="JSONL",
                    help="only print a table of the jkd and peer records in this file (ratios within the file)")
    return ap.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.summary:
        print(summarize(args.summary))
        return []
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    records = []

    def emit(rec):
        records.append(rec)
        line = json.dumps(rec)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")

    if args.peer and not args.devices:  # one device on both sides unless --devices says otherwise
        args.devices = 1
    # The peer runs first, in its own process, while this process holds no device memory yet.
    for rec in run_peer(args) if args.peer else []:
        emit(rec)
    import jax

    if args.attention_probe:
        for rec in attention_probe(*map(int, args.attention_probe.split(",")), dtype=args.dtype):
            emit(rec)
        return records
    teacher_specs, student_specs = make_specs(args)
    peak = None
    if args.peak:
        size = args.peak_size or (1024 if jax.default_backend() == "cpu" else 8192)
        rec = matmul_peak(args.dtype, size)
        peak = rec["tflops"]
        emit(rec)
    rec, built = bench_train(args, teacher_specs, student_specs, peak)
    if args.peer:
        rec["timm_teacher"], rec["timm_students"] = peer_names(args)
    emit(rec)
    for p in [r for r in records if r["kind"] in ("peer", "peer_error")]:
        emit(ratio_record(rec, p))
        if records[-1]["kind"] == "no_ratio":
            print(f"jkd.bench: no ratio vs {p.get('peer', 'the peer')}: {records[-1]['why']}", file=sys.stderr)
    if args.eval:
        emit(bench_eval(args, built, teacher_specs, student_specs))
    return records


if __name__ == "__main__":
    from jkd.errors import ConfigError

    try:
        main()
    except ConfigError as e:  # a bad model name or option: the message names it
        print(f"jkd.bench: error: {e}", file=sys.stderr)
        sys.exit(2)
