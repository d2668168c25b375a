"""The README's headline claim, "a KD student beats its label-only twin", guarded at test size.

The quickstart pipeline itself (configs/quickstart.py: teacher on every label, students on a
stratified few labels, KD students also on the teacher's outputs for every training image), shrunk to
8 px digits, 3% of the labels (40 digits), an mlp_256x2 teacher and an mlp_64x1 student: a setting
where the gap is large and stable. Measured on machine C (2-core AMD EPYC, 2026-12-05; this test's
settings, seeds 0-4, seeds 2-4 run outside the test), test accuracy label-only -> KD: 84.2 -> 90.9,
84.9 -> 91.3, 82.4 -> 88.9, 82.2 -> 90.4, 79.8 -> 90.7 (+6.4 to +10.9 points; teachers 96.9-98.2%).
The test asserts +3 points on seeds 0 and 1, a margin for float differences between machines.

Why MLPs: the first form of this test used a vit_atto4 teacher and student (400 / 200 steps, 5% of
the labels). It passed on machine B, but on machine C seed 1 gave a teacher of 88.0% and a KD
student below its twin (68.7 vs 74.7%): a 27k-parameter ViT trained for 200 steps is too chaotic
across processors to guard a claim with.
"""
import importlib.util
import os

import pytest

from jkd.config import model_config
from jkd.train.quickstart import run_quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart_config():
    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(ROOT, "configs", "quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("seed", [0, 1])
def test_kd_student_beats_its_label_only_twin(tmp_path, seed):
    c = _quickstart_config()
    c.seed = seed
    c.data.image_size, c.data.labelled_fraction = 8, 0.03
    c.teacher.model = model_config("mlp_256x2")
    c.students = dict(mlp=model_config("mlp_64x1"))
    c.steps, c.teacher.steps, c.batch_size = 200, 400, 32
    c.optimizer.warmup_steps, c.progress, c.eval_every, c.log_every, c.checkpoint_every = 20, False, 0, 100, 1000
    rows = {r["role"].split(" (")[0]: r["accuracy"] for r in run_quickstart(c, str(tmp_path))["rows"]}
    assert rows["teacher"] > 0.95, rows
    assert rows["KD student"] > rows["label-only student"] + 0.03, rows
