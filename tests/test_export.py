"""ONNX export (jax2onnx) of trained students: parity with JAX under onnxruntime, metadata, the
verifier catching corrupt or mismatched files, the static TensorRT check, the CLI, and (where
TensorRT and a GPU exist) the engine build. Tiny students at 8 px for speed; ViT-S/16 and
ConvNeXt-T at 224 px in `test_full_size_parity_*` (about 45 s each on 2 CPU cores)."""
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from jkd import checkpoint
from jkd.config import base_config
from jkd.errors import ConfigError
from jkd.export import (ExportError, ParityError, TensorRTCompatError, check_tensorrt_compat, export,
                        inference_fn, load_student, to_onnx_model, verify_onnx)
from jkd.export.__main__ import main as cli_main
from jkd.export.onnx import read_metadata
from jkd.export.student import export_spec
from jkd.export.tensorrt import tensorrt_available, trtexec_command
from jkd.export.verify import InputSet, format_parity, ort_fn, ort_session, parity, random_inputs
from jkd.train.state import ModelSpec, TrainState, graphdef_and_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
logging.getLogger("onnx_ir").setLevel(logging.ERROR)

# Students as a run.json would hold them: 8 px, 1 channel, 10 classes. The ViT has dropout and
# stochastic depth switched on so the test also shows that eval mode exports neither.
SPECS = {
    "vit": ModelSpec("vit_atto4", 10, 8, 1, kwargs=(("dropout_rate", 0.1), ("drop_path_rate", 0.1))),
    "convnext": ModelSpec("convnext_atto", 10, 8, 1, kwargs=(("stem_stride", 1),)),
}


def random_params(spec: ModelSpec, seed: int = 0, head_scale: float = 4.0) -> dict:
    """Params with the spec's shapes, no init compile: kernels ~ N(0, 1/fan_in) (head scaled up so
    logits are of order 10, like a trained model's), norm scales ~1, biases/tokens ~N(0, 0.1)."""
    _, shapes = graphdef_and_shapes(spec)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        key = jax.tree_util.keystr(path)
        if len(s.shape) >= 2 and "pos_embed" not in key and "token" not in key:
            w = rng.standard_normal(s.shape, np.float32) / np.sqrt(np.prod(s.shape[:-1]))
            return (w * (head_scale if "head" in key else 1.0)).astype(np.float32)
        base = 1.0 if "scale" in key else 0.0
        return (base + 0.1 * rng.standard_normal(s.shape, np.float32)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def make_workdir(path: str, specs: dict, step: int = 2, trainer: str = "supervised") -> str:
    """A workdir in the trainer's format (run.json + orbax `params`/`train` items) without training."""
    config = base_config()
    config.data.image_size, config.data.channels = 8, 1
    checkpoint.write_run_info(path, {"trainer": trainer, "models": {k: v.to_json() for k, v in specs.items()},
                                     "teacher": None, "config": json.loads(config.to_json_best_effort())})
    params = {name: random_params(spec, seed=i) for i, (name, spec) in enumerate(specs.items())}
    state = TrainState(step=np.int32(step), rng=np.zeros(2, np.uint32), params=params,
                       opt_state={name: {"count": np.int32(step)} for name in specs})
    manager = checkpoint.make_manager(path, async_save=False)
    checkpoint.save(manager, state)
    manager.wait_until_finished()
    manager.close()
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(str(tmp_path_factory.mktemp("export_wd")), SPECS)


@pytest.fixture(scope="module")
def exported(workdir):
    """Both tiny students exported once (symbolic batch, default opset) with the default checks."""
    return {name: export(workdir, name, n_real=64, log=None) for name in SPECS}


def _leftovers(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(".")]


@pytest.mark.parametrize("name", ["vit", "convnext"])
def test_onnx_parity_symbolic_batch_two_sizes(exported, workdir, name):
    result = exported[name]
    report = result["parity"]
    assert report["ok"]
    assert {r["batch"] for r in report["rows"]} == {1, 32}  # the symbolic batch at two sizes
    for r in report["rows"]:
        assert r["max_abs_err"] < 1e-4 and r["top1_agree"] == r["n"]
    real = [r for r in report["rows"] if "accuracy_jax" in r]
    assert real and real[0]["n"] == 64 and real[0]["accuracy_exported"] == real[0]["accuracy_jax"]

    model = onnx.load(result["onnx_path"])
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "B"
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "Gelu"} <= ops  # native at opset 20
    assert check_tensorrt_compat(model) == []
    # Independently of the exporter's own check: odd batch sizes straight through onnxruntime.
    st = load_student(workdir, name)
    jax_fn = jax.jit(inference_fn(st.spec, st.params, st.preprocessing))
    session = ort_session(result["onnx_path"])
    for b in (3,):
        x = random_inputs((8, 8, 1), st.preprocessing, b, seed=b)
        np.testing.assert_allclose(ort_fn(session)(x), np.asarray(jax_fn(x)), atol=1e-4, rtol=0)
    assert not _leftovers(os.path.dirname(result["onnx_path"]))


