"""The training loop of every jkd.train trainer (supervised, distill, and the pipelines' stages):
mesh, sharded init or resume, compiled step, eval, JSON-lines metrics (mirrored to TensorBoard / W&B
by jkd/writers.py), progress bar, async checkpoints, summary. The probes that train many small models
at once have their own vmapped loops (jkd/probes/multiseed.py, jkd/probes/theory.py; each says why).

    summary, state = fit(config, workdir, specs={'vit': ModelSpec(...)}, data=data, teachers=(), ...)
    steps = compile_steps(config, mesh, specs, num_classes=10, teachers=...)   # what fit and jkd.bench run

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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from jkd import checkpoint, rundir, sharding, writers
from jkd.data import preprocess
from jkd.errors import ConfigError, NonFiniteError
from jkd.models import count_params
from jkd.train.objectives import resolve_augment
from jkd.train.state import TrainState, graphdef_and_shapes, init_params, lr_schedule, make_optimizer
from jkd.train.step import HEADS_SUFFIX, make_eval_step, make_train_step

NONFINITE_MODES = ("stop", "skip")


# ------------------------------------------------------------------------ the compiled steps

class CompiledSteps(NamedTuple):
    """The jitted functions of a run and the layouts they take (built once, by compile_steps)."""
    init: Callable[[], TrainState]      # () -> fresh TrainState, created directly in state_shardings
    abstract_state: TrainState          # ShapeDtypeStructs carrying state_shardings: what a restore fills
    state_shardings: TrainState         # NamedSharding per state leaf (sharding.tree_shardings)
    teacher_shardings: tuple            # NamedSharding per teacher param leaf, aligned with `teachers`
    batch_sharding: NamedSharding       # leading (batch) dim over the mesh's data and fsdp axes
    train_step: Callable                # (state, batch, teacher_params) -> (state, metrics, finite); donates state
    eval_step: Callable                 # (params, batch, teacher_params) -> per-batch sums (make_eval_step)


def nonfinite_mode(config) -> str:
    """config.nonfinite ('stop' unless set); a ConfigError naming the field when unknown."""
    nonfinite = config.get("nonfinite", "stop")
    if nonfinite not in NONFINITE_MODES:
        raise ConfigError(f"config.nonfinite: must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    return nonfinite


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


def teacher_views(config, teachers: tuple) -> tuple:
    """Each teacher's input from the students' images (jkd.data.preprocess.view_fn), None where they agree."""
    return tuple(preprocess.view_fn(preprocess.data_input(config.data), t[3]) if len(t) > 3 else None
                 for t in teachers)


def compile_steps(config, mesh: Mesh, specs: dict, *, num_classes: int, teachers: tuple = (),
                  objectives: dict | None = None, heads: dict | None = None, cached: bool = False) -> CompiledSteps:
    """The sharded init and the jitted train and eval steps of models {name: ModelSpec} on `mesh`.

    teachers: (spec, graphdef, params[, ModelInput]) tuples (params may be ShapeDtypeStructs: only
    their shapes are read); a teacher's ModelInput (jkd.train.distill.load_teachers) makes its view
    of the images from config.data's (jkd.data.preprocess.view_fn: none when they agree);
    objectives {name: Objective} apply only with teachers; heads {name: (graphdef, params)} are
    feature-KD heads, trained beside their student. Reads config.seed, .steps, .optimizer,
    .augment, .label_smoothing, .nonfinite, .mesh.min_shard_size (and .data.mean/std with a
    teacher's ModelInput). Every model is initialised from config.seed alone, so a KD student and
    its label-only twin trained with the same seed in another run start from identical weights. XLA
    compiles at the first call. cached: the train step reads the teachers' outputs from a teacher cache's
    batches (make_train_step(cached=True)); the eval step still runs the teachers (agreement, KL).
    """
    heads = heads or {}
    nonfinite = nonfinite_mode(config)
    trainees = list(specs) + [name + HEADS_SUFFIX for name in heads]
    txs = {name: make_optimizer(config.optimizer, config.steps) for name in trainees}

    def init_fn():
        params = {name: init_params(spec, config.seed) for name, spec in specs.items()}
        params.update({name + HEADS_SUFFIX: head_params for name, (_, head_params) in heads.items()})
        return TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(config.seed),
                          params=params, opt_state={n: txs[n].init(p) for n, p in params.items()})

    abstract = jax.eval_shape(init_fn)
    state_sh = sharding.tree_shardings(abstract, mesh, config.mesh.min_shard_size)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, state_sh)
    teacher_graphdefs = tuple(t[1] for t in teachers)
    views = teacher_views(config, teachers)
    teacher_sh = sharding.tree_shardings(tuple(t[2] for t in teachers), mesh, config.mesh.min_shard_size)
    graphdefs = {name: graphdef_and_shapes(spec)[0] for name, spec in specs.items()}
    step_fn = make_train_step(graphdefs, txs, num_classes=num_classes,
                              augment_cfg=resolve_augment(config.augment, objectives),
                              objectives=objectives if teachers else None, teacher_graphdefs=teacher_graphdefs,
                              head_graphdefs={n: g for n, (g, _) in heads.items()},
                              label_smoothing=config.label_smoothing,
                              schedules={n: lr_schedule(config.optimizer, config.steps) for n in specs},
                              teacher_views=views, cached=cached)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    return CompiledSteps(
        init=jax.jit(init_fn, out_shardings=state_sh), abstract_state=abstract, state_shardings=state_sh,
        teacher_shardings=teacher_sh, batch_sharding=batch_sh,
        train_step=jax.jit(guard_nonfinite(step_fn, nonfinite), in_shardings=(state_sh, batch_sh, teacher_sh),
                           out_shardings=(state_sh, repl, repl), donate_argnums=0),
        eval_step=jax.jit(make_eval_step(graphdefs, teacher_graphdefs, views),
                          in_shardings=(state_sh.params, batch_sh, teacher_sh), out_shardings=repl))


# ------------------------------------------------------------------------------- metrics log

def _cut_log(workdir: str, step: int, final_step: int) -> None:
    """Keep the metrics.jsonl records a run restored at `step` had already written (steps <= step,
    less the final eval, which is redone); drop later ones and any line cut short by a kill."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not rundir.is_writer() or not os.path.exists(path):
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


# ------------------------------------------------------------------------------------ fit

def fit(config, workdir: str, *, specs: dict, data, teachers: tuple = (), objectives: dict | None = None,
        heads: dict | None = None, desc: str = "train", mesh: Mesh | None = None, cache_info: dict | None = None):
    """Train models {name: ModelSpec} on `data`, optionally distilling from teachers (a tuple of
    (spec, graphdef, params)) with per-student objectives {name: Objective} and feature-KD heads
    {name: (graphdef, params)}; resume from <workdir>/checkpoints if present.

    mesh: the run's device mesh (default: sharding.make_mesh(config.mesh) over every device); a
    trainer that built one to load its teachers passes it, so that a run has one mesh.
    cache_info: set when data.train_batch reads a teacher cache (teacher_cache.open_reader's info):
    the train step takes the teachers' outputs from the batches, and the summary records the cache.
    Returns (summary, final TrainState); the summary is also written to <workdir>/summary.json.
    """
    t_start = time.time()
    mesh, steps = _setup(config, workdir, specs, data, teachers, objectives, heads, mesh, cached=cache_info is not None)
    manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
    state = checkpoint.restore_latest(manager, steps.abstract_state, data_seed=config.seed)
    resumed_from = None if state is None else int(state.step)
    if state is None:
        state = steps.init()
    teacher_params = jax.device_put(tuple(t[2] for t in teachers), steps.teacher_shardings)

    summary_path = os.path.join(workdir, "summary.json")
    if int(state.step) >= config.steps and os.path.exists(summary_path):
        # A finished run rerun with the same command: nothing to train, report what it measured.
        manager.close()
        with open(summary_path) as f:
            return json.load(f), state
    _cut_log(workdir, int(state.step), config.steps)
    run_log = rundir.open_log(workdir, config)  # the writers replay what _cut_log kept
    try:  # closed also when the non-finite guard stops the run: its event files stay complete
        t_train = time.time()
        state, skipped, after_first_s = _train(config, workdir, steps, mesh, state, data, teacher_params, manager,
                                               desc, run_log.log)
        train_seconds = time.time() - t_train
        final = evaluate(steps.eval_step, state.params, data, mesh, teacher_params)
        manager.wait_until_finished()
        manager.close()
        run_log.log({"step": int(state.step), "split": "eval", **final})
    finally:
        rundir.close_log(run_log)

    summary = {
        "workdir": os.path.abspath(workdir), "steps": int(state.step), "resumed_from": resumed_from,
        "wall_time_s": time.time() - t_start, "train_loop_s": train_seconds,
        "train_loop_after_first_step_s": after_first_s,  # without the step that compiles (evals included)
        "devices": len(mesh.devices.flat), "processes": jax.process_count(), "mesh": dict(mesh.shape),
        "models": {name: {"model": specs[name].name, "params": count_params(steps.abstract_state.params[name]),
                          **{k.split("/")[1]: v for k, v in final.items() if k.startswith(name + "/")}}
                   for name in specs},
    }
    if nonfinite_mode(config) == "skip":
        summary["skipped_updates"] = skipped
    if cache_info is not None:
        summary["teacher_cache"] = cache_info
    if teachers:
        summary["teacher"] = {"model": "+".join(t[0].name for t in teachers), "params": count_params(teacher_params),
                              "param_bytes_per_device": max(sharding.bytes_per_device(teacher_params).values()),
                              "accuracy": final.get("teacher/accuracy"), "num_teachers": len(teachers)}
    rundir.write_json(workdir, "summary.json", summary)
    return summary, state


def _setup(config, workdir, specs, data, teachers, objectives, heads, mesh, cached=False):
    """Check the run against the devices and the workdir, build the steps, write run.json:
    (mesh, CompiledSteps). Raises ConfigError before anything is compiled or written."""
    nonfinite_mode(config)
    writers.check_config(config)
    mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
    sharding.check_batch_size(config.batch_size, mesh)
    sharding.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")
    checkpoint.check_workdir_compatible(workdir, specs)
    steps = compile_steps(config, mesh, specs, num_classes=data.num_classes, teachers=teachers,
                          objectives=objectives, heads=heads, cached=cached)
    checkpoint.write_run_info(workdir, {
        "trainer": config.trainer, "models": {k: v.to_json() for k, v in specs.items()},
        "teachers": [t[0].to_json() for t in teachers], "config": json.loads(config.to_json_best_effort()),
        "class_names": list(getattr(data, "class_names", ()))})  # label i's name (jkd.export writes them into the ONNX metadata)
    return mesh, steps


def _train(config, workdir, steps: CompiledSteps, mesh, state, data, teacher_params, manager, desc, log):
    """Steps int(state.step) .. config.steps, logging (log(record): rundir.RunLog.log), evaluating and
    checkpointing on their schedules. Returns (final state, number of updates dropped by
    config.nonfinite='skip', seconds from the end of the first (compiling) step to the end)."""
    nonfinite = nonfinite_mode(config)
    bar = tqdm(total=config.steps, initial=int(state.step), desc=desc, dynamic_ncols=True, leave=False,
               disable=not rundir.is_writer() or not config.progress)
    skipped = []  # skip mode: finite flags not yet counted (read at log time, not every step)
    skipped_total = 0
    pending = None  # stop mode: the previous step's (finite, metrics, done), read one step late so that
    # the host never waits for the device between steps; always read before a checkpoint is written.
    first, t_first = int(state.step), None
    for step in range(first, config.steps):
        batch = sharding.put_batch(data.train_batch(step), mesh)
        state, metrics, finite = steps.train_step(state, batch, teacher_params)
        done = step + 1
        if step == first:
            jax.block_until_ready(state)
            t_first = time.time()
        if nonfinite == "stop":
            if pending is not None:
                _stop_if_nonfinite(*pending, manager, bar, workdir)
            pending = (finite, metrics, done)
        if nonfinite == "skip":
            skipped.append(finite)
        log_now = done % config.log_every == 0 or done == config.steps
        if pending is not None and log_now:  # the log line syncs anyway; a non-finite step is never logged
            _stop_if_nonfinite(*pending, manager, bar, workdir)
            pending = None
        if log_now:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if skipped:
                n = sum(not bool(f) for f in jax.device_get(skipped))
                skipped, skipped_total = [], skipped_total + n
                if n:
                    metrics["skipped_updates"] = n
            log({"step": done, "split": "train", **metrics})
            bar.set_postfix({k.replace("/loss", ""): f"{v:.3f}" for k, v in metrics.items() if k.endswith("/loss")})
        if config.eval_every and done % config.eval_every == 0 and done != config.steps:
            log({"step": done, "split": "eval",
                 **evaluate(steps.eval_step, state.params, data, mesh, teacher_params)})
        if done % config.checkpoint_every == 0 or done == config.steps:
            if pending is not None:
                _stop_if_nonfinite(*pending, manager, bar, workdir)
                pending = None
            checkpoint.save(manager, state, data_seed=config.seed)
        bar.update(1)
    bar.close()
    jax.block_until_ready(state)
    after_first = None if t_first is None else time.time() - t_first
    return state, skipped_total + sum(not bool(f) for f in jax.device_get(skipped)), after_first


def _stop_if_nonfinite(finite, metrics, done: int, manager, bar, workdir: str) -> None:
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
