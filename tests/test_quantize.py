"""INT8 export (issue 19) at test size: quantise -> check -> file with metadata; the refusal past
--max-accuracy-drop (no INT8 file left); flag mistakes exit 2 naming the flag; the QDQ graph passes
the static TensorRT check, which catches the Q/DQ forms TensorRT rejects; the INT8 engine build path
against the TensorRT stand-in. The tiny random-weight students of test_export (8 px digits)."""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from test_export import SPECS, _fake_tensorrt, _leftovers, make_workdir

from jkd.export import QuantizationError, export, verify_onnx
from jkd.export.__main__ import main as cli_main
from jkd.export.onnx import read_metadata
from jkd.export.quantize import DEFAULT_FLOAT_OPS
from jkd.export.tensorrt import tensorrt_available
from jkd.export.trt_compat import assert_tensorrt_compat, check_tensorrt_compat
from jkd.export.verify import InputSet, check_int8, int8_verification, real_eval_images


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(str(tmp_path_factory.mktemp("int8_wd")), {"vit": SPECS["vit"]})


@pytest.fixture(scope="module")
def quantized(workdir):
    return export(workdir, quantize="int8", calibration_images=64, calibration_seed=3, n_real=0, log=None)


def test_int8_file_written_checked_and_described(quantized, workdir):
    path = quantized["int8_onnx_path"]
    assert path.endswith("export/vit.int8.onnx") and os.path.exists(quantized["onnx_path"])
    model = onnx.load(path)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert int8_weights  # the Gemm/Conv weights are stored as int8
    meta = read_metadata(path)
    assert meta["jkd.precision"] == "int8 (QDQ)" and "jkd.parity_onnxruntime" not in meta
    calib = meta["jkd.quantization"]["calibration"]
    assert (calib["dataset"], calib["split"], calib["n"], calib["seed"]) == ("digits", "train", 64, 3)
    assert meta["jkd.quantization"]["method"] == "minmax"
    assert meta["jkd.quantization"]["float_ops"] == list(DEFAULT_FLOAT_OPS["vit"])
    check = meta["jkd.int8_check"]
    assert check["ok"] and check["n"] == 450 and check["max_accuracy_drop"] == 1.0
    assert [r["model"] for r in check["rows"]] == ["ONNX fp32 (onnxruntime)", "ONNX INT8 (onnxruntime)"]

    # The recorded numbers are the file's: recompute them with plain onnxruntime on the test digits.
    from jkd.export.student import load_student
    st = load_student(workdir, "vit")
    (pixels, labels, _), _ = real_eval_images(st.config, (8, 8, 1), st.preprocessing, 10**9)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": pixels})[0]
    assert float((logits.argmax(1) == labels).mean()) == pytest.approx(check["rows"][1]["accuracy"])
    assert check["drop_points"] == pytest.approx(100 * (check["accuracy_jax"] - check["rows"][1]["accuracy"]))
    int8_err = check["rows"][1]["max_abs_err"]
    assert 1e-3 < int8_err < 5 and check["rows"][0]["max_abs_err"] < 1e-4  # INT8 rounds; fp32 does not
    assert "--int8" in quantized["int8_trtexec_command"]
    assert quantized["int8_trtexec_command"] in open(quantized["int8_trtexec_command_path"]).read()
    assert verify_onnx(path)["ok"]  # re-checked from its metadata, against its accuracy allowance


def test_int8_graph_passes_tensorrt_check_which_catches_bad_qdq(quantized):
    model = onnx.load(quantized["int8_onnx_path"])
    assert assert_tensorrt_compat(model)["ok"]
    assert {i.domain for i in model.opset_import} <= {"", "ai.onnx"}  # no domains declared beyond ONNX's

    zero_points = [i for i in model.graph.initializer
                   if i.name in {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear"}]
    nonzero = onnx.ModelProto()
    nonzero.CopyFrom(model)
    z = next(i for i in nonzero.graph.initializer if i.name == zero_points[0].name)
    z.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(z).shape, 3, np.int8), z.name))
    assert any("non-zero Q/DQ zero points" in p for p in check_tensorrt_compat(nonzero))

    uint8 = onnx.ModelProto()
    uint8.CopyFrom(model)
    z = next(i for i in uint8.graph.initializer if i.name == zero_points[0].name)
    z.CopyFrom(numpy_helper.from_array(np.zeros(numpy_helper.to_array(z).shape, np.uint8), z.name))
    assert any("UINT8" in p for p in check_tensorrt_compat(uint8))

    bias = onnx.ModelProto()  # onnxruntime's default int32 bias quantisation
    bias.CopyFrom(model)
    bias.graph.initializer.extend([numpy_helper.from_array(np.zeros(4, np.int32), "b_q"),
                                   numpy_helper.from_array(np.float32(0.1), "b_s")])
    bias.graph.node.append(onnx.helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="bias_dq"))
    assert any("INT32" in p for p in check_tensorrt_compat(bias))


