"""Checkpoints (orbax) and the run description that travels with them.

Layout of a workdir:
    <workdir>/run.json            trainer, model specs {name: ModelSpec}, the config (written at start)
    <workdir>/checkpoints/<step>/ orbax items: `params` ({name: params}), `train` (step, rng, opt_state)
                                  and `meta` (JSON: step, data seed, fingerprint of the whole state)
    <workdir>/corrupt_checkpoints/<step>/  steps found unreadable on resume (moved aside, never deleted)
    <workdir>/metrics.jsonl, summary.json, ...

Params and optimizer state are separate items so a teacher is loaded by restoring `params` alone.
Saves are asynchronous (training continues while the previous step is written); the last N are kept;
rerunning the same command resumes from the latest step. The resumable state is complete: step,
augmentation rng and the data seed (batch i is a pure function of (seed, i)), so a resumed run is
bit-identical to an uninterrupted one.

Integrity: a step that fails to restore (truncated or half-written files) or whose restored values
do not reproduce the fingerprint written with them (bit rot: orbax has no checksums) is reported
with a warning, moved to corrupt_checkpoints/, and the previous step is tried. Orbax only deletes
old steps after a newer one is committed, so the last good copy is never the one deleted.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jkd.data.preprocess import ModelInput, model_input
from jkd.errors import ConfigError
from jkd.train.state import ModelSpec, TrainState, graphdef_and_shapes

RUN_FILE = "run.json"
ITEMS = ("params", "train", "meta")
CORRUPT_DIR = "corrupt_checkpoints"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    """CheckpointManager over <workdir>/checkpoints keeping the latest `keep` steps."""
    # cleanup_tmp_directories: a save killed mid-write leaves an uncommitted tmp dir, never a good copy.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


@jax.jit
def fingerprint(tree) -> jax.Array:
    """uint32[] hash of every bit of a pytree of arrays: a weighted wrap-around sum of the leaves'
    bit patterns. Integer addition is exact and order-free, so the value does not depend on how
    the arrays are sharded (a checkpoint restored under another mesh has the same fingerprint)."""
    total = jnp.zeros((), jnp.uint32)
    for i, leaf in enumerate(jax.tree.leaves(tree)):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if leaf.dtype == jnp.bool_:
            leaf = leaf.astype(jnp.uint8)
        bits = jax.lax.bitcast_convert_type(leaf, jnp.dtype(f"uint{8 * leaf.dtype.itemsize}")).astype(jnp.uint32)
        # Position weights make a swap of two elements or two leaves change the sum.
        weights = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape) * jnp.uint32(2654435761) + jnp.uint32(1)
        total = total + jnp.uint32(2 * i + 1) * jnp.sum(bits * weights, dtype=jnp.uint32)
    return total


def save(manager: ocp.CheckpointManager, state: TrainState, *, data_seed: int = 0) -> None:
    """Start saving `state` at its step (returns before the write finishes when async).

    data_seed: the seed of the batch stream (batch i = f(data_seed, i)), checked on resume."""
    train = {"step": state.step, "rng": state.rng, "opt_state": state.opt_state}
    meta = {"step": int(state.step), "data_seed": int(data_seed), "fingerprint": int(fingerprint(state))}
    manager.save(int(state.step), args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), train=ocp.args.StandardSave(train),
        meta=ocp.args.JsonSave(meta)))


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
    abstract_train = {"step": abstract_state.step, "rng": abstract_state.rng, "opt_state": abstract_state.opt_state}
    has_meta = os.path.isdir(os.path.join(str(manager.directory), str(step), "meta"))
    items = dict(params=ocp.args.StandardRestore(abstract_state.params), train=ocp.args.StandardRestore(abstract_train))
    if has_meta:  # checkpoints written before the integrity item existed restore without the check
        items["meta"] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    train = restored["train"]
    state = TrainState(step=train["step"], rng=train["rng"], params=restored["params"], opt_state=train["opt_state"])
    meta = dict(restored["meta"]) if has_meta else {}
    if has_meta and (int(fingerprint(state)) != meta["fingerprint"] or int(state.step) != meta["step"]):
        raise ValueError(f"restored values do not match the fingerprint saved with them (bit-level corruption)")
    return state, meta


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"jkd: warning: {message}", file=sys.stderr, flush=True)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState, *,
                   data_seed: int | None = None) -> TrainState | None:
    """Restore the newest readable step into the layout (shapes, shardings) of abstract_state;
    None if there is no checkpoint.

    A step that cannot be restored or fails its fingerprint is reported, moved to
    <workdir>/corrupt_checkpoints/ (once an older step restored, so a later save can reuse the
    step number) and the next older step is tried. Raises ConfigError when no step is readable
    (nothing is moved then) or when the checkpoint's data seed differs from `data_seed`.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    bad: list[tuple[int, str]] = []
    for step in steps:
        try:
            state, meta = _restore_step(manager, step, abstract_state)
        except Exception as e:  # orbax/tensorstore raise many types for unreadable files
            bad.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"))
            _warn(f"checkpoint step {step} is unreadable ({bad[-1][1]}); trying the previous one")
            continue
        if data_seed is not None and "data_seed" in meta and meta["data_seed"] != data_seed:
            raise ConfigError(f"config.seed: the checkpoint at step {step} in {manager.directory} was trained with "
                              f"seed {meta['data_seed']}, this run asks for {data_seed}; resuming would change the "
                              f"data order. Use the original seed or another --workdir.")
        if bad:
            _quarantine(manager, [s for s, _ in bad])
            _warn(f"resumed from step {step}; moved the unreadable step(s) {[s for s, _ in bad]} to "
                  f"{os.path.join(os.path.dirname(str(manager.directory)), CORRUPT_DIR)}")
        return state
    if bad:
        raise ConfigError(f"--workdir: no readable checkpoint under {manager.directory}: "
                          + "; ".join(f"step {s}: {why}" for s, why in bad)
                          + ". Move the checkpoints directory aside to start afresh.")
    return None


