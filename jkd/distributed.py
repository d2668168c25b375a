"""Multi-process runs: `jax.distributed.initialize` driven by config.distributed or the environment.

One process per host (or per GPU); every process runs the same command. Example, 2 processes on one
machine (CPU collectives over gloo):

    JKD_COORDINATOR_ADDRESS=127.0.0.1:12355 JKD_NUM_PROCESSES=2 JKD_PROCESS_ID=0 python -m jkd.main ... &
    JKD_COORDINATOR_ADDRESS=127.0.0.1:12355 JKD_NUM_PROCESSES=2 JKD_PROCESS_ID=1 python -m jkd.main ...

Config fields win over the environment; coordinator_address='auto' lets jax detect the cluster
(Cloud TPU pods, SLURM, Open MPI, Kubernetes). After initialisation jax.devices() spans every
process; the rest of jkd is unchanged: the mesh is built over all devices, each process loads its
own slice of every batch (jkd.data), process 0 writes logs and results, orbax checkpoints are
written and restored collectively.
"""
from __future__ import annotations

import os

import jax

from jkd.errors import ConfigError

ENV = {"coordinator_address": "JKD_COORDINATOR_ADDRESS", "num_processes": "JKD_NUM_PROCESSES",
       "process_id": "JKD_PROCESS_ID"}


def settings(dist_cfg, environ=os.environ) -> dict | None:
    """{'coordinator_address', 'num_processes', 'process_id'} from config.distributed (unset fields
    from JKD_* environment variables); {} for 'auto'; None for a single-process run."""
    get = (lambda k, default: dist_cfg.get(k, default)) if dist_cfg is not None else (lambda k, default: default)
    address = get("coordinator_address", "") or environ.get(ENV["coordinator_address"], "")
    if not address:
        return None
    if address == "auto":
        return {}
    out = {"coordinator_address": address}
    for key, unset in (("num_processes", 0), ("process_id", -1)):
        value = get(key, unset)
        field = f"config.distributed.{key}"
        if value == unset:
            raw = environ.get(ENV[key], "")
            field = ENV[key]
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{field}: a multi-process run ({address}) needs an integer, got {raw!r} "
                                  f"(set config.distributed.{key} or {ENV[key]})") from None
        out[key] = value
    if out["num_processes"] < 1:
        raise ConfigError(f"config.distributed.num_processes: must be >= 1, got {out['num_processes']}")
    if not 0 <= out["process_id"] < out["num_processes"]:
        raise ConfigError(f"config.distributed.process_id: must be in [0, {out['num_processes']}), "
                          f"got {out['process_id']}")
    return out


def initialize(config) -> bool:
    """Join the multi-process job described by config.distributed / JKD_*; False for one process.

    Must run before anything touches a jax device. Selects gloo for CPU cross-process collectives
    (jax's CPU client has none by default; the setting does not affect GPU or TPU backends).
    """
    kwargs = settings(config.get("distributed") if config is not None else None)
    if kwargs is None:
        return False
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True