def test_eval_mode_has_no_random_ops_and_convnext_exports_grouped_conv(exported):
    vit = onnx.load(exported["vit"]["onnx_path"])
    assert not {n.op_type for n in vit.graph.node} & {"RandomUniformLike", "RandomUniform", "Bernoulli", "Dropout"}
    convnext = onnx.load(exported["convnext"]["onnx_path"])
    grouped = [n for n in convnext.graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(grouped) == 12  # one depthwise Conv per block (2+2+6+2), group = channels
    assert {a.i for n in grouped for a in n.attribute if a.name == "group"} == {40, 80, 160, 320}


def test_metadata_documents_input_and_source(exported, workdir):
    meta = read_metadata(exported["vit"]["onnx_path"])
    assert meta["jkd.input_layout"] == "NHWC"
    assert meta["jkd.input"] == "images: float32 [B, 8, 8, 1] (NHWC)"
    assert meta["jkd.preprocessing_folded"] is True and meta["jkd.input_value_range"].startswith("[0, 1] pixels")
    assert meta["jkd.mean"] == [0.5] and meta["jkd.std"] == [0.5]
    assert meta["jkd.model_spec"] == SPECS["vit"].to_json()
    assert meta["jkd.checkpoint_step"] == 2 and meta["jkd.student"] == "vit"
    assert meta["jkd.workdir"] == os.path.abspath(workdir)
    assert meta["jkd.parity_onnxruntime"]["ok"] and meta["jkd.opset"] == 20
    assert "trtexec --onnx=" in open(exported["vit"]["trtexec_command_path"]).read()


def test_fixed_batch_and_unfolded_preprocessing(workdir, tmp_path):
    out = str(tmp_path / "vit_b4.onnx")
    result = export(workdir, "vit", batch=4, fold_preprocessing=False, out=out, n_real=16, log=None)
    model = onnx.load(out)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [4, 8, 8, 1]
    assert {r["batch"] for r in result["parity"]["rows"]} == {4}
    assert read_metadata(model)["jkd.input_value_range"].startswith("normalised")


def test_verifier_accepts_good_and_detects_corrupt_or_mismatched(exported, workdir, tmp_path):
    good = exported["vit"]["onnx_path"]
    assert verify_onnx(good, n_real=32)["ok"]  # workdir and student from the metadata

    model = onnx.load(good)  # one weight nudged: the kind of damage a bad conversion does
    bias = next(i for i in model.graph.initializer if i.dims == [10])
    arr = onnx.numpy_helper.to_array(bias) + 0.01
    bias.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), bias.name))
    corrupt = str(tmp_path / "corrupt.onnx")
    onnx.save(model, corrupt)
    with pytest.raises(ParityError, match="outside tolerance"):
        verify_onnx(corrupt, n_real=32)

    truncated = str(tmp_path / "truncated.onnx")
    with open(good, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:2000])
    with pytest.raises(ExportError):
        verify_onnx(truncated, workdir, "vit")

    with pytest.raises(ParityError, match="was exported from"):  # the metadata names another model
        verify_onnx(exported["convnext"]["onnx_path"], workdir, "vit")
    stripped = onnx.load(exported["convnext"]["onnx_path"])
    del stripped.metadata_props[:]  # no metadata to go by: the numbers alone must catch it
    anonymous = str(tmp_path / "anonymous.onnx")
    onnx.save(stripped, anonymous)
    with pytest.raises(ParityError, match="outside tolerance"):
        verify_onnx(anonymous, workdir, "vit", n_real=32)


def test_failed_parity_leaves_no_file(workdir, tmp_path):
    out = str(tmp_path / "vit.onnx")
    open(out, "w").write("stale file from an earlier run")
    with pytest.raises(ParityError, match="outside tolerance"):
        export(workdir, "vit", out=out, atol=1e-12, n_real=0, log=None)
    assert not os.path.exists(out) and not _leftovers(str(tmp_path))


