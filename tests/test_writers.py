"""Metrics writers (jkd/writers.py, jkd/rundir.py's run log): a run's TensorBoard event files, read
back here through the TFRecord framing (CRCs checked) and tensorboardX's protos, hold exactly the
scalars of its metrics.jsonl, also after a resume; a probe's records and plots go in (lists per
model, PNGs as images), also when the run stops on an error; writers off writes none; W&B works
offline and is a start-up ConfigError when not installed. And the distill step's train metrics hold
each student's teacher agreement and KL."""
import functools
import glob
import io
import json
import os
import shutil
import struct
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image

from jkd import rundir, writers
from jkd.config import base_config, model_config
from jkd.errors import ConfigError, NonFiniteError
from jkd.trainers import run


def read_events(workdir: str) -> tuple[dict, dict]:
    """({tag: [(step, value)]}, {tag: [(step, PNG bytes)]}) of the one event file in workdir."""
    writers.tensorboardx()  # loaded without torch before its submodules are imported here
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c
    paths = glob.glob(os.path.join(workdir, writers.EVENT_FILES))
    assert len(paths) == 1, paths
    with open(paths[0], "rb") as f:
        data = f.read()
    scalars, images, pos = {}, {}, 0
    while pos < len(data):  # TFRecord: u64 length, u32 crc(length), data, u32 crc(data)
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
        body = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked_crc32c(body)
        pos += 16 + length
        event = event_pb2.Event.FromString(body)
        for v in event.summary.value:
            if v.HasField("image"):
                images.setdefault(v.tag, []).append((event.step, v.image.encoded_image_string))
            else:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars, images


def jsonl_scalars(workdir: str) -> dict:
    """What the event files should hold for a jkd.train run: {'<split>/<key>': [(step, float32 value)]}."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for record in map(json.loads, f):
            for key, value in record.items():
                if key not in ("step", "split"):
                    out.setdefault(f"{record['split']}/{key}", []).append((record["step"], float(np.float32(value))))
    return out


def test_event_files_mirror_metrics_jsonl_also_after_a_resume(tiny_config, tmp_path):
    c = tiny_config
    c.model = model_config("mlp_16x1")  # the loop is what is tested here: the cheapest model to compile
    c.eval_every = 2
    workdir = str(tmp_path / "run")
    run(c, workdir)
    scalars, _ = read_events(workdir)
    assert scalars == jsonl_scalars(workdir)
    assert {"train/model/loss", "train/model/ce", "train/model/lr", "train/model/grad_norm",
            "train/model/train_accuracy", "eval/model/accuracy"} <= set(scalars)
    assert [s for s, _ in scalars["eval/model/accuracy"]] == [2, 4]

    # Killed after step 2's checkpoint: the rerun restores step 2 and cuts metrics.jsonl back there;
    # the stale event file goes and the new one replays what metrics.jsonl kept, then goes on.
    os.remove(os.path.join(workdir, "summary.json"))
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    assert run(c, workdir)["resumed_from"] == 2
    scalars, _ = read_events(workdir)
    assert scalars == jsonl_scalars(workdir)
    assert [s for s, _ in scalars["train/model/loss"]] == [1, 2, 3, 4]


def _probe_body(workdir: str, pixels: np.ndarray, fail: bool = False):
    def body(log):
        log({"desc": "teacher", "step": 10, "loss": [0.5, 0.25], "accuracy": [0.75, 1.0]})
        log({"desc": "KD students", "step": 10, "loss": [0.125]})
        log({"variant": "net", "method": "single", "step": 100, "loss": 0.5})
        Image.fromarray(pixels).save(os.path.join(workdir, "accuracy.png"))
        if fail:
            raise NonFiniteError("stopped")
        return {"accuracy": 1.0}
    return body


PROBE_SCALARS = {"teacher/loss/0": [(10, 0.5)], "teacher/loss/1": [(10, 0.25)], "teacher/accuracy/0": [(10, 0.75)],
                 "teacher/accuracy/1": [(10, 1.0)], "KD_students/loss/0": [(10, 0.125)],
                 "net/single/loss": [(100, 0.5)]}


def _probe_config(**writer_fields):
    """A probe's config: its own fields, no base_config (the writers block is optional there)."""
    c = ml_collections.ConfigDict({"trainer": "theory", "seed": 0})
    if writer_fields:
        c.writers = ml_collections.ConfigDict(writer_fields)
    return c


def test_probe_records_and_plots_reach_tensorboard(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    workdir = str(tmp_path)
    assert rundir.cached_run(workdir, _probe_config(), _probe_body(workdir, pixels)) == {"accuracy": 1.0}
    scalars, images = read_events(workdir)
    assert scalars == PROBE_SCALARS
    ((step, png),) = images["plots/accuracy"]
    assert step == 100 and np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
    assert len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) == 3  # still the source of truth


