"""Every distillation method trains through the one step; bad method configs fail at start."""
import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jkd.config import base_config, model_config
from jkd.data import make_data
from jkd.errors import ConfigError
from jkd.main import run
from jkd.train.loop import fit
from jkd.train.objectives import Objective
from jkd.train.state import ModelSpec, TrainState, graphdef_and_shapes, init_params
from jkd.train.step import make_train_step


def _base(steps=2):
    c = base_config()
    c.data.image_size, c.steps, c.batch_size, c.eval_batch_size = 8, steps, 16, 64
    c.optimizer.warmup_steps, c.progress, c.log_every = 1, False, 1
    return c


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two tiny ViT teachers (different seeds) and one with 5 classes."""
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        c = _base(steps=3)
        c.model, c.seed = model_config("vit_atto4"), seed
        out[name] = str(tmp_path_factory.mktemp(f"teacher_{name}"))
        run(c, out[name])
    c = _base()
    data = make_data(c.data, seed=0, global_batch_size=16)
    out["five"] = str(tmp_path_factory.mktemp("teacher5"))
    fit(c, out["five"], specs={"model": ModelSpec("vit_atto4", 5, 8, 1)}, data=dataclasses.replace(data, num_classes=5))
    return out


def _distill(teacher, **students):
    c = _base()
    c.trainer = "distill"
    c.teacher.checkpoint = teacher
    c.students = students
    return c


def _train_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == "train"][-1]


def test_every_method_in_one_run(teachers, tmp_path):
    """Per-student objectives: hinton, hard, dkd, nkd, ViTKD and ViT->ConvNeXt alignment students
    trained together from one teacher forward."""
    c = _distill(teachers["a"], hinton=model_config("vit_atto4"), hard=model_config("vit_atto4"),
                 dkd=model_config("vit_atto4"), nkd=model_config("vit_atto4"), vitkd=model_config("vit_atto4"),
                 align=model_config("convnext_zepto", stem_stride=1))
    for name in ("hinton", "hard", "dkd", "nkd"):
        c.students[name].kd = {"method": name}
    c.students.vitkd.feature_kd = {"method": "vitkd"}
    c.students.align.feature_kd = {"method": "align", "align_stage": 1}
    summary = run(c, str(tmp_path))
    m = _train_metrics(str(tmp_path))
    parts = {"hinton": ["kd", "ce"], "hard": ["kd"], "dkd": ["tckd", "nckd"], "nkd": ["nkd_target", "nkd_non_target"],
             "vitkd": ["mimic", "generate", "kd"], "align": ["align", "kd"]}
    for name, keys in parts.items():
        for key in keys:
            assert math.isfinite(m[f"{name}/{key}"]), (name, key)
        assert 0 <= summary["models"][name]["teacher_agreement"] <= 1
    assert m["vitkd/mimic"] > 0 and m["vitkd/generate"] > 0 and 0 <= m["align/align"] <= 2
    assert "hinton/tckd" not in m  # each student really got its own objective
    from jkd.checkpoint import restore_params
    params = restore_params(str(tmp_path))
    # Feature-KD heads are trained and checkpointed beside their student.
    assert {"vitkd__kd_heads", "align__kd_heads"} <= set(params) and "hinton__kd_heads" not in params


@pytest.mark.parametrize("how", ["method", "fields"])
def test_function_matching_without_labels_and_mixup(teachers, tmp_path, how):
    """kd.method='fm' (KL at T = 1, no label term), or the same spelled with hinton's fields."""
    c = _distill(teachers["a"], vit=model_config("vit_atto4"))
    if how == "method":
        c.kd.method = "fm"
    else:
        c.kd.weight, c.kd.temperature = 1.0, 1.0  # hinton with weight 1 alone: ce_weight = 1 - 1 = 0
    c.augment.mixup_alpha = 1.0
    run(c, str(tmp_path))
    m = _train_metrics(str(tmp_path))
    assert m["vit/loss"] == pytest.approx(m["vit/kd"], rel=1e-6) and m["vit/ce"] > 0


@pytest.mark.parametrize("ensemble", ["mean_probs", "mean_loss"])
def test_multi_teacher_ensemble(teachers, tmp_path, ensemble):
    c = _distill(f"{teachers['a']},{teachers['b']}", vit=model_config("vit_atto4"))
    c.teacher.ensemble = ensemble
    summary = run(c, str(tmp_path))
    assert summary["teacher"]["num_teachers"] == 2


