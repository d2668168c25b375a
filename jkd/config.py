"""Defaults shared by every recipe, and the start-up checks that turn bad configs into clear errors.

Recipes (configs/*.py) start from `base_config()` and change what they need. Every field has a
default and a one-line comment here: this file is the reference of the config vocabulary (one
field, one meaning, in every recipe; docs/ARCHITECTURE.md lists the recipe-specific groups).
`check_run(config)` holds the checks every jkd.train.loop run shares; each trainer adds its own
(jkd/trainers.py dispatches), and `check_renamed` turns an old field name into "renamed to ...".
"""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from jkd import checks, ranges
from jkd.errors import ConfigError
from jkd.models import check_model


def model_config(name: str, **kwargs) -> ml_collections.ConfigDict:
    """A model entry: registry name + family options (e.g. stem_stride, drop_path_rate)."""
    return ml_collections.ConfigDict({"name": name, "kwargs": kwargs})


def writers_config() -> ml_collections.ConfigDict:
    """config.writers: the mirrors of metrics.jsonl, which is always written (docs/LOGGING.md). Every
    recipe has it: base_config() and the probes' own configs (theory, fairness) include it."""
    w = ml_collections.ConfigDict()
    w.tensorboard = True    # TensorBoard event files beside metrics.jsonl (tensorboard --logdir <workdir>)
    w.wandb = False         # also a Weights & Biases run (pip install -e ".[wandb]")
    w.wandb_project = "jkd"  # the W&B project the runs go to
    w.wandb_mode = "offline"  # 'offline' (<workdir>/wandb, no network; `wandb sync` later) | 'online'
    return w


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "supervised"        # a name of jkd/trainers.py's REGISTRY (supervised, distill, quickstart, ...)
    c.seed = 0                      # init, data order, augmentation
    c.dtype = "float32"             # compute dtype (params stay fp32); bfloat16 on accelerators
    c.steps = 1000                  # optimizer steps
    c.batch_size = 128              # global batch, split over all data-parallel devices
    c.eval_batch_size = 256         # global eval batch (padded at the end of the eval set)
    c.label_smoothing = 0.0         # on the label CE term

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"          # 'digits' (bundled with scikit-learn), 'image_folder' (your JPEG/PNG class
                                    # folders under data_dir) or any TFDS image dataset
    c.data.image_size = 16          # side of the square model input, px
    c.data.channels = 1             # 1 or 3 (converted from the source)
    c.data.mean = 0.5               # input normalisation: (x - mean) / std on [0, 1] pixels
    c.data.std = 0.5
    c.data.train_split = "train"    # TFDS split names; image_folder: split folders data_dir/<split>/<class>/
    c.data.eval_split = "test"      # (digits: train/test fixed)
    c.data.data_dir = ""            # TFDS data_dir ('' = TFDS default); image_folder: the images' root folder
    c.data.eval_fraction = 0.0      # image_folder: hold out this fraction of every data_dir/<class>/ for eval
                                    # (0 = read the split folders instead)
    c.data.skip_corrupt = False     # image_folder: leave unreadable files out (counted in a warning), else an error
    c.data.allow_mixed_channels = False  # image_folder: convert a mix of grayscale and colour files to channels
                                         # (else an error naming the minority's files)
    c.data.labelled_fraction = 1.0  # digits: stratified fraction of train labels the CE term may use
    c.data.labelled_seed = 0        # which subset (fixed across run seeds)
    c.data.labelled_only = False    # train only on the labelled subset (label-only baselines)
    c.data.exclude_classes = ()     # class ids left out of the students' transfer set (teachers see every
                                    # class; Hinton et al. 2015 section 3: the omitted-class experiment)

    c.augment = ml_collections.ConfigDict()
    c.augment.crop_scale = (0.5, 1.0)  # random-resized-crop area range; None = no crop
    c.augment.flip = False             # horizontal flips (off for digits: a flipped 3 is no 3)
    c.augment.mixup_alpha = placeholder(float)  # Beta(alpha, alpha) mixup on every batch; 0 = off; None = 1.0
                                                # when a student uses kd.method=fm (big_vision), else 0

    c.model = model_config("vit_femto4")  # supervised: the model to train
    c.students = ml_collections.ConfigDict()  # {name: model_config(...)} trained together (always a dict of
                                              # student models; loss variants and counts have their own fields)

    c.teacher = ml_collections.ConfigDict()
    c.teacher.checkpoint = ""       # teacher workdir (latest step) or <workdir>/checkpoints/<step>;
                                    # several, comma-separated = an ensemble of teachers
    c.teacher.model_key = ""        # which model of a multi-model teacher run ('' = the only one)
    c.teacher.attention_impl = ""   # ViT teachers' attention: '' = as trained, 'xla', 'cudnn' (GPU flash)
    c.teacher.attention_pad_to = -1  # ViT teachers: -1 = as trained, k >= 0 pads tokens to a multiple of k
    c.teacher.ensemble = "mean_probs"  # several teachers: 'mean_probs' (target = mean of their
                                       # probabilities at T) or 'mean_loss' (mean of per-teacher losses)
    c.teacher_cache = ml_collections.ConfigDict()  # FKD-style teacher-output cache (jkd/train/teacher_cache.py)
    c.teacher_cache.dir = ""        # '' = live teacher; else distil from the cache in this directory
    c.teacher_cache.build = False   # True: write the cache's missing shards (resumable) and stop, no student trains
    c.teacher_cache.top_k = 5       # log-probs kept per view; 0 = all classes. 5 = FKD's default (marginal_smoothing_k5)
    c.teacher_cache.dtype = "float16"  # stored log-prob values: float16 | bfloat16 | float32. FKD's --use_fp16 (its
                                       # default is fp32); half the value bytes, accuracy within seed noise (RESULTS.md)
    c.teacher_cache.draws = 0       # augmentation draws (epochs) stored; 0 = as many as config.steps needs (none reused)
    c.teacher_cache.seed = placeholder(int)  # the draws' seed; None = config.seed
    c.generations = 1               # distillation generations: gen 1 learns from the teacher, gen k+1 from gen k
                                    # (> 1 = self-distillation; the ensemble probe: 0 = no self-distillation arm)

    # KD fields left None take the method's published value (jkd.train.objectives.PAPER_DEFAULTS;
    # every value and its source: docs/METHODS.md). Setting one overrides it.
    c.kd = ml_collections.ConfigDict()
    c.kd.method = placeholder(str)  # hinton | hard | dkd | nkd | dist | fm (docs/METHODS.md); None = hinton. The quickstart
                                    # sets it per stage from config.kd_methods (then setting it is an error)
    c.kd.setting = "cifar"          # which published setting fills unset fields: 'cifar' | 'imagenet'
    c.kd.temperature = placeholder(float)  # T; None = paper: hinton 4 (imagenet 1), dkd 4 (1), nkd 3 (1), dist 4 (1), fm 1,
                                           # DeiT soft 3
    c.kd.weight = placeholder(float)       # KD term weight; None = paper: hinton 0.9 (0.5), hard 0.5, dkd/nkd/fm 1, dist 2,
                                           # DeiT soft 0.1
    c.kd.ce_weight = placeholder(float)    # label CE weight; None = paper: hinton 0.1 (0.5), hard 0.5, dkd/nkd/dist 1, fm 0,
                                           # DeiT soft 0.9; hinton/hard with only kd.weight set: 1 - weight
    c.kd.hard_label_smoothing = 0.0  # hard: label smoothing on the teacher's argmax (DeiT: 0)
    c.kd.dkd_alpha = placeholder(float)  # dkd: target-class (binary) KL weight; None = 1 (mdistiller)
    c.kd.dkd_beta = placeholder(float)   # dkd: non-target KL weight; None = 8 (cifar), 0.5 (imagenet) (mdistiller)
    c.kd.dkd_warmup_fraction = placeholder(float)  # dkd: linear KD warm-up over this fraction of steps;
                                                   # None = 20/240 (cifar), 1/100 (imagenet) (mdistiller)
    c.kd.nkd_gamma = placeholder(float)  # nkd: non-target term weight; None = 3.5 (cifar), 1.5 (imagenet; 1.0 for
                                         # ViT students) (cls_KD configs)
    c.kd.dist_beta = placeholder(float)   # dist: inter-class (per-example) relation weight; None = 1 (DIST_KD)
    c.kd.dist_gamma = placeholder(float)  # dist: intra-class (per-class, over the batch) relation weight; None = 1
    c.kd.deit_soft_scale = "reference"  # DeiT soft KD: 'reference' = DeiT's code (summed KL / (B * K)), 'paper' = / B

    c.feature_kd = ml_collections.ConfigDict()
    c.feature_kd.method = placeholder(str)  # none | vitkd (ViT -> ViT) | align (ViT -> ConvNeXt); None = none
    c.feature_kd.vitkd_alpha = placeholder(float)  # vitkd: mimic weight on sum((x_s'-x_t)^2)/B; None = 3e-5 (cls_KD)
    c.feature_kd.vitkd_beta = placeholder(float)   # vitkd: generation weight, sum over masked / B / ratio; None = 3e-6
    c.feature_kd.mask_ratio = placeholder(float)   # vitkd: fraction of last-block tokens masked; None = 0.5 (cls_KD)
    c.feature_kd.align_stage = -1       # align: which ConvNeXt stage (0..3, -1 = last) is projected
    c.feature_kd.align_loss = "cosine"  # align: cosine | mse (jkd's own method: docs/METHODS.md)
    c.feature_kd.align_weight = 1.0     # align: weight of the alignment loss

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"      # adamw | sgd
    c.optimizer.lr = 1e-3           # peak learning rate
    c.optimizer.warmup_steps = 100  # linear warm-up, then cosine decay to final_lr_ratio * lr
    c.optimizer.final_lr_ratio = 0.0
    c.optimizer.weight_decay = 0.05  # decoupled, on matrices/kernels only
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.grad_clip = 1.0     # global-norm clipping; 0 = off

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                # data-parallel axis size (-1 = all remaining devices)
    c.mesh.fsdp = 1                 # params/optimizer/teacher split along this axis
    c.mesh.min_shard_size = 2 ** 14  # arrays with fewer elements stay replicated

    c.log_every = 50                # train metrics to metrics.jsonl
    c.eval_every = 0                # intermediate evals (0 = only at the end)
    c.checkpoint_every = 500        # async checkpoint interval (also saved at the last step)
    c.keep_checkpoints = 2          # how many steps to keep on disk
    c.progress = True               # tqdm progress bar
    c.nonfinite = "stop"            # non-finite loss/grad norm: 'stop' (error naming step and metric) | 'skip' the update

    c.writers = writers_config()     # TensorBoard on, W&B off (docs/LOGGING.md)

    c.distributed = ml_collections.ConfigDict()  # multi-process (jkd/distributed.py); env JKD_* fills unset fields
    c.distributed.coordinator_address = ""  # host:port of process 0; '' = single process; 'auto' = jax cluster detection
    c.distributed.num_processes = 0  # processes in the job (0 = from JKD_NUM_PROCESSES)
    c.distributed.process_id = -1    # this process (-1 = from JKD_PROCESS_ID)
    return c


