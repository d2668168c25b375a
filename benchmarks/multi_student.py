"""Several students from one teacher forward vs one run per student: step-time ratio, one process.

    python benchmarks/multi_student.py --teacher vit_femto4 --students vit_atto4,convnext_atto --batch 64 --image 16

Times the real jkd distill step (jkd.train.step.make_train_step, jit, warm, median over repeats,
the modes timed round-robin):
  joint      one step that runs the teacher once and updates every student;
  separate   one step per student, each running the teacher itself (what separate runs do).
Prints JSON lines and the speed-up = sum(separate) / joint.
"""
import argparse
import json
import time

import jax
import numpy as np

from jkd.config import base_config
from jkd.train.objectives import Objective
from jkd.train.state import ModelSpec, TrainState, graphdef_and_shapes, init_params, make_optimizer
from jkd.train.step import make_train_step


def build(names, teacher_spec, args):
    opt_cfg = base_config().optimizer  # the trainers' AdamW defaults
    opt_cfg.warmup_steps = 1
    aug = base_config().augment  # crops (0.5-1), no flip, no mixup
    specs = {}
    for n in names:
        kw = (("stem_stride", args.image // 8),) if n.startswith("convnext") else ()
        specs[n] = ModelSpec(n, 10, args.image, 1, kwargs=kw)
    graphdefs = {n: graphdef_and_shapes(s)[0] for n, s in specs.items()}
    txs = {n: make_optimizer(opt_cfg, 1000) for n in specs}
    params = {n: init_params(s, 0) for n, s in specs.items()}
    state = TrainState(step=jax.numpy.zeros((), jax.numpy.int32), rng=jax.random.PRNGKey(0), params=params,
                       opt_state={n: txs[n].init(p) for n, p in params.items()})
    step = make_train_step(graphdefs, txs, num_classes=10, augment_cfg=aug,
                           objectives={n: Objective() for n in specs},
                           teacher_graphdefs=(graphdef_and_shapes(teacher_spec)[0],))
    return jax.jit(step, donate_argnums=0), state


def time_steps(runs: dict, batch, teacher_params, repeats: int) -> dict:
    """Median seconds per step of every compiled step in runs {name: (step, state)}, timed round-robin
    (one step of each per round) so that machine drift hits every mode alike."""
    states = {}
    for name, (step, state) in runs.items():  # compile + warm up
        states[name], m = step(state, batch, teacher_params)
        jax.block_until_ready(m)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (step, _) in runs.items():
            t0 = time.perf_counter()
            states[name], m = step(states[name], batch, teacher_params)
            jax.block_until_ready(m)
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="vit_femto4")
    ap.add_argument("--students", default="vit_atto4,convnext_atto")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    teacher_spec = ModelSpec(args.teacher, 10, args.image, 1)
    teacher_params = (init_params(teacher_spec, 1),)
    rng = np.random.default_rng(0)
    batch = {"image": jax.numpy.asarray(rng.normal(size=(args.batch, args.image, args.image, 1)), jax.numpy.float32),
             "label": jax.numpy.asarray(rng.integers(0, 10, args.batch), jax.numpy.int32),
             "label_mask": jax.numpy.ones(args.batch)}
    names = args.students.split(",")
    runs = {"joint": build(names, teacher_spec, args), **{n: build([n], teacher_spec, args) for n in names}}
    medians = time_steps(runs, batch, teacher_params, args.repeats)
    joint = medians.pop("joint")
    separate = medians
    for n, t in separate.items():
        print(json.dumps({"mode": "separate", "student": n, "step_ms": round(1000 * t, 2)}))
    print(json.dumps({"mode": "joint", "students": names, "step_ms": round(1000 * joint, 2)}))
    print(json.dumps({"speedup_joint_vs_separate": round(sum(separate.values()) / joint, 3),
                      "teacher": args.teacher, "batch": args.batch, "image": args.image,
                      "backend": jax.default_backend(), "devices": jax.device_count()}))


if __name__ == "__main__":
    main()
