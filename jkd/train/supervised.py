"""Supervised training from labels: teachers and label-only baselines.

    python -m jkd.main --config configs/quickstart.py --workdir /tmp/q   (runs this for the teacher)
"""
from __future__ import annotations

from jkd.config import check_model_entry, check_run
from jkd.data import make_data
from jkd.train.loop import fit
from jkd.train.state import ModelSpec


def model_spec(entry, config, num_classes: int) -> ModelSpec:
    """ModelSpec for a config model entry on config.data's inputs."""
    return ModelSpec(name=entry.name, num_classes=num_classes, image_size=config.data.image_size,
                     in_channels=config.data.channels, kwargs=tuple(sorted(dict(entry.get("kwargs", {})).items())),
                     dtype=config.dtype)


def check_config(config) -> None:
    """Start-up checks of a supervised run (ConfigError naming the field)."""
    check_run(config)
    check_model_entry(config.model, config, "config.model")


def train_supervised(config, workdir: str, *, name: str = "model", desc: str = "supervised") -> dict:
    """Train config.model on labels (cross-entropy) into workdir; returns the run summary."""
    check_config(config)
    data = make_data(config.data, seed=config.seed, global_batch_size=config.batch_size,
                     eval_batch_size=config.eval_batch_size)
    return fit(config, workdir, specs={name: model_spec(config.model, config, data.num_classes)}, data=data,
               desc=desc)[0]