def use_imagenet(c: ml_collections.ConfigDict) -> None:
    """TFDS imagenet2012 at 224 px, RGB, (x - 0.5) / 0.5 (AugReg/timm ViT normalisation), bf16."""
    c.dtype = "bfloat16"
    c.data.name = "imagenet2012"
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.data.image_size, c.data.channels = 224, 3
    c.data.mean, c.data.std = 0.5, 0.5
    c.kd.setting = "imagenet"  # the methods' published ImageNet defaults (docs/METHODS.md)


def use_cifar100(c: ml_collections.ConfigDict) -> None:
    """TFDS cifar100 upsampled to 224 px, RGB, bf16, crops (0.35-1), flips, mixup 0.2."""
    c.dtype = "bfloat16"
    c.data.name = "cifar100"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.image_size, c.data.channels = 224, 3
    c.augment.crop_scale = (0.35, 1.0)
    c.augment.flip = True
    c.augment.mixup_alpha = 0.2


# Fields renamed or removed; a config that still sets one fails with the new name instead of
# silently training something else. Top level of any recipe:
RENAMED_FIELDS = {
    "method": "kd_methods (the quickstart's comma-separated KD method presets; config.kd.method is the "
              "logit loss of a distill run)",
    "teacher_model": "teacher.model",
    "teacher_steps": "teacher.steps (a trained stage's step count is steps in its group; the top-level steps "
                     "is the run's own models)",
    "fm_mixup_alpha": "augment.mixup_alpha (None = Beta(1, 1) mixup on every batch when a student uses kd.method=fm)",
    "ensemble_size": "ensemble.size",
    "ensemble_target": "teacher.ensemble (how several teachers' targets combine: mean_probs | mean_loss)",
    "self_distill_generations": "generations (0 = no self-distillation arm in the ensemble probe)",
}
# ... and the KD groups, at the top level or in a student's overrides (issue 13: these changed meaning
# when jkd's defaults became the papers').
RENAMED_KD_FIELDS = {
    "kd.dkd_warmup_steps": "kd.dkd_warmup_fraction (a fraction of config.steps; mdistiller: 20/240)",
    "feature_kd.mimic_weight": "feature_kd.vitkd_alpha (weight on the reference's summed squared error, 3e-5)",
    "feature_kd.generate_weight": "feature_kd.vitkd_beta (weight on the reference's summed squared error, 3e-6)",
}


