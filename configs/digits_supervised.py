"""Train one model on digits from labels (a teacher for configs/digits_distill.py, or a baseline).

Command (2 CPU cores, ~1 minute):
    python -m jkd.main --config configs/digits_supervised.py --workdir /tmp/jkd_digits_teacher
Expected: ~97% test accuracy for the default vit_femto4 teacher (see docs/RESULTS.md).
Other models: --config.model.name=convnext_atto --config.model.kwargs.stem_stride=2
"""
from jkd.config import base_config, model_config


def get_config(arg=None):
    c = base_config()
    c.trainer = "supervised"
    c.model = model_config("vit_femto4")
    c.data.image_size = 16
    c.batch_size = 64
    c.steps = 1000
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 50
    return c