def test_tensorrt_check_failure_stops_export(workdir, tmp_path, monkeypatch):
    import jkd.export.trt_compat as trt_compat
    monkeypatch.setattr(trt_compat, "TRT10_SUPPORTED_OPS", trt_compat.TRT10_SUPPORTED_OPS - {"Gelu"})
    out = str(tmp_path / "vit.onnx")
    with pytest.raises(TensorRTCompatError, match=r"does not support.*Gelu"):
        export(workdir, "vit", out=out, log=None)
    assert not os.path.exists(out)


def _model(nodes, *, opset=20, inputs=None, initializers=()):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_static_tensorrt_check_rejects_known_problems():
    ok = _model([helper.make_node("Relu", ["x"], ["y"])])
    assert check_tensorrt_compat(ok) == []
    unsupported = _model([helper.make_node("Unique", ["x"], ["y"])])  # 'N' in TensorRT's operator table
    assert any("does not support" in p and "Unique" in p for p in check_tensorrt_compat(unsupported))
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    control = _model([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                     inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4]), cond])
    assert any("control flow" in p for p in check_tensorrt_compat(control))
    too_new = _model([helper.make_node("Relu", ["x"], ["y"])], opset=21)
    assert any("opset 21" in p for p in check_tensorrt_compat(too_new))
    assert check_tensorrt_compat(too_new, max_opset=24) == []  # TensorRT 10.15's ceiling
    random = _model([helper.make_node("RandomUniformLike", ["x"], ["y"])])
    assert any("random ops" in p for p in check_tensorrt_compat(random))
    axes_from_data = _model([helper.make_node("Shape", ["x"], ["s"]),
                             helper.make_node("ReduceMean", ["x", "s"], ["y"])], opset=18)
    assert any("build-time constants" in p for p in check_tensorrt_compat(axes_from_data))
    axes_init = _model([helper.make_node("ReduceMean", ["x", "a"], ["y"])], opset=18,
                       initializers=[onnx.numpy_helper.from_array(np.array([1], np.int64), "a")])
    assert check_tensorrt_compat(axes_init) == []
    double_io = _model([helper.make_node("Relu", ["x"], ["y"])],
                       inputs=[helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["B", 4])])
    assert any("DOUBLE" in p for p in check_tensorrt_compat(double_io))
    custom = _model([helper.make_node("FusedGemm", ["x"], ["y"], domain="com.microsoft")])
    assert any("custom" in p for p in check_tensorrt_compat(custom))


