"""The fast path's numerics on CPU at tiny sizes: padded + masked attention equals plain attention,
the bf16-compute step stays within bf16 error of the fp32 step, the FLOP counter agrees with XLA,
`python -m jkd.bench` runs end to end, and its ratio to the PyTorch peer (benchmarks/peer_timm_kd.py)
is printed only for the same work (GPU speed itself is measured by benchmarks/gpu_check.sh)."""
import json
import pathlib
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import ml_collections

from jkd import bench, bench_peer, flops
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


# A stand-in for the PyTorch peer script (no torch in tests): one line per mode in its documented
# format, echoing the shapes it was given; its eager line claims a batch one larger (no ratio).
STAND_IN_PEER = """import json, os, sys
a = sys.argv[1:]
arg = lambda f: a[a.index(f) + 1]
rec = {'teacher': arg('--teacher'), 'students': arg('--students'), 'batch': int(arg('--batch')),
       'image': int(arg('--image')), 'channels': int(arg('--channels')), 'classes': int(arg('--classes')),
       'dtype': arg('--dtype'), 'backend': 'cpu', 'devices': 1, 'threads': len(os.sched_getaffinity(0)),
       'img_per_s': 100.0, 'step_ms': 80.0, 'host_cpu_ms': 160.0}
print(json.dumps({**rec, 'peer': 'torch_compile'}))
print(json.dumps({**rec, 'peer': 'torch_eager', 'batch': rec['batch'] + 1}))
"""


def test_bench_cli_end_to_end(tmp_path, capsys):
    peer = tmp_path / "peer.py"
    peer.write_text(STAND_IN_PEER)
    out = tmp_path / "bench.jsonl"
    bench.main(["--teacher", "vit_atto4", "--students", "vit_atto4", "--batch", "8", "--image", "8",
                "--channels", "1", "--classes", "10", "--dtype", "bfloat16", "--attention-pad", "8",
                "--warmup", "1", "--steps", "1", "--repeats", "2", "--peak", "--peak-size", "128",
                "--peer", str(peer), "--peer-python", sys.executable, "--peer-teacher", "tiny_t",
                "--peer-students", "tiny_s", "--out", str(out)])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert [r["kind"] for r in lines] == ["peer", "peer", "peak", "jkd", "ratio", "no_ratio"]
    assert lines == [json.loads(line) for line in out.read_text().splitlines()]
    peer_rec, _, _, rec, ratio, no_ratio = lines
    assert peer_rec["teacher"] == "tiny_t" and peer_rec["batch"] == 8 and peer_rec["dtype"] == "bfloat16"
    assert rec["devices"] == 1 and rec["timm_teacher"] == "tiny_t"  # --peer: one device unless told otherwise
    assert rec["finite"] and rec["img_per_s"] > 0 and rec["step_ms"] > 0 and 0 < rec["mfu"]
    assert rec["model_gflop_per_img"] == pytest.approx(
        flops.train_step_flops([ModelSpec("vit_atto4", 10, 8, 1)], [ModelSpec("vit_atto4", 10, 8, 1)]) / 1e9, rel=1e-3)
    assert ratio["jkd_over"] == "torch_compile" and ratio["ratio"] == pytest.approx(rec["img_per_s"] / 100.0, rel=1e-2)
    assert no_ratio["jkd_over"] == "torch_eager" and no_ratio["why"] == "different batch: jkd 8, peer 9"
    assert "no ratio vs torch_eager: different batch: jkd 8, peer 9" in captured.err


def _pair(**changes):
    """A jkd record and a peer record of the same work (ViT-S/16 -> ViT-Ti/16 + ConvNeXt-atto), then `changes`
    applied as {'jkd.field': value, 'peer.field': value}."""
    same = {"batch": 32, "image": 64, "channels": 3, "classes": 1000, "dtype": "float32", "backend": "cpu",
            "devices": 1, "threads": 2, "teacher_params": 21981544, "student_params": [5682856, 3695520]}
    jkd = {"kind": "jkd", "teacher": "vit_s16", "students": "vit_ti16,convnext_atto", "img_per_s": 60.0,
           "host_cpu_ms": 1000.0, **same}
    peer = {"kind": "peer", "peer": "torch_eager", "teacher": "vit_small_patch16_224",
            "students": "vit_tiny_patch16_224,convnext_atto", "img_per_s": 40.0, "host_cpu_ms": 1500.0, **same}
    for key, value in changes.items():
        side, field = key.split(".")
        (jkd if side == "jkd" else peer)[field] = value
    return jkd, peer


