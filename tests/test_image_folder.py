"""data.name='image_folder' on folders the tests write with PIL: batches, labels and class names,
the held-out split, per-process shards, every bad-folder error, corrupt files (error or skipped and
counted), and a tiny supervised run that exports to ONNX with the class names in its metadata.

Images are tiny (10x12) and each class has its own colour (cat red, dog green, fox blue), so a
label can be checked against the pixels it came with."""
import json
import os
import zlib

import numpy as np
import pytest
from PIL import Image

from jkd.config import base_config
from jkd.data import make_data
from jkd.errors import ConfigError

CLASSES = ("cat", "dog", "fox")  # written out of order below: labels follow the sorted names


def write_image(path, colour, *, mode="RGB", size=(12, 10), fmt=None):
    """A (W, H) = `size` image of one colour: channel `colour` bright, the others dark (+ a little noise)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    pixels = rng.integers(0, 30, (size[1], size[0], 3), dtype=np.uint8)
    pixels[..., colour] = 220
    img = Image.fromarray(pixels)
    (img.convert("L") if mode == "L" else img).save(path, format=fmt)


def write_folder(root, counts, *, ext=".png"):
    """root/<split>/<class>/<i><ext> for counts {split: n per class}; returns root."""
    for split, n in counts.items():
        for label, name in sorted(enumerate(CLASSES), key=lambda kv: kv[1], reverse=True):
            for i in range(n):
                write_image(os.path.join(root, split, name, f"{i}{ext if i % 2 else '.jpg'}"), label)
    return str(root)


def folder_config(root, **data):
    c = base_config().data
    c.name, c.data_dir, c.image_size, c.channels, c.mean, c.std = "image_folder", str(root), 8, 3, 0.0, 1.0
    for k, v in data.items():
        c[k] = v
    return c


def _data(cfg, batch=4, **kw):
    kw = {"process_index": 0, "process_count": 1, **kw}
    return make_data(cfg, seed=0, global_batch_size=batch, eval_batch_size=batch, **kw)


def _colour_labels(images):
    """The class each image's colour says: argmax of the per-channel mean [B]."""
    return np.asarray(images).mean(axis=(1, 2)).argmax(-1)


@pytest.fixture(scope="module")
def split_root(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images"), {"train": 4, "test": 2})


def test_batches_labels_and_class_names(split_root):
    data = _data(folder_config(split_root))
    assert data.class_names == CLASSES and data.num_classes == 3
    assert (data.num_train, data.num_labelled, data.num_eval, data.image_shape) == (12, 12, 6, (8, 8, 3))
    seen = []
    for step in range(6):  # two epochs of 12 images
        b = data.train_batch(step)
        assert b["image"].shape == (4, 8, 8, 3) and b["image"].dtype == np.float32 and b["label"].dtype == np.int32
        np.testing.assert_array_equal(_colour_labels(b["image"]), b["label"])
        assert b["label_mask"].tolist() == [1.0] * 4
        seen += b["label"].tolist()
    assert np.bincount(seen).tolist() == [8, 8, 8]  # every image once per epoch
    again = _data(folder_config(split_root)).train_batch(4)
    np.testing.assert_array_equal(again["image"], data.train_batch(4)["image"])  # batch = f(seed, step)
    evals = list(data.eval_batches())
    assert len(evals) == 2 and sum(b["mask"].sum() for b in evals) == 6
    real = np.concatenate([b["mask"] for b in evals]) > 0
    labels = np.concatenate([b["label"] for b in evals])[real]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]  # in order: sorted class names, then file names
    np.testing.assert_array_equal(_colour_labels(np.concatenate([b["image"] for b in evals])[real]), labels)


def test_processes_get_disjoint_shards(split_root):
    cfg = folder_config(split_root, image_size=12, channels=3)  # 12x10 -> 14x12 resize: still one image each

    def keys(batch):
        return {b.tobytes() for b, m in zip(np.asarray(batch["image"]), batch["label_mask"]) if m}

    train = [set().union(*(keys(_data(cfg, process_index=p, process_count=2).train_batch(s)) for s in range(3)))
             for p in (0, 1)]
    assert len(train[0]) == len(train[1]) == 6 and not train[0] & train[1]  # one epoch: 12 images, split
    evals = [set().union(*map(keys, _data(cfg, process_index=p, process_count=2).eval_batches())) for p in (0, 1)]
    assert len(evals[0] | evals[1]) == 6 and not evals[0] & evals[1]


def test_eval_fraction_holds_out_a_fixed_stratified_part(tmp_path):
    root = str(tmp_path / "one")
    for label, name in enumerate(CLASSES):
        for i in range(5):
            write_image(os.path.join(root, name, f"{i}.png"), label)
    data = _data(folder_config(root, eval_fraction=0.4), batch=3)
    assert data.class_names == CLASSES and (data.num_train, data.num_eval) == (9, 6)
    held = np.concatenate([b["label"][b["mask"] > 0] for b in data.eval_batches()])
    assert np.bincount(held).tolist() == [2, 2, 2]  # round(0.4 * 5) of every class
    from jkd.data import image_folder

    folder = image_folder.open_folder(folder_config(root, eval_fraction=0.4))
    assert not set(folder.train.paths) & set(folder.eval.paths)
    image_folder._scan.cache_clear()  # the split is a function of the files, not of the process's cache
    assert image_folder.open_folder(folder_config(root, eval_fraction=0.4)).eval.paths == folder.eval.paths
    on_train = _data(folder_config(root, eval_fraction=0.4, eval_split="train"), batch=3)
    assert on_train.num_eval == 9  # eval_split == train_split scores the training part
    write_image(os.path.join(root, "gnu", "0.png"), 0)
    image_folder._scan.cache_clear()  # a process scans once: the test changed the folder
    with pytest.raises(ConfigError, match=r"config\.data\.eval_fraction: class 'gnu' has 1 image\(s\): too few"):
        _data(folder_config(root, eval_fraction=0.4), batch=3)


