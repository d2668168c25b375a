"""ImageNet: an imported ViT-L/16 teacher into ViT-S/16 and ConvNeXt-T in one run (one teacher forward).

Hardware: accelerators (8 GPUs/TPU chips or more); not runnable on a CPU in useful time.
Platforms: NVIDIA GPU `pip install -e ".[cuda]"` (".[cuda13]" for CUDA 13 drivers), Cloud TPU VM
`pip install -e ".[tpu]"` (README "GPU and TPU"); then the command below, on either with
--config.dtype=bfloat16 (GPU ViT teachers: --config.teacher.attention_impl=cudnn).
Expected time and accuracy: NOT measured in this repository yet (no accelerator run so far); the
function-matching recipe of Beyer et al. 2022 needs hundreds of epochs for its headline numbers.

Steps:
  1. Import the teacher (an ImageNet-1k fine-tuned ViT-L/16 file from timm/HF or big_vision):
       python -m jkd.pretrained --src vit_large_patch16_224.safetensors --model vit_l16 \
           --num-classes 1000 --image-size 224 --workdir /ckpt/vit_l16_teacher
  2. Prepare imagenet2012 for tfds.data_source (array_record format) under DATA_DIR.
  3. Distil:
       python -m jkd.main --config configs/imagenet_vit_l16_to_s16_convnext_t.py:/ckpt/vit_l16_teacher \
           --workdir /ckpt/l16_to_s16_t --config.data.data_dir=DATA_DIR
Function matching (consistent views + mixup on every batch, KL only). The ConvNeXt-T student also
aligns its last stage to the teacher's patch-token map (feature_kd 'align'); drop it with
--config.students.convnext.feature_kd.method=none.
"""
from jkd.config import base_config, model_config, use_imagenet


def get_config(arg=None):
    c = base_config()
    c.trainer = "distill"
    c.teacher.checkpoint = arg or ""
    use_imagenet(c)
    c.augment.crop_scale = (0.08, 1.0)
    c.augment.flip = True
    c.augment.mixup_alpha = 1.0                  # function matching: mixup Beta(1, 1) on every batch (big_vision)
    c.kd.method = "fm"                           # KL at T = 1, no label term (docs/METHODS.md)
    c.students = dict(
        vit=model_config("vit_s16", drop_path_rate=0.1),
        convnext=model_config("convnext_t", drop_path_rate=0.1),
    )
    c.students.convnext.feature_kd = dict(method="align", align_stage=-1, align_loss="cosine", align_weight=1.0)
    c.batch_size = 1024
    c.eval_batch_size = 1000
    c.steps = 375_000                            # ~300 epochs at batch 1024
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_steps = 10_000
    c.mesh.data, c.mesh.fsdp = -1, 8             # teacher and students split over 8-way fsdp
    c.log_every, c.eval_every, c.checkpoint_every = 100, 5000, 2000
    return c
