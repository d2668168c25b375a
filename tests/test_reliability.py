"""Checkpoint integrity (corrupt latest step -> fall back, exact result) and the non-finite guard."""
import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jkd import checkpoint
from jkd.config import base_config, model_config
from jkd.data import make_data
from jkd.errors import ConfigError
from jkd.train.loop import NonFiniteError, fit
from jkd.train.state import ModelSpec

SPEC = {"model": ModelSpec("vit_atto4", 10, 8, 1)}


def _config(**overrides):
    c = base_config()
    c.data.image_size, c.model, c.batch_size, c.eval_batch_size = 8, model_config("vit_atto4"), 16, 64
    c.steps, c.optimizer.warmup_steps, c.log_every, c.checkpoint_every, c.keep_checkpoints = 6, 1, 1, 2, 3
    c.progress = False
    c.update(overrides)
    return c


def _data(config):
    return make_data(config.data, seed=config.seed, global_batch_size=config.batch_size,
                     eval_batch_size=config.eval_batch_size)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """An uninterrupted 6-step run with checkpoints at steps 2, 4, 6."""
    workdir = str(tmp_path_factory.mktemp("clean"))
    config = _config()
    fit(config, workdir, specs=SPEC, data=_data(config))
    return workdir


def _read(path):
    with open(path) as f:
        return f.read()


def _corrupt(step_dir, how):
    """Damage the params item of a step on disk the way a crash or a bad disk would.

    truncated: every data file of the item cut to half its size (a half-written step). Cutting only
    the biggest file was not always enough: the params can span several files, and on one machine
    the arrays read at restore all lay in the surviving half, so the step still loaded.
    bitflip: the biggest file keeps its size with 16 bytes flipped (orbax has no checksum to notice)."""
    data_dir = os.path.join(step_dir, "params", "ocdbt.process_0", "d")
    files = [os.path.join(data_dir, f) for f in os.listdir(data_dir)]
    for path in (files if how == "truncated" else [max(files, key=os.path.getsize)]):
        with open(path, "rb") as f:
            raw = f.read()
        if how == "truncated":
            raw = raw[:len(raw) // 2]
        else:
            raw = raw[:1000] + bytes(b ^ 0x10 for b in raw[1000:1016]) + raw[1016:]
        with open(path, "wb") as f:
            f.write(raw)


def test_corrupt_latest_checkpoints_fall_back_and_end_identical(clean_run, tmp_path, capfd):
    # A run killed after its step-6 checkpoint whose newest two steps then got damaged on disk:
    # step 6 truncated (a half-written file), step 4 with flipped bits (which orbax cannot notice).
    workdir = str(tmp_path / "run")
    shutil.copytree(clean_run, workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    _corrupt(os.path.join(workdir, "checkpoints", "6"), "truncated")
    _corrupt(os.path.join(workdir, "checkpoints", "4"), "bitflip")

    config = _config()
    summary, _ = fit(config, workdir, specs=SPEC, data=_data(config))
    err = capfd.readouterr().err
    assert "checkpoint step 6 is unreadable" in err and "checkpoint step 4 is unreadable" in err
    assert "fingerprint" in err and "resumed from step 2" in err
    assert summary["resumed_from"] == 2
    # The damaged steps are kept aside, not deleted; the run replays steps 3-6 exactly.
    assert sorted(os.listdir(os.path.join(workdir, checkpoint.CORRUPT_DIR))) == ["4", "6"]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
    jax.tree.map(np.testing.assert_array_equal, checkpoint.restore_params(workdir), checkpoint.restore_params(clean_run))
    assert _read(os.path.join(workdir, "metrics.jsonl")) == _read(os.path.join(clean_run, "metrics.jsonl"))


def test_no_readable_checkpoint_is_a_clear_error_and_keeps_the_files(clean_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(clean_run, workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    for step in ("2", "4", "6"):
        _corrupt(os.path.join(workdir, "checkpoints", step), "truncated")
    config = _config()
    with pytest.raises(ConfigError, match=r"--workdir: no readable checkpoint .*step 6: .*step 2: "):
        fit(config, workdir, specs=SPEC, data=_data(config))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]


def test_resume_with_another_seed_is_refused(clean_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(clean_run, workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    config = _config(seed=1)
    with pytest.raises(ConfigError, match=r"config\.seed: the checkpoint at step 6 .* seed 0, this run asks for 1"):
        fit(config, workdir, specs=SPEC, data=_data(config))


def _with_nan_batch(data, bad_step):
    def train_batch(step):
        batch = data.train_batch(step)
        if step == bad_step:
            batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
        return batch
    return dataclasses.replace(data, train_batch=train_batch)


def test_nan_batch_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _config()
    workdir = str(tmp_path)
    with pytest.raises(NonFiniteError, match=r"non-finite .*model/loss=nan.* at step 5 \(batch 4\); the last good "
                                             r"checkpoint is step 4"):
        fit(config, workdir, specs=SPEC, data=_with_nan_batch(_data(config), 4))
    manager = checkpoint.make_manager(workdir)
    assert manager.all_steps() == [2, 4]
    manager.close()
    params = checkpoint.restore_params(workdir)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
    assert not any(json.loads(line)["step"] > 4 for line in open(os.path.join(workdir, "metrics.jsonl")))


def test_nan_batch_is_skipped_when_configured(tmp_path):
    config = _config(nonfinite="skip", steps=4, checkpoint_every=4)
    summary, state = fit(config, str(tmp_path), specs=SPEC, data=_with_nan_batch(_data(config), 2))
    assert summary["skipped_updates"] == 1 and int(state.step) == 4
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))
    records = [json.loads(line) for line in open(os.path.join(str(tmp_path), "metrics.jsonl"))]
    assert [r.get("skipped_updates") for r in records if r["split"] == "train"] == [None, None, 1, None]
