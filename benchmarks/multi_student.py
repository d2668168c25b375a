"""Several students from one teacher forward vs one run per student: step-time ratio, one process.

    python benchmarks/multi_student.py --teacher vit_femto4 --students vit_atto4,convnext_atto --batch 64 --image 16

Times the real jkd distill step, built by the function every trainer and jkd.bench use
(jkd.train.loop.compile_steps: make_train_step with its optimizers, shardings, donated state and
non-finite guard) on one device, jit, warm, median over repeats, the modes timed round-robin:
  joint      one step that runs the teacher once and updates every student;
  separate   one step per student, each running the teacher itself (what separate runs do).
Prints JSON lines and the speed-up = sum(separate) / joint.
"""
import argparse
import json
import time

import jax
import numpy as np

from jkd import sharding
from jkd.config import base_config
from jkd.train.loop import compile_steps
from jkd.train.objectives import Objective
from jkd.train.state import ModelSpec, graphdef_and_shapes, init_params


def build(names, teacher, mesh, args):
    """(train_step, initial state, placed teacher params) of one run training `names` together from
    `teacher` ((spec, graphdef, params)): compile_steps on the trainers' defaults (AdamW, crops
    0.5-1, no flip, no mixup, Hinton KD), 1000-step schedule with 1 warm-up step."""
    config = base_config()
    config.trainer, config.batch_size, config.steps = "distill", args.batch, 1000
    config.optimizer.warmup_steps = 1
    specs = {}
    for n in names:
        kw = (("stem_stride", args.image // 8),) if n.startswith("convnext") else ()
        specs[n] = ModelSpec(n, 10, args.image, 1, kwargs=kw)
    steps = compile_steps(config, mesh, specs, num_classes=10, teachers=(teacher,),
                          objectives={n: Objective() for n in specs})
    return steps.train_step, steps.init(), jax.device_put((teacher[2],), steps.teacher_shardings)


def time_steps(runs: dict, batch, repeats: int) -> dict:
    """Median seconds per step of every compiled step in runs {name: (step, state, teacher_params)},
    timed round-robin (one step of each per round) so that machine drift hits every mode alike."""
    states, finite = {}, {}
    for name, (step, state, teacher_params) in runs.items():  # compile + warm up
        states[name], m, finite[name] = step(state, batch, teacher_params)
        jax.block_until_ready(m)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (step, _, teacher_params) in runs.items():
            t0 = time.perf_counter()
            states[name], m, finite[name] = step(states[name], batch, teacher_params)
            jax.block_until_ready(m)
            times[name].append(time.perf_counter() - t0)
    bad = [name for name, f in finite.items() if not bool(f)]
    if bad:  # a diverged step times something else than training: say so instead of a number
        raise SystemExit(f"multi_student: non-finite loss or gradient norm in {', '.join(bad)}")
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="vit_femto4")
    ap.add_argument("--students", default="vit_atto4,convnext_atto")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    mesh = sharding.make_mesh(base_config().mesh, jax.devices()[:1])  # one device: the step, not scaling
    teacher_spec = ModelSpec(args.teacher, 10, args.image, 1)
    teacher = (teacher_spec, graphdef_and_shapes(teacher_spec)[0], init_params(teacher_spec, 1))
    rng = np.random.default_rng(0)
    batch = jax.device_put(
        {"image": np.asarray(rng.normal(size=(args.batch, args.image, args.image, 1)), np.float32),
         "label": np.asarray(rng.integers(0, 10, args.batch), np.int32),
         "label_mask": np.ones(args.batch, np.float32)}, sharding.batch_sharding(mesh))
    names = args.students.split(",")
    runs = {"joint": build(names, teacher, mesh, args), **{n: build([n], teacher, mesh, args) for n in names}}
    medians = time_steps(runs, batch, args.repeats)
    joint = medians.pop("joint")
    separate = medians
    for n, t in separate.items():
        print(json.dumps({"mode": "separate", "student": n, "step_ms": round(1000 * t, 2)}))
    print(json.dumps({"mode": "joint", "students": names, "step_ms": round(1000 * joint, 2)}))
    print(json.dumps({"speedup_joint_vs_separate": round(sum(separate.values()) / joint, 3),
                      "teacher": args.teacher, "batch": args.batch, "image": args.image,
                      "backend": jax.default_backend(), "devices": mesh.devices.size}))


if __name__ == "__main__":
    main()
