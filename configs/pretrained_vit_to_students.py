"""An imported pretrained ViT teacher distilled into a ViT and a ConvNeXt student in one run (one
teacher forward per batch): the flow of colabs/06_pretrained_teacher_to_students.ipynb.

Default (a GPU, e.g. Colab's): TFDS imagenette (10 ImageNet classes, 320-px images) at 224 px,
students vit_s16 + convnext_t trained from scratch for 600 steps of 64 images (a few epochs of
imagenette's train split), bf16 compute. The teacher: an ImageNet-1k timm ViT whose head is cut
to imagenette's 10 classes (the notebook does it with jkd.weight_files), imported as a workdir:
    python -m jkd.pretrained --src vit_b16_imagenette.safetensors --model vit_b16 --num-classes 10 \
        --image-size 224 --preset augreg --workdir /tmp/teacher_vit_b16
    python -m jkd.main --config configs/pretrained_vit_to_students.py --workdir /tmp/kd_imagenette \
        --config.teacher.checkpoint=/tmp/teacher_vit_b16
The data must be prepared as array_record once (needs TensorFlow, as on Colab):
`tfds build imagenette/320px-v2 --file_format=array_record`. Expected time and accuracy: NOT measured
in this repository (no GPU or network where it was written); the notebook prints both.

`:fast` (offline, 2 CPU cores): the embedded digits at 16 px (what the quickstart teacher,
configs/quickstart.py, was trained on; the notebook writes it as a timm file and imports it), students
vit_atto4 + convnext_zepto for 800 steps (the quickstart's student steps):
    python -m jkd.pretrained --src vit_pico4.safetensors --model vit_pico4 --num-classes 10 --image-size 16 \
        --in-channels 1 --mean 0.5 --std 0.5 --workdir /tmp/teacher_digits
    python -m jkd.main --config configs/pretrained_vit_to_students.py:fast --workdir /tmp/kd_digits \
        --config.teacher.checkpoint=/tmp/teacher_digits
Every training label is used (no transfer-set split): KD is Hinton's 0.9 soft + 0.1 hard loss at T = 4.
"""
from jkd.config import base_config, model_config


def get_config(arg=None):
    c = base_config()
    c.trainer = "distill"
    c.teacher.checkpoint = ""   # required: the imported teacher's workdir (the --workdir of jkd.pretrained)
    c.kd.method = "hinton"      # paper defaults (cifar setting): T = 4, 0.9 KD + 0.1 CE (docs/METHODS.md)
    if arg == "fast":
        # base_config's data: the embedded digits, 16 px, grey, (x - 0.5) / 0.5, as the quickstart teacher's
        c.students = dict(vit=model_config("vit_atto4"),                           # 26,922 params
                          convnext=model_config("convnext_zepto", stem_stride=2))  # 233,114 params
        c.batch_size, c.eval_batch_size = 64, 256
        c.steps = 800                     # the quickstart's: at 300 the ViT student was still far from converged
        c.optimizer.lr, c.optimizer.warmup_steps = 2e-3, 50
        c.log_every = c.eval_every = 100  # learning curves in metrics.jsonl
        c.progress = False
    elif arg is None:
        c.dtype = "bfloat16"
        c.data.name = "imagenette/320px-v2"  # TFDS; classes = ImageNet wnids n01440764 ... n03888257 (sorted)
        c.data.train_split, c.data.eval_split = "train", "validation"  # imagenette has no 'test' split
        c.data.image_size, c.data.channels = 224, 3
        c.data.mean, c.data.std = 0.5, 0.5  # AugReg ViTs' own normalisation: the teacher's view is the students'
        c.augment.crop_scale = (0.35, 1.0)  # jkd's cifar100 recipes' (config.use_cifar100): a mild crop for a short run
        c.augment.flip = True
        c.students = dict(vit=model_config("vit_s16"), convnext=model_config("convnext_t"))
        # Budget, not a paper setting: a few minutes on one Colab GPU (unmeasured). The papers' own
        # schedules (DeiT: 300 epochs; function matching: up to thousands) are far longer.
        c.batch_size, c.eval_batch_size = 64, 128
        c.steps = 600
        # AdamW 1e-3 (base_config's) at batch 64: jkd's choice; DeiT's 5e-4 x batch/512 rule gives 6e-5,
        # tuned for 300 epochs, too slow for a few hundred steps.
        c.optimizer.lr, c.optimizer.warmup_steps = 1e-3, 60
        c.log_every, c.eval_every = 50, 100
        c.checkpoint_every = 300
    else:
        raise ValueError(f"configs/pretrained_vit_to_students.py: unknown arg {arg!r} (known: fast)")
    return c
