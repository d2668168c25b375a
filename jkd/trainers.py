"""The trainer registry: config.trainer -> (start-up check, run, sweep figures). The one dispatch.

    trainer = trainers.get(config.trainer)    # ConfigError listing the known names if unknown
    trainers.validate(config)                 # renamed fields + the trainer's own check, before anything runs
    summary = trainer.run(config, workdir)

`jkd.main`, `jkd.sweep` and the docs all read this table. A trainer is a module with
`check_config(config)` (raises ConfigError naming the field; cheap: no data, no compile) and a run
function `(config, workdir) -> summary dict`; a probe may add `sweep_figures(records, out_dir,
group_of) -> [paths]` for jkd.sweep. Entries are "module:function" strings resolved on first use,
so this table imports no trainer (nothing imports this module but the CLIs: no cycle can form).
To add a trainer: write the module, add one `Trainer(...)` line below (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import dataclasses
import importlib

from jkd import ranges, writers
from jkd.config import check_renamed
from jkd.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Trainer:
    name: str
    check: str             # 'module:function', check(config) -> None
    runner: str            # 'module:function', run(config, workdir) -> summary
    figures: str = ""      # 'module:function' for jkd.sweep, or '' (none)
    renamed: str = ""      # 'module:TABLE' of the trainer's own renamed fields {old: 'new (why)'}, or ''
    about: str = ""        # one line: what the trainer runs (docs/ARCHITECTURE.md)

    def check_config(self, config) -> None:
        _resolve(self.check)(config)

    def run(self, config, workdir: str) -> dict:
        return _resolve(self.runner)(config, workdir)

    def sweep_figures(self, records: list, out_dir: str, group_of) -> list[str]:
        return _resolve(self.figures)(records, out_dir, group_of) if self.figures else []


REGISTRY = {t.name: t for t in (
    Trainer("supervised", "jkd.train.supervised:check_config", "jkd.train.supervised:train_supervised",
            about="one model from labels (teachers, label-only baselines)"),
    Trainer("distill", "jkd.train.distill:check_config", "jkd.train.distill:train_distill",
            about="teacher workdir(s) -> config.students, one teacher forward per batch; generations > 1 = "
                  "self-distillation"),
    Trainer("quickstart", "jkd.train.quickstart:check_config", "jkd.train.quickstart:run_quickstart",
            about="teacher -> one KD stage per config.kd_methods preset -> label-only twins -> table"),
    Trainer("teacher_cache", "jkd.train.cache_pipeline:check_config", "jkd.train.cache_pipeline:run",
            about="the quickstart's teacher -> live KD and KD from teacher caches of each top-k (FKD) -> table"),
    Trainer("omitted", "jkd.train.quickstart:check_config", "jkd.probes.omitted:run_omitted",
            about="the quickstart with classes left out of the transfer set (Hinton et al. 2015, section 3)"),
    Trainer("ensemble", "jkd.probes.ensemble:check_config", "jkd.probes.ensemble:run_ensemble",
            about="independent members -> ensemble, KD from the ensemble, self-distillation (real nets)"),
    Trainer("theory", "jkd.probes.theory:check_config", "jkd.probes.theory:run",
            "jkd.probes.theory_report:sweep_figures", "jkd.probes.theory:RENAMED",
            about="Allen-Zhu & Li's multi-view data: ensemble / KD / self-distillation of the analysed net, "
                  "random features, NTK"),
    Trainer("spurious", "jkd.probes.spurious:check_config", "jkd.probes.spurious:run",
            "jkd.probes.spurious:sweep_figures", "jkd.probes.spurious:RENAMED",
            about="group fairness under KD on spurious-correlation data; early-exit reweighted KD"),
    Trainer("augmentation", "jkd.probes.augmentation:check_config", "jkd.probes.augmentation:run",
            "jkd.probes.augmentation:sweep_figures", "jkd.probes.augmentation:RENAMED",
            about="class confusions from random-resized crops, the class-conditional remedy, and KD"),
)}

# Trainer names that were renamed: a config that still uses one fails with the new name.
RENAMED = {"fairness": "'spurious' or 'augmentation' (config.probe is gone: the trainer names the probe)"}


def _resolve(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def renamed_hint(field: str) -> str | None:
    """'renamed to <new> (...)' if the dotted `field` is an old name in the config's or any trainer's
    rename table (for the CLIs, whose override parser only knows the fields a config has)."""
    from jkd.config import RENAMED_FIELDS, RENAMED_KD_FIELDS
    field = field.split("=")[0]
    hits = [RENAMED_FIELDS.get(field), RENAMED_KD_FIELDS.get(field)]
    hits += [f"{_resolve(t.renamed)[field]} (trainer {t.name})" for t in REGISTRY.values()
             if t.renamed and field in _resolve(t.renamed)]
    hits = [h for h in hits if h]
    return "renamed to " + " or ".join(hits) if hits else None


def get(name) -> Trainer:
    """The registered trainer `name`; ConfigError listing the known ones otherwise."""
    if name in RENAMED:
        raise ConfigError(f"config.trainer: {name!r} was renamed to {RENAMED[name]}")
    if name not in REGISTRY:
        raise ConfigError(f"config.trainer: unknown trainer {name!r} (known: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def validate(config) -> None:
    """Every start-up check of a config: its trainer exists, no renamed field is set, every numeric
    field is in its range (jkd/ranges.py, for any trainer), and the trainer's own check (which checks
    each stage of a multi-stage trainer). Raises ConfigError."""
    trainer = get(config.get("trainer"))
    check_renamed(config)
    ranges.check(config)
    writers.check_config(config)
    trainer.check_config(config)


def run(config, workdir: str) -> dict:
    """validate(config), then the trainer's run; returns its summary."""
    validate(config)
    return get(config.trainer).run(config, workdir)
