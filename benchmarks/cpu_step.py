"""CPU train-step timing of jkd models at the quickstart size (compile time and median step time).

    python benchmarks/cpu_step.py --models vit_pico4,vit_atto4,convnext_atto --batch 64 --image 16
"""
import argparse
import json
import time

import jax
import numpy as np
import optax

from jkd.train.state import ModelSpec, apply_model, graphdef_and_shapes, init_params
from jkd import losses


def time_model(spec, batch, repeats):
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
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, opt, loss = step(params, opt, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"model": spec.name, "kwargs": dict(spec.kwargs), "batch": batch, "compile_s": round(compile_s, 2),
            "step_ms_median": round(1000 * float(np.median(times)), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vit_pico4,vit_atto4,convnext_atto")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image", type=int, default=16)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--stem-stride", type=int, default=2)
    ap.add_argument("--dw-impls", default="conv,shift")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    for name in args.models.split(","):
        variants = [()]
        if name.startswith("convnext"):
            variants = [(("dw_impl", impl), ("stem_stride", args.stem_stride)) for impl in args.dw_impls.split(",")]
        for kw in variants:
            spec = ModelSpec(name, 10, args.image, args.channels, kwargs=tuple(sorted(kw)))
            print(json.dumps(time_model(spec, args.batch, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
