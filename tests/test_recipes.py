"""Accelerator recipes build at full size and run 2 steps on TFDS mock data (tiny overrides).

Full-size models are only shape-evaluated (nnx.eval_shape); the 2-step runs swap in tiny models and
8-px inputs so that the recipe's trainer, data path (tfds.data_source + grain on
tfds.testing.mock_data), teacher loading and objectives run end to end on a CPU in seconds.
"""
import importlib.util
import os

import pytest
import tensorflow_datasets as tfds
from flax import nnx

from jkd.trainers import validate
from jkd.main import run
from jkd.models import count_params
from jkd.train.supervised import model_spec
from test_tfds_data import _write_metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {  # recipe -> (dataset, classes)
    "imagenet_vit_l16_to_s16_convnext_t": ("imagenet2012", 1000),
    "imagenet_vit_b16_to_s16_deit": ("imagenet2012", 1000),
    "cifar100_vit_to_s16_convnext_t": ("cifar100", 100),
    "cifar100_teacher": ("cifar100", 100),
}


def _load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_builds_at_full_size(recipe):
    config = _load(recipe, "/not/used")
    validate(config)
    entries = config.students if config.trainer == "distill" else {"model": config.model}
    for entry in entries.values():
        spec = model_spec(entry, config, RECIPES[recipe][1])
        assert count_params(nnx.eval_shape(spec.build)) > 5_000_000


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_recipes"))
    _write_metadata(data_dir, "cifar100", {"train": 32, "test": 32})
    _write_metadata(data_dir, "imagenet2012", {"train": 32, "validation": 32})
    return data_dir


def _shrink(config, data_dir):
    config.data.image_size, config.data.data_dir = 8, data_dir
    config.batch_size, config.eval_batch_size, config.steps = 16, 16, 2
    config.optimizer.warmup_steps, config.progress, config.log_every = 1, False, 1
    config.mesh.fsdp = 2 if config.mesh.fsdp > 1 else 1
    config.dtype = "float32"
    for entry in (config.students.values() if config.trainer == "distill" else [config.model]):
        if entry.name.startswith("vit_"):
            entry.name = "vit_atto4"
            entry.kwargs = {k: v for k, v in entry.kwargs.items() if k != "drop_path_rate"}
        else:
            entry.name, entry.kwargs = "convnext_zepto", {"stem_stride": 1}
    return config


@pytest.fixture(scope="module")
def mock_teachers(mock_dir, tmp_path_factory):
    """configs/cifar100_teacher.py run for 2 steps (tiny model) on each mock dataset: this is that
    recipe's own 2-step test, and the stand-in teacher of the distillation recipes."""
    out = {}
    with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=mock_dir):
        for dataset, eval_split in (("cifar100", "test"), ("imagenet2012", "validation")):
            config = _shrink(_load("cifar100_teacher"), mock_dir)
            config.data.name, config.data.eval_split = dataset, eval_split
            workdir = str(tmp_path_factory.mktemp(f"teacher_{dataset}"))
            out[dataset] = (workdir, run(config, workdir))
    return out


def test_teacher_recipe_runs_two_steps_on_mock_data(mock_teachers):
    for _, summary in mock_teachers.values():
        assert summary["steps"] == 2 and 0.0 <= summary["models"]["model"]["accuracy"] <= 1.0


@pytest.mark.parametrize("recipe", sorted(r for r in RECIPES if r != "cifar100_teacher"))
def test_distill_recipe_runs_two_steps_on_mock_data(recipe, mock_dir, mock_teachers, tmp_path):
    dataset, _ = RECIPES[recipe]
    with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=mock_dir):
        config = _shrink(_load(recipe, mock_teachers[dataset][0]), mock_dir)
        summary = run(config, str(tmp_path))
    assert summary["steps"] == 2
    assert summary["teacher"]["model"] == "vit_atto4"
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in summary["models"].values())