def test_a_run_stopped_by_an_error_leaves_complete_event_files(tmp_path):
    pixels = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(NonFiniteError):
        rundir.cached_run(str(tmp_path), _probe_config(), _probe_body(str(tmp_path), pixels, fail=True))
    scalars, images = read_events(str(tmp_path))  # flushed and closed on the way out
    assert scalars == PROBE_SCALARS and list(images) == ["plots/accuracy"]


def test_writers_off_write_no_event_files(tmp_path):
    pixels = np.zeros((4, 4, 3), np.uint8)
    rundir.cached_run(str(tmp_path), _probe_config(), _probe_body(str(tmp_path), pixels))
    assert len(glob.glob(str(tmp_path / writers.EVENT_FILES))) == 1
    # Another config in the same workdir, writers off: metrics.jsonl starts over, the stale event file goes.
    rundir.cached_run(str(tmp_path), _probe_config(tensorboard=False), _probe_body(str(tmp_path), pixels))
    assert not glob.glob(str(tmp_path / writers.EVENT_FILES))
    assert len(open(tmp_path / "metrics.jsonl").readlines()) == 3


def test_writer_fields_are_checked_at_start_up(tmp_path, monkeypatch):
    for fields, match in [({"tensorboard": "yes"}, r"config\.writers\.tensorboard: must be True or False"),
                          ({"wandb": True, "wandb_mode": "onlin"}, r"config\.writers\.wandb_mode: must be one of"),
                          ({"wandb": True, "wandb_project": ""}, r"config\.writers\.wandb_project"),
                          ({"tensorbord": True}, r"config\.writers: unknown field\(s\) \['tensorbord'\]")]:
        with pytest.raises(ConfigError, match=match):
            rundir.cached_run(str(tmp_path / "bad"), _probe_config(**fields), lambda log: {})
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if W&B were not installed
    c = base_config()
    c.writers.wandb = True
    with pytest.raises(ConfigError, match=r'config\.writers\.wandb: .*not installed; pip install -e "\.\[wandb\]"'):
        rundir.cached_run(str(tmp_path / "bad"), c, lambda log: {})
    assert not os.path.exists(tmp_path / "bad")  # nothing written before the check


def test_wandb_offline_run_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    pixels = np.zeros((4, 4, 3), np.uint8)
    workdir = str(tmp_path)
    rundir.cached_run(workdir, _probe_config(wandb=True, wandb_mode="offline", wandb_project="jkd-test"),
                      _probe_body(workdir, pixels))
    import wandb
    wandb.teardown()  # finish() hands the last records to W&B's service process; this waits until it wrote them
    (run_file,) = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
    data = open(run_file, "rb").read()  # W&B's own record format: check that the keys went in
    for key in (*PROBE_SCALARS, "teacher/step", "net/single/step", "plots/accuracy"):
        assert key.encode() in data, key
    assert read_events(workdir)[0] == PROBE_SCALARS  # TensorBoard beside it, unchanged


def test_train_metrics_hold_each_students_teacher_agreement_and_kl():
    """One distill step, two students and an ensemble of two teachers, no augmentation: each student's
    teacher_agreement and teacher_kl are those of its logits against the teachers' mean probabilities
    on the same images (what the eval step reports on the eval set)."""
    from jkd.train.objectives import Objective
    from jkd.train.state import ModelSpec, TrainState, apply_model, graphdef_and_shapes, init_params
    from jkd.train.step import make_train_step
    spec = ModelSpec("mlp_16x1", 10, 8, 1)  # cheap to compile; every model here says something different
    graphdef = graphdef_and_shapes(spec)[0]
    params = functools.partial(init_params, spec)
    teachers, students = (params(1), params(2)), {"a": params(3), "b": params(4)}
    txs = {n: optax.sgd(0.1) for n in students}
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0), params=students,
                       opt_state={n: txs[n].init(p) for n, p in students.items()})
    aug = base_config().augment
    aug.crop_scale, aug.mixup_alpha = None, 0.0
    step = make_train_step({n: graphdef for n in students}, txs, num_classes=10, augment_cfg=aug,
                           objectives={n: Objective(method="hinton") for n in students},
                           teacher_graphdefs=(graphdef, graphdef))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(64, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 64), jnp.int32), "label_mask": jnp.ones(64, jnp.float32)}
    _, metrics = jax.jit(step)(state, batch, teachers)

    probs = np.mean([jax.nn.softmax(apply_model(graphdef, p, batch["image"])) for p in teachers], 0)  # [B, K]
    for name, p in students.items():
        logits = np.asarray(apply_model(graphdef, p, batch["image"]))
        agree = float(np.mean(logits.argmax(-1) == probs.argmax(-1)))
        kl = float(np.mean((probs * (np.log(probs) - np.asarray(jax.nn.log_softmax(logits)))).sum(-1)))
        assert 0 < agree < 1  # a check that can tell a wrong reduction from a right one
        assert float(metrics[f"{name}/teacher_agreement"]) == pytest.approx(agree, abs=1e-6)
        assert float(metrics[f"{name}/teacher_kl"]) == pytest.approx(kl, rel=1e-4)
