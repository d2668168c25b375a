"""Soak test of exact resume: many quickstart-size distillation runs, each SIGKILLed at random
moments (half of the kills timed to land inside an asynchronous checkpoint write) and restarted
with the same command until it finishes; every final state is compared bit for bit with one
uninterrupted reference run (params of every student, metrics.jsonl, summary accuracies).

    python benchmarks/soak.py --workdir /tmp/jkd_soak --runs 6 --time-budget-s 240

The students are the quickstart's (vit_atto4 + convnext_atto at 16 px, batch 64, one teacher
forward per batch), distilled from a short vit_femto4 teacher trained first. Bounded by --runs,
--max-kills and --time-budget-s (no new run starts after the budget). Writes <workdir>/soak.json
and prints a one-line summary: runs, kills survived, states identical.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run as a script from anywhere
ENV = dict(os.environ)  # + a persistent compilation cache (set in main): restarts skip XLA compiles

from jkd import checkpoint  # noqa: E402


def teacher_cmd(workdir: str) -> list[str]:
    return [sys.executable, "-m", "jkd.main", "--config", os.path.join(REPO, "configs/digits_supervised.py"),
            "--workdir", workdir, "--config.model.name=vit_femto4", "--config.steps=60", "--config.batch_size=64",
            "--config.optimizer.warmup_steps=10", "--config.checkpoint_every=60", "--config.progress=False"]


def distill_cmd(workdir: str, teacher: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "jkd.main", "--config", os.path.join(REPO, "configs/digits_distill.py"),
            "--workdir", workdir, f"--config.teacher.checkpoint={teacher}", f"--config.steps={steps}",
            "--config.optimizer.warmup_steps=5", "--config.checkpoint_every=5", "--config.log_every=5",
            f"--config.eval_every={steps // 2}", "--config.keep_checkpoints=2", "--config.progress=False"]


def _writing_checkpoint(workdir: str) -> bool:
    try:
        return any(".orbax-checkpoint-tmp" in n for n in os.listdir(os.path.join(workdir, "checkpoints")))
    except FileNotFoundError:
        return False


def attempt(cmd: list[str], workdir: str, kill: str | None, kill_after_s: float) -> tuple[str, float]:
    """Run cmd once; kill=None lets it finish, 'random' SIGKILLs it after kill_after_s, 'checkpoint'
    at the first checkpoint write seen after kill_after_s. Returns (outcome, seconds) where outcome
    is 'finished', 'killed' or 'killed_mid_checkpoint'."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    while proc.poll() is None:
        elapsed = time.time() - t0
        if kill == "random" and elapsed >= kill_after_s:
            break
        if kill == "checkpoint" and elapsed >= kill_after_s and _writing_checkpoint(workdir):
            break
        time.sleep(0.002)
    if proc.poll() is None:
        mid = _writing_checkpoint(workdir)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return ("killed_mid_checkpoint" if mid else "killed"), time.time() - t0
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"run failed (exit {proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return "finished", time.time() - t0


def final_state(workdir: str) -> tuple[dict, bytes, dict]:
    with open(os.path.join(workdir, "summary.json")) as f:
        models = json.load(f)["models"]
    with open(os.path.join(workdir, "metrics.jsonl"), "rb") as f:
        metrics = f.read()
    return jax.device_get(checkpoint.restore_params(workdir)), metrics, models


def identical(a, b) -> bool:
    params_equal = all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a[0], b[0])))
    return params_equal and a[1] == b[1] and a[2] == b[2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/jkd_soak")
    parser.add_argument("--runs", type=int, default=6, help="interrupted runs (each restarted until done)")
    parser.add_argument("--max-kills", type=int, default=3, help="kills per run: uniform in 1..max")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--time-budget-s", type=float, default=240,
                        help="no new interrupted run starts this long after the reference finished")
    parser.add_argument("--seed", type=int, default=0, help="of the kill schedule")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for name in os.listdir(args.workdir) if os.path.isdir(args.workdir) else []:
        if name not in ("teacher", "xla_cache"):  # a finished teacher is reused (its rerun returns at once)
            shutil.rmtree(os.path.join(args.workdir, name), ignore_errors=True)
    os.makedirs(args.workdir, exist_ok=True)
    ENV.update(JAX_COMPILATION_CACHE_DIR=os.path.join(args.workdir, "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    t_start = time.time()

    teacher = os.path.join(args.workdir, "teacher")
    attempt(teacher_cmd(teacher), teacher, None, 0)
    ref_dir = os.path.join(args.workdir, "reference")
    _, ref_seconds = attempt(distill_cmd(ref_dir, teacher, args.steps), ref_dir, None, 0)
    reference = final_state(ref_dir)
    # A second uninterrupted run with the compilation cache warm: how long a restart really takes
    # (kills are drawn inside it), and a check that cached executables give the same bits.
    warm_dir = os.path.join(args.workdir, "warm")
    _, warm_seconds = attempt(distill_cmd(warm_dir, teacher, args.steps), warm_dir, None, 0)
    if not identical(final_state(warm_dir), reference):
        raise RuntimeError("an uninterrupted rerun differs from the reference: the runs are not deterministic")
    t_runs = time.time()

    runs = []
    for r in range(args.runs):
        if time.time() - t_runs > args.time_budget_s:
            break
        workdir = os.path.join(args.workdir, f"run{r}")
        cmd = distill_cmd(workdir, teacher, args.steps)
        kills, outcomes = rng.randint(1, args.max_kills), []
        while True:
            kill = None if len([o for o in outcomes if o != "finished"]) >= kills else rng.choice(["random", "checkpoint"])
            outcome, _ = attempt(cmd, workdir, kill, rng.uniform(0.05, 0.95) * warm_seconds)
            outcomes.append(outcome)
            if outcome == "finished":
                break
        same = identical(final_state(workdir), reference)
        runs.append({"run": r, "attempts": outcomes, "kills": sum(o != "finished" for o in outcomes),
                     "mid_checkpoint_kills": outcomes.count("killed_mid_checkpoint"), "identical": same})
        print(json.dumps(runs[-1]), flush=True)
        shutil.rmtree(workdir)

    result = {
        "command": " ".join(["python", "benchmarks/soak.py"] + sys.argv[1:]), "steps": args.steps,
        "reference_seconds": round(ref_seconds, 1), "warm_run_seconds": round(warm_seconds, 1), "runs": len(runs),
        "kills": sum(r["kills"] for r in runs),
        "mid_checkpoint_kills": sum(r["mid_checkpoint_kills"] for r in runs),
        "kills_survived": sum(r["kills"] for r in runs if r["identical"]),
        "runs_identical": sum(r["identical"] for r in runs), "wall_s": round(time.time() - t_start, 1),
        "details": runs,
    }
    with open(os.path.join(args.workdir, "soak.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"soak: {result['runs_identical']}/{result['runs']} runs identical to the reference; "
          f"{result['kills_survived']}/{result['kills']} kills survived ({result['mid_checkpoint_kills']} during a "
          f"checkpoint write); wall {result['wall_s']} s")
    return 0 if result["runs_identical"] == result["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
