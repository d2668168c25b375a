"""One config vocabulary (issue 15): a field means one thing in every recipe, a value a preset would
override is an error, and an old field name fails with what it was renamed to."""
import os
import subprocess
import sys

import pytest

from jkd.config import model_config
from jkd.errors import ConfigError
from jkd.sweep import load_config
from jkd.train.objectives import Objective, resolve_augment
from jkd.train.quickstart import stage_configs
from jkd.trainers import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart(**fields):
    c = load_config(os.path.join(REPO, "configs/quickstart.py"))
    with c.unlocked():
        for dotted, value in fields.items():
            *groups, leaf = dotted.split("__")
            node = c
            for g in groups:
                node = node[g]
            with node.ignore_type():
                node[leaf] = value
    return c


@pytest.mark.parametrize("override", ["--config.kd.method=dkd", "--config.kd.method=nope"])
def test_quickstart_refuses_a_kd_method_its_preset_would_override(tmp_path, override):
    """Before issue 15 both commands trained hinton and exited 0."""
    proc = subprocess.run([sys.executable, "-m", "jkd.main", "--config", os.path.join(REPO, "configs/quickstart.py"),
                           "--workdir", str(tmp_path), override], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "config.kd.method: the quickstart's preset 'hinton' sets it to 'hinton'" in proc.stderr
    assert "--config.kd_methods=" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "teacher")


def test_kd_methods_choose_each_stage_method():
    c = _quickstart(kd_methods="dkd,vitkd,align,fm")
    validate(c)
    stages = stage_configs(c)
    assert stages["kd_dkd"].kd.method == "dkd" and stages["kd_dkd"].feature_kd.method is None
    assert (stages["kd_vitkd"].kd.method, stages["kd_vitkd"].feature_kd.method) == ("nkd", "vitkd")
    assert list(stages["kd_vitkd"].students) == ["vit"] and list(stages["kd_align"].students) == ["convnext"]
    assert stages["kd_align"].kd.method is None  # the align preset leaves the logit loss to config.kd.method
    # fm: mixup Beta(1, 1) on every batch comes from the unset augment.mixup_alpha (as the old preset did)
    assert stages["kd_fm"].augment.mixup_alpha is None
    assert resolve_augment(stages["kd_fm"].augment, {"vit": Objective(method="fm")}).mixup_alpha == 1.0


def test_a_field_no_preset_sets_is_used_not_refused():
    c = _quickstart(kd_methods="deit,align", kd__method="hard")  # DeiT's hard form; align on top of hard KD
    validate(c)
    stages = stage_configs(c)
    assert stages["kd_deit"].kd.method == "hard" and stages["kd_deit"].students.vit.kwargs.distillation_token
    assert stages["kd_align"].kd.method == "hard"


def test_a_students_override_of_a_preset_field_is_refused():
    c = _quickstart()
    with c.unlocked():
        c.students.vit.kd = {"method": "nkd"}
    with pytest.raises(ConfigError, match=r"config\.students\.vit\.kd\.method: the quickstart's preset 'hinton' sets"):
        validate(c)


def test_unknown_preset_names_the_field():
    with pytest.raises(ConfigError, match=r"config\.kd_methods: need a comma-separated subset of hinton, hard, "):
        validate(_quickstart(kd_methods="hinton,dkdd"))


@pytest.mark.parametrize("config, old, value, new", [
    ("quickstart.py", "method", "hinton", "kd_methods"),
    ("quickstart.py", "teacher_steps", 10, "teacher.steps"),
    ("quickstart.py", "teacher_model", model_config("vit_atto4"), "teacher.model"),
    ("quickstart.py", "fm_mixup_alpha", 1.0, "augment.mixup_alpha"),
    ("ensemble_kd.py:tiny", "ensemble_size", 3, "ensemble.size"),
    ("ensemble_kd.py:tiny", "ensemble_target", "mean_loss", "teacher.ensemble"),
    ("ensemble_kd.py:tiny", "self_distill_generations", 2, "generations"),
    ("digits_distill.py", "kd.dkd_warmup_steps", 20, "kd.dkd_warmup_fraction"),
])
def test_old_field_names_say_what_they_were_renamed_to(config, old, value, new):
    c = load_config(os.path.join(REPO, "configs", config))
    *groups, leaf = old.split(".")
    with c.unlocked():
        node = c
        for g in groups:
            node = node[g]
        node[leaf] = value
    with pytest.raises(ConfigError, match=rf"config\.{old}: renamed to {new}"):
        validate(c)


