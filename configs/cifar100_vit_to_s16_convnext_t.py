"""CIFAR-100: a ViT teacher (trained with configs/cifar100_teacher.py or imported) into ViT-S/16 and
ConvNeXt-T at 224 px (upsampled), one teacher forward for both students.

Hardware: one GPU or TPU host. Expected time and accuracy: NOT measured in this repository yet.
Platforms: NVIDIA GPU `pip install -e ".[cuda]"` (".[cuda13]" for CUDA 13 drivers), Cloud TPU VM
`pip install -e ".[tpu]"` (README "GPU and TPU"); then the command below, on either with
--config.dtype=bfloat16 (GPU ViT teachers: --config.teacher.attention_impl=cudnn).

    python -m jkd.main --config configs/cifar100_teacher.py --workdir /ckpt/c100_teacher
    python -m jkd.main --config configs/cifar100_vit_to_s16_convnext_t.py:/ckpt/c100_teacher \
        --workdir /ckpt/c100_students
"""
from jkd.config import base_config, model_config, use_cifar100


def get_config(arg=None):
    c = base_config()
    c.trainer = "distill"
    c.teacher.checkpoint = arg or ""
    use_cifar100(c)
    c.kd.method = "hinton"  # paper defaults (cifar): T = 4, 0.9 KD + 0.1 CE (docs/METHODS.md)
    c.students = dict(vit=model_config("vit_s16", drop_path_rate=0.1), convnext=model_config("convnext_t"))
    c.batch_size = 512
    c.eval_batch_size = 500
    c.steps = 30_000
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 1000
    return c
