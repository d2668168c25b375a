"""Ensemble vs KD from the ensemble vs self-distillation with real networks (Allen-Zhu & Li's
Figure 1 protocol; the deep-net counterpart of configs/theory/multiview.py).

Digits (default; 2 CPU cores: 5 members + 1 KD student + 1 self-distilled student, 400 steps each,
9-26 minutes per seed measured while other jobs shared the cores; not timed on a quiet machine):
    python -m jkd.main --config configs/ensemble_kd.py --workdir /tmp/jkd_ens
    python -m jkd.sweep --config configs/ensemble_kd.py --workdir /tmp/jkd_ens_sweep --sweep 'seed=0:5'
Measured (docs/RESULTS.md, 5 seeds): members 95.07 ± 0.39%, ensemble of 5 95.87 ± 0.54%, KD from
the ensemble 95.60 ± 0.51%, self-distillation 94.93 ± 0.48%. Members use seeds 1000*seed + i, so
seeds give disjoint ensembles.

Accelerators (TFDS; mirrors the paper's CIFAR experiments, where a WRN-28-10 gives single 81.51 +-
0.16, ensemble of 10 84.69, KD from the ensemble 83.81, self-distillation 83.56 on CIFAR-100):
    python -m jkd.main --config configs/ensemble_kd.py:cifar100 --workdir /ckpt/ens_c100
    python -m jkd.main --config configs/ensemble_kd.py:cifar10 --workdir /ckpt/ens_c10
ViT-S with 4-px patches at 32 px (64 tokens), 10 members of 40k steps at batch 256 plus two
students: one GPU/TPU host; time and accuracy NOT measured in this repository yet.
Platforms: NVIDIA GPU `pip install -e ".[cuda]"` (".[cuda13]" for CUDA 13 drivers), Cloud TPU VM
`pip install -e ".[tpu]"` (README "GPU and TPU"); then the command below, on either with
--config.dtype=bfloat16 (GPU ViT teachers: --config.teacher.attention_impl=cudnn).
`:tiny` is a seconds-sized digits setting for tests.
"""
import ml_collections

from jkd.config import base_config, model_config, use_cifar100


def get_config(arg=None):
    c = base_config()
    c.trainer = "ensemble"
    c.ensemble = ml_collections.ConfigDict()
    c.ensemble.size = 5                # independently seeded members (single_0 .. single_4)
    c.teacher.ensemble = "mean_probs"  # KD target: mean of the members' probabilities at T (or mean_loss)
    c.generations = 1                  # born-again generations from single_0 (0 = no self-distillation arm)
    c.model = model_config("convnext_zepto", stem_stride=2)  # every member and student (16 -> 1 px maps)
    c.data.image_size = 16
    c.data.labelled_fraction = 0.2     # a stratified 20% of the training digits (269 images) ...
    c.data.labelled_only = True        # ... is the whole training set of every stage
    c.batch_size = 64
    c.eval_batch_size = 256
    c.steps = 400
    c.kd.temperature = 4.0
    c.kd.weight = 0.9                  # loss = 0.9 KD + 0.1 CE on every training label
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 40
    c.log_every = 100
    c.checkpoint_every = 400
    if arg == "tiny":
        c.ensemble.size = 2
        c.steps, c.batch_size, c.eval_batch_size = 6, 16, 64
        c.optimizer.warmup_steps, c.log_every, c.checkpoint_every = 1, 3, 6
        c.model = model_config("vit_atto4")
        c.data.image_size = 8
        c.progress = False
    elif arg in ("cifar10", "cifar100"):
        use_cifar100(c)
        c.data.name = arg
        c.data.image_size = 32         # native resolution; 4-px patches
        c.data.labelled_fraction, c.data.labelled_only = 1.0, False  # the whole training split
        c.augment.crop_scale = (0.25, 1.0)
        c.model = model_config("vit_s4", drop_path_rate=0.1)
        c.ensemble.size = 10
        c.label_smoothing = 0.1
        c.batch_size, c.eval_batch_size = 256, 500
        c.steps = 40_000
        c.optimizer.lr = 1e-3
        c.optimizer.warmup_steps = 2000
        c.log_every, c.checkpoint_every = 200, 2000
    elif arg:
        raise ValueError(f"configs/ensemble_kd.py: unknown variant {arg!r} (tiny, cifar10, cifar100)")
    return c