def test_students_is_a_dict_of_models_in_every_recipe():
    """Every recipe's config.students (where it has one) maps names to model entries."""
    import glob
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)):
        c = load_config(path)
        if "students" in c:
            assert hasattr(c.students, "items"), path
            assert all("name" in entry for entry in c.students.values()), path


def test_every_stage_is_checked_before_the_first_trains(tmp_path):
    """A setting only a later stage cannot use (warm-up >= the students' steps) fails before the
    teacher trains (before issue 15 the teacher trained first, then the KD stage failed)."""
    from jkd.main import run
    c = _quickstart(steps=100, teacher__steps=200, optimizer__warmup_steps=100)
    with pytest.raises(ConfigError, match=r"config\.optimizer\.warmup_steps: 100 must be < the 100 train steps"):
        run(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "teacher")


@pytest.mark.parametrize("fields, match", [
    (dict(kd_methods="deit", kd__method="nope"), r"config\.students\.vit\.kd\.method: unknown 'nope'"),
    (dict(kd__setting="foo"), r"kd\.setting: unknown 'foo'"),
    (dict(teacher__ensemble="foo"), r"config\.teacher\.ensemble: unknown 'foo'"),
    (dict(kd_methods="align", feature_kd__align_loss="bad"), r"feature_kd\.align_loss: 'cosine' or 'mse'"),
    (dict(teacher__checkpoint="/some/teacher"), r"config\.teacher\.checkpoint: the quickstart pipeline trains its own"),
])
def test_kd_settings_and_pipeline_owned_fields_fail_before_the_teacher_trains(tmp_path, fields, match):
    from jkd.main import run
    with pytest.raises(ConfigError, match=match):
        run(_quickstart(**fields), str(tmp_path))
    assert not os.path.exists(tmp_path / "teacher")


@pytest.mark.parametrize("field, value, match", [
    ("students", {"s": model_config("vit_atto4")}, r"config\.students: the ensemble probe trains config\.model"),
    ("kd.method", "nope", r"kd\.method: unknown 'nope'"),
])
def test_ensemble_probe_refuses_fields_its_stages_set_or_cannot_use(field, value, match):
    c = load_config(os.path.join(REPO, "configs/ensemble_kd.py:tiny"))
    *groups, leaf = field.split(".")
    with c.unlocked():
        node = c
        for g in groups:
            node = node[g]
        node[leaf] = value
    with pytest.raises(ConfigError, match=match):
        validate(c)


def test_old_names_on_the_command_line_say_what_they_were_renamed_to(tmp_path):
    from jkd import sweep
    proc = subprocess.run([sys.executable, "-m", "jkd.main", "--config", os.path.join(REPO, "configs/quickstart.py"),
                           "--workdir", str(tmp_path), "--config.teacher_steps=300"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--config.teacher_steps: renamed to teacher.steps" in proc.stderr, proc.stderr
    with pytest.raises(ConfigError, match=r"config\.method: renamed to kd_methods"):
        sweep.plan(os.path.join(REPO, "configs/quickstart.py"), ["method=hinton,dkd"], [])
    with pytest.raises(ConfigError, match=r"config\.kd\.students: renamed to kd\.num_students .*\(trainer theory\)"):
        sweep.plan(os.path.join(REPO, "configs/theory/multiview.py"), [], ["kd.students=3"])
