"""The sharded step on 8 fake CPU devices computes what one device computes."""
import json
import os

import jax
import numpy as np
import pytest

from jkd import sharding
from jkd.config import model_config
from jkd.data import make_data
from jkd.errors import ConfigError
from jkd.train.loop import fit
from jkd.train.state import ModelSpec, graphdef_and_shapes, init_params
from jkd.train.supervised import model_spec


def _distill_run(config, workdir, mesh_shape, devices):
    """Two steps of distilling a (randomly initialised) ViT teacher into two students."""
    config.trainer = "distill"
    config.mesh.data, config.mesh.fsdp = mesh_shape
    config.mesh.min_shard_size = 256  # small enough that the tiny models really get split over fsdp
    config.steps, config.log_every = 2, 1
    config.students = {"vit": model_config("vit_atto4"), "convnext": model_config("convnext_zepto", stem_stride=1)}
    data = make_data(config.data, seed=0, global_batch_size=config.batch_size)
    specs = {n: model_spec(e, config, data.num_classes) for n, e in config.students.items()}
    teacher_spec = ModelSpec("vit_femto4", data.num_classes, 8, 1)
    teacher = (teacher_spec, graphdef_and_shapes(teacher_spec)[0], init_params(teacher_spec, 7))
    summary, state = fit(config, workdir, specs=specs, data=data, teachers=(teacher,),
                         mesh=sharding.make_mesh(config.mesh, devices))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [{k: v for k, v in json.loads(line).items() if k.endswith("/loss")} for line in f
                  if json.loads(line)["split"] == "train"]
    return losses, jax.device_get(state.params), state, summary


@pytest.mark.parametrize("mesh_shape", [(4, 2), (8, 1)])
def test_sharded_distill_step_matches_single_device(tiny_config, tmp_path, mesh_shape):
    tiny_config.data.image_size = 8
    ref_losses, ref_params, _, ref_summary = _distill_run(tiny_config.copy_and_resolve_references(), str(tmp_path / "one"),
                                             (1, 1), jax.devices()[:1])
    losses, params, state, summary = _distill_run(tiny_config.copy_and_resolve_references(), str(tmp_path / "all"),
                                         mesh_shape, jax.devices())
    assert len(jax.devices()) == 8
    for a, b in zip(losses, ref_losses):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), params, ref_params)
    if mesh_shape[1] > 1:  # some parameters really are split over the fsdp axis
        specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state.params)]
        assert any("fsdp" in tuple(s) for s in specs)
        # The teacher is spread too: each device holds little more than 1/fsdp of its bytes.
        assert summary["teacher"]["param_bytes_per_device"] < 0.6 * ref_summary["teacher"]["param_bytes_per_device"]


@pytest.mark.parametrize("name, num_params", [("vit_l16", 304_326_632), ("vit_h14", 632_045_800)])
def test_large_teacher_params_spread_over_fsdp(name, num_params):
    # eval_shape only: the layout of a 300M / 630M-parameter teacher, nothing allocated.
    spec = ModelSpec(name, 1000, 224, 3)
    shapes = graphdef_and_shapes(spec)[1]
    mesh = sharding.make_mesh(_mesh_cfg(1, 8))
    per_device = sharding.planned_bytes_per_device(shapes, sharding.tree_shardings(shapes, mesh))
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    assert total == 4 * num_params  # fp32 (ViT-L/16 and ViT-H/14 at 224 px, 1000 classes)
    # Only biases, norms and tokens stay replicated: each device holds ~1/8 of the teacher.
    assert total / 8 <= per_device <= 1.01 * total / 8, (per_device, total / 8)


def test_fsdp_rule_splits_largest_divisible_dim():
    assert sharding.leaf_spec((384, 1536), 2) == jax.sharding.PartitionSpec(None, "fsdp")
    assert sharding.leaf_spec((384,), 2) == jax.sharding.PartitionSpec()
    assert sharding.leaf_spec((3, 5), 2, min_shard_size=1) == jax.sharding.PartitionSpec()


def test_batch_not_divisible_by_data_parallel_devices():
    mesh = sharding.make_mesh(_mesh_cfg(4, 2))
    with pytest.raises(ConfigError, match=r"config\.batch_size: 12 is not divisible by the 8 data-parallel"):
        sharding.check_batch_size(12, mesh)


def test_mesh_shape_must_match_devices():
    with pytest.raises(ConfigError, match=r"config\.mesh"):
        sharding.make_mesh(_mesh_cfg(3, 2))


def _mesh_cfg(data, fsdp):
    import ml_collections
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp})
