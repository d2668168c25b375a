"""ImageNet: ViT-B/16 teacher into a DeiT-style ViT-S/16 (distillation token, hard distillation).

Hardware: accelerators; not runnable on a CPU in useful time.
Platforms: NVIDIA GPU `pip install -e ".[cuda]"` (".[cuda13]" for CUDA 13 drivers), Cloud TPU VM
`pip install -e ".[tpu]"` (README "GPU and TPU"); then the command below, on either with
--config.dtype=bfloat16 (GPU ViT teachers: --config.teacher.attention_impl=cudnn).
Expected time and accuracy: NOT measured in this repository yet. Reference (Touvron et al. 2021,
RegNetY-16GF teacher, 300 epochs): DeiT-S 79.9 -> DeiT-S with distillation token 81.2.

    python -m jkd.pretrained --src vit_base_patch16_224.safetensors --model vit_b16 \
        --num-classes 1000 --image-size 224 --workdir /ckpt/vit_b16_teacher
    python -m jkd.main --config configs/imagenet_vit_b16_to_s16_deit.py:/ckpt/vit_b16_teacher \
        --workdir /ckpt/b16_to_deit_s16 --config.data.data_dir=DATA_DIR
Loss: 0.5 CE(CLS head, labels) + 0.5 CE(distillation head, teacher argmax); inference averages heads.
"""
from jkd.config import base_config, model_config, use_imagenet


def get_config(arg=None):
    c = base_config()
    c.trainer = "distill"
    c.teacher.checkpoint = arg or ""
    use_imagenet(c)
    c.augment.crop_scale = (0.08, 1.0)
    c.augment.flip = True
    c.augment.mixup_alpha = 0.8
    c.label_smoothing = 0.1
    c.kd.method = "hard"  # DeiT hard distillation: 0.5 CE(cls head) + 0.5 CE(dist head, teacher argmax)
    c.students = dict(deit=model_config("vit_s16", distillation_token=True, drop_path_rate=0.1))
    c.batch_size = 1024
    c.eval_batch_size = 1000
    c.steps = 375_000
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_steps = 6250
    c.mesh.data, c.mesh.fsdp = -1, 1
    c.log_every, c.eval_every, c.checkpoint_every = 100, 5000, 2000
    return c