def test_ratio_only_when_both_sides_timed_the_same_work():
    ratio = bench_peer.ratio_record(*_pair())
    assert ratio["kind"] == "ratio" and ratio["ratio"] == 1.5 and ratio["cpu_time_ratio"] == 1.5
    assert bench_peer.pair_mismatch(*_pair(**{"jkd.threads": 8, "jkd.backend": "gpu", "peer.backend": "gpu"})) is None
    cases = {  # change -> the start of the reason
        "peer.students": ("vit_tiny_patch16_224", "different models: jkd vit_s16 -> vit_ti16,convnext_atto"),
        "jkd.teacher": ("vit_b16", "different models"),
        "jkd.batch": (64, "different batch: jkd 64, peer 32"),
        "peer.image": (224, "different image: jkd 64, peer 224"),
        "peer.dtype": ("bfloat16", "different dtype"),
        "peer.classes": (10, "different classes"),
        "peer.backend": ("gpu", "different backend: jkd 'cpu', peer 'gpu'"),
        "jkd.devices": (8, "different devices"),
        "peer.threads": (16, "different threads: jkd 2, peer 16"),
        "jkd.student_params": ([5682856, 3694368], "different architectures: student_params"),
        "peer.img_per_s": (None, "the peer's torch_eager has no time"),
    }
    for key, (value, why) in cases.items():
        jkd, peer = _pair(**{key: value})
        if value is None:
            del peer["img_per_s"]
            peer["error"] = "RuntimeError: inductor failed"
        record = bench_peer.ratio_record(jkd, peer)
        assert record["kind"] == "no_ratio" and record["why"].startswith(why), (key, record)
    jkd, peer = _pair()
    del peer["dtype"]
    assert bench_peer.pair_mismatch(jkd, peer) == "the peer record has no 'dtype'"


def test_default_peer_script_is_in_the_repository_and_parses_without_torch():
    root = pathlib.Path(__file__).resolve().parents[1]
    args = bench.parse_args(["--teacher", "vit_s16", "--students", "vit_ti16,convnext_atto", "--peer"])
    assert pathlib.Path(args.peer) == bench_peer.PEER_SCRIPT == root / "benchmarks" / "peer_timm_kd.py"
    # --help with torch and timm unimportable: the script imports them only after parsing.
    blocked = ("import runpy, sys; sys.modules['torch'] = sys.modules['timm'] = None; "
               f"sys.argv = ['peer', '--help']; runpy.run_path({str(args.peer)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--students" in proc.stdout, proc.stderr
    # Every flag jkd.bench passes is one the script accepts, with the mapped timm names.
    args.peer_python = "python"
    cmd = bench_peer.peer_command(args)
    script = runpy.run_path(str(args.peer))  # module level only: no torch import
    parsed = script["parse_args"](cmd[2:])
    assert (parsed.teacher, parsed.students, parsed.batch, parsed.image, parsed.steps) == (
        "vit_small_patch16_224", "vit_tiny_patch16_224,convnext_atto", 256, 224, 10)
    with pytest.raises(ConfigError, match="--peer: no timm name known for 'vit_atto4'"):
        bench_peer.peer_command(bench.parse_args(["--teacher", "vit_atto4", "--peer"]))
    with pytest.raises(ConfigError, match="--peer: no peer script at"):
        bench_peer.peer_command(bench.parse_args(["--teacher", "vit_s16", "--peer", "nowhere/peer.py"]))


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
    same = {"batch": 256, "image": 224, "channels": 3, "classes": 1000, "dtype": "bfloat16", "backend": "gpu",
            "devices": 1}
    jkd = {"kind": "jkd", "device": "gpu", "teacher": "vit_b16", "students": "vit_s16", "attention": "cudnn",
           "attention_pad": 64, "img_per_s": 600.0, "step_ms": 426.7, "mfu": 0.4, "peak_memory_gib": 20.0, **same}
    peers = [{"kind": "peer", "peer": p, "teacher": "vit_base_patch16_224", "students": "vit_small_patch16_224",
              **same, "batch": b, "img_per_s": v, "step_ms": 1.0}
             for p, b, v in [("torch_eager", 256, 300.0), ("torch_compile", 256, 480.0), ("torch_compile", 128, 1.0)]]
    path = tmp_path / "r.jsonl"
    late = {**peers[1], "img_per_s": 2.0}  # after the jkd record: another call's line, not paired
    path.write_text("\n".join(json.dumps(r) for r in [*peers, jkd, late]) + "\n")
    row = bench.summarize(str(path)).splitlines()[2]
    assert "| 2.000x | 1.250x |" in row and "cudnn/pad 64" in row
