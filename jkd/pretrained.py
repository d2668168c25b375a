"""Import public ViT weights into jkd's ViT: timm, Hugging Face, DINOv2 and big_vision/AugReg files.

    spec, params = load_pretrained_vit("model.safetensors", model_name="vit_s16", num_classes=1000,
                                       image_size=224)
    graphdef, _ = graphdef_and_shapes(spec)                 # jkd.train.state
    logits = apply_model(graphdef, params, images)          # images [B, 224, 224, 3], normalised as
                                                            # the checkpoint expects (not done here)
    python -m jkd.pretrained --src FILE --model vit_b16 --num-classes 1000 --image-size 224 --preset deit \
        --workdir DIR
    # DIR is a teacher workdir: --config.teacher.checkpoint=DIR; its run.json records the input
    # normalisation (--preset or --mean/--std), which the distill step applies to the teacher's view

Reading files: jkd/weight_files.py; mapping each source's names and layouts: jkd/vit_layouts.py.
Files: `.safetensors`, PyTorch `.pth/.bin/.pt` (zip format, read without torch), big_vision/AugReg
`.npz`, or a Hugging Face model directory. The naming is detected from the keys (timm / original
DINOv2 `blocks.0.attn.qkv.weight`; transformers `encoder.layer.0.attention.attention.query.weight`;
big_vision `Transformer/encoderblock_0/...`). Covered and not covered: docs/PRETRAINED.md.

Every file layout is mapped onto one jkd layout: the position embedding covers CLS (+ distillation
token) + patches, registers have none. Prefix tokens are constants added before the first block, so
moving a position row into its token (or a zero row out of it) is exact, not an approximation.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jkd.data.preprocess import ModelInput, model_input
from jkd.errors import ConfigError
from jkd.models import check_model, parse_model_name
from jkd.models.vit import VIT_SIZES, resize_pos_embed
from jkd.train.state import ModelSpec, graphdef_and_shapes
from jkd.vit_layouts import name_listing, convert
from jkd.weight_files import read_weights  # noqa: F401 (public here: jkd.pretrained.read_weights)

# ------------------------------------------------------------------------------ input normalisation

# (mean, std) on [0, 1] RGB pixels that the weights were trained with: the values timm's
# pretrained_cfg gives each family (timm.data.constants, timm 1.0).
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # IMAGENET_DEFAULT_MEAN / _STD
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))             # IMAGENET_INCEPTION_MEAN / _STD
PRESETS = {
    "imagenet": IMAGENET,
    "deit": IMAGENET,        # timm deit.py _cfg: deit_*, deit3_* (and facebookresearch/deit's transforms)
    "dinov2": IMAGENET,      # timm vision_transformer.py 'vit_*_dinov2.lvd142m' cfgs (also .dino, .mae)
    "inception": INCEPTION,
    "augreg": INCEPTION,     # timm vision_transformer.py default _cfg: vit_*.augreg*, vit_*.orig_in21k*
    "big_vision": INCEPTION,  # big_vision / vision_transformer .npz: value_range(-1, 1); HF google/vit-*
}
# Formats whose normalisation is certain: DINOv2's own .pth files and big_vision .npz files. timm and
# HF files hold both kinds (timm's AugReg ViTs are 0.5/0.5, its DeiTs ImageNet), so they need a flag.
FORMAT_PRESETS = {"dinov2": "dinov2", "big_vision": "big_vision"}


def input_normalisation(fmt: str, *, preset: str = "", mean=None, std=None, image_size: int,
                        in_channels: int = 3) -> tuple[ModelInput, str]:
    """What the imported teacher expects -> (ModelInput, how it was chosen). --mean/--std (both)
    override --preset; without either, FORMAT_PRESETS[fmt] where the format says, else not recorded
    (mean/std None: distill runs then assume the students' config.data normalisation, as before).
    Resizing to another resolution is bicubic, as timm's eval transforms for these weights."""
    if (mean is None) != (std is None):
        raise ConfigError(f"--mean/--std: give both (per channel, or one value for all), got mean={mean} std={std}")
    if preset and preset not in PRESETS:
        raise ConfigError(f"--preset: unknown {preset!r}; one of {sorted(PRESETS)} (or --mean/--std)")
    how = "--mean/--std" if mean is not None else f"--preset {preset}" if preset else ""
    if mean is None:
        preset = preset or FORMAT_PRESETS.get(fmt, "")
        how = how or (f"preset {preset} (the {fmt} format's)" if preset else "not recorded")
        mean, std = PRESETS[preset] if preset else (None, None)
    if in_channels == 1 and mean is not None and (len(set(np.ravel(mean))) > 1 or len(set(np.ravel(std))) > 1):
        raise ConfigError(f"--in-channels: 1 sums the RGB kernels, exact only when the three channels share one "
                          f"mean/std, not {how} ({mean} / {std}); import with --in-channels 3 (grey students are "
                          f"repeated to RGB in the distill step, exactly) or give --mean/--std for the grey channel")
    if in_channels == 1 and mean is not None:
        mean, std = np.ravel(mean)[:1], np.ravel(std)[:1]
    return model_input(mean, std, image_size=image_size, channels=in_channels, resize="bicubic",
                       field="--mean/--std"), how


# ------------------------------------------------------------------------------------------ import

def import_vit(path: str, *, model_name: str, num_classes: int, image_size: int, in_channels: int = 3,
               head: str = "keep", interpolation: str = "bicubic", dtype: str = "float32"):
    """load_pretrained_vit that also returns a description of the source (for run.json)."""
    arch = _check_import_args(model_name, head, dtype, interpolation)
    fmt, flat, found = convert(read_weights(path))
    spec, wrong = _spec_for(found, arch, model_name=model_name, num_classes=num_classes, image_size=image_size,
                            in_channels=in_channels, dtype=dtype)
    notes = _adapt_input(flat, found, wrong, image_size=image_size, in_channels=in_channels,
                         interpolation=interpolation)
    notes += _adapt_head(flat, found, head=head, num_classes=num_classes)
    _check_fit(spec, flat, found, wrong, model_name)
    params = _unflatten({k: jnp.asarray(v) for k, v in flat.items()})
    source = dict(src=os.path.abspath(path), format=fmt, sha256=_sha256(path), checkpoint=found, notes=notes,
                  head=head, interpolation=interpolation)
    return spec, params, source


def _check_import_args(model_name: str, head: str, dtype: str, interpolation: str) -> dict:
    """Validate the flags that need no file; returns the ViT architecture parsed from model_name."""
    if head not in ("keep", "reset"):
        raise ConfigError(f"--head: must be 'keep' or 'reset', got {head!r}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype: must be float32, bfloat16 or float16, got {dtype!r}")
    if interpolation not in ("bicubic", "linear"):
        raise ConfigError(f"--interpolation: must be 'bicubic' or 'linear', got {interpolation!r}")
    family, arch = parse_model_name(model_name, "--model")
    if family != "vit":
        raise ConfigError(f"--model: pretrained import is for ViTs (vit_<size><patch>), got {model_name!r}")
    return arch


def _spec_for(found: dict, arch: dict, *, model_name: str, num_classes: int, image_size: int, in_channels: int,
              dtype: str) -> tuple[ModelSpec, dict]:
    """The ModelSpec of jkd's ViT for the checkpoint's variant (`found`, from convert), and `wrong`:
    {field: (model_name's value, the file's)} for width / depth / patch size / heads that differ
    (raised later, with the mismatched shapes, by _check_fit)."""
    expected = {k: arch[k] for k in ("width", "depth", "patch_size")}
    if found["num_heads"] is not None:
        expected["num_heads"] = arch["num_heads"]
    wrong = {k: (v, found[k]) for k, v in expected.items() if found[k] != v}
    kwargs = {"pool": found["pool"]} if found["pool"] != "cls" else {}
    kwargs.update({k: found[k] for k in ("distillation_token", "num_register_tokens") if found[k]})
    if found["layer_scale"]:
        kwargs["layer_scale_init"] = 1e-5  # only initialises the gammas; the file's values replace them
    if not found["qkv_bias"]:
        kwargs["qkv_bias"] = False
    if found["mlp_dim"] and found["mlp_dim"] != 4 * found["width"]:
        kwargs["mlp_ratio"] = found["mlp_dim"] / found["width"]
    if image_size % found["patch_size"]:
        raise ConfigError(f"--image-size: {image_size} is not divisible by the checkpoint's patch size "
                          f"{found['patch_size']}")
    check_model(model_name, image_size=image_size, field="--model", **kwargs)
    spec = ModelSpec(name=model_name, num_classes=num_classes, image_size=image_size, in_channels=in_channels,
                     kwargs=tuple(sorted(kwargs.items())), dtype=dtype)
    return spec, wrong


def _adapt_input(flat: dict, found: dict, wrong: dict, *, image_size: int, in_channels: int,
                 interpolation: str) -> list[str]:
    """In place on flat ({name: array}): patch_embed/kernel [P, P, C, D] summed to [P, P, 1, D] for
    1-channel images; pos_embed [1, n_emb + g*g, D] resized to the new grid g' = image_size // P
    (unless the architecture is already `wrong`). Returns notes on what was changed."""
    notes = []
    if found["in_channels"] != in_channels:
        if in_channels != 1:
            raise ConfigError(f"--in-channels: the checkpoint takes {found['in_channels']} channels; only 1 "
                              f"(grey: the channels' kernels summed, as timm does) or {found['in_channels']} work")
        flat["patch_embed/kernel"] = flat["patch_embed/kernel"].sum(axis=2, keepdims=True)
        notes.append(f"patch embedding summed over {found['in_channels']} input channels for 1-channel images")
    new_grid = image_size // found["patch_size"]
    if not wrong and new_grid != found["grid"]:
        n_emb = int(found["pool"] == "cls") + int(found["distillation_token"])
        flat["pos_embed"] = np.asarray(resize_pos_embed(flat["pos_embed"], n_emb, new_grid, interpolation))
        notes.append(f"position embedding resized {found['grid']}x{found['grid']} -> {new_grid}x{new_grid} "
                     f"({interpolation}, antialiased)")
    return notes


def _adapt_head(flat: dict, found: dict, *, head: str, num_classes: int) -> list[str]:
    """head='reset': in place, head(s) kernel [D, num_classes] and bias [num_classes] set to zeros;
    'keep': checks the file has them, with num_classes outputs. Returns notes on what was changed."""
    heads = ["head"] + (["head_dist"] if found["distillation_token"] else [])
    if head == "reset":
        for h in heads:
            flat[f"{h}/kernel"] = np.zeros((found["width"], num_classes), np.float32)
            flat[f"{h}/bias"] = np.zeros((num_classes,), np.float32)
        return [f"classifier head(s) reset to zeros for {num_classes} classes"]
    if found["head_classes"] is None or any(f"{h}/kernel" not in flat for h in heads):
        raise ConfigError(f"--head: the checkpoint has no {' and '.join(heads)} (e.g. a backbone such as "
                          f"DINOv2, or a DeiT without its distillation head); use --head reset")
    if found["head_classes"] != num_classes:
        raise ConfigError(f"--num-classes: the checkpoint's head has {found['head_classes']} classes, not "
                          f"{num_classes}; use --head reset to start a zero head for {num_classes} classes")
    return []


def _check_fit(spec: ModelSpec, flat: dict, found: dict, wrong: dict, model_name: str) -> None:
    """Raise ConfigError unless flat ({'a/b/kernel': array}) has exactly the model's names and shapes."""
    _, shapes = graphdef_and_shapes(spec)
    shapes = {"/".join(str(p.key) for p in path): s.shape
              for path, s in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    order = sorted(shapes, key=lambda k: k.startswith("blocks/"))  # embeddings and head first: most telling
    mismatched = [f"{k}: model {shapes[k]}, checkpoint {flat[k].shape}"
                  for k in order if k in flat and shapes[k] != flat[k].shape]
    if wrong:
        raise ConfigError(f"--model: {model_name} does not match the checkpoint ("
                          + ", ".join(f"{k} {v} vs {f} in the file" for k, (v, f) in wrong.items())
                          + f"); {_guess(found)}. Mismatched shapes ({len(mismatched)}): {name_listing(mismatched, 8)}")
    if mismatched:  # e.g. a head over [CLS, mean patch] (HF Dinov2ForImageClassification): --head reset drops it
        raise ConfigError(f"--src: arrays of the checkpoint do not fit {model_name} (a variant jkd does not cover, "
                          f"see docs/PRETRAINED.md): {name_listing(mismatched, 8)}")
    absent, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
    if absent or extra:  # a converter bug rather than a user mistake, but say what it is
        raise ConfigError(f"--src: converted weights do not fit {model_name}: missing {absent}, unexpected {extra}")


def load_pretrained_vit(path: str, *, model_name: str, num_classes: int, image_size: int, in_channels: int = 3,
                        head: str = "keep", interpolation: str = "bicubic", dtype: str = "float32"):
    """Public ViT weights -> (ModelSpec, params) for jkd's ViT (params: nested dict of fp32 arrays).

    path: .safetensors / .pth / .bin / .npz file or HF model directory; model_name: 'vit_<size><patch>'
    (checked against the file's width, depth, patch size and, for big_vision, heads: timm and HF files
    do not record the head count, it comes from the name); image_size: a grid other than the file's
    resizes the position embedding (`interpolation`: 'bicubic' or 'linear', antialiased);
    in_channels: 3, or 1 (kernels summed over RGB); head: 'keep' (the file's head, which must have
    num_classes outputs) or 'reset' (zero head(s) for num_classes). Raises ConfigError naming the
    flag (--src, --model, --num-classes, --head, ...) and listing the keys or shapes that do not fit.
    """
    spec, params, _ = import_vit(path, model_name=model_name, num_classes=num_classes, image_size=image_size,
                                 in_channels=in_channels, head=head, interpolation=interpolation, dtype=dtype)
    return spec, params


def _guess(found: dict) -> str:
    """What the file looks like, as a jkd model name."""
    sizes = [s for s, (w, d, _h) in VIT_SIZES.items() if (w, d) == (found["width"], found["depth"])]
    if not sizes:
        return f"no jkd ViT size has width {found['width']} and depth {found['depth']}"
    return f"it looks like vit_{sizes[0]}{found['patch_size']}"


def _unflatten(flat: dict) -> dict:
    """{'blocks/0/fc1/kernel': x} -> {'blocks': {0: {'fc1': {'kernel': x}}}} (int keys as nnx.List's)."""
    out: dict = {}
    for name, value in flat.items():
        *parents, leaf = [int(p) if p.isdigit() else p for p in name.split("/")]
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _sha256(path: str) -> str:
    if os.path.isdir(path):
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- CLI

def write_teacher_workdir(workdir: str, spec: ModelSpec, params: dict, source: dict,
                          model_in: ModelInput | None = None) -> None:
    """A jkd teacher workdir: run.json + an orbax checkpoint at step 0 (load with jkd.checkpoint.load_teacher).
    model_in (input_normalisation) goes to run.json's config.data, where
    jkd.checkpoint.teacher_preprocessing reads every teacher's (jkd-trained ones included)."""
    from jkd import checkpoint
    from jkd.train.state import TrainState

    ckpt = checkpoint.checkpoint_dir(workdir)
    if os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt)):
        raise ConfigError(f"--workdir: {workdir} already holds checkpoints; import into a fresh directory")
    config = dict(source)
    if model_in is not None:
        config["data"] = model_in._asdict()
    checkpoint.write_run_info(workdir, {"trainer": "imported", "models": {"model": spec.to_json()},
                                        "teacher": None, "config": config})
    manager = checkpoint.make_manager(workdir)
    checkpoint.save(manager, TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0),
                                        params={"model": params}, opt_state={}))
    manager.wait_until_finished()
    manager.close()