def test_self_distillation_generations(teachers, tmp_path):
    c = _distill(teachers["a"], vit=model_config("vit_atto4"))
    c.generations = 2
    summary = run(c, str(tmp_path))
    assert len(summary["generations"]) == 2
    assert os.path.isdir(tmp_path / "gen_2" / "checkpoints")
    with open(tmp_path / "gen_2" / "run.json") as f:
        assert json.load(f)["config"]["teacher"]["checkpoint"] == str(tmp_path / "gen_1")
    assert "| 2 | 993632896 | vit_atto4 |" in (tmp_path / "results.md").read_text()  # generation 2's own seed


@pytest.fixture
def no_compile(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("jax.jit was called before the bad config was reported")
    monkeypatch.setattr(jax, "jit", refuse)


def test_mismatched_class_counts_across_teachers(teachers, tmp_path, no_compile):
    c = _distill(f"{teachers['a']},{teachers['five']}", vit=model_config("vit_atto4"))
    with pytest.raises(ConfigError, match=r"config\.teacher\.checkpoint: the teachers have different class counts"):
        run(c, str(tmp_path))


@pytest.mark.parametrize("student,feature,match", [
    (model_config("convnext_atto", stem_stride=1), "vitkd", r"feature_kd\.method: 'vitkd' distils ViT blocks"),
    (model_config("vit_atto4"), "align", r"feature_kd\.method: 'align' projects a ConvNeXt stage"),
    (model_config("vit_atto2"), "vitkd", r"feature_kd\.method: 'vitkd' needs the same patch grid"),
])
def test_feature_kd_between_incompatible_models(teachers, tmp_path, no_compile, student, feature, match):
    c = _distill(teachers["a"], s=student)
    c.feature_kd.method = feature
    with pytest.raises(ConfigError, match=r"config\.students\.s\." + match):
        run(c, str(tmp_path))


def test_deit_token_on_convnext(teachers, tmp_path, no_compile):
    c = _distill(teachers["a"], s=model_config("convnext_atto", stem_stride=1, distillation_token=True))
    with pytest.raises(ConfigError, match=r"distillation_token: the DeiT distillation token is a ViT option"):
        run(c, str(tmp_path))


def test_unknown_kd_method(teachers, tmp_path, no_compile):
    c = _distill(teachers["a"], vit=model_config("vit_atto4"))
    c.kd.method = "fitnets"
    with pytest.raises(ConfigError, match=r"config\.students\.vit\.kd\.method: unknown 'fitnets'"):
        run(c, str(tmp_path))


# ----------------------------------------- one train step: each loss reaches the parameters it should

def _one_step(student_kwargs, objective, teacher_seeds=(100,), seed=0):
    """One SGD step (no weight decay: a zero gradient leaves a param unchanged) of a vit_atto4 student
    against vit_atto4 teachers, all with random heads, on random 8 px images, through make_train_step as
    the trainers build it: (params before, params after, metrics)."""
    spec = ModelSpec("vit_atto4", 10, 8, 1, tuple(sorted(student_kwargs.items())))
    t_spec = ModelSpec("vit_atto4", 10, 8, 1)
    t_params = []
    for i, t_seed in enumerate(teacher_seeds):
        p = init_params(t_spec, t_seed)
        # A zero-initialised head gives uniform teacher outputs, which a fresh (also uniform) student
        # already matches: no KD gradient at all. Random head weights make each teacher say something.
        p["head"]["kernel"] = jnp.asarray(np.random.default_rng(5 + i).normal(size=p["head"]["kernel"].shape),
                                          jnp.float32)
        t_params.append(p)
    txs = {"s": optax.sgd(0.1)}
    params = init_params(spec, seed)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed), params={"s": params},
                       opt_state={"s": txs["s"].init(params)})
    # The student's heads too: a uniform student makes NKD's non-target term independent of the
    # teachers (CE against a uniform distribution) and its two ensemble modes equal.
    for i, head in enumerate(h for h in ("head", "head_dist") if h in state.params["s"]):
        shape = state.params["s"][head]["kernel"].shape
        state.params["s"][head]["kernel"] = jnp.asarray(np.random.default_rng(50 + i).normal(size=shape), jnp.float32)
    aug = base_config().augment
    aug.crop_scale, aug.mixup_alpha = None, 0.0
    step = make_train_step({"s": graphdef_and_shapes(spec)[0]}, txs, num_classes=10, augment_cfg=aug,
                           objectives={"s": objective},
                           teacher_graphdefs=tuple(graphdef_and_shapes(t_spec)[0] for _ in teacher_seeds))
    rng = np.random.default_rng(seed)
    batch = {"image": jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32), "label_mask": jnp.ones(8, jnp.float32)}
    new_state, metrics = jax.jit(step)(state, batch, tuple(t_params))
    return state.params["s"], new_state.params["s"], {k: float(v) for k, v in metrics.items()}


