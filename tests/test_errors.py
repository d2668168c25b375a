"""Bad input fails early (before anything is compiled) with a message naming the field."""
import dataclasses
import os
import subprocess
import sys

import jax
import pytest

from jkd.config import model_config
from jkd.data import make_data
from jkd.errors import ConfigError
from jkd.main import run
from jkd.train.loop import fit
from jkd.train.state import ModelSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_compile(monkeypatch):
    """Any jax.jit call from here on is a test failure: errors must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("jax.jit was called before the bad input was reported")
    monkeypatch.setattr(jax, "jit", refuse)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A real (2-step) digits teacher workdir: vit_atto4 at 8 px, 10 classes."""
    from jkd.config import base_config
    c = base_config()
    c.data.image_size, c.model, c.steps, c.batch_size = 8, model_config("vit_atto4"), 2, 16
    c.optimizer.warmup_steps, c.progress = 1, False
    workdir = str(tmp_path_factory.mktemp("teacher"))
    run(c, workdir)
    return workdir


def _distill(tiny_config, teacher):
    c = tiny_config
    c.trainer = "distill"
    c.students = {"vit": model_config("vit_atto4")}
    c.teacher.checkpoint = teacher
    return c


def test_unknown_model_name(tiny_config, tmp_path, no_compile):
    tiny_config.model.name = "vit_gigantic16"
    with pytest.raises(ConfigError, match=r"config\.model\.name: unknown model 'vit_gigantic16'"):
        run(tiny_config, str(tmp_path))


def test_image_size_not_divisible_by_patch(tiny_config, tmp_path, no_compile):
    tiny_config.data.image_size = 10
    with pytest.raises(ConfigError, match=r"config\.model: image size 10 is not divisible by the patch size 4"):
        run(tiny_config, str(tmp_path))


def test_batch_not_divisible_by_data_parallel_devices(tiny_config, tmp_path, no_compile):
    tiny_config.batch_size = 12  # 8 fake devices
    with pytest.raises(ConfigError, match=r"config\.batch_size: 12 is not divisible by the 8 data-parallel"):
        run(tiny_config, str(tmp_path))


def test_teacher_checkpoint_missing(tiny_config, tmp_path, no_compile):
    c = _distill(tiny_config, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"config\.teacher\.checkpoint: .*nowhere does not exist"):
        run(c, str(tmp_path / "out"))


def test_teacher_checkpoint_not_a_workdir(tiny_config, tmp_path, no_compile):
    (tmp_path / "empty").mkdir()
    c = _distill(tiny_config, str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"config\.teacher\.checkpoint: .* is not a jkd workdir"):
        run(c, str(tmp_path / "out"))


def test_teacher_run_file_unreadable(tiny_config, tmp_path, no_compile):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{ not json")
    c = _distill(tiny_config, str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match=r"config\.teacher\.checkpoint: cannot read"):
        run(c, str(tmp_path / "out"))


def test_teacher_checkpoint_files_corrupt(tiny_config, teacher_dir, tmp_path):
    import shutil
    broken = str(tmp_path / "broken")
    shutil.copytree(teacher_dir, broken)
    step_dir = os.path.join(broken, "checkpoints", "2", "params")
    for root, _, files in os.walk(step_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    c = _distill(tiny_config, broken)
    with pytest.raises(ConfigError, match=r"config\.teacher\.checkpoint: cannot restore teacher params"):
        run(c, str(tmp_path / "out"))


def test_teacher_and_student_class_counts_differ(tiny_config, tmp_path):
    # A teacher with 5 classes (the run.json says so and the checkpoint has a 5-way head).
    data = make_data(tiny_config.data, seed=0, global_batch_size=16)
    teacher_dir = str(tmp_path / "teacher5")
    tiny_config.steps = 2
    fit(tiny_config, teacher_dir, specs={"model": ModelSpec("vit_atto4", 5, 8, 1)},
        data=dataclasses.replace(data, num_classes=5))
    c = _distill(tiny_config, teacher_dir)
    with pytest.raises(ConfigError, match=r"the teacher has 5 classes but the students \(digits\) have 10"):
        run(c, str(tmp_path / "out"))


def test_workdir_holds_a_different_model(tiny_config, teacher_dir, no_compile):
    tiny_config.model = model_config("vit_femto4")
    with pytest.raises(ConfigError, match=r"--workdir: .* holds a checkpoint of a different model"):
        run(tiny_config, teacher_dir)


def test_cli_reports_user_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jkd.main", "--config", os.path.join(REPO, "configs/quickstart.py"),
         "--workdir", str(tmp_path), "--config.teacher.model.name=vit_nope4"],
        cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "config.teacher.model.name: unknown model 'vit_nope4'" in proc.stderr
    assert "Traceback" not in proc.stderr


def _cli(tmp_path, *overrides):
    return subprocess.run(
        [sys.executable, "-m", "jkd.main", "--config", os.path.join(REPO, "configs/quickstart.py"),
         "--workdir", str(tmp_path), *overrides], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("override, message", [
    ("--config.kd.temprature=2", "--config.kd.temprature: the config has no field 'temprature'; "
                                 "did you mean 'temperature'?"),
    ("--config.steps=abc", "--config.steps=abc: invalid literal for int()"),
])
def test_cli_unknown_field_or_wrong_type_is_exit_2(tmp_path, override, message):
    proc = _cli(tmp_path, override)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("field, value, match", [
    ("steps", 0, r"config\.steps: must be a positive integer, got 0"),
    ("seed", -1, r"config\.seed: must be an integer >= 0, got -1"),
    ("batch_size", 16.5, r"config\.batch_size: must be a positive integer, got 16\.5"),
    ("data.channels", 2, r"config\.data\.channels: must be 1 or 3, got 2"),
    ("data.image_size", -8, r"config\.data\.image_size: must be a positive integer"),
    ("kd.weight", -0.5, r"config\.kd\.weight: must be >= 0, got -0\.5"),
    ("augment.crop_scale", (0.8, 0.2), r"config\.augment\.crop_scale: need \(min, max\)"),
    ("nonfinite", "ignore", r"config\.nonfinite: must be one of \('stop', 'skip'\), got 'ignore'"),
    ("trainer", "distil", r"config\.trainer: unknown trainer 'distil'"),
])
def test_out_of_range_fields(tiny_config, tmp_path, no_compile, field, value, match):
    *parents, leaf = field.split(".")
    section = tiny_config
    for p in parents:
        section = section[p]
    with section.ignore_type():
        section[leaf] = value
    with pytest.raises(ConfigError, match=match):
        run(tiny_config, str(tmp_path))


def test_unknown_dataset_name(tiny_config, tmp_path, no_compile):
    tiny_config.data.name = "digitz"
    with pytest.raises(ConfigError, match=r"config\.data\.name: "):
        run(tiny_config, str(tmp_path))
