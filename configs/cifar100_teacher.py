"""CIFAR-100 teacher: ViT-B/16 at 224 px from labels (or fine-tune an imported one by pointing a
distill/finetune recipe at it). Hardware: one GPU or TPU host. Expected time and accuracy: NOT
measured in this repository yet.
Platforms: NVIDIA GPU `pip install -e ".[cuda]"` (".[cuda13]" for CUDA 13 drivers), Cloud TPU VM
`pip install -e ".[tpu]"` (README "GPU and TPU"); then the command below, on either with
--config.dtype=bfloat16 (GPU ViT teachers: --config.teacher.attention_impl=cudnn).

    python -m jkd.main --config configs/cifar100_teacher.py --workdir /ckpt/c100_teacher
"""
from jkd.config import base_config, model_config, use_cifar100


def get_config(arg=None):
    c = base_config()
    c.trainer = "supervised"
    c.model = model_config("vit_b16", drop_path_rate=0.1)
    use_cifar100(c)
    c.label_smoothing = 0.1
    c.batch_size = 512
    c.eval_batch_size = 500
    c.steps = 30_000
    c.optimizer.lr = 5e-4
    c.optimizer.warmup_steps = 1000
    return c
