"""The deep-net ensemble / KD-from-ensemble / self-distillation probe (jkd/probes/ensemble.py) at
seconds size on digits: every stage runs, the ensemble's score is what its members' averaged
probabilities give, a rerun trains nothing, and bad settings fail before any training."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from jkd import checkpoint
from jkd.data import make_data
from jkd.errors import ConfigError
from jkd.main import run
from jkd.train.state import apply_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg="tiny"):
    spec = importlib.util.spec_from_file_location("ensemble_kd", os.path.join(REPO, "configs/ensemble_kd.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_probe_end_to_end_and_ensemble_score(tmp_path):
    config = _config()
    summary = run(config, str(tmp_path))
    assert len(summary["single"]["each"]) == config.ensemble.size == 2
    assert np.isclose(summary["single"]["accuracy"], np.mean(summary["single"]["each"]))
    assert len(summary["self_distill"]["generations"]) == 1
    for stage in ("single_0", "single_1", "kd_ensemble", "self_distill"):
        assert os.path.exists(tmp_path / stage / "summary.json"), stage

    # The ensemble's accuracy, recomputed here from the members' checkpoints: argmax of mean probs.
    data = make_data(config.data, seed=0, global_batch_size=config.batch_size, eval_batch_size=64)
    members = [checkpoint.load_teacher(str(tmp_path / f"single_{i}")) for i in range(2)]
    correct = count = 0
    for batch in data.eval_batches():
        probs = np.mean([jax.nn.softmax(apply_model(g, p, batch["image"])) for _, g, p in members], axis=0)
        correct += ((probs.argmax(-1) == batch["label"]) * batch["mask"]).sum()
        count += batch["mask"].sum()
    assert np.isclose(summary["ensemble"]["accuracy"], correct / count, atol=1e-6)

    # Members are independent: different seeds, so different params.
    a, b = (jax.tree.leaves(m[2]) for m in members)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))

    # Rerun: every stage is finished, so the same summary comes back from disk.
    assert run(config, str(tmp_path)) == json.loads((tmp_path / "summary.json").read_text())
    assert "KD from the ensemble" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("field,value,match", [
    ("ensemble.size", 1, "config.ensemble.size"),
    ("generations", -1, "config.generations"),
    ("steps", 0, "config.steps"),
])
def test_bad_settings_fail_before_training(tmp_path, field, value, match):
    config = _config()
    *groups, leaf = field.split(".")
    with config.unlocked():
        node = config
        for g in groups:
            node = node[g]
        node[leaf] = value
    with pytest.raises(ConfigError, match=match):
        run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "single_0")


def test_accelerator_variants_validate():
    from jkd.trainers import validate
    for arg in ("cifar10", "cifar100"):
        config = _config(arg)
        validate(config)
        assert config.ensemble.size == 10 and config.data.name == arg