def test_cli_exports_benchmarks_and_reports_errors(workdir, tmp_path, capsys):
    out = str(tmp_path / "cnx.onnx")
    assert cli_main(["--workdir", workdir, "--student", "convnext", "--out", out, "--benchmark", "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert "parity onnxruntime vs JAX" in printed and "| onnxruntime | 32 |" in printed
    assert os.path.exists(out) and os.path.exists(os.path.join(workdir, "export", "latency_convnext.md"))

    assert cli_main(["--workdir", workdir]) == 2  # two students, none picked
    assert "--student" in capsys.readouterr().err
    assert cli_main(["--workdir", workdir, "--student", "resnet"]) == 2
    assert "'resnet' is not a model" in capsys.readouterr().err
    assert cli_main(["--workdir", workdir, "--student", "vit", "--dtype", "fp16"]) == 2
    assert "--dtype" in capsys.readouterr().err
    assert cli_main(["--workdir", workdir, "--student", "vit", "--opset", "12"]) == 2
    assert "--opset" in capsys.readouterr().err
    if not tensorrt_available():
        assert cli_main(["--workdir", workdir, "--student", "vit", "--format", "tensorrt"]) == 2
        assert "pip install tensorrt" in capsys.readouterr().err


def test_cli_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jkd.export", "--workdir", str(tmp_path / "missing")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--workdir" in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_out_fails_before_tracing(tmp_path, capsys):
    workdir = make_workdir(str(tmp_path / "w"), {"vit": SPECS["vit"]})
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"--out: cannot write .*a_file/m\.onnx"):
        export(workdir, out=str(blocker / "m.onnx"))
    assert cli_main(["--workdir", workdir, "--out", str(blocker / "m.onnx")]) == 2
    assert "--out: cannot write" in capsys.readouterr().err


def test_pipeline_dir_points_to_its_stage_workdirs(tmp_path):
    make_workdir(str(tmp_path / "kd_hinton"), {"vit": SPECS["vit"]}, trainer="distill")
    make_workdir(str(tmp_path / "teacher"), {"vit": SPECS["vit"]})
    expected = r"holds the workdirs \['kd_hinton', 'teacher'\] \(distilled students: .*kd_hinton\)"
    with pytest.raises(ConfigError, match=expected):
        load_student(str(tmp_path))


def test_trtexec_command():
    cmd = trtexec_command("m.onnx", "m.engine", image_shape=(224, 224, 3), batch=None, max_batch=64, fp16=True)
    assert cmd == ("trtexec --onnx=m.onnx --saveEngine=m.engine --minShapes=images:1x224x224x3 "
                   "--optShapes=images:32x224x224x3 --maxShapes=images:64x224x224x3 --fp16")
    assert trtexec_command("m.onnx", "m.engine", image_shape=(8, 8, 1), batch=4).endswith("--noTF32")


def _tensorrt_missing() -> str:
    """Why the engine test cannot run here ('' when it can)."""
    missing = [] if tensorrt_available() else ["the `tensorrt` package is not importable"]
    if shutil.which("nvidia-smi") is None or subprocess.run(["nvidia-smi"], capture_output=True).returncode != 0:
        missing.append("no NVIDIA GPU (nvidia-smi absent or failing)")
    return "; ".join(missing)


@pytest.mark.skipif(bool(_tensorrt_missing()),
                    reason=f"TensorRT engine build and parity not run: {_tensorrt_missing()}")
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_tensorrt_engine_build_and_parity(workdir, tmp_path, dtype):
    engine = str(tmp_path / f"vit_{dtype}.engine")
    result = export(workdir, "vit", format="tensorrt", dtype=dtype, out=engine, n_real=64, log=None)
    assert os.path.getsize(engine) > 0 and result["parity_tensorrt"]["ok"]
    assert open(str(tmp_path / f"vit_{dtype}.trtexec.txt")).read().count("trtexec") >= 1


@pytest.mark.parametrize("name", ["vit_s16", "convnext_t"])
def test_full_size_parity_imagenet_students(name):
    """ViT-S/16 and ConvNeXt-T at 224 px, 1000 classes: trace, TensorRT check, onnxruntime vs JAX
    (the model as trained: ConvNeXt 'auto' depthwise) at batch 1 and 2, logits of order 10."""
    spec = ModelSpec(name, 1000, 224, 3)
    params = random_params(spec)
    proto = to_onnx_model(inference_fn(export_spec(spec), params), image_shape=(224, 224, 3))
    assert check_tensorrt_compat(proto) == []
    session = ort_session(proto.SerializeToString())
    sets = [InputSet("random", random_inputs((224, 224, 3), None, b, seed=b), None, b) for b in (1, 2)]
    report = parity(ort_fn(session), jax.jit(inference_fn(spec, params)), sets)
    print(f"\n{name} @224, 1000 classes, {proto.ByteSize() / 1e6:.1f} MB: " + format_parity(report))  # pytest -s
    assert report["ok"], report
    assert max(r["max_abs_err"] / r["max_rel_err"] for r in report["rows"]) > 5  # logits are not tiny


def _fake_tensorrt(parse_errors=(), build_ok=True):
    """A stand-in for the parts of the TensorRT 10 Python API that build_engine calls, recording
    the calls: it checks the control flow (flags, profile, verbatim errors), not TensorRT itself."""
    import enum
    import types

    calls = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.15.1"

    class ILogger:
        Severity = enum.IntEnum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE", start=0)

        def __init__(self):
            pass

    class Parser:
        def __init__(self, network, logger):
            self.logger, self.num_errors = logger, len(parse_errors)

        def parse_from_file(self, path):
            calls.append(("parse", os.path.basename(path)))
            return not parse_errors

        def get_error(self, i):
            return parse_errors[i]

    class Config:
        def set_flag(self, flag): calls.append(("set_flag", flag))
        def clear_flag(self, flag): calls.append(("clear_flag", flag))
        def add_optimization_profile(self, profile): calls.append(("profile", profile.shapes))
        def set_memory_pool_limit(self, pool, size): calls.append(("workspace", size))

    class Profile:
        def set_shape(self, name, lo, opt, hi): self.shapes = (name, lo, opt, hi)

    class Builder:
        def __init__(self, logger): self.logger = logger
        def create_network(self, flags): return object()
        def create_builder_config(self): return Config()
        def create_optimization_profile(self): return Profile()

        def build_serialized_network(self, network, config):
            if build_ok:
                return b"serialized-engine"
            self.logger.log(ILogger.Severity.ERROR, "Error Code 4: out of memory (fake)")
            return None

    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, Parser
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", TF32="TF32")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return trt, calls


def test_tensorrt_build_path_with_stand_in(exported, tmp_path, monkeypatch):
    from jkd.export.errors import TensorRTError
    from jkd.export.tensorrt import build_engine

    onnx_path = exported["vit"]["onnx_path"]
    trt, calls = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    info = build_engine(onnx_path, str(tmp_path / "a.engine"), image_shape=(8, 8, 1), batch=None, fp16=True)
    assert open(tmp_path / "a.engine", "rb").read() == b"serialized-engine"
    assert ("set_flag", "FP16") in calls
    assert ("profile", ("images", (1, 8, 8, 1), (32, 8, 8, 1), (64, 8, 8, 1))) in calls
    assert info["profile"] == {"min": 1, "opt": 32, "max": 64}
    calls.clear()
    build_engine(onnx_path, str(tmp_path / "b.engine"), image_shape=(8, 8, 1), batch=4, fp16=False)
    assert ("clear_flag", "TF32") in calls and not any(c[0] == "profile" for c in calls)

    trt, _ = _fake_tensorrt(parse_errors=["In node 12 (importGelu): UNSUPPORTED_NODE: fake parser message"])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(TensorRTError, match=r"In node 12 \(importGelu\): UNSUPPORTED_NODE: fake parser message"):
        build_engine(onnx_path, str(tmp_path / "c.engine"), image_shape=(8, 8, 1), batch=None)
    trt, _ = _fake_tensorrt(build_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(TensorRTError, match="out of memory \\(fake\\)"):
        build_engine(onnx_path, str(tmp_path / "d.engine"), image_shape=(8, 8, 1), batch=None)
    trt.__version__ = "11.0.0"
    with pytest.raises(ConfigError, match="--dtype"):
        build_engine(onnx_path, str(tmp_path / "e.engine"), image_shape=(8, 8, 1), batch=None, fp16=True)


def test_deit_student_exports_the_average_of_both_heads():
    spec = ModelSpec("vit_atto4", 10, 8, 1, kwargs=(("distillation_token", True), ("num_register_tokens", 2)))
    params = random_params(spec)
    proto = to_onnx_model(inference_fn(export_spec(spec), params), image_shape=(8, 8, 1))
    assert check_tensorrt_compat(proto) == []
    x = random_inputs((8, 8, 1), None, 3, seed=0)
    got = ort_fn(ort_session(proto.SerializeToString()))(x)
    from jkd.export.student import build_model
    feats = build_model(spec, params)(x, return_features=True)
    heads_mean = (np.asarray(feats["cls_logits"]) + np.asarray(feats["dist_logits"])) / 2
    np.testing.assert_allclose(got, heads_mean, atol=1e-4, rtol=0)
    assert np.abs(np.asarray(feats["cls_logits"]) - np.asarray(feats["dist_logits"])).max() > 1e-2  # heads differ


def test_mlp_student_exports_without_dropout():
    """The MLP family (issue 14) through the model-family recipe's export step (docs/ARCHITECTURE.md):
    eval mode exports no dropout, and onnxruntime agrees with the JAX forward."""
    spec = ModelSpec("mlp_16x2", 10, 8, 1, kwargs=(("dropout_rate", 0.5), ("input_dropout_rate", 0.2)))
    params = random_params(spec)
    fn = inference_fn(export_spec(spec), params)
    proto = to_onnx_model(fn, image_shape=(8, 8, 1))
    assert check_tensorrt_compat(proto) == []
    assert not {n.op_type for n in proto.graph.node} & {"RandomUniformLike", "RandomUniform", "Bernoulli", "Dropout"}
    x = random_inputs((8, 8, 1), None, 5, seed=1)
    np.testing.assert_allclose(ort_fn(ort_session(proto.SerializeToString()))(x), np.asarray(jax.jit(fn)(x)),
                               atol=1e-4, rtol=0)