def parse_args(argv=None) -> argparse.Namespace:
    """The CLI's arguments (also used by tests/test_docs_commands.py to check documented commands)."""
    parser = argparse.ArgumentParser(prog="python -m jkd.pretrained", description=(
        "Import public ViT weights (timm / Hugging Face / DINOv2 / big_vision) as a jkd teacher workdir."))
    parser.add_argument("--src", required=True, help=".safetensors, .pth/.bin, .npz file or HF model directory")
    parser.add_argument("--model", required=True, help="jkd ViT name matching the file, e.g. vit_b16, vit_s14")
    parser.add_argument("--num-classes", type=int, required=True, help="classes of the teacher's head")
    parser.add_argument("--image-size", type=int, required=True, help="input resolution (px) of the teacher")
    parser.add_argument("--in-channels", type=int, default=3, help="3, or 1 for grey images (RGB kernels summed)")
    parser.add_argument("--head", choices=("keep", "reset"), default="keep", help="keep the file's head or zero it")
    parser.add_argument("--interpolation", default="bicubic", help="position-embedding resize: bicubic or linear")
    parser.add_argument("--dtype", default="float32", help="compute dtype recorded in the spec (params stay fp32)")
    parser.add_argument("--preset", default="", help=f"input normalisation the weights expect: {', '.join(PRESETS)} "
                        "(imagenet = ImageNet mean/std, inception = 0.5/0.5); default: the file format's where "
                        "certain (DINOv2 .pth, big_vision .npz)")
    parser.add_argument("--mean", type=float, nargs="+", help="per-channel mean on [0, 1] pixels (overrides --preset)")
    parser.add_argument("--std", type=float, nargs="+", help="per-channel std on [0, 1] pixels (with --mean)")
    parser.add_argument("--workdir", required=True, help="where the teacher workdir is written")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        input_normalisation("", preset=args.preset, mean=args.mean, std=args.std, image_size=args.image_size,
                            in_channels=args.in_channels)  # bad flags fail before a large file is read
        spec, params, source = import_vit(args.src, model_name=args.model, num_classes=args.num_classes,
                                          image_size=args.image_size, in_channels=args.in_channels, head=args.head,
                                          interpolation=args.interpolation, dtype=args.dtype)
        model_in, how = input_normalisation(source["format"], preset=args.preset, mean=args.mean, std=args.std,
                                            image_size=args.image_size, in_channels=args.in_channels)
        write_teacher_workdir(args.workdir, spec, params, source, model_in)
    except ConfigError as e:
        print(f"jkd: error: {e}", file=sys.stderr)
        sys.exit(2)
    if model_in.mean is None:
        print(f"jkd: warning: the input normalisation of {args.src} is not recorded ({source['format']} files "
              f"hold both kinds); distill runs will assume the students' config.data.mean/std. Import again "
              f"with --preset ({', '.join(PRESETS)}) or --mean/--std; timm: model.pretrained_cfg['mean'/'std']",
              file=sys.stderr)
    norm = "" if model_in.mean is None else f", mean {list(model_in.mean)} std {list(model_in.std)} ({how})"
    print(f"wrote teacher {spec.name} ({source['format']} weights, {args.image_size}px, {args.num_classes} "
          f"classes{norm}"
          f"{'; ' + '; '.join(source['notes']) if source['notes'] else ''}) to {os.path.abspath(args.workdir)}\n"
          f"use it with --config.teacher.checkpoint={os.path.abspath(args.workdir)}")


if __name__ == "__main__":
    main()
