"""Where the teacher cache's time goes: the compiled distill step live vs cached, and the host batch
(live: data.train_batch; cached: records read through grain + their examples), each timed alone in one
process, medians over repeats; next to the analytic FLOP ratio. Reads a finished teacher-cache
recipe workdir (configs/teacher_cache.py, :bench for one student).

    python benchmarks/teacher_cache_step.py --workdir /tmp/jkd_cache_bench --config configs/teacher_cache.py:bench

Prints one JSON line: step_ms / batch_ms (live, cached), their ratios, predicted_flop_ratio.
"""
import argparse
import json
import os
import time

import jax
import numpy as np

from jkd import sharding
from jkd.data import make_data
from jkd.flops import forward_flops
from jkd.sweep import load_config
from jkd.train import quickstart, teacher_cache
from jkd.train.distill import load_teachers
from jkd.train.loop import compile_steps
from jkd.train.objectives import resolve_augment, resolve_objective
from jkd.train.supervised import model_spec


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a finished configs/teacher_cache.py workdir")
    p.add_argument("--config", default="configs/teacher_cache.py:bench")
    p.add_argument("--k", default="5", help="which cache_k<k> to read (default 5)")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    recipe = load_config(args.config)
    kd = quickstart.stage_configs(recipe)[f"kd_{recipe.kd_methods}"]
    with kd.unlocked():
        kd.teacher.checkpoint = os.path.join(args.workdir, "teacher")
        kd.teacher_cache.dir = os.path.join(args.workdir, f"cache_k{args.k}")
        kd.teacher_cache.top_k = int(args.k) if args.k != "all" else 0
    data = make_data(kd.data, seed=kd.seed, global_batch_size=kd.batch_size)
    specs = {n: model_spec(e, kd, data.num_classes) for n, e in kd.students.items()}
    mesh = sharding.make_mesh(kd.mesh)
    teachers = tuple(load_teachers(kd, mesh))
    objectives = {n: resolve_objective(kd, n, e, specs[n], [t[0] for t in teachers]) for n, e in kd.students.items()}
    read, _ = teacher_cache.open_reader(kd, kd.teacher_cache.dir, teachers=teachers, data=data,
                                        augment_cfg=resolve_augment(kd.augment, objectives))
    params = tuple(t[2] for t in teachers)
    out = {"config": args.config, "k": args.k, "batch": kd.batch_size, "repeats": args.repeats}
    for mode, batch_fn in (("live", data.train_batch), ("cached", read)):
        steps = compile_steps(kd, mesh, specs, num_classes=data.num_classes, teachers=teachers, objectives=objectives,
                              cached=mode == "cached")
        batch = sharding.put_batch(batch_fn(0), mesh)
        state = [steps.init()]

        def one_step():
            state[0], metrics, _ = steps.train_step(state[0], batch, params)
            jax.block_until_ready(metrics)

        out[f"{mode}_step_ms"] = median_ms(one_step, args.repeats)
        counter = iter(range(10 ** 9))
        out[f"{mode}_batch_ms"] = median_ms(lambda: sharding.put_batch(batch_fn(next(counter)), mesh), args.repeats)
    student = sum(forward_flops(s) for s in specs.values())
    out["predicted_flop_ratio"] = (forward_flops(teachers[0][0]) + 3 * student) / (3 * student)
    out["step_ratio"] = out["live_step_ms"] / out["cached_step_ms"]
    out["step_plus_batch_ratio"] = ((out["live_step_ms"] + out["live_batch_ms"])
                                    / (out["cached_step_ms"] + out["cached_batch_ms"]))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
