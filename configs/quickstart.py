"""Quickstart: a ViT teacher on handwritten digits, distilled into two smaller students, a ViT and a ConvNeXt.

Command (from the repo root, 2 CPU cores):
    python -m jkd.main --config configs/quickstart.py --workdir /tmp/jkd_quickstart

Models (parameters): teacher vit_pico4 (675,562) -> students convnext_zepto (233,114, 2.9x smaller)
and vit_atto4 (26,922, 25x smaller); the table prints each count.
Setting (Hinton et al. 2015's transfer-set setting): the teacher trains on all 1,347 training
digits; the students may use the labels of a stratified 10% of them (labelled_fraction), and the
KD students additionally see the teacher's soft targets on every training image. Label-only twins
train on the labelled 10% alone with the same steps, batch and seed. Scored on the fixed 450 test
digits. Expected: about 3 minutes on 2 CPU cores (seed 0: 191 s, 328 s CPU); seeds 0-2, mean +- std:
teacher 97.5 +- 0.8%, ConvNeXt KD 99.3 +- 0.0% vs label-only 90.0 +- 1.5%, ViT KD 94.6 +- 1.9% vs
label-only 88.5 +- 2.2% (per seed and timings: docs/RESULTS.md).
Try: --config.seed=1, --config.kd.temperature=2, --config.data.labelled_fraction=0.05,
     --config.kd_methods=vitkd (any of hinton, hard, dkd, nkd, dist, deit, vitkd, align, fm; comma-separated
     runs several, sharing the teacher and the label-only twins). Every method trains with its
     paper's loss form and defaults (docs/METHODS.md) unless a --config.kd.* field is set; the
     method itself is chosen by kd_methods (setting --config.kd.method here is an error).
`get_config('fast')` (`--config configs/quickstart.py:fast`): the notebooks' FAST size, the same models,
data and student steps with a 600-step teacher (colabs/ 01, 03, 05 and 06; docs/RESULTS.md, notebooks).
"""
from jkd.config import base_config, model_config


def get_config(arg=None):
    c = base_config()
    c.trainer = "quickstart"
    del c.model                        # each stage's model comes from teacher.model / students
    c.data.image_size = 16             # 8x8 digits upsampled to 16x16, one channel
    c.data.channels = 1
    c.data.labelled_fraction = 0.1     # students' labelled subset (stratified, fixed)
    c.batch_size = 64
    c.eval_batch_size = 256
    c.steps = 800                      # every student run (KD and label-only)
    c.teacher.steps = 1000             # the teacher run
    c.teacher.model = model_config("vit_pico4")   # 96 wide, 6 blocks, 16 patch tokens + CLS: 675,562 params
    # Both students are smaller than the teacher (distillation compresses): the ConvNeXt is jkd's
    # one-block-per-stage size (the ConvNeXt block unchanged), the ViT the smallest registered one.
    c.students = dict(
        vit=model_config("vit_atto4"),                          # 32 wide, 2 blocks: 26,922 params
        convnext=model_config("convnext_zepto", stem_stride=2),  # 16 -> 8 -> 4 -> 2 -> 1 px maps: 233,114 params
    )
    c.kd_methods = "hinton"            # or hard, dkd, nkd, dist, deit, vitkd, align, fm; comma-separated = several
    # KD settings: each method's published defaults (docs/METHODS.md), e.g. hinton T=4, 0.9 KD + 0.1 CE;
    # set c.kd.* (or --config.kd.temperature=2) to override them for every method. fm: mixup Beta(1, 1)
    # on every batch (augment.mixup_alpha unset; big_vision distill: p=1.0).
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 50
    c.log_every = 50
    c.eval_every = 100                 # test accuracy into metrics.jsonl (learning curves)
    c.checkpoint_every = 500
    if arg == "fast":  # the notebooks' FAST size: the same models, data and student steps; a shorter teacher
        # Measured on seed 0 (docs/RESULTS.md, notebooks): the KD ViT needs its 800 steps to pass its
        # label-only twin clearly (500 steps: +1.3 points; 800: +4.2), and a 95% teacher (600 steps; 800
        # steps of batch 32 gave 91.6% and a KD ViT only 0.9 points above its twin).
        c.teacher.steps = 600
        c.progress = False
    elif arg is not None:
        raise ValueError(f"configs/quickstart.py: unknown arg {arg!r} (known: fast)")
    return c
