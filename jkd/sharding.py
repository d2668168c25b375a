"""Device mesh, partition rules and placement of batches and train state.

Mesh axes: `data` (pure data parallelism) and `fsdp` (data parallel too, and parameters, optimizer
state and the frozen teacher are split along it). The batch is split over both axes, so every
device sees distinct examples: data-parallel width = data * fsdp.

Rule for parameters (shape-only, so optimizer moments get the same layout as their parameter): a
leaf with >= 2 dims and at least `min_shard_size` elements is split along its largest dimension
that the fsdp size divides; anything else (biases, norms, scalars, rng) is replicated.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jkd.errors import ConfigError

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """Mesh of shape (data, fsdp) from config.mesh; -1 in one axis fills the remaining devices.

    Axis types are Auto: jax.make_mesh defaults to Explicit, under which the ViT's concat of a
    replicated CLS token with sharded patch tokens fails to type-check.
    """
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp = int(mesh_cfg.data), int(mesh_cfg.fsdp)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ConfigError("config.mesh: at most one of data/fsdp may be -1")
    if data == -1:
        if fsdp <= 0 or n % fsdp:
            raise ConfigError(f"config.mesh.fsdp: {fsdp} does not divide the {n} devices")
        data = n // fsdp
    if fsdp == -1:
        if data <= 0 or n % data:
            raise ConfigError(f"config.mesh.data: {data} does not divide the {n} devices")
        fsdp = n // data
    if data * fsdp != n:
        raise ConfigError(f"config.mesh: data*fsdp = {data}*{fsdp} = {data * fsdp} but {n} devices are present")
    return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split (data * fsdp)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "config.batch_size") -> None:
    """Fail early when the global batch does not split evenly over the data-parallel devices."""
    n = data_parallel_size(mesh)
    if batch_size % n:
        raise ConfigError(f"{field}: {batch_size} is not divisible by the {n} data-parallel devices "
                          f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def leaf_spec(shape: tuple[int, ...], fsdp: int, min_shard_size: int = 2 ** 14) -> P:
    """PartitionSpec of one array under the fsdp rule (see module docstring)."""
    if fsdp == 1 or len(shape) < 2 or math.prod(shape) < min_shard_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(tree, mesh: Mesh, min_shard_size: int = 2 ** 14):
    """NamedSharding for every leaf of a pytree of arrays / ShapeDtypeStructs."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(tuple(x.shape), fsdp, min_shard_size)), tree)


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Assemble per-process numpy batches into global arrays split over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def planned_bytes_per_device(tree, shardings) -> int:
    """Bytes one device will hold of a pytree of arrays / ShapeDtypeStructs placed with `shardings`
    (NamedShardings split evenly, so the figure is the same on every device). Works on
    jax.eval_shape output: sizes a ViT-H teacher's layout without allocating it."""
    return sum(math.prod(sh.shard_shape(tuple(x.shape))) * np.dtype(x.dtype).itemsize
               for x, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))


def bytes_per_device(tree) -> dict:
    """Bytes of a placed pytree held by each device: {device_id: bytes} (for FSDP accounting)."""
    out: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out
