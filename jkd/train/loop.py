"""The one training loop behind every trainer: mesh, sharded init or resume, compiled step, eval,
JSON-lines metrics, progress bar, async checkpoints, summary.

    summary, state = fit(config, workdir, specs={'vit': ModelSpec(...)}, data=data, teachers=(), ...)

Everything that can be wrong in the config is checked before anything is compiled.

Reliability: a run killed at any moment (SIGKILL included, also mid-checkpoint) and restarted with
the same command ends bit-identical to an uninterrupted one: the checkpoint holds step, rng and
data seed, batch i is a pure function of (seed, i), and metrics.jsonl is cut back to the restored
step so replayed steps are not logged twice. A non-finite loss or gradient norm stops the run
before it can reach a checkpoint (config.nonfinite='stop') or drops that update ('skip').
"""
from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from jkd import checkpoint, sharding
from jkd.errors import ConfigError
from jkd.models import count_params
from jkd.train.objectives import resolve_augment
from jkd.train.state import TrainState, graphdef_and_shapes, init_params, lr_schedule, make_optimizer
from jkd.train.step import HEADS_SUFFIX, make_eval_step, make_train_step


def _log(workdir: str, record: dict) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")


def _cut_log(workdir: str, step: int, final_step: int) -> None:
    """Keep the metrics.jsonl records a run restored at `step` had already written (steps <= step,
    less the final eval, which is redone); drop later ones and any line cut short by a kill."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record["step"] < step or (record["step"] == step and not (
                    step == final_step and record["split"] == "eval")):
                keep.append(json.dumps(record) + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


class NonFiniteError(ConfigError):
    """Training produced a non-finite loss or gradient (exit 2 from jkd.main: a setting to change)."""


NONFINITE_MODES = ("stop", "skip")


def guard_nonfinite(step_fn, mode: str):
    """step(state, batch, teachers) -> (state, metrics, finite: bool[]) where finite says whether
    every `*/loss` and `*/grad_norm` was finite. mode 'skip' keeps the old params and optimizer
    state when not (the step counter still advances: the batch is consumed)."""
    def guarded(state, batch, teacher_params=()):
        new_state, metrics = step_fn(state, batch, teacher_params)
        checked = [v for k, v in metrics.items() if k.endswith(("/loss", "/grad_norm"))]
        finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in checked]))
        if mode == "skip":
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_state = new_state.replace(params=jax.tree.map(keep, new_state.params, state.params),
                                          opt_state=jax.tree.map(keep, new_state.opt_state, state.opt_state))
        return new_state, metrics, finite
    return guarded


def evaluate(eval_step, params, data, mesh, teacher_params=None) -> dict:
    """Accuracy (and teacher agreement / KL when a teacher is given) over the whole eval set."""
    totals: dict = {}
    for batch in data.eval_batches():
        out = eval_step(params, sharding.put_batch(batch, mesh), teacher_params)
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("count")
    metrics = {}
    for k, v in totals.items():
        name, what = k.split("/")
        metrics[f"{name}/" + {"correct": "accuracy", "agree": "teacher_agreement", "kl": "teacher_kl"}[what]] = v / count
    return metrics


def fit(config, workdir: str, *, specs: dict, data, teachers: tuple = (), objectives: dict | None = None,
        heads: dict | None = None, desc: str = "train", devices=None):
    """Train models {name: ModelSpec} on `data`, optionally distilling from teachers (a tuple of
    (spec, graphdef, params)) with per-student objectives {name: Objective} and feature-KD heads
    {name: (graphdef, params)}; resume from <workdir>/checkpoints if present.

    devices: the devices of the mesh (default: all). Returns (summary, final TrainState); the
    summary is also written to <workdir>/summary.json.
    """
    t_start = time.time()
    nonfinite = config.get("nonfinite", "stop")
    if nonfinite not in NONFINITE_MODES:
        raise ConfigError(f"config.nonfinite: must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch_size(config.batch_size, mesh)
    sharding.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")
    checkpoint.check_workdir_compatible(workdir, specs)
    heads = heads or {}
    trainees = list(specs) + [name + HEADS_SUFFIX for name in heads]
    txs = {name: make_optimizer(config.optimizer, config.steps) for name in trainees}
    graphdefs, shapes = {}, {}
    for name, spec in specs.items():
        graphdefs[name], shapes[name] = graphdef_and_shapes(spec)
    checkpoint.write_run_info(workdir, {
        "trainer": config.trainer, "models": {k: v.to_json() for k, v in specs.items()},
        "teachers": [t[0].to_json() for t in teachers], "config": json.loads(config.to_json_best_effort())})

    # Abstract state -> shardings -> sharded init (or restore into that layout).
    def init_fn():
        params = {name: init_params(spec, config.seed) for name, spec in specs.items()}
        params.update({name + HEADS_SUFFIX: head_params for name, (_, head_params) in heads.items()})
        return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), rng=jax.random.PRNGKey(config.seed),
                          params=params, opt_state={n: txs[n].init(p) for n, p in params.items()})

    abstract = jax.eval_shape(init_fn)
    state_sh = sharding.tree_shardings(abstract, mesh, config.mesh.min_shard_size)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, state_sh)
    manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
    state = checkpoint.restore_latest(manager, abstract, data_seed=config.seed)
    resumed_from = None if state is None else int(state.step)
    if state is None:
        state = jax.jit(init_fn, out_shardings=state_sh)()

    teacher_graphdefs = tuple(t[1] for t in teachers)
    teacher_params = tuple(t[2] for t in teachers)
    teacher_sh = sharding.tree_shardings(teacher_params, mesh, config.mesh.min_shard_size)
    teacher_params = jax.device_put(teacher_params, teacher_sh)
    schedules = {n: lr_schedule(config.optimizer, config.steps) for n in specs}
    step_fn = make_train_step(graphdefs, txs, num_classes=data.num_classes,
                              augment_cfg=resolve_augment(config.augment, objectives),
                              objectives=objectives if teachers else None, teacher_graphdefs=teacher_graphdefs,
                              head_graphdefs={n: g for n, (g, _) in heads.items()},
                              label_smoothing=config.label_smoothing, schedules=schedules)
    batch_sh = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)
    train_step = jax.jit(guard_nonfinite(step_fn, nonfinite), in_shardings=(state_sh, batch_sh, teacher_sh),
                         out_shardings=(state_sh, repl, repl), donate_argnums=0)
    eval_step = jax.jit(make_eval_step(graphdefs, teacher_graphdefs),
                        in_shardings=(state_sh.params, batch_sh, teacher_sh), out_shardings=repl)

    start = int(state.step)
    summary_path = os.path.join(workdir, "summary.json")
    if start >= config.steps and os.path.exists(summary_path):
        # A finished run rerun with the same command: nothing to train, report what it measured.
        manager.close()
        with open(summary_path) as f:
            return json.load(f), state
    _cut_log(workdir, start, config.steps)
    bar = tqdm(total=config.steps, initial=start, desc=desc, disable=jax.process_index() != 0 or not config.progress,
               dynamic_ncols=True, leave=False)
    t_train = time.time()
    skipped = []  # skip mode: finite flags not yet counted (read at log time, not every step)
    skipped_total = 0

    def stop_if_nonfinite(finite, metrics, done: int) -> None:
        """Raise NonFiniteError when step `done` had a non-finite loss or gradient norm."""
        if bool(finite):
            return
        # Raised before this state can reach a checkpoint; let the last good one finish writing.
        bad = {k: float(v) for k, v in jax.device_get(metrics).items()
               if k.endswith(("/loss", "/grad_norm")) and not math.isfinite(float(v))}
        manager.wait_until_finished()
        good = manager.latest_step()
        manager.close()
        bar.close()
        raise NonFiniteError(
            f"config.nonfinite: non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {done} "
            f"(batch {done - 1}); the last good checkpoint is "
            + (f"step {good} in {checkpoint.checkpoint_dir(workdir)}" if good is not None else "none (no step saved)")
            + ". Lower config.optimizer.lr, check the input data, or set config.nonfinite=skip.")

    pending = None  # stop mode: the previous step's (finite, metrics, done), read one step late so that
    # the host never waits for the device between steps; always read before a checkpoint is written.
    for step in range(start, config.steps):
        batch = sharding.put_batch(data.train_batch(step), mesh)
        state, metrics, finite = train_step(state, batch, teacher_params)
        done = step + 1
        if nonfinite == "stop":
            if pending is not None:
                stop_if_nonfinite(*pending)
            pending = (finite, metrics, done)
        if nonfinite == "skip":
            skipped.append(finite)
        if pending is not None and (done % config.log_every == 0 or done == config.steps):
            stop_if_nonfinite(*pending)  # the log line syncs anyway; a non-finite step is never logged
            pending = None
        if done % config.log_every == 0 or done == config.steps:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if skipped:
                n = sum(not bool(f) for f in jax.device_get(skipped))
                skipped, skipped_total = [], skipped_total + n
                if n:
                    metrics["skipped_updates"] = n
            _log(workdir, {"step": done, "split": "train", **metrics})
            bar.set_postfix({k.replace("/loss", ""): f"{v:.3f}" for k, v in metrics.items() if k.endswith("/loss")})
        if config.eval_every and done % config.eval_every == 0 and done != config.steps:
            _log(workdir, {"step": done, "split": "eval",
                           **evaluate(eval_step, state.params, data, mesh, teacher_params)})
        if done % config.checkpoint_every == 0 or done == config.steps:
            if pending is not None:
                stop_if_nonfinite(*pending)
                pending = None
            checkpoint.save(manager, state, data_seed=config.seed)
        bar.update(1)
    bar.close()
    train_seconds = time.time() - t_train
    final = evaluate(eval_step, state.params, data, mesh, teacher_params)
    skipped_total += sum(not bool(f) for f in jax.device_get(skipped))
    manager.wait_until_finished()
    manager.close()
    _log(workdir, {"step": int(state.step), "split": "eval", **final})

    summary = {
        "workdir": os.path.abspath(workdir), "steps": int(state.step), "resumed_from": resumed_from,
        "wall_time_s": time.time() - t_start, "train_loop_s": train_seconds,
        "devices": len(mesh.devices.flat), "processes": jax.process_count(), "mesh": dict(mesh.shape),
        "models": {name: {"model": specs[name].name, "params": count_params(shapes[name]),
                          **{k.split("/")[1]: v for k, v in final.items() if k.startswith(name + "/")}}
                   for name in specs},
    }
    if nonfinite == "skip":
        summary["skipped_updates"] = skipped_total
    if teachers:
        summary["teacher"] = {"model": "+".join(t[0].name for t in teachers), "params": count_params(teacher_params),
                              "param_bytes_per_device": max(sharding.bytes_per_device(teacher_params).values()),
                              "accuracy": final.get("teacher/accuracy"), "num_teachers": len(teachers)}
    if jax.process_index() == 0:
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary, state
