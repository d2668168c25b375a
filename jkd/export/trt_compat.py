"""Static TensorRT-compatibility check of an ONNX graph: ops and opset against TensorRT 10's parser.

Runs on every export (no TensorRT needed), so a graph TensorRT would reject fails here, on the CPU
machine that exported it, rather than later on the GPU box.

The table is the "Y" rows of onnx-tensorrt's docs/operators.md for TensorRT 10.15 (the latest 10.x
table; its header: "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset
24"). TensorRT 10.0's table covers opsets 9 to 20, so the default ceiling is 20: a graph that passes
with it parses on every TensorRT 10.x. Ops added late in 10.x (Attention 10.14; RMSNormalization,
RotaryEmbedding, TensorScatter 10.15) come from opsets 23-24 and so are excluded by that ceiling.

Beyond the table, the check refuses what is legal for TensorRT but wrong for these students:
  * control flow (If, Loop, Scan) and ops with data-dependent output shapes (NonZero,
    NonMaxSuppression): the known trap is DINOv3's RoPE `If`/`Tile` subgraph, where TensorRT
    diverged from onnxruntime. A ViT or ConvNeXt forward has no data-dependent control flow, so
    any such node means something unintended was traced;
  * random ops (RandomNormal, Bernoulli, ...): dropout or stochastic depth leaked into eval mode;
  * non-constant `axes`/`K` inputs where the table requires an initializer or constant;
  * QDQ (INT8) graphs, checked against the table's restrictions and TensorRT's explicit quantisation:
    QuantizeLinear/DequantizeLinear with constant scales and zero points, zero points 0 and int8
    (TensorRT quantises symmetrically; a missing zero point means uint8 in ONNX), quantised
    tensors int8/fp8/int4 (an int32 bias DequantizeLinear is refused), and per-channel `axis`
    needing opset >= 13.
"""
from __future__ import annotations

import collections

import numpy as np
import onnx

from jkd.export.errors import TensorRTCompatError

TRT_MIN_OPSET = 9
TRT_MAX_OPSET = 20  # TensorRT 10.0 parses opsets 9-20; 10.15 parses 9-24 (pass max_opset=24 for it)

# onnx-tensorrt docs/operators.md, TensorRT 10.15, rows marked Y.
TRT10_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN
RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub
Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Supported by the parser, refused here (see module docstring).
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
DATA_DEPENDENT_SHAPE_OPS = frozenset({"NonZero", "NonMaxSuppression"})
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Bernoulli", "Multinomial"})

# op -> index of the input that TensorRT needs as a build-time constant (when the input is present).
CONSTANT_INPUTS = {
    **{op: 1 for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                        "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")},
    "Squeeze": 1, "Unsqueeze": 1, "TopK": 1, "CumSum": 1, "OneHot": 1,
}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# onnx-tensorrt docs/operators.md (10.x): DequantizeLinear takes INT8, FP8, INT4; both need zero point 0.
QDQ_QUANTIZED_DTYPES = {onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.INT4}

IO_DTYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
             onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.BOOL, onnx.TensorProto.UINT8}


