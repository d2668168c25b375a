"""The fast path's numerics on CPU at tiny sizes: padded + masked attention equals plain attention,
the bf16-compute step stays within bf16 error of the fp32 step, the FLOP counter agrees with XLA,
and `python -m jkd.bench` runs end to end (GPU speed itself is measured by benchmarks/gpu_check.sh)."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import ml_collections

from jkd import bench, flops
from jkd.errors import ConfigError
from jkd.models import check_model, create_model
from jkd.models.vit import _padded_attention
from jkd.train.objectives import Objective
from jkd.train.state import ModelSpec, TrainState, apply_model, graphdef_and_shapes, init_params, make_optimizer
from jkd.train.step import make_train_step


def _rel(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_padded_masked_attention_equals_unpadded():
    """Values and gradients (w.r.t. q, k, v) of the padded + masked XLA path equal plain attention."""
    q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 17, 2, 8))  # [B, T, heads, head_dim]
    w = jax.random.normal(jax.random.PRNGKey(1), q.shape)

    def f(pad_to):
        fn = (lambda q, k, v: jax.nn.dot_product_attention(q, k, v)) if pad_to == 0 else (
            lambda q, k, v: _padded_attention(q, k, v, pad_to, "xla"))
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))(q, k, v)

    (ref, ref_grads), (out, grads) = f(0), f(16)  # 17 -> 32 tokens, 15 of them masked
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert _rel(g, r) < 1e-5
    # The attention output itself, token by token.
    np.testing.assert_allclose(_padded_attention(q, k, v, 16, "xla"), jax.nn.dot_product_attention(q, k, v),
                               rtol=1e-5, atol=1e-6)


def test_vit_attention_padding_keeps_params_and_logits():
    kw = dict(num_classes=10, image_size=16, in_channels=1, num_register_tokens=1)
    plain = create_model("vit_atto4", **kw)
    padded = create_model("vit_atto4", attention_pad_to=8, **kw)  # 16 patches + CLS + register = 18 -> 24
    # Same parameter layout (a checkpoint of one loads into the other).
    params = nnx.to_pure_dict(nnx.state(plain))
    assert jax.tree.structure(params) == jax.tree.structure(nnx.to_pure_dict(nnx.state(padded)))
    params["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(2), params["head"]["kernel"].shape)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 1))
    ref = jax.jit(lambda p: apply_model(nnx.graphdef(plain), p, x))(params)
    out = jax.jit(lambda p: apply_model(nnx.graphdef(padded), p, x))(params)
    assert _rel(out, ref) < 1e-5


def test_attention_options_validated():
    with pytest.raises(ConfigError, match="attention_impl"):
        check_model("vit_atto4", image_size=16, attention_impl="flash")
    with pytest.raises(ConfigError, match="attention_pad_to"):
        check_model("vit_atto4", image_size=16, attention_pad_to=-1)
    # Compute options are not architecture: a resumed run may switch them.
    a = ModelSpec("vit_atto4", 10, 16, 1)
    b = ModelSpec("vit_atto4", 10, 16, 1, kwargs=(("attention_impl", "cudnn"), ("attention_pad_to", 64)))
    assert a.architecture() == b.architecture()


def test_bf16_compute_step_close_to_fp32():
    """The real distill step (make_train_step), bf16 compute vs fp32, same fp32 params and batch.

    One SGD step without momentum/decay/clipping, so the param change is exactly -lr * grads and the
    step's own gradients can be compared leaf by leaf.
    """
    opt_cfg = ml_collections.ConfigDict(dict(name="sgd", lr=1.0, momentum=0.0, warmup_steps=0, weight_decay=0.0,
                                             grad_clip=0.0, final_lr_ratio=1.0))
    aug = ml_collections.ConfigDict(dict(crop_scale=None, flip=False, mixup_alpha=0.0))
    t_params = init_params(ModelSpec("vit_atto4", 10, 16, 1), 1)
    s_params = init_params(ModelSpec("vit_atto4", 10, 16, 1), 0)
    # The zero-initialised heads would make the logits (and most of the gradient) trivially equal.
    t_params["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(3), t_params["head"]["kernel"].shape)
    s_params["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.PRNGKey(4), s_params["head"]["kernel"].shape)
    batch = {"image": jax.random.normal(jax.random.PRNGKey(5), (16, 16, 16, 1)), "label": jnp.arange(16) % 10,
             "label_mask": jnp.ones(16)}
    out = {}
    for dt in ("float32", "bfloat16"):
        tx = make_optimizer(opt_cfg, 10)
        step = make_train_step({"s": graphdef_and_shapes(ModelSpec("vit_atto4", 10, 16, 1, dtype=dt))[0]},
                               {"s": tx}, num_classes=10, augment_cfg=aug, objectives={"s": Objective()},
                               teacher_graphdefs=(graphdef_and_shapes(ModelSpec("vit_atto4", 10, 16, 1, dtype=dt))[0],))
        state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0), params={"s": s_params},
                           opt_state={"s": tx.init(s_params)})
        new, metrics = jax.jit(step)(state, batch, (t_params,))
        out[dt] = (float(metrics["s/loss"]), jax.tree.map(lambda a, b: b - a, s_params, new.params["s"]))
    (l32, g32), (l16, g16) = out["float32"], out["bfloat16"]
    loss_err = abs(l16 - l32) / abs(l32)
    grad_err = float(optax.tree.norm(jax.tree.map(lambda a, b: a - b, g16, g32)) / optax.tree.norm(g32))
    assert 0 < loss_err < 2e-2, loss_err    # > 0: bf16 really was used
    assert 1e-4 < grad_err < 5e-2, grad_err  # bf16 keeps ~3 significant digits
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g16), jax.tree.leaves(g32)):
        if np.linalg.norm(b) > 1e-6:
            assert _rel(a, b) < 0.15, (jax.tree_util.keystr(path), _rel(a, b))


def test_flop_counter_matches_published_and_xla():
    # Published forward cost in multiply-adds (timm / papers): ViT-S/16 4.6G, ViT-B/16 17.6G,
    # ViT-L/16 61.6G, ConvNeXt-T 4.5G at 224 px, 1000 classes.
    for name, gmac in [("vit_s16", 4.6), ("vit_b16", 17.6), ("vit_l16", 61.6), ("convnext_t", 4.5)]:
        assert flops.forward_flops(ModelSpec(name, 1000, 224, 3)) / 2e9 == pytest.approx(gmac, rel=0.02), name
    # XLA's count of the compiled forward: the matmuls plus the LayerNorm/GELU/softmax work the
    # counter leaves out (large next to the narrow matmuls of a test-size model). ConvNeXt is covered
    # by the published figure above (its XLA cross-check, 1.31x for convnext_zepto at 16 px, costs a
    # slow compile; docs/PERF.md).
    spec = ModelSpec("vit_femto4", 10, 16, 3)
    graphdef = graphdef_and_shapes(spec)[0]
    x = jnp.zeros((8, 16, 16, 3))
    compiled = jax.jit(lambda p: apply_model(graphdef, p, x)).lower(init_params(spec, 0)).compile()
    ratio = flops.xla_flops(compiled) / (8 * flops.forward_flops(spec))
    assert 1.0 <= ratio < 1.3, ratio


def test_bench_cli_end_to_end(tmp_path, capsys):
    # A stand-in for the PyTorch peer script (no torch here): prints one line in its documented format.
    peer = tmp_path / "peer.py"
    peer.write_text("import json, sys\na = sys.argv[1:]\n"
                    "print(json.dumps({'peer': 'torch_compile', 'teacher': a[a.index('--teacher') + 1],"
                    " 'batch': int(a[a.index('--batch') + 1]), 'img_per_s': 100.0}))\n")
    out = tmp_path / "bench.jsonl"
    bench.main(["--teacher", "vit_atto4", "--students", "vit_atto4", "--batch", "8", "--image", "8",
                "--channels", "1", "--classes", "10", "--dtype", "bfloat16", "--attention-pad", "8", "--devices", "1",
                "--warmup", "1", "--steps", "1", "--repeats", "2", "--peak", "--peak-size", "128",
                "--peer", str(peer), "--peer-python", sys.executable, "--peer-teacher", "tiny_t",
                "--peer-students", "tiny_s", "--out", str(out)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["kind"] for r in lines] == ["peer", "peak", "jkd", "ratio"]
    assert lines == [json.loads(line) for line in out.read_text().splitlines()]
    peer_rec, _, rec, ratio = lines
    assert peer_rec["teacher"] == "tiny_t" and peer_rec["batch"] == 8
    assert rec["finite"] and rec["img_per_s"] > 0 and rec["step_ms"] > 0 and 0 < rec["mfu"]
    assert rec["model_gflop_per_img"] == pytest.approx(
        flops.train_step_flops([ModelSpec("vit_atto4", 10, 8, 1)], [ModelSpec("vit_atto4", 10, 8, 1)]) / 1e9, rel=1e-3)
    assert ratio["ratio"] == pytest.approx(rec["img_per_s"] / 100.0, rel=1e-2)


def test_teacher_attention_options_from_config():
    from jkd.config import base_config
    from jkd.train.distill import teacher_compute_options

    spec = ModelSpec("vit_atto4", 10, 16, 1)
    teacher = (spec, graphdef_and_shapes(spec)[0], None)
    c = base_config()
    assert teacher_compute_options(teacher, c) is teacher  # defaults: as trained
    c.teacher.attention_impl, c.teacher.attention_pad_to = "cudnn", 64
    new_spec, graphdef, _ = teacher_compute_options(teacher, c)
    assert dict(new_spec.kwargs) == {"attention_impl": "cudnn", "attention_pad_to": 64}
    assert new_spec.architecture() == spec.architecture()
    assert graphdef != teacher[1] and graphdef == graphdef_and_shapes(new_spec)[0]  # the graph that uses them
    c.teacher.attention_impl = "flash"
    with pytest.raises(ConfigError, match="config.teacher.kwargs.attention_impl"):
        teacher_compute_options(teacher, c)


def test_summary_ratios_match_peer_lines_of_the_same_shapes(tmp_path):
    jkd = {"kind": "jkd", "device": "gpu", "teacher": "vit_b16", "students": "vit_s16", "batch": 256, "image": 224,
           "attention": "cudnn", "attention_pad": 64, "img_per_s": 600.0, "step_ms": 426.7, "mfu": 0.4,
           "peak_memory_gib": 20.0}
    peers = [{"kind": "peer", "peer": p, "teacher": "vit_base_patch16_224", "student": "vit_small_patch16_224",
              "batch": b, "img": 224, "img_per_s": v}
             for p, b, v in [("torch_eager", 256, 300.0), ("torch_compile", 256, 480.0), ("torch_compile", 128, 1.0)]]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [jkd, *peers]) + "\n")
    row = bench.summarize(str(path)).splitlines()[2]
    assert "| 2.000x | 1.250x |" in row and "cudnn/pad 64" in row