def _quarantine(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Move step directories aside (process 0; every process waits for it) and rescan."""
    root = str(manager.directory)
    if jax.process_index() == 0:
        dest = os.path.join(os.path.dirname(root), CORRUPT_DIR)
        os.makedirs(dest, exist_ok=True)
        for step in steps:
            target = os.path.join(dest, str(step))
            n = 1
            while os.path.exists(target):
                target, n = os.path.join(dest, f"{step}.{n}"), n + 1
            shutil.move(os.path.join(root, str(step)), target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jkd_checkpoint_quarantine")
    manager.reload()


def restore_params(workdir: str, step: int | None = None) -> dict:
    """The `params` item ({name: params} as host arrays) of step `step` (default: latest) of a workdir."""
    manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=ITEMS,
                                    options=ocp.CheckpointManagerOptions(create=False))
    try:
        step = manager.latest_step() if step is None else step
        # Fallback to one local device: the saved sharding may name devices of another topology
        # (a multi-process run read back in a single process).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        restored = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(fallback_sharding=device)))
        return jax.device_get(restored["params"])
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
    manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=ITEMS,
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


def teacher_preprocessing(path: str, spec: ModelSpec) -> ModelInput:
    """The input the teacher at `path` (a workdir or checkpoint step directory, model `spec`) expects.

    One place records it: run.json's config.data. A jkd-trained teacher's is the config it was trained
    with (mean, std); an imported one's is what `python -m jkd.pretrained` wrote (--preset or
    --mean/--std; resize 'bicubic'). Image size and channels are the model's (spec). mean/std None:
    not recorded (imported before jkd recorded it): the students' normalisation is assumed, as before.
    """
    workdir, _ = _resolve_teacher_path(path)
    data = ((read_run_info(workdir) or {}).get("config") or {}).get("data") or {}
    return model_input(data.get("mean"), data.get("std"), image_size=spec.image_size, channels=spec.in_channels,
                       resize=data.get("resize", "bilinear"), field=f"{os.path.join(workdir, RUN_FILE)} config.data")

