"""Distil a digits teacher (a jkd workdir) into a ViT and a ConvNeXt student in one run.

Command (2 CPU cores, ~2 minutes after the teacher of configs/digits_supervised.py):
    python -m jkd.main --config configs/digits_supervised.py --workdir /tmp/jkd_digits_teacher
    python -m jkd.main --config configs/digits_distill.py --workdir /tmp/jkd_digits_kd \
        --config.teacher.checkpoint=/tmp/jkd_digits_teacher
Both students share one teacher forward per batch. Labels: all of them by default; set
--config.data.labelled_fraction=0.1 for Hinton's transfer-set setting (as in the quickstart).
"""
from jkd.config import base_config, model_config


def get_config(arg=None):
    c = base_config()
    c.trainer = "distill"
    c.data.image_size = 16
    c.batch_size = 64
    c.steps = 500
    c.students = dict(vit=model_config("vit_atto4"), convnext=model_config("convnext_atto", stem_stride=2))
    c.teacher.checkpoint = ""  # required: the teacher's workdir
    c.kd.method = "hinton"  # paper defaults: T = 4, 0.9 KD + 0.1 CE (docs/METHODS.md); any kd.method works
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 50
    return c