def _moved(before, after):
    return not np.allclose(np.asarray(before), np.asarray(after))


def test_deit_step_puts_ce_on_the_cls_head_and_kd_on_the_distillation_head():
    kw = {"distillation_token": True}
    for weight, ce_weight in ((1.0, 0.0), (0.0, 1.0)):
        obj = Objective(method="hinton", temperature=3.0, weight=weight, ce_weight=ce_weight, deit=True)
        before, after, _ = _one_step(kw, obj)
        cls_moved = _moved(before["head"]["kernel"], after["head"]["kernel"])
        dist_moved = _moved(before["head_dist"]["kernel"], after["head_dist"]["kernel"])
        assert (cls_moved, dist_moved) == ((False, True) if weight else (True, False)), (weight, ce_weight)


@pytest.mark.parametrize("method", ["hinton", "dkd", "nkd"])
def test_multi_teacher_step_modes_differ_and_both_teachers_move_the_loss(method):
    """The KD loss of one train step: mean_probs and mean_loss differ, and changing either teacher
    changes both (each teacher's seed changes its whole network)."""
    kd = {}
    for ensemble in ("mean_probs", "mean_loss"):
        obj = Objective(method=method, ensemble=ensemble, dkd_warmup_steps=0)
        kd[ensemble] = _one_step({}, obj, teacher_seeds=(100, 200))[2]["s/kd"]
        for other in ((300, 200), (100, 300)):
            moved = _one_step({}, obj, teacher_seeds=other)[2]["s/kd"]
            assert abs(moved - kd[ensemble]) > 1e-5, (method, ensemble, other)
    assert abs(kd["mean_probs"] - kd["mean_loss"]) > 1e-5, method


def test_dist_step_through_resolve_objective_matches_the_loss():
    """kd.method='dist' alone: resolve_objective gives DIST's published CIFAR form (T 4, CE + 2 DIST,
    beta = gamma = 1), one train step runs with it, and its KD metric is losses.dist on the logits of
    the same student and teacher on the same (unaugmented) batch."""
    from jkd import losses
    from jkd.train.objectives import resolve_objective
    from jkd.train.state import apply_model
    c = base_config()
    c.kd.method = "dist"
    spec = ModelSpec("vit_atto4", 10, 8, 1)
    obj = resolve_objective(c, "s", {}, spec, [spec])
    assert (obj.method, obj.temperature, obj.weight, obj.ce_weight, obj.dist_beta, obj.dist_gamma) == \
        ("dist", 4.0, 2.0, 1.0, 1.0, 1.0)
    before, after, metrics = _one_step({}, obj)
    assert _moved(before["head"]["kernel"], after["head"]["kernel"])
    # The teacher and the batch as _one_step builds them.
    t_params = init_params(spec, 100)
    t_params["head"]["kernel"] = jnp.asarray(np.random.default_rng(5).normal(size=t_params["head"]["kernel"].shape),
                                             jnp.float32)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 1)), jnp.float32)
    graphdef = graphdef_and_shapes(spec)[0]
    loss, parts = losses.dist(apply_model(graphdef, before, images), apply_model(graphdef, t_params, images),
                              temperature=4.0)
    assert metrics["s/kd"] == pytest.approx(float(loss), rel=1e-5)
    assert metrics["s/dist_inter"] == pytest.approx(float(parts["dist_inter"]), rel=1e-5)
    assert metrics["s/loss"] == pytest.approx(metrics["s/ce"] + 2.0 * metrics["s/kd"], rel=1e-5)