def check_renamed(config) -> None:
    """ConfigError for a renamed field anywhere in config or a student's overrides."""
    checks.check_renamed(config, RENAMED_FIELDS)
    students = config.get("students")
    prefixes = [""] + ([f"students.{n}" for n, e in students.items() if hasattr(e, "keys")]
                       if hasattr(students, "items") else [])
    checks.check_renamed(config, RENAMED_KD_FIELDS, prefixes)


def check_run(config) -> None:
    """Checks of the fields every jkd.train.loop run reads (supervised, distill and the stages built
    on them); raises ConfigError naming the field. The trainer checks its models on top."""
    check_renamed(config)
    ranges.check(config)  # every numeric field's own range (jkd/ranges.py); the relations follow
    if config.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"config.dtype: must be float32, bfloat16 or float16, got {config.dtype!r}")
    scale = config.augment.crop_scale
    if scale is not None and not (isinstance(scale, (tuple, list)) and len(scale) == 2 and scale[0] <= scale[1]):
        raise ConfigError(f"config.augment.crop_scale: need (min, max) with 0 < min <= max <= 1, got {scale!r}")
    if config.data.name == "digits":  # TFDS datasets: checked against their class count when opened
        from jkd.data import DIGITS_NUM_CLASSES, excluded_classes
        excluded_classes(config.data, DIGITS_NUM_CLASSES)
    if config.optimizer.warmup_steps >= config.steps:  # also in make_optimizer; here so a pipeline stage
        # fails before an earlier stage trains
        raise ConfigError(f"config.optimizer.warmup_steps: {config.optimizer.warmup_steps} must be < the "
                          f"{config.steps} train steps")


def check_model_entry(entry, config, field: str) -> None:
    """A model entry (model_config(...)) is buildable at config.data.image_size; ConfigError naming field."""
    check_model(entry.name, image_size=config.data.image_size, field=field, **dict(entry.get("kwargs", {})))