def _accuracy_set(n=100):
    labels = np.arange(n) % 10
    return InputSet("synthetic", np.arange(n, dtype=np.float32)[:, None], labels, 10)


def _predicting(labels, wrong):
    """images -> logits predicting labels[i] for image i, except the first `wrong` images (shifted by one)."""
    def fn(images):
        idx = images[:, 0].astype(int)
        preds = np.where(idx < wrong, (labels[idx] + 1) % 10, labels[idx])
        return np.eye(10, dtype=np.float32)[preds] * 5
    return fn


def test_refusal_threshold_is_points_of_accuracy_vs_jax():
    test = _accuracy_set()
    jax_fn = _predicting(test.labels, wrong=0)  # 100% accurate
    two_wrong = _predicting(test.labels, wrong=2)  # 98%: a 2.0-point drop
    report = int8_verification({"fp32": jax_fn, "int8": two_wrong}, jax_fn, test, max_accuracy_drop=2.0)
    assert report["drop_points"] == pytest.approx(2.0) and report["ok"]
    check_int8(report)
    report = int8_verification({"fp32": jax_fn, "int8": two_wrong}, jax_fn, test, max_accuracy_drop=1.9)
    assert not report["ok"]
    with pytest.raises(QuantizationError, match=r"(?s)int8 .* 98\.00%.*98/100.*REFUSED"):
        check_int8(report)
    nan = int8_verification({"int8": lambda x: np.full((len(x), 10), np.nan, np.float32)}, jax_fn, test,
                            max_accuracy_drop=100.0)
    assert not nan["ok"]  # non-finite logits fail whatever the threshold


def test_refused_int8_leaves_no_file_and_exits_1(workdir, tmp_path, capsys):
    out = str(tmp_path / "vit.onnx")
    stale = str(tmp_path / "vit.int8.onnx")
    open(stale, "w").write("INT8 file from an earlier run")
    # Any real drop is above -100 points, so a correct check refuses; a check that never refuses,
    # or compares the wrong way, writes the file and fails this test.
    assert cli_main(["--workdir", workdir, "--out", out, "--quantize", "int8", "--calibration-images", "32",
                     "--max-accuracy-drop", "-100"]) == 1
    err = capsys.readouterr().err
    assert "no INT8 file written" in err and "INT8 check on digits test split" in err and "REFUSED" in err
    assert not os.path.exists(stale) and not _leftovers(str(tmp_path))
    assert os.path.exists(out)  # the verified fp32 file it was made from stays


@pytest.mark.parametrize("flags, named", [
    (["--calibration-images", "0"], "--calibration-images"),
    (["--calibration-images", "100000"], "--calibration-images"),
    (["--max-accuracy-drop", "nan"], "--max-accuracy-drop"),
    (["--float-ops", "LayerNormalization,Gelu"], "--float-ops"),
    (["--dtype", "fp16"], "--dtype: --quantize int8"),
])
def test_bad_int8_flags_exit_2_naming_the_flag(workdir, capsys, flags, named):
    assert cli_main(["--workdir", workdir, "--quantize", "int8", *flags]) == 2
    assert named in capsys.readouterr().err


def test_unknown_calibration_method_is_refused_by_the_parser(workdir, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--workdir", workdir, "--quantize", "int8", "--calibration-method", "kl"])
    assert e.value.code == 2 and "--calibration-method" in capsys.readouterr().err


def test_int8_engine_build_sets_int8_on_tensorrt_10_only(quantized, tmp_path, monkeypatch, capsys):
    from jkd.export.tensorrt import build_engine

    trt, calls = _fake_tensorrt()
    trt.BuilderFlag.INT8 = "INT8"
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    info = build_engine(quantized["int8_onnx_path"], str(tmp_path / "a.engine"), image_shape=(8, 8, 1), batch=None,
                        int8=True)
    assert ("parse", "vit.int8.onnx") in calls and ("set_flag", "INT8") in calls and ("clear_flag", "TF32") in calls
    assert info["precision"].startswith("int8, explicit Q/DQ (BuilderFlag.INT8)")
    calls.clear()
    trt.__version__ = "11.0.0"  # TensorRT 11 removed BuilderFlag.INT8: Q/DQ alone selects int8
    build_engine(quantized["int8_onnx_path"], str(tmp_path / "b.engine"), image_shape=(8, 8, 1), batch=None, int8=True)
    assert ("set_flag", "INT8") not in calls
    if not tensorrt_available():
        monkeypatch.delitem(sys.modules, "tensorrt")
        assert cli_main(["--workdir", quantized["workdir"], "--quantize", "int8", "--format", "tensorrt"]) == 2
        assert "pip install tensorrt" in capsys.readouterr().err  # the same install message as fp32
