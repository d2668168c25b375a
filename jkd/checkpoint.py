"""Checkpoints (orbax) and the run description that travels with them.

Layout of a workdir:
    <workdir>/run.json            trainer, model specs {name: ModelSpec}, the config (written at start)
    <workdir>/checkpoints/<step>/ orbax items: `params` ({name: params}) and `train` (step, rng, opt_state)
    <workdir>/metrics.jsonl, summary.json, ...

Params and optimizer state are separate items so a teacher is loaded by restoring `params` alone.
Saves are asynchronous (training continues while the previous step is written); the last N are kept;
rerunning the same command resumes from the latest step.
"""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from jkd.errors import ConfigError
from jkd.train.state import ModelSpec, TrainState, graphdef_and_shapes

RUN_FILE = "run.json"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    """CheckpointManager over <workdir>/checkpoints keeping the latest `keep` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("params", "train"))


def save(manager: ocp.CheckpointManager, state: TrainState) -> None:
    """Start saving `state` at its step (returns before the write finishes when async)."""
    train = {"step": state.step, "rng": state.rng, "opt_state": state.opt_state}
    manager.save(int(state.step), args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), train=ocp.args.StandardSave(train)))


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState) -> TrainState | None:
    """Restore the latest step into the layout (shapes, shardings) of abstract_state; None if none."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract_train = {"step": abstract_state.step, "rng": abstract_state.rng, "opt_state": abstract_state.opt_state}
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state.params), train=ocp.args.StandardRestore(abstract_train)))
    train = restored["train"]
    return TrainState(step=train["step"], rng=train["rng"], params=restored["params"], opt_state=train["opt_state"])


def restore_params(workdir: str, step: int | None = None) -> dict:
    """The `params` item ({name: params} as host arrays) of step `step` (default: latest) of a workdir."""
    manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("params", "train"),
                                    options=ocp.CheckpointManagerOptions(create=False))
    try:
        step = manager.latest_step() if step is None else step
        return manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
    finally:
        manager.close()


def write_run_info(workdir: str, info: dict) -> None:
    """Write run.json (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, RUN_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, os.path.join(workdir, RUN_FILE))


def read_run_info(workdir: str) -> dict | None:
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def require_run_info(workdir: str, field: str, *, shown_path: str | None = None, hint: str = "") -> dict:
    """run.json of an existing jkd workdir, or a ConfigError naming `field` (missing directory,
    unreadable file, not a jkd workdir)."""
    shown = shown_path or workdir
    if not os.path.isdir(workdir):
        raise ConfigError(f"{field}: {shown} does not exist")
    try:
        info = read_run_info(workdir)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{field}: cannot read {os.path.join(workdir, RUN_FILE)}: {e}") from None
    if info is None:
        raise ConfigError(f"{field}: {shown} is not a jkd workdir (no {RUN_FILE}){hint}")
    return info


def check_workdir_compatible(workdir: str, specs: dict) -> None:
    """A workdir that already holds checkpoints must hold the same models (names and architectures)."""
    ckpt = checkpoint_dir(workdir)
    has_ckpt = os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt))
    if not has_ckpt:
        return
    info = read_run_info(workdir)
    if info is None:
        raise ConfigError(f"--workdir: {workdir} holds checkpoints but no {RUN_FILE}; use a fresh workdir")
    old = {k: ModelSpec.from_json(v).architecture() for k, v in info["models"].items()}
    new = {k: v.architecture() for k, v in specs.items()}
    if old != new:
        raise ConfigError(f"--workdir: {workdir} holds a checkpoint of a different model: it has {old}, "
                          f"this config asks for {new}. Use another --workdir or the matching config.")


def _resolve_teacher_path(path: str) -> tuple[str, int | None]:
    """A workdir (latest step) or a step directory <workdir>/checkpoints/<step> -> (workdir, step)."""
    path = os.path.abspath(path)
    if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
        return os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
    return path, None


def load_teacher(path: str, *, model_key: str = "", field: str = "config.teacher.checkpoint",
                 shardings_fn=None):
    """Load a frozen teacher from a jkd workdir or checkpoint step directory.

    Returns (ModelSpec, graphdef, params). model_key picks one model of a multi-model run.
    shardings_fn(abstract_params) -> shardings places the params (e.g. sharding.tree_shardings).
    """
    if not path:
        raise ConfigError(f"{field}: no teacher given (set it to a teacher workdir or checkpoint directory)")
    workdir, step = _resolve_teacher_path(path)
    info = require_run_info(workdir, field, shown_path=path)
    models = info["models"]
    if not model_key:
        if len(models) != 1:
            raise ConfigError(f"{field}: {path} holds several models {sorted(models)}; set config.teacher.model_key")
        model_key = next(iter(models))
    if model_key not in models:
        raise ConfigError(f"config.teacher.model_key: {model_key!r} not in {sorted(models)}")
    spec = ModelSpec.from_json(models[model_key])
    manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("params", "train"),
                                    options=ocp.CheckpointManagerOptions(create=False))
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise ConfigError(f"{field}: no checkpoint {'' if step is None else step} under {checkpoint_dir(workdir)}")
    graphdef, shapes = graphdef_and_shapes(spec)
    if shardings_fn is not None:
        shardings = shardings_fn(shapes)
        shapes = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    try:
        # Partial restore: only this model's params of the `params` item.
        restored = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.PyTreeRestore(
                item={model_key: shapes},
                restore_args=jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=getattr(s, "sharding", None)),
                                          {model_key: shapes}),
                partial_restore=True)))
    except Exception as e:  # orbax raises many types for unreadable/corrupt files
        raise ConfigError(f"{field}: cannot restore teacher params from {path} step {step}: "
                          f"{type(e).__name__}: {e}") from None
    finally:
        manager.close()
    return spec, graphdef, restored["params"][model_key]
