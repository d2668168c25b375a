"""Is function matching's "patience" worth it on digits? One quickstart KD stage at k x the steps.

    python -m jkd.main --config configs/quickstart.py --workdir /tmp/m2_s0 --config.seed=0 \
        --config.method=hinton,fm                         # 1x: teacher, twins, KD stages (500 steps)
    python benchmarks/fm_patience.py --workdir /tmp/m2_s0 --seed 0 --factor 4 --methods fm,hinton

For each method, re-derives the quickstart's `kd_<method>` stage config (jkd.train.quickstart.
stage_configs, so every other setting is the quickstart's), multiplies its steps (and warm-up) by
--factor, and distils from the teacher already trained in <workdir>/teacher into
<workdir>/kd_<method>_x<factor>. Prints each student's test accuracy next to the 1x stage's.
Beyer et al. (2022) claim function matching keeps improving with longer schedules; hinton at the
same factor is the control (longer training alone).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jkd.sweep import load_config  # noqa: E402
from jkd.train.distill import train_distill  # noqa: E402
from jkd.train.quickstart import stage_configs  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a finished quickstart workdir (its teacher/ is reused)")
    p.add_argument("--seed", type=int, required=True, help="the seed that quickstart run used")
    p.add_argument("--factor", type=int, default=4, help="steps multiplier")
    p.add_argument("--methods", default="fm", help="comma-separated quickstart methods")
    p.add_argument("--config", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                     "configs", "quickstart.py"))
    args = p.parse_args(argv)
    teacher = os.path.join(args.workdir, "teacher")
    if not os.path.isdir(teacher):
        sys.exit(f"--workdir: {teacher} does not exist (run the quickstart first)")
    config = load_config(args.config)
    with config.unlocked():
        config.seed, config.method, config.progress = args.seed, args.methods, False
    for method, stage in ((m, stage_configs(config)[f"kd_{m}"]) for m in args.methods.split(",")):
        with stage.unlocked():
            stage.teacher.checkpoint = teacher
            stage.steps *= args.factor
            stage.optimizer.warmup_steps *= args.factor
            stage.checkpoint_every *= args.factor
        out = os.path.join(args.workdir, f"kd_{method}_x{args.factor}")
        long = train_distill(stage, out, desc=f"{method} x{args.factor}")
        with open(os.path.join(args.workdir, f"kd_{method}", "summary.json")) as f:
            short = json.load(f)
        for name, m in long["models"].items():
            print(json.dumps({"seed": args.seed, "method": method, "student": name, "factor": args.factor,
                              "accuracy_1x": short["models"][name]["accuracy"], "accuracy": m["accuracy"]}))


if __name__ == "__main__":
    main()
