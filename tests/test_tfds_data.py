"""Tests for jkd.data.tfds: no network, no TensorFlow.

Most tests run under `tfds.testing.mock_data(policy=USE_FILES)`: it patches
`DatasetBuilder.as_data_source` (what `tfds.data_source` calls) to return `num_examples` random
but per-index deterministic examples for *every* split, and reads the metadata (features, split
sizes) from `data_dir`. The installed TFDS wheel ships no metadata, so `mocked_tfds` writes real
`dataset_info.json` files whose split sizes equal `num_examples`. (`USE_CODE` would leave
`info.splits` empty, so unknown split names could not be detected.)
`test_real_array_record_files` reads genuine array_record files without any mock.
"""
import io
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jkd.data import tfds as jtfds
from jkd.errors import ConfigError

N = 23  # examples per split: divisible neither by the batch sizes nor by 2 processes


def _write_metadata(data_dir, name, splits):
    """Writes dataset_info.json/features.json (array_record format) for `name` under data_dir."""
    b = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    os.makedirs(b.data_dir, exist_ok=True)
    tmpl = tfds.core.ShardedFileTemplate(data_dir=b.data_dir, dataset_name=b.name,
                                         filetype_suffix="array_record")
    b.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0,
                            filename_template=tmpl.replace(split=s)) for s, n in splits.items()]))
    b.info.write_to_directory(b.data_dir)
    return b, tmpl


@pytest.fixture(scope="module")
def metadata_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_meta"))
    for name in ("cifar10", "mnist"):
        _write_metadata(data_dir, name, {"train": N, "test": N})
    return data_dir


@pytest.fixture
def mocked_tfds(metadata_dir):
    # Function-scoped: the patch must not leak into the unmocked tests below.
    with tfds.testing.mock_data(num_examples=N, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=metadata_dir):
        yield metadata_dir


def _batches(name="cifar10", split="train", **kw):
    args = dict(global_batch_size=8, image_size=16, channels=3, mean=0.5, std=0.5, seed=0,
                shuffle=True, process_index=0, process_count=1)
    args.update(kw)
    return jtfds.make_tfds_batches(name, split, **args)


def _keys(images):
    """Exact identity of raw examples: uint8 bytes (needs image_size=source size, mean 0, std 1)."""
    return [np.round(np.asarray(x) * 255).astype(np.uint8).tobytes() for x in images]


def test_dataset_info(mocked_tfds):
    info = jtfds.dataset_info("cifar10")
    assert info == {"num_classes": 10, "splits": {"train": N, "test": N}, "image_key": "image",
                    "label_key": "label", "image_shape": (32, 32, 3)}
    assert jtfds.dataset_info("mnist")["image_shape"] == (28, 28, 1)


@pytest.mark.parametrize("name,channels", [("cifar10", 3), ("cifar10", 1), ("mnist", 3)])
def test_train_batch_shapes(mocked_tfds, name, channels):
    b = _batches(name, channels=channels)[0]
    assert set(b) == {"image", "label"}
    assert b["image"].shape == (8, 16, 16, channels) and b["image"].dtype == np.float32
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0  # (x/255 - .5)/.5
    assert b["image"].std() > 0.1 and ((0 <= b["label"]) & (b["label"] < 10)).all()


def test_preprocess_resize_crop_channels_bytes():
    mean, std = np.zeros(1, np.float32), np.ones(1, np.float32)
    img = np.zeros((20, 30, 3), np.uint8)
    img[..., 0] = 255  # pure red
    out = jtfds._preprocess(img, 16, 3, mean, std)  # shorter side 20 -> 16, width 24 cropped to 16
    assert out.shape == (16, 16, 3) and np.allclose(out[..., 0], 1.0) and np.allclose(out[..., 1:], 0)
    gray = jtfds._preprocess(img, 16, 1, mean, std)
    assert gray.shape == (16, 16, 1) and np.allclose(gray, 0.299)
    png = io.BytesIO()
    Image.fromarray(img).save(png, format="PNG")
    assert np.array_equal(jtfds._preprocess(png.getvalue(), 16, 3, mean, std), out)


def test_determinism_and_resume(mocked_tfds):
    a, b, c = _batches(seed=0), _batches(seed=0), _batches(seed=1)
    i = 5  # past the first epoch (23 examples / 8): exercises the epoch boundary
    assert np.array_equal(a[i]["image"], b[i]["image"]) and np.array_equal(a[i]["label"], b[i]["label"])
    assert not np.array_equal(a[i]["image"], c[i]["image"])
    from_start = list(jtfds.iterate(a, 0, i + 2))
    resumed = list(jtfds.iterate(b, start_step=i, num_steps=2))
    threaded = list(jtfds.iterate(b, start_step=i, num_steps=2, num_threads=2))
    assert len(from_start) == i + 2 and len(resumed) == len(threaded) == 2
    for x, y, z in zip(from_start[i:], resumed, threaded):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["image"], z["image"])