def _bad_folder(tmp_path, kind):
    """(root, config overrides, what the error must name) of a broken folder of kind `kind`."""
    root = tmp_path / kind
    if kind == "empty":
        root.mkdir()
        return root, {}, str(root)
    write_folder(root, {"train": 2, "test": 1})
    if kind == "class_without_images":
        (root / "train" / "emu").mkdir()
        (root / "train" / "emu" / "notes.txt").write_text("no images here")
        (root / "test" / "emu").mkdir()
        return root, {}, str(root / "train" / "emu")
    if kind == "class_missing_from_test":
        write_image(str(root / "train" / "emu" / "0.png"), 0)
        return root, {}, "'emu'"
    if kind == "no_split_folders":
        return root / "train", {}, str(root / "train" / "train")  # class folders where splits belong
    if kind == "mixed_channels":
        write_image(str(root / "train" / "dog" / "gray.png"), 1, mode="L")
        return root, {}, str(root / "train" / "dog" / "gray.png")
    if kind == "corrupt":
        (root / "train" / "fox" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        return root, {}, str(root / "train" / "fox" / "broken.jpg")
    raise ValueError(kind)


@pytest.mark.parametrize("kind,field", [
    ("empty", "config.data.data_dir"), ("class_without_images", "config.data.data_dir"),
    ("class_missing_from_test", "config.data.data_dir"), ("no_split_folders", "config.data.train_split"),
    ("mixed_channels", "config.data.data_dir"), ("corrupt", "config.data.data_dir")])
def test_bad_folders_are_config_errors_naming_the_path(tmp_path, kind, field):
    root, overrides, named = _bad_folder(tmp_path, kind)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as e:
        _data(folder_config(root, **overrides))
    assert named in str(e.value), str(e.value)


@pytest.mark.parametrize("overrides,match", [
    (dict(data_dir=""), r"config\.data\.data_dir: image_folder needs the folder"),
    (dict(eval_fraction=1.0), r"config\.data\.eval_fraction: must be in \[0, 1\)"),
    (dict(eval_fraction=0.1), r"config\.data\.eval_fraction: \S+ holds split folders 'train' and 'test'"),
    (dict(data_dir="/nonexistent/images"), r"config\.data\.data_dir: /nonexistent/images is not a directory"),
    (dict(channels=2), r"config\.data\.channels: must be 1 or 3, got 2")])
def test_bad_fields(split_root, overrides, match):
    with pytest.raises(ConfigError, match=match):
        _data(folder_config(split_root, **overrides))


def test_skip_corrupt_and_allow_mixed_channels(tmp_path, capsys):
    root, _, broken = _bad_folder(tmp_path, "corrupt")
    truncated = root / "test" / "cat" / "truncated.png"
    write_image(str(truncated), 0)
    truncated.write_bytes(truncated.read_bytes()[:60])  # header intact, pixel data cut: fails only when decoded
    with pytest.raises(ConfigError, match=r"2 of 11 files are unreadable.*skip_corrupt=True"):
        _data(folder_config(root))
    data = _data(folder_config(root, skip_corrupt=True), batch=3)
    assert (data.num_train, data.num_eval) == (6, 3)  # the two unreadable files left out
    warning = capsys.readouterr().err
    assert "left out 2 unreadable of 11 image files" in warning and broken in warning and str(truncated) in warning
    mixed, _, gray = _bad_folder(tmp_path, "mixed_channels")
    data = _data(folder_config(mixed, allow_mixed_channels=True, channels=1), batch=3)
    assert data.train_batch(0)["image"].shape == (3, 8, 8, 1) and data.num_train == 7


def test_train_and_export_with_class_names(split_root, tmp_path, tiny_config):
    """The CLI's entry (jkd.main.run) trains on the folder; run.json and the ONNX metadata carry the names."""
    from jkd.export import export
    from jkd.export.onnx import read_metadata
    from jkd.main import run

    from jkd.config import model_config

    c = tiny_config
    c.model = model_config("mlp_16x1")  # the cheapest model to compile and export
    c.data = folder_config(split_root, mean=0.5, std=0.5)
    c.batch_size, c.eval_batch_size, c.steps, c.checkpoint_every = 8, 8, 2, 2  # 8 fake devices
    workdir = str(tmp_path / "run")
    summary = run(c, workdir)
    assert summary["steps"] == 2 and 0.0 <= summary["models"]["model"]["accuracy"] <= 1.0
    with open(os.path.join(workdir, "run.json")) as f:
        assert json.load(f)["class_names"] == list(CLASSES)
    result = export(workdir, "model", n_real=6, log=None)
    meta = read_metadata(result["onnx_path"])
    assert meta["jkd.class_names"] == list(CLASSES) and meta["jkd.dataset"] == "image_folder"
