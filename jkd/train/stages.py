"""The stages of jkd's pipelines (quickstart, omitted, ensemble): each is a plain supervised or
distill config, checked and run by that trainer. The pipelines sit below the registry
(jkd/trainers.py), so they dispatch their stages here, over these two kinds only.

    check_stage(stage)                       # ConfigError naming the field
    summary = run_stage(stage, workdir, desc="teacher")
"""
from __future__ import annotations

from jkd.errors import ConfigError
from jkd.train import distill, supervised

STAGE_TRAINERS = {"supervised": (supervised.check_config, supervised.train_supervised),
                  "distill": (distill.check_config, distill.train_distill)}


def _kind(stage):
    if stage.trainer not in STAGE_TRAINERS:
        raise ConfigError(f"config.trainer: a pipeline stage is one of {', '.join(STAGE_TRAINERS)}, "
                          f"got {stage.trainer!r}")
    return STAGE_TRAINERS[stage.trainer]


def check_stage(stage) -> None:
    """The start-up checks of one stage config (its trainer's check_config)."""
    _kind(stage)[0](stage)


def run_stage(stage, workdir: str, desc: str) -> dict:
    """Train one stage into workdir (resumes / returns the stored summary when finished)."""
    return _kind(stage)[1](stage, workdir, desc=desc)
