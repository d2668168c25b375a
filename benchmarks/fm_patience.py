"""Is function matching's "patience" worth it on digits? One quickstart KD stage at k x the steps.

    python -m jkd.main --config configs/quickstart.py --workdir /tmp/m2_s0 --config.seed=0 \
        --config.kd_methods=hinton,fm                         # 1x: teacher, twins, KD stages (500 steps)
    python benchmarks/fm_patience.py --workdir /tmp/m2_s0 --seed 0 --factor 4 --methods fm,hinton,label_only

For each method, re-derives the quickstart's `kd_<method>` stage config (jkd.train.quickstart.
stage_configs, so every other setting is the quickstart's), multiplies its steps (and warm-up) by
--factor, and distils from the teacher already trained in <workdir>/teacher into
<workdir>/kd_<method>_x<factor>. Prints each student's test accuracy next to the 1x stage's.
Beyer et al. (2022) claim function matching keeps improving with longer schedules; hinton at the
same factor is one control, `label_only` (the label-only twins at k x the steps) the other: longer
training without a teacher.

--set FIELD=VALUE (repeatable) overrides the quickstart config before the stage is derived, and
--tag names the output <workdir>/kd_<method>_<tag>; with --factor 1 this runs a method variant
against the same teacher and label-only twins, e.g. DeiT's hard-label distillation:
    python benchmarks/fm_patience.py --workdir /tmp/m2_s0 --seed 0 --factor 1 --methods deit \
        --set kd.method=hard --tag hard
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jkd.sweep import load_config, parse_set, with_overrides  # noqa: E402
from jkd.train.distill import train_distill  # noqa: E402
from jkd.errors import ConfigError  # noqa: E402
from jkd.train.quickstart import check_config, stage_configs  # noqa: E402
from jkd.train.supervised import train_supervised  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a finished quickstart workdir (its teacher/ is reused)")
    p.add_argument("--seed", type=int, required=True, help="the seed that quickstart run used")
    p.add_argument("--factor", type=int, default=4, help="steps multiplier")
    p.add_argument("--methods", default="fm", help="comma-separated quickstart methods")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="quickstart config override (repeatable), e.g. kd.method=hard")
    p.add_argument("--tag", default=None, help="output suffix (default x<factor>)")
    p.add_argument("--students", default=None, help="comma-separated: only these students (default: all the method applies to)")
    p.add_argument("--config", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                     "configs", "quickstart.py"))
    args = p.parse_args(argv)
    teacher = os.path.join(args.workdir, "teacher")
    if not os.path.isdir(teacher):
        sys.exit(f"--workdir: {teacher} does not exist (run the quickstart first)")
    config = load_config(args.config)
    config = with_overrides(config, dict(parse_set(spec, config) for spec in args.set))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    kd_methods = [m for m in methods if m != "label_only"]
    with config.unlocked():
        config.seed, config.kd_methods, config.progress = args.seed, ",".join(kd_methods) or "hinton", False
    tag = args.tag or f"x{args.factor}"
    try:
        check_config(config)  # e.g. --set kd.method=hard with a preset that sets kd.method itself
    except ConfigError as e:
        sys.exit(f"fm_patience: error: {e}")
    stages = stage_configs(config)
    keep = args.students.split(",") if args.students else None
    jobs = [(m, f"kd_{m}") for m in kd_methods]
    if "label_only" in methods:  # the control for longer training without a teacher
        jobs += [("label_only", f"label_only_{n}") for n in config.students if keep is None or n in keep]
    for method, name in jobs:
        stage = stages[name]
        with stage.unlocked():
            stage.steps *= args.factor
            stage.optimizer.warmup_steps *= args.factor
            stage.checkpoint_every *= args.factor
            if method != "label_only":
                stage.teacher.checkpoint = teacher
            if keep and method != "label_only":
                if not set(keep) & set(stage.students):
                    sys.exit(f"--students: none of {keep} in the {method} stage ({', '.join(stage.students)})")
                for student in [n for n in stage.students if n not in keep]:
                    del stage.students[student]
        out = os.path.join(args.workdir, f"{name}_{tag}")
        train = train_supervised if method == "label_only" else train_distill
        long = train(stage, out, desc=f"{name} {tag}")
        with open(os.path.join(args.workdir, name, "summary.json")) as f:
            short = json.load(f)
        for student, m in long["models"].items():
            student = name[len("label_only_"):] if method == "label_only" else student
            ref = short["models"]["model" if method == "label_only" else student]
            print(json.dumps({"seed": args.seed, "method": method, "student": student, "factor": args.factor,
                              "set": args.set, "accuracy_1x": ref["accuracy"], "accuracy": m["accuracy"]}))

if __name__ == "__main__":
    main()
