"""Per-teacher preprocessing (issue 16, item 4): a teacher imported with ImageNet normalisation (or
at another resolution, or for RGB while the students are grey) is fed the students' augmented view
converted to what it expects, inside the distill step; a teacher that expects what the students
get adds no op at all. jkd/data/preprocess.py, jkd.checkpoint.teacher_preprocessing, jkd/pretrained.py.
"""
import dataclasses
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkd import checkpoint, sharding
from jkd.config import base_config, model_config
from jkd.data import preprocess
from jkd.errors import ConfigError
from jkd.pretrained import IMAGENET, input_normalisation, main as import_main
from jkd.train.distill import check_teachers, load_teachers
from jkd.train.loop import compile_steps
from jkd.train.objectives import Objective, kd_term
from jkd.train.state import ModelSpec, apply_model, graphdef_and_shapes
from jkd.train.step import teacher_inputs

SIZE, CLASSES = 16, 5
MEAN, STD = np.asarray(IMAGENET[0], np.float32), np.asarray(IMAGENET[1], np.float32)
PIXELS = np.random.default_rng(0).uniform(size=(8, SIZE, SIZE, 3)).astype(np.float32)  # [0, 1] images


def _timm_file(path: str, seed: int = 0) -> str:
    """A random vit_atto4 (16 px, 3 channels, 5 classes) written as timm's .safetensors (names and
    layouts as tests/test_pretrained.py's writer)."""
    spec = ModelSpec("vit_atto4", CLASSES, SIZE, 3)
    rng = np.random.default_rng(seed)
    p = jax.tree.map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(np.float32), graphdef_and_shapes(spec)[1])
    sd = {"cls_token": p["cls_token"], "pos_embed": p["pos_embed"],
          "patch_embed.proj.weight": p["patch_embed"]["kernel"].transpose(3, 2, 0, 1),
          "patch_embed.proj.bias": p["patch_embed"]["bias"],
          "norm.weight": p["norm"]["scale"] + 1, "norm.bias": p["norm"]["bias"],
          "head.weight": p["head"]["kernel"].T, "head.bias": p["head"]["bias"]}
    for i, b in p["blocks"].items():
        t = f"blocks.{i}."
        sd.update({t + "norm1.weight": b["norm1"]["scale"] + 1, t + "norm1.bias": b["norm1"]["bias"],
                   t + "attn.qkv.weight": b["attn"]["qkv"]["kernel"].T, t + "attn.qkv.bias": b["attn"]["qkv"]["bias"],
                   t + "attn.proj.weight": b["attn"]["proj"]["kernel"].T,
                   t + "attn.proj.bias": b["attn"]["proj"]["bias"],
                   t + "norm2.weight": b["norm2"]["scale"] + 1, t + "norm2.bias": b["norm2"]["bias"],
                   t + "mlp.fc1.weight": b["fc1"]["kernel"].T, t + "mlp.fc1.bias": b["fc1"]["bias"],
                   t + "mlp.fc2.weight": b["fc2"]["kernel"].T, t + "mlp.fc2.bias": b["fc2"]["bias"]})
    header, blobs, offset = {}, [], 0
    for name, a in sd.items():
        raw = np.ascontiguousarray(a, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def _import(tmp_path, name: str, *flags: str) -> str:
    src = _timm_file(str(tmp_path / "vit.safetensors"))
    workdir = str(tmp_path / name)
    import_main(["--src", src, "--model", "vit_atto4", "--num-classes", str(CLASSES), "--workdir", workdir, *flags])
    return workdir


def _config(teacher: str, channels: int = 3):
    """A distill config: one mlp student on 16 px images normalised 0.5 / 0.5, no augmentation."""
    c = base_config()
    c.trainer, c.batch_size, c.steps, c.optimizer.warmup_steps = "distill", 8, 10, 1
    c.data.image_size, c.data.channels, c.data.mean, c.data.std = SIZE, channels, 0.5, 0.5
    c.augment.crop_scale, c.augment.flip, c.augment.mixup_alpha = None, False, 0.0
    c.teacher.checkpoint = teacher
    c.students = {"s": model_config("mlp_8x1")}
    return c


forward = jax.jit(apply_model, static_argnums=0)  # one compile per model: faster than op by op on 2 cores


def _students_view(pixels):
    return (pixels - 0.5) / 0.5


def test_imagenet_teacher_gets_its_own_normalisation_inside_the_distill_step(tmp_path, capsys):
    workdir = _import(tmp_path, "teacher", "--image-size", str(SIZE), "--preset", "deit")
    assert "mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225] (--preset deit)" in capsys.readouterr().out
    config = _config(workdir)
    mesh = sharding.make_mesh(config.mesh)
    teachers = load_teachers(config, mesh)
    check_teachers(teachers, config, CLASSES)
    spec, t_graph, t_params, t_input = teachers[0]
    assert t_input == preprocess.ModelInput(tuple(IMAGENET[0]), tuple(IMAGENET[1]), SIZE, 3, "bicubic")
    own = forward(t_graph, t_params, (PIXELS - MEAN) / STD)  # the teacher's own forward, ImageNet-normalised

    # The conversion compile_steps builds, on the students' 0.5/0.5 view: the teacher's own logits.
    views = (preprocess.view_fn(preprocess.data_input(config.data), t_input),)
    inside = forward(t_graph, t_params, teacher_inputs(_students_view(PIXELS), views, 1)[0])
    np.testing.assert_allclose(inside, own, atol=1e-5, rtol=1e-5)
    wrong = forward(t_graph, t_params, _students_view(PIXELS))  # what the step fed it before
    assert float(jnp.abs(wrong - own).max()) > 1e-2

    # The compiled distill step (the real one: fit and jkd.bench run it): its KD loss is the one
    # against those logits, and the eval step scores the teacher on the same view.
    specs = {"s": ModelSpec("mlp_8x1", CLASSES, SIZE, 3)}
    steps = compile_steps(config, mesh, specs, num_classes=CLASSES, teachers=tuple(teachers),
                          objectives={"s": Objective()})
    state = steps.init()
    s_logits = forward(graphdef_and_shapes(specs["s"])[0], state.params["s"], _students_view(PIXELS))
    labels = np.arange(8) % CLASSES
    batch = {"image": _students_view(PIXELS), "label": labels.astype(np.int32), "label_mask": np.ones(8, np.float32)}
    _, metrics, finite = steps.train_step(state, batch, (t_params,))
    expected_kd, _ = kd_term(Objective(), s_logits, own[None], jnp.asarray(labels), 0)
    assert bool(finite)
    np.testing.assert_allclose(float(metrics["s/kd"]), float(expected_kd), rtol=1e-5, atol=1e-6)
    out = steps.eval_step(steps.init().params, {**batch, "mask": np.ones(8, np.float32)}, (t_params,))
    assert float(out["teacher/correct"]) == float((np.argmax(own, -1) == labels).sum())
    t_logp = jax.nn.log_softmax(own)
    expected_kl = (jnp.exp(t_logp) * (t_logp - jax.nn.log_softmax(s_logits))).sum()
    np.testing.assert_allclose(float(out["s/kl"]), float(expected_kl), rtol=1e-5, atol=1e-6)


def test_teacher_at_another_resolution_and_grey_students():
    # An RGB teacher recorded at 32 px with ImageNet statistics (as jkd.pretrained --image-size 32
    # --preset imagenet writes it), grey 16 px students normalised 0.5 / 0.5.
    config = _config("", channels=1)
    t_input = preprocess.model_input(*IMAGENET, image_size=32, channels=3, resize="bicubic")
    t_spec = ModelSpec("vit_atto4", CLASSES, 32, 3)
    check_teachers([(t_spec, None, None, t_input)], config, CLASSES)  # another size and grey students: accepted
    grey = PIXELS[..., :1]
    view = preprocess.view_fn(preprocess.data_input(config.data), t_input)
    got = view(_students_view(grey))
    expected = jax.image.resize((np.repeat(grey, 3, -1) - MEAN) / STD, (8, 32, 32, 3), "bicubic", antialias=True)
    assert got.shape == (8, 32, 32, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # RGB students, a grey teacher: refused, naming both.
    with pytest.raises(ConfigError, match=r"config.teacher.checkpoint \(vit_atto4\): the teacher takes 1-channel "
                                          r"images, the students' data has 3"):
        check_teachers([(dataclasses.replace(t_spec, in_channels=1), None, None, t_input._replace(channels=1))],
                       _config("", channels=3), CLASSES)


def test_same_preprocessing_adds_no_op(tmp_path):
    students = preprocess.model_input(0.5, 0.5, image_size=SIZE, channels=3)
    x = jnp.asarray(_students_view(PIXELS))
    assert preprocess.teacher_view(x, students, students) is x
    assert preprocess.view_fn(students, students) is None
    assert preprocess.view_fn(students, students._replace(mean=None, std=None)) is None  # not recorded
    assert preprocess.view_fn(students, students._replace(image_size=32)) is not None

    # A jkd-trained teacher records its preprocessing in its run.json config.data: nothing new to write.
    spec = ModelSpec("vit_atto4", CLASSES, SIZE, 3)
    checkpoint.write_run_info(str(tmp_path / "t"), {"config": {"data": {"mean": 0.5, "std": 0.5, "image_size": SIZE,
                                                                         "channels": 3}}})
    recorded = checkpoint.teacher_preprocessing(str(tmp_path / "t" / "checkpoints" / "7"), spec)
    assert recorded == students

    # The compiled step with that teacher is the step without any preprocessing, op for op.
    config = _config("")
    mesh = sharding.make_mesh(config.mesh)
    t_params = graphdef_and_shapes(spec)[1]  # traced, not run: shapes are enough
    specs = {"s": ModelSpec("mlp_8x1", CLASSES, SIZE, 3)}
    jaxprs = []
    imagenet = preprocess.model_input(*IMAGENET, image_size=SIZE, channels=3)
    for recorded_input in ((), (recorded,), (imagenet,)):  # none (as before), the students', another
        teacher = (spec, graphdef_and_shapes(spec)[0], t_params, *recorded_input)
        steps = compile_steps(config, mesh, specs, num_classes=CLASSES, teachers=(teacher,),
                              objectives={"s": Objective()})
        batch = {"image": x, "label": jnp.zeros(8, jnp.int32), "label_mask": jnp.ones(8)}
        jaxprs.append(str(jax.make_jaxpr(steps.train_step)(jax.eval_shape(steps.init), batch, (t_params,))))
    assert jaxprs[0] == jaxprs[1]
    assert jaxprs[2] != jaxprs[0]  # the control: a conversion does show in the traced step


def test_import_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):  # a grey import cannot hold per-channel ImageNet statistics exactly
        _import(tmp_path, "grey", "--image-size", str(SIZE), "--in-channels", "1", "--preset", "imagenet")
    assert "--in-channels: 1 sums the RGB kernels" in capsys.readouterr().err
    legacy = _import(tmp_path, "unknown", "--image-size", str(SIZE))  # timm file, no flag: not recorded, warned
    err = capsys.readouterr().err
    assert "jkd: warning: the input normalisation of" in err and "not recorded" in err
    spec = ModelSpec("vit_atto4", CLASSES, SIZE, 3)
    assert checkpoint.teacher_preprocessing(legacy, spec).mean is None
    # Formats that say it: original DINOv2 .pth files (ImageNet), big_vision .npz (0.5 / 0.5).
    assert input_normalisation("dinov2", image_size=SIZE)[0].std == IMAGENET[1]
    assert input_normalisation("big_vision", image_size=SIZE)[0][:2] == ((0.5,) * 3, (0.5,) * 3)
    assert input_normalisation("big_vision", preset="imagenet", image_size=SIZE)[0].mean == IMAGENET[0]
