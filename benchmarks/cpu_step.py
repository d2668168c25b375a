"""CPU timing of jkd models at the quickstart size: per model the supervised train step (compile
time, median step) and the eval forward (images/s); with --quickstart also the real distillation
step and eval step of configs/quickstart.py (teacher + both students, via jkd.bench).

    python benchmarks/cpu_step.py --models vit_pico4,vit_atto4,convnext_atto --batch 64 --image 16
    python benchmarks/cpu_step.py --quickstart            (configs/quickstart.py's models, batch, size)
"""
import argparse
import json
import time

import jax
import numpy as np
import optax

from jkd.train.state import ModelSpec, apply_model, graphdef_and_shapes, init_params
from jkd import losses


def time_eval(graphdef, params, spec, batch, repeats):
    """Median seconds of one jitted eval forward (deterministic, key=None) on [batch, H, W, C]."""
    x = jax.numpy.zeros((batch, spec.image_size, spec.image_size, spec.in_channels))
    fwd = jax.jit(lambda p, x: apply_model(graphdef, p, x))
    fwd(params, x).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fwd(params, x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_model(spec, batch, repeats, eval_batch=256):
    graphdef, _ = graphdef_and_shapes(spec)
    params = init_params(spec, 0)
    tx = optax.adamw(1e-3)
    opt = tx.init(params)
    x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(batch, spec.image_size, spec.image_size,
                                                                 spec.in_channels)).astype(np.float32))
    y = jax.numpy.asarray(np.arange(batch) % spec.num_classes)

    @jax.jit
    def step(params, opt, x, y):
        def loss_fn(p):
            return losses.cross_entropy(apply_model(graphdef, p, x), y)
        loss, g = jax.value_and_grad(loss_fn)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, loss

    t0 = time.perf_counter()
    params, opt, loss = step(params, opt, x, y)
    loss.block_until_ready()
    compile_s = time.perf_counter() - t0
    times, cpu = [], []  # wall, and process CPU time (robust to other load on a shared machine)
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        params, opt, loss = step(params, opt, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    eval_s = time_eval(graphdef, params, spec, eval_batch, repeats)
    return {"model": spec.name, "kwargs": dict(spec.kwargs), "batch": batch, "compile_s": round(compile_s, 2),
            "step_ms_median": round(1000 * float(np.median(times)), 2),
            "step_cpu_ms_median": round(1000 * float(np.median(cpu)), 2),
            "train_img_per_s": round(batch / float(np.median(times)), 1),
            "eval_batch": eval_batch, "eval_img_per_s": round(eval_batch / eval_s, 1)}


def quickstart(repeats):
    """The quickstart distillation step and eval step (teacher + every student) through jkd.bench."""
    import importlib.util
    import pathlib

    from jkd import bench

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.py"
    mod = importlib.util.spec_from_file_location("quickstart_config", path)
    cfg_module = importlib.util.module_from_spec(mod)
    mod.loader.exec_module(cfg_module)
    c = cfg_module.get_config()
    strides = {e.get("kwargs", {}).get("stem_stride") for e in c.students.values()} - {None}
    args = ["--teacher", c.teacher.model.name, "--students", ",".join(e.name for e in c.students.values()),
            "--batch", str(c.batch_size), "--image", str(c.data.image_size), "--channels", str(c.data.channels),
            "--classes", "10", "--dtype", c.dtype, "--eval", "--warmup", "2", "--steps", "5",
            "--repeats", str(repeats), "--crop-scale", ",".join(map(str, c.augment.crop_scale or ()))]
    if c.augment.flip:
        args.append("--flip")
    if strides:
        args += ["--stem-stride", str(strides.pop())]
    bench.main(args)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vit_pico4,vit_atto4,convnext_atto")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image", type=int, default=16)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--stem-stride", type=int, default=2)
    ap.add_argument("--dw-impls", default="conv,shift")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--quickstart", action="store_true", help="time configs/quickstart.py's distill + eval step")
    args = ap.parse_args()
    if args.quickstart:
        return quickstart(args.repeats)
    for name in args.models.split(","):
        variants = [()]
        if name.startswith("convnext"):
            variants = [(("dw_impl", impl), ("stem_stride", args.stem_stride)) for impl in args.dw_impls.split(",")]
        for kw in variants:
            spec = ModelSpec(name, 10, args.image, args.channels, kwargs=tuple(sorted(kw)))
            print(json.dumps(time_model(spec, args.batch, args.repeats, args.eval_batch)), flush=True)


if __name__ == "__main__":
    main()