def test_train_epochs_reshuffled_and_sharded(mocked_tfds):
    kw = dict(image_size=32, mean=0.0, std=1.0, global_batch_size=2, process_count=2)
    per_proc = N // 2  # each process keeps n // process_count examples per epoch
    shards = [_batches(process_index=p, **kw) for p in (0, 1)]
    epochs = [[_keys(ds[e * per_proc + j]["image"])[0] for j in range(per_proc)]
              for ds in shards for e in (0, 1)]
    (p0e0, p0e1), (p1e0, p1e1) = epochs[:2], epochs[2:]
    assert len(set(p0e0)) == per_proc and not set(p0e0) & set(p1e0)  # disjoint within an epoch
    assert not set(p0e1) & set(p1e1) and p0e0 != p0e1  # next epoch: new permutation


def test_eval_sharding_disjoint_and_complete(mocked_tfds):
    src = tfds.data_source("cifar10", split="test")
    everything = _keys(src[i]["image"].astype(np.float32) / 255 for i in range(N))
    kw = dict(image_size=32, mean=0.0, std=1.0, shuffle=False, drop_remainder=False,
              global_batch_size=4, process_count=2)
    per_process = []
    for p in (0, 1):
        ds = _batches("cifar10", "test", process_index=p, **kw)
        assert len(ds) == 6  # ceil(ceil(23 / 2) / 2) on both processes: lockstep
        real = [k for b in jtfds.iterate(ds) for k, m in zip(_keys(b["image"]), b["mask"]) if m]
        per_process.append(real)
    assert not set(per_process[0]) & set(per_process[1])
    assert sorted(per_process[0] + per_process[1]) == sorted(everything)
    assert per_process[0] == everything[0::2]  # eval keeps the source order


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_padding_mask(mocked_tfds, process_count):
    total = 0.0
    for p in range(process_count):
        batches = list(jtfds.iterate(_batches(split="test", shuffle=False, drop_remainder=False,
                                              process_index=p, process_count=process_count)))
        for b in batches:
            assert b["mask"].dtype == np.float32 and b["mask"].shape == (8 // process_count,)
            assert not b["image"][b["mask"] == 0].any()  # padding is all zeros
        total += sum(b["mask"].sum() for b in batches)
    assert total == N
    dropped = _batches(split="test", shuffle=False, drop_remainder=True)
    assert len(dropped) == N // 8 and all(b["mask"].all() for b in jtfds.iterate(dropped))


@pytest.fixture
def no_data_source(monkeypatch):
    """Config errors must surface before any data is opened."""
    def fail(*a, **k):
        raise AssertionError("tfds.data_source called before validation")
    monkeypatch.setattr(jtfds.tfds, "data_source", fail)


@pytest.mark.parametrize("kw,field", [
    (dict(name="cifar11"), "config.data.name"),
    (dict(split="trian"), "config.data.train_split"),
    (dict(split="test[:5]+valid", shuffle=False), "config.data.eval_split"),
    (dict(global_batch_size=9, process_count=2), "config.batch_size"),
    (dict(channels=2), "config.data.channels"),
    (dict(mean=[0.1, 0.2]), "config.data.mean"),
])
def test_config_errors(mocked_tfds, no_data_source, kw, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _batches(**kw)


def test_unknown_name_error_message(mocked_tfds):
    with pytest.raises(ConfigError, match=r"config\.data\.name: unknown TFDS dataset 'cifar11'.*cifar10"):
        jtfds.dataset_info("cifar11")


def test_real_array_record_files(tmp_path):
    """No mock: genuine array_record files, PNG-encoded variable-size images, read without TF."""
    b, tmpl = _write_metadata(str(tmp_path), "imagenette", {"train": 5})
    from array_record.python import array_record_module

    writer = array_record_module.ArrayRecordWriter(
        os.fspath(tmpl.replace(split="train").sharded_filepath(shard_index=0, num_shards=1)),
        "group_size:1")
    rng = np.random.default_rng(0)
    for i in range(5):
        img = Image.fromarray(rng.integers(0, 255, (20 + 3 * i, 30 - 2 * i, 3), dtype=np.uint8))
        writer.write(b.info.features.serialize_example({"image": img, "label": i}))
    writer.close()
    ds = _batches("imagenette", global_batch_size=4, channels=1, data_dir=str(tmp_path))
    batch = ds[1]
    assert batch["image"].shape == (4, 16, 16, 1) and batch["label"].dtype == np.int32
    assert set(jtfds.iterate(ds, 0, 5).__next__()["label"]) <= set(range(5))
    ev = list(jtfds.iterate(_batches("imagenette", global_batch_size=4, shuffle=False,
                                     drop_remainder=False, data_dir=str(tmp_path))))
    assert [list(b["label"]) for b in ev] == [[0, 1, 2, 3], [4, 0, 0, 0]]
    assert sum(b["mask"].sum() for b in ev) == 5
    with pytest.raises(ConfigError, match=r"config\.data\.eval_split: unknown split 'test'"):
        _batches("imagenette", "test", shuffle=False, data_dir=str(tmp_path))
    assert "tensorflow" not in sys.modules  # tfds' lazy TF import was never triggered


def test_exclude_classes_on_real_array_record_files(tmp_path):
    """data.exclude_classes drops those labels' records from the train stream (labels read with the
    images undecoded); make_data counts what is left and rejects ids outside the dataset's classes."""
    b, tmpl = _write_metadata(str(tmp_path), "imagenette", {"train": 12, "validation": 12})
    from array_record.python import array_record_module

    for split in ("train", "validation"):
        writer = array_record_module.ArrayRecordWriter(
            os.fspath(tmpl.replace(split=split).sharded_filepath(shard_index=0, num_shards=1)), "group_size:1")
        for i in range(12):
            img = Image.fromarray(np.full((10, 10, 3), 20 * i, np.uint8))
            writer.write(b.info.features.serialize_example({"image": img, "label": i % 4}))
        writer.close()
    np.testing.assert_array_equal(jtfds.kept_indices("imagenette", "train", (1, 3), str(tmp_path)),
                                  [0, 2, 4, 6, 8, 10])
    ds = _batches("imagenette", global_batch_size=3, image_size=8, exclude_classes=(1, 3), data_dir=str(tmp_path))
    seen = np.concatenate([ds[i]["label"] for i in range(8)])
    assert set(seen) == {0, 2}  # 4 epochs of the 6 kept records
    from jkd.config import base_config
    from jkd.data import make_data

    c = base_config().data
    c.name, c.data_dir, c.eval_split, c.image_size, c.channels = "imagenette", str(tmp_path), "validation", 8, 3
    c.exclude_classes = (3,)
    data = make_data(c, seed=0, global_batch_size=3, process_index=0, process_count=1)
    assert data.num_train == 9 and data.excluded_classes == (3,) and data.num_eval == 12
    assert sorted(np.concatenate([bt["label"] for bt in data.eval_batches()])) == sorted(np.arange(12) % 4)
    c.exclude_classes = (10,)  # imagenette has 10 classes: 0..9
    with pytest.raises(ConfigError, match=r"config\.data\.exclude_classes: \[10\] not in 0\.\.9"):
        make_data(c, seed=0, global_batch_size=3, process_index=0, process_count=1)


def test_unprepared_dataset_is_a_config_error(tmp_path):
    """No mock and nothing prepared: fail fast (download=False), never start a download."""
    with pytest.raises(ConfigError, match=r"config\.data\.data_dir: cannot open TFDS 'cifar10'"):
        _batches("cifar10", data_dir=str(tmp_path))


def test_supervised_run_on_mocked_tfds(mocked_tfds, tmp_path, tiny_config):
    """The trainer reads a TFDS dataset end to end (make_data -> sharded step -> eval)."""
    from jkd.main import run

    c = tiny_config
    c.data.name, c.data.data_dir, c.data.channels, c.data.image_size = "cifar10", mocked_tfds, 3, 8
    c.batch_size, c.eval_batch_size, c.steps = 8, 8, 2
    summary = run(c, str(tmp_path))
    assert summary["steps"] == 2
    assert 0.0 <= summary["models"]["model"]["accuracy"] <= 1.0


def test_unprepared_dataset_names_its_directory_and_the_command(tmp_path):
    """make_data on a TFDS dataset with nothing prepared under data_dir (issue 16: it said "'train' is
    not a split of cifar10 (splits: [])"): the directory it looked in and the command that prepares it."""
    from jkd.config import base_config
    from jkd.data import make_data

    c = base_config().data
    c.name, c.data_dir, c.channels = "cifar10", str(tmp_path), 3
    with pytest.raises(ConfigError) as e:
        make_data(c, seed=0, global_batch_size=8, process_index=0, process_count=1)
    msg = str(e.value)
    assert msg.startswith("config.data.data_dir: TFDS dataset 'cifar10' is not prepared under "
                          f"{tmp_path / 'cifar10'}"), msg
    assert f"`tfds build cifar10 --data_dir={tmp_path} --file_format=array_record`" in msg
    assert "pip install tensorflow" in msg and "splits: []" not in msg
    assert "tensorflow" not in sys.modules  # saying so imported nothing heavy


def test_tfds_class_names_recorded(mocked_tfds):
    """ClassLabel names travel on the Data record (run.json, ONNX metadata); digits' are its digits."""
    from jkd.config import base_config
    from jkd.data import make_data

    c = base_config().data
    assert make_data(c, seed=0, global_batch_size=8, process_index=0, process_count=1).class_names == tuple("0123456789")
    c.name, c.data_dir, c.channels, c.image_size = "cifar10", mocked_tfds, 3, 8
    data = make_data(c, seed=0, global_batch_size=8, process_index=0, process_count=1)
    assert data.class_names == jtfds.class_names("cifar10", mocked_tfds) and len(data.class_names) == 10
