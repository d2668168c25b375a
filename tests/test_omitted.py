"""Hinton et al. (2015) section 3: the MLP family, data.exclude_classes, the label-free bias shift,
and the omitted-class recipe end to end (configs/hinton_omitted.py at reduced steps, ~15 s)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import onnx
import pytest

from jkd import evaluate
from jkd.trainers import validate
from jkd.data import make_data
from jkd.errors import ConfigError
from jkd.models import create_model, parse_model_name
from jkd.probes.multiseed import early_features, feature_depth
from jkd.sweep import load_config
from jkd.train.quickstart import stage_configs
from jkd.train.state import ModelSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "configs", "hinton_omitted.py")


# ----------------------------------------------------------------------------- MLP family

def test_mlp_names_and_bad_options():
    assert parse_model_name("mlp_800x2") == ("mlp", {"width": 800, "depth": 2})
    assert parse_model_name("mlp_30x3") == ("mlp", {"width": 30, "depth": 3})
    for bad in ("mlp_0x2", "mlp_800x0", "mlp_800", "mlp_x2"):
        with pytest.raises(ConfigError, match="unknown model"):
            parse_model_name(bad)
    with pytest.raises(ConfigError, match="dropout_rate: must be in"):
        create_model("mlp_8x2", num_classes=10, image_size=8, in_channels=1, dropout_rate=1.0)
    with pytest.raises(ConfigError, match="unknown option"):
        create_model("mlp_8x2", num_classes=10, image_size=8, in_channels=1, stem_stride=2)


def test_mlp_forward_features_and_dropout():
    model = create_model("mlp_16x3", num_classes=10, image_size=8, in_channels=1,
                         dropout_rate=0.5, input_dropout_rate=0.2)
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    logits = model(x)
    assert logits.shape == (4, 10)
    feats = model(x, return_features=True)
    assert [h.shape for h in feats["hidden"]] == [(4, 16)] * 3
    assert (np.asarray(feats["pre_logits"]) >= 0).all()  # post-ReLU
    np.testing.assert_allclose(feats["logits"], logits)
    np.testing.assert_allclose(model(x), logits)  # eval mode (no key): no dropout, deterministic
    a, b = model(x, key=jax.random.key(1)), model(x, key=jax.random.key(2))
    assert not np.allclose(a, logits) and not np.allclose(a, b)  # training mode draws dropout masks
    plain = create_model("mlp_16x3", num_classes=10, image_size=8, in_channels=1)
    np.testing.assert_allclose(plain(x, key=jax.random.key(1)), plain(x))  # rate 0: the key changes nothing
    # The spurious probe's early exit reads an MLP's hidden layers.
    assert feature_depth("mlp_16x3") == 3
    assert early_features(feats, 1).shape == (4, 16)


def test_mlp_exports_to_onnx_with_parity(tmp_path):
    from test_export import make_workdir
    from jkd.export import export
    spec = ModelSpec("mlp_32x2", 10, 8, 1, kwargs=(("dropout_rate", 0.5), ("input_dropout_rate", 0.2)))
    workdir = make_workdir(str(tmp_path / "wd"), {"mlp": spec})
    result = export(workdir, "mlp", n_real=64, log=None)
    assert result["parity"]["ok"]
    for row in result["parity"]["rows"]:
        assert row["max_abs_err"] < 1e-4 and row["top1_agree"] == row["n"]
    ops = {n.op_type for n in onnx.load(result["onnx_path"]).graph.node}
    assert "Gemm" in ops or "MatMul" in ops
    assert not ops & {"Dropout", "RandomUniformLike", "RandomUniform", "Bernoulli"}  # eval mode


# ----------------------------------------------------------------------------- exclude_classes

def _digits_cfg(**fields):
    c = load_config(RECIPE)
    with c.unlocked():
        for k, v in fields.items():
            c.data[k] = v
    return c


def _train_labels(data, batches: int = 30) -> np.ndarray:
    return np.concatenate([np.asarray(data.train_batch(i)["label"]) for i in range(batches)])


def _digits_train(c):
    from jkd.data.digits import load_digits_split
    return load_digits_split("train", image_size=c.data.image_size, channels=c.data.channels,
                             mean=c.data.mean, std=c.data.std)


def test_digits_exclusion_removes_the_class_from_training_only():
    c = _digits_cfg(exclude_classes=(5, 3))
    _, y = _digits_train(c)
    full = make_data(_digits_cfg(exclude_classes=()).data, seed=0, global_batch_size=64)
    cut = make_data(c.data, seed=0, global_batch_size=64)
    assert np.isin(_train_labels(full), [3, 5]).any()
    assert not np.isin(_train_labels(cut), [3, 5]).any()
    assert cut.excluded_classes == (3, 5)
    assert cut.num_train == full.num_train - int(np.isin(y, [3, 5]).sum()) == cut.num_labelled
    # The eval set is untouched: every class is scored.
    eval_labels = np.concatenate([np.asarray(b["label"])[np.asarray(b["mask"]) > 0] for b in cut.eval_batches()])
    assert set(eval_labels.tolist()) == set(range(10)) and len(eval_labels) == full.num_eval


def test_exclusion_keeps_the_other_classes_labelled_subset():
    """With 10% labels, excluding a class must not redraw which examples of the others are labelled."""
    from jkd.data.digits import labelled_subset_mask
    c = _digits_cfg(exclude_classes=(3,), labelled_fraction=0.1, labelled_only=True)
    x, y = _digits_train(c)
    mask = labelled_subset_mask(y, 0.1, seed=c.data.labelled_seed) > 0
    expected = {im.tobytes() for im in x[mask & (y != 3)]}
    cut = make_data(c.data, seed=0, global_batch_size=8)
    assert cut.num_train == cut.num_labelled == len(expected)
    seen = {im.tobytes() for i in range(60) for im in np.asarray(cut.train_batch(i)["image"])}
    assert seen == expected  # 4 epochs (each drops its last partial batch): exactly the old subset minus the 3s


@pytest.mark.parametrize("bad, message", [((10,), r"\[10\] not in 0..9"), ((-1,), r"\[-1\] not in 0..9"),
                                          (("three",), "a list of class ids"),
                                          (tuple(range(10)), "excluding all 10 classes leaves no data")])
def test_bad_exclude_classes_fail_at_validation(bad, message):
    c = _digits_cfg(exclude_classes=bad)
    with pytest.raises(ConfigError, match=r"config\.data\.exclude_classes: " + message):
        validate(c)


def test_cli_rejects_a_digit_that_does_not_exist(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jkd.main", "--config", f"{RECIPE}:12", "--workdir",
                           str(tmp_path / "w")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config.data.exclude_classes: [12] not in 0..9" in proc.stderr
    assert not os.path.exists(tmp_path / "w" / "teacher")


def test_teacher_sees_every_class_students_do_not():
    stages = stage_configs(_digits_cfg(exclude_classes=(3,)))
    assert tuple(stages["teacher"].data.exclude_classes) == ()
    students = [name for name in stages if name != "teacher"]
    assert students and all(tuple(stages[n].data.exclude_classes) == (3,) for n in students)
    assert any(n.startswith("label_only_") for n in students) and any(n.startswith("kd_") for n in students)


# ----------------------------------------------------------------------------- bias shifts

def test_prior_matching_shift_hits_the_target_frequency_without_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 6))
    logits[:, 2] -= 4.0  # a class the model (almost) never predicts, like an omitted one
    assert (logits.argmax(1) == 2).mean() < 0.02
    shift = evaluate.prior_matching_shift(logits, (2,), [0.17])
    assert shift[2] > 0 and np.count_nonzero(shift) == 1
    assert (np.argmax(logits + shift, 1) == 2).sum() == round(0.17 * 500)
    # Two classes at once: coordinate-wise, both frequencies hit (to one example).
    logits[:, 4] -= 3.0
    shift = evaluate.prior_matching_shift(logits, (2, 4), [0.1, 0.2])
    preds = np.argmax(logits + shift, 1)
    assert abs((preds == 2).sum() - 50) <= 1 and abs((preds == 4).sum() - 100) <= 1


def test_oracle_shift_is_the_best_single_bias():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, size=300)
    logits = rng.normal(size=(300, 5)) + 2.5 * np.eye(5)[labels]
    logits[:, 1] -= 3.0
    oracle = evaluate.oracle_shift(logits, labels, (1,))
    errors = lambda b: int((np.argmax(logits + np.eye(5)[1] * b, 1) != labels).sum())
    grid = min(errors(b) for b in np.linspace(-10, 10, 4001))
    assert errors(oracle[1]) <= grid
    assert errors(oracle[1]) < errors(0.0)


def test_omitted_class_errors_by_hand():
    logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [2.0, 0, 0]])
    labels = np.array([0, 1, 1, 2])
    r = evaluate.omitted_class_errors(logits, labels, (1,))
    assert (r["omitted_errors"], r["omitted_count"], r["other_errors"], r["other_count"]) == (1, 2, 1, 2)
    assert r["errors"] == 2 and r["accuracy"] == 0.5
    r = evaluate.omitted_class_errors(logits, labels, (1,), shifts=np.array([0.0, 3.0, 0.0]))
    assert (r["omitted_errors"], r["other_errors"]) == (0, 2)


# ----------------------------------------------------------------------------- end to end

def test_omitted_recipe_end_to_end(tmp_path):
    """Hinton's finding at test size: a KD student gets most of a digit it never saw right; its
    label-only twin gets none (before any shift) and the teacher knows the digit."""
    from jkd.main import run
    c = load_config(RECIPE)
    c.steps, c.teacher.steps, c.optimizer.warmup_steps, c.progress = 150, 150, 10, False
    c.eval_every, c.checkpoint_every = 150, 150
    workdir = str(tmp_path / "om")
    summary = run(c, workdir)
    assert summary["excluded_classes"] == [3]
    with open(os.path.join(workdir, "omitted.json")) as f:
        saved = json.load(f)
    assert saved["excluded_classes"] == [3] and os.path.exists(os.path.join(workdir, "omitted.md"))
    models = saved["models"]
    n3 = models["teacher"]["omitted_count"]
    assert n3 > 30 and models["teacher"]["omitted_errors"] <= 5
    for twin in ("label_only_mlp800", "label_only_mlp30"):
        assert models[twin]["before"]["omitted_errors"] == n3  # never saw a 3: never predicts one
    kd = models["kd_hinton.mlp800"]
    assert kd["before"]["omitted_errors"] <= n3 // 3  # measured 3 of 46 (seed 0)
    assert kd["prior"]["omitted_errors"] <= kd["before"]["omitted_errors"] + 2
    assert 0.05 < saved["teacher_prior"][0] < 0.15
