"""A trained student from a workdir, and the exact inference function that gets exported.

    student = load_student("/tmp/jkd_quickstart/kd_hinton", "vit")
    fn = inference_fn(student.export_spec, student.params, student.preprocessing)
    logits = fn(pixels)   # pixels float32 [B, H, W, C] in [0, 1] -> logits float32 [B, K]

Eval mode throughout: the forward pass gets no `key`, so dropout and stochastic depth are off; a
ViT with a distillation token returns the average of its two heads in this mode.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from flax import nnx

from jkd.checkpoint import checkpoint_dir, read_run_info, require_run_info, restore_params
from jkd.data.preprocess import per_channel
from jkd.errors import ConfigError
from jkd.train.state import ModelSpec, graphdef_and_shapes


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What turns [0, 1] pixels into model inputs: (pixels - mean) / std, per channel.

    fold=True puts that arithmetic into the exported graph (its input is [0, 1] pixels); with
    fold=False the graph takes the normalised tensor, exactly what the JAX model takes.
    """
    mean: tuple
    std: tuple
    fold: bool = True
    resize: str = ""  # how the training data got to image_size (documented in the ONNX metadata)

    def normalise(self, pixels):
        """pixels [B, H, W, C] in [0, 1] -> (pixels - mean) / std (numpy or jax arrays)."""
        return (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def to_pixels(self, normalised: np.ndarray) -> np.ndarray:
        return normalised * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)


@dataclasses.dataclass(frozen=True)
class Student:
    name: str             # key in run.json's "models", e.g. 'vit'
    spec: ModelSpec       # as trained
    params: dict          # pure dict of host arrays
    step: int             # checkpoint step
    workdir: str
    config: dict          # run.json's "config"
    preprocessing: Preprocessing

    @property
    def reference_spec(self) -> ModelSpec:
        return reference_spec(self.spec)

    @property
    def export_spec(self) -> ModelSpec:
        return export_spec(self.spec)


def reference_spec(spec: ModelSpec) -> ModelSpec:
    """The JAX model the export is checked against: as trained, but fp32 compute.

    Params are fp32 whatever config.dtype was; a bf16-trained student is exported (and checked) as
    the fp32 function of those params, since onnxruntime's CPU provider lacks bf16 kernels.
    """
    return dataclasses.replace(spec, dtype="float32")


def export_spec(spec: ModelSpec) -> ModelSpec:
    """The spec to trace for export: fp32, and ConvNeXt's depthwise conv as a lax grouped conv.

    'auto' picks 49 shifted multiply-adds on CPU (faster for XLA there) which would export as ~150
    ops per block; 'conv' exports as one grouped ONNX `Conv`. Same params, same function (tested).
    """
    spec = reference_spec(spec)
    if spec.name.startswith("convnext"):
        return dataclasses.replace(spec, kwargs=tuple(sorted({**dict(spec.kwargs), "dw_impl": "conv"}.items())))
    return spec


def preprocessing_from_config(config: dict, channels: int, fold: bool = True) -> Preprocessing:
    data = config.get("data", {})
    name = data.get("name", "digits")
    size = data.get("image_size")
    if name == "digits":
        resize = f"8x8 scikit-learn digits (pixel/16) upsampled bilinearly (half-pixel centres) to {size}x{size}"
    else:
        resize = (f"TFDS {name}: shorter side resized bilinearly to {size}, center crop {size}x{size}, "
                  f"uint8/255; grey->RGB by repetition, RGB->grey by ITU-R 601 luma")
    return Preprocessing(mean=per_channel(data.get("mean", 0.5), channels, "run.json config.data.mean"),
                         std=per_channel(data.get("std", 0.5), channels, "run.json config.data.std"),
                         fold=fold, resize=resize)


def _latest_step(workdir: str) -> int | None:
    ckpt = checkpoint_dir(workdir)
    steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
    return max(steps) if steps else None


def _subdir_hint(workdir: str) -> str:
    """A pipeline directory (e.g. the quickstart's) holds one workdir per stage: name them."""
    subs, distilled = [], []
    for d in sorted(os.listdir(workdir)):
        try:
            info = read_run_info(os.path.join(workdir, d))
        except (OSError, json.JSONDecodeError):
            continue
        if info is not None:
            subs.append(d)
            if info.get("trainer") == "distill":
                distilled.append(os.path.join(workdir, d))
    if not subs:
        return ""
    return f"; it holds the workdirs {subs}" + (f" (distilled students: {', '.join(distilled)})" if distilled else "")


def load_student(workdir: str, student: str | None = None, *, fold_preprocessing: bool = True) -> Student:
    """Read run.json and the latest checkpoint of `workdir`; pick `student` (default: the only one).

    Raises ConfigError naming --workdir / --student for every user mistake.
    """
    info = require_run_info(workdir, "--workdir", hint=_subdir_hint(workdir) if os.path.isdir(workdir) else "")
    models = info.get("models") or {}
    if student is None:
        if len(models) != 1:
            raise ConfigError(f"--student: {workdir} holds several models {sorted(models)}; "
                              f"pick one with --student NAME")
        student = next(iter(models))
    if student not in models:
        raise ConfigError(f"--student: {student!r} is not a model of {workdir} (it has {sorted(models)})")
    step = _latest_step(workdir)
    if step is None:
        raise ConfigError(f"--workdir: no checkpoint under {checkpoint_dir(workdir)} (train first)")
    spec = ModelSpec.from_json(models[student])
    try:
        params = restore_params(workdir, step)[student]
    except Exception as e:  # orbax raises many types for unreadable/corrupt files
        raise ConfigError(f"--workdir: cannot restore the params of {student!r} from {checkpoint_dir(workdir)}/{step}: "
                          f"{type(e).__name__}: {e}") from None
    config = info.get("config") or {}
    return Student(name=student, spec=spec, params=params, step=step, workdir=os.path.abspath(workdir),
                   config=config, preprocessing=preprocessing_from_config(config, spec.in_channels, fold_preprocessing))


def build_model(spec: ModelSpec, params: dict) -> nnx.Module:
    """The nnx module of `spec` holding `params` (no fresh init: abstract graphdef + merge)."""
    graphdef, _ = graphdef_and_shapes(spec)
    return nnx.merge(graphdef, params)


def inference_fn(spec: ModelSpec, params: dict, preprocessing: Preprocessing | None = None):
    """images [B, H, W, C] float32 -> logits [B, K] float32, eval mode, preprocessing folded in
    when preprocessing.fold (then images are [0, 1] pixels, else normalised inputs)."""
    model = build_model(spec, params)
    fold = preprocessing is not None and preprocessing.fold

    def logits_fn(images):
        return model(preprocessing.normalise(images) if fold else images)

    return logits_fn