def _nodes(graph: onnx.GraphProto):
    """All nodes of a graph and of its subgraphs (If branches, Loop bodies), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from _nodes(sub)


def check_tensorrt_compat(model: onnx.ModelProto, *, max_opset: int = TRT_MAX_OPSET) -> list[str]:
    """Problems TensorRT 10's ONNX parser would have with `model` (empty list: none found).

    Checks the default-domain opset against [TRT_MIN_OPSET, max_opset], every op (including those in
    model-local functions and subgraphs) against TRT10_SUPPORTED_OPS, refuses control flow, random
    and data-dependent-shape ops, non-constant `axes`/`K` inputs and graph inputs/outputs of types
    TensorRT cannot bind.
    """
    problems = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if not TRT_MIN_OPSET <= imp.version <= max_opset:
                fix = min(max(imp.version, TRT_MIN_OPSET), max_opset)
                problems.append(f"opset {imp.version} is outside the range TensorRT 10 parses "
                                f"({TRT_MIN_OPSET}-{max_opset}); export with --opset {fix}")
        else:
            problems.append(f"custom op domain {imp.domain!r} (version {imp.version}) needs a TensorRT plugin")

    graphs = [("graph", model.graph)] + [(f"function {f.name}", f) for f in model.functions]
    local_functions = {(f.domain, f.name) for f in model.functions}
    bad = collections.defaultdict(list)  # reason -> ['Op (node name)', ...]
    for where, graph in graphs:
        # Inputs TensorRT can treat as build-time constants: initializers and Constant outputs.
        constants = {init.name for init in getattr(graph, "initializer", [])}
        for node in _nodes(graph):
            if node.op_type == "Constant":
                constants.update(node.output)
        for node in _nodes(graph):
            label = f"{node.op_type} ({node.name or 'unnamed'}, {where})"
            if (node.domain, node.op_type) in local_functions:
                continue  # checked through its body
            if node.domain not in ("", "ai.onnx"):
                bad[f"custom-domain ops (need TensorRT plugins)"].append(f"{node.domain}::{label}")
            elif node.op_type in CONTROL_FLOW_OPS:
                bad["data-dependent control flow (TensorRT diverged from onnxruntime on such "
                    "If/Tile subgraphs in DINOv3; a ViT/ConvNeXt forward has none)"].append(label)
            elif node.op_type in DATA_DEPENDENT_SHAPE_OPS:
                bad["ops with data-dependent output shapes"].append(label)
            elif node.op_type in RANDOM_OPS:
                bad["random ops in an inference graph (dropout or stochastic depth was traced)"].append(label)
            elif node.op_type not in TRT10_SUPPORTED_OPS:
                bad["ops TensorRT 10's ONNX parser does not support (onnx-tensorrt docs/operators.md)"].append(label)
            idx = CONSTANT_INPUTS.get(node.op_type)
            if idx is not None and len(node.input) > idx and node.input[idx] and node.input[idx] not in constants:
                bad["inputs TensorRT needs as build-time constants (initializer or Constant)"].append(
                    f"{label} input {idx} {node.input[idx]!r}")
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    for reason, item in _qdq_problems(model, opset):
        bad[reason].append(item)
    for reason, items in bad.items():
        shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        problems.append(f"{reason}: {shown}")

    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            dtype = v.type.tensor_type.elem_type
            if dtype not in IO_DTYPES:
                problems.append(f"graph {kind} {v.name!r} has type {onnx.TensorProto.DataType.Name(dtype)}, "
                                f"which TensorRT cannot bind")
    return problems


def _qdq_problems(model: onnx.ModelProto, opset: int):
    """(reason, 'Op (node) ...') for every QuantizeLinear/DequantizeLinear TensorRT's explicit
    quantisation would reject (the first reason per node): non-constant scale/zero point, a
    non-int8 or non-zero zero point, a missing QuantizeLinear zero point (uint8 output), a
    DequantizeLinear of a non-int8 constant (e.g. an int32 bias)."""
    graph = model.graph
    values = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            values[node.output[0]] = node.attribute[0].t
    bad_type = "Q/DQ of a type TensorRT does not quantise to (int8, fp8, int4; e.g. an int32 bias or uint8 activations)"
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in QDQ_OPS:
            continue
        label = f"{node.op_type} ({node.name or 'unnamed'})"
        scale, zero = node.input[1], (node.input[2] if len(node.input) > 2 else "")
        data = values.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if scale not in values or (zero and zero not in values):
            yield "Q/DQ scales and zero points TensorRT needs as build-time constants", label
        elif zero and values[zero].data_type not in QDQ_QUANTIZED_DTYPES:
            yield bad_type, f"{label} {onnx.TensorProto.DataType.Name(values[zero].data_type)}"
        elif data is not None and data.data_type not in QDQ_QUANTIZED_DTYPES:
            yield bad_type, f"{label} {onnx.TensorProto.DataType.Name(data.data_type)}"
        elif zero and np.any(onnx.numpy_helper.to_array(values[zero]).astype(np.float32) != 0):
            yield "non-zero Q/DQ zero points (TensorRT quantises symmetrically)", label
        elif not zero and node.op_type == "QuantizeLinear":
            yield "QuantizeLinear without a zero point (uint8 output in ONNX; TensorRT needs int8)", label
        elif opset < 13 and np.prod(values[scale].dims) > 1:
            yield "per-channel QuantizeLinear/DequantizeLinear (axis) need opset >= 13", label


def assert_tensorrt_compat(model: onnx.ModelProto, *, max_opset: int = TRT_MAX_OPSET) -> dict:
    """Raise TensorRTCompatError listing every problem; else return a summary for the report."""
    problems = check_tensorrt_compat(model, max_opset=max_opset)
    if problems:
        raise TensorRTCompatError("the ONNX graph would not parse (or not safely) in TensorRT 10:\n  - "
                                  + "\n  - ".join(problems))
    ops = collections.Counter(n.op_type for _, g in [("", model.graph)] for n in _nodes(g))
    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    return {"ok": True, "opset": opset, "opset_range": [TRT_MIN_OPSET, max_opset],
            "op_counts": dict(sorted(ops.items()))}
