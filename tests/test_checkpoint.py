"""Checkpoint round trip, and a run killed after a checkpoint resumes from it."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax

from jkd import checkpoint
from jkd.train.state import ModelSpec, TrainState, init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_save_restore_round_trip_is_exact(tmp_path):
    specs = {"vit": ModelSpec("vit_atto4", 10, 8, 1), "convnext": ModelSpec("convnext_zepto", 10, 8, 1,
                                                                            kwargs=(("stem_stride", 1),))}
    tx = optax.adamw(1e-3)
    params = {n: init_params(spec, 3) for n, spec in specs.items()}
    state = TrainState(step=jax.numpy.int32(7), rng=jax.random.PRNGKey(11), params=params,
                       opt_state={n: tx.init(p) for n, p in params.items()})
    manager = checkpoint.make_manager(str(tmp_path))
    checkpoint.save(manager, state)
    manager.wait_until_finished()
    abstract = jax.eval_shape(lambda: state)
    restored = checkpoint.restore_latest(manager, abstract)
    manager.close()
    assert isinstance(restored, TrainState) and int(restored.step) == 7
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, state)


def _cmd(workdir):
    return [sys.executable, "-m", "jkd.main", "--config", os.path.join(REPO, "configs/digits_supervised.py"),
            "--workdir", workdir, "--config.model.name=vit_atto4", "--config.data.image_size=8",
            "--config.steps=40", "--config.batch_size=16", "--config.optimizer.warmup_steps=5",
            "--config.checkpoint_every=10", "--config.log_every=10", "--config.progress=False"]


def _final_params(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    return summary, summary["steps"], checkpoint.restore_params(workdir)


def _writing_a_checkpoint(ckpt_dir):
    """True while orbax writes a step after the first (its uncommitted tmp directory exists)."""
    try:
        names = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return False
    return "10" in names and any(".orbax-checkpoint-tmp" in n for n in names)


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cmd(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_dir = os.path.join(killed, "checkpoints")
    deadline = time.time() + 240
    # SIGKILL in the middle of an asynchronous checkpoint write (not between two of them).
    while not _writing_a_checkpoint(ckpt_dir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed: " + proc.stderr.read().decode()[-2000:]
    assert not os.path.exists(os.path.join(killed, "summary.json"))

    runs = [subprocess.Popen(_cmd(d), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for d in (killed, clean)]  # the restart and the uninterrupted reference, side by side
    for run in runs:
        assert run.wait() == 0, run.stderr.read().decode()[-2000:]
    summary, step, params = _final_params(killed)
    clean_summary, clean_step, clean_params = _final_params(clean)
    assert summary["resumed_from"] is not None and summary["resumed_from"] >= 10
    assert step == clean_step == 40
    # Step, rng and data seed are checkpointed and batch i is a function of (seed, i): the resumed
    # run is the same run, to the bit, and its metrics log holds every step once.
    jax.tree.map(np.testing.assert_array_equal, params, clean_params)
    with open(os.path.join(killed, "metrics.jsonl")) as a, open(os.path.join(clean, "metrics.jsonl")) as b:
        assert a.read() == b.read()
    assert summary["models"] == clean_summary["models"]
    assert not os.path.exists(os.path.join(killed, checkpoint.CORRUPT_DIR))  # a half-written step is no good copy
