"""The op registry's schemas, shape rules and cost rules.

Schemas are checked against onnx's own op schemas; every shape rule against the outputs
onnxruntime produces for a one-node model; costs against hand counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.defs
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from irtool.ir import DType, Graph, IrtoolError, TensorType, get_op
from irtool.ir.registry import all_ops, lookup
from irtool.ir.shapes import infer_shapes

RNG = np.random.default_rng(0)
F32 = np.float32


# -- schemas -------------------------------------------------------------------------------
def _port(p) -> str:
    return p.name + {0: "", 1: "?", 2: "*"}[int(p.option.value)]


def _onnx_default(a):
    if a.required:
        return "required"
    if not a.default_value.name:
        return None
    value = helper.get_attribute_value(a.default_value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


@pytest.mark.parametrize("opdef", all_ops(), ids=lambda d: d.name)
def test_schema_matches_onnx(opdef):
    schema = onnx.defs.get_schema(opdef.name, 20 if opdef.name == "Gelu" else 18)
    assert opdef.inputs == tuple(map(_port, schema.inputs))
    assert opdef.outputs == tuple(map(_port, schema.outputs))
    assert set(opdef.attrs) == set(schema.attributes)
    for key, attr in schema.attributes.items():
        ours = "required" if opdef.attrs[key].required else opdef.attrs[key].default
        expected = _onnx_default(attr)
        if isinstance(expected, float):
            assert ours == pytest.approx(expected, rel=1e-6), key
        else:
            assert ours == expected, key
    assert opdef.label


def test_registry_covers_the_zoo_ops_and_labels_the_weighted_ones():
    zoo_ops = (
        "Conv BatchNormalization Relu Clip HardSigmoid HardSwish Sigmoid Mul Add Sub Div Pow Sqrt Erf "
        "Tanh MaxPool AveragePool GlobalAveragePool Flatten Gemm MatMul Reshape Transpose Concat Split "
        "Slice Gather Shape Unsqueeze Squeeze Softmax LayerNormalization ReduceMean Resize LSTM Constant "
        "ConstantOfShape Expand Cast Identity Dropout Equal Where Range Neg Exp Log Reciprocal Tile Pad "
        "Max Min ConvTranspose GRU Gelu LeakyRelu Elu Selu PRelu Softplus Mish GroupNormalization "
        "InstanceNormalization GlobalMaxPool ReduceSum ReduceMax ReduceMin ReduceL2 Einsum QuantizeLinear "
        "DequantizeLinear"
    ).split()
    assert [op for op in zoo_ops if lookup(op) is None] == []
    labels = {op: get_op(op).label for op in ("Conv", "Gemm", "BatchNormalization", "LayerNormalization", "Relu")}
    assert labels == {"Conv": "conv", "Gemm": "linear", "BatchNormalization": "bn", "LayerNormalization": "ln", "Relu": "act"}
    with_cost = sorted(d.name for d in all_ops() if d.cost is not None)
    assert with_cost == ["Conv", "ConvTranspose", "Einsum", "GRU", "Gemm", "LSTM", "MatMul", "RNN"]


# -- shape rules against onnxruntime ------------------------------------------------------
@dataclass(frozen=True)
class In:
    """A graph input of a one-node model (its data is random)."""

    shape: tuple[int, ...]
    dtype: type = F32


@dataclass
class Case:
    op: str
    inputs: list  # In, np.ndarray (a constant) or None (an absent optional input)
    attrs: dict
    outputs: int = 1
    opset: int = 18
    unknown_dims: int = 0  # dims the rule may leave unknown (data-dependent shapes)
    runtime: bool = True  # False: onnxruntime lacks the kernel; onnx's shape inference decides


def _data(spec: In) -> np.ndarray:
    if spec.dtype == np.bool_:
        return RNG.random(spec.shape) > 0.5
    if np.issubdtype(spec.dtype, np.integer):
        return RNG.integers(1, 4, spec.shape).astype(spec.dtype)
    return RNG.standard_normal(spec.shape).astype(spec.dtype)


def _onnx_attr(value):
    return numpy_helper.from_array(value) if isinstance(value, np.ndarray) else value


def _reference(case: Case) -> list[tuple[np.dtype, tuple[int, ...]]]:
    """(dtype, shape) of each output: onnxruntime's results, or onnx's strict shape inference."""
    names, inits, infos, feeds = [], [], [], {}
    for i, spec in enumerate(case.inputs):
        name = "" if spec is None else f"in{i}"
        names.append(name)
        if isinstance(spec, np.ndarray):
            inits.append(numpy_helper.from_array(spec, name))
        elif isinstance(spec, In):
            infos.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)), spec.shape))
            feeds[name] = _data(spec)
    outs = [f"out{i}" for i in range(case.outputs)]
    attrs = {k: _onnx_attr(v) for k, v in case.attrs.items()}
    node = helper.make_node(case.op, names, outs, **attrs)
    graph = helper.make_graph([node], "g", infos, [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 10
    if case.runtime:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return [(a.dtype, a.shape) for a in session.run(None, feeds)]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output
    return [
        (helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type), tuple(d.dim_value for d in o.type.tensor_type.shape.dim))
        for o in inferred
    ]


def _infer(case: Case) -> list[TensorType]:
    graph = Graph()
    values = []
    for i, spec in enumerate(case.inputs):
        if spec is None:
            values.append(None)
        elif isinstance(spec, np.ndarray):
            values.append(graph.add_constant(f"in{i}", spec))
        else:
            values.append(graph.add_input(f"in{i}", TensorType(DType.from_numpy(spec.dtype), spec.shape)))
    node = graph.add_node(case.op, values, case.attrs, outputs=case.outputs, name="n")
    infer_shapes(graph)
    return [v.type for v in node.outputs]


def i64(*values):
    return np.array(values, dtype=np.int64)


def f32(*values):
    return np.array(values, dtype=F32)


X4 = In((2, 3, 8, 9))
W3 = RNG.standard_normal((6, 3, 3, 3)).astype(F32)
LSTM_W = RNG.standard_normal((2, 4 * 5, 4)).astype(F32)
LSTM_R = RNG.standard_normal((2, 4 * 5, 5)).astype(F32)

CASES = {
    # convolutions
    "conv": Case("Conv", [X4, W3, f32(*range(6))], {"pads": [1, 1, 1, 1]}),
    "conv-stride-dilation": Case("Conv", [In((1, 3, 17, 16)), W3], {"strides": [2, 3], "dilations": [2, 1], "pads": [0, 1, 2, 0]}),
    "conv-depthwise": Case("Conv", [In((1, 4, 9, 9)), np.ones((8, 1, 3, 3), F32)], {"group": 4, "kernel_shape": [3, 3]}),
    "conv-same-upper": Case("Conv", [In((1, 3, 15, 14)), W3], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "conv-valid": Case("Conv", [In((1, 3, 15, 14)), W3], {"auto_pad": "VALID", "strides": [2, 2]}),
    "conv-1d": Case("Conv", [In((2, 3, 20)), np.ones((4, 3, 5), F32)], {"strides": [3]}),
    "deconv": Case("ConvTranspose", [In((1, 4, 5, 6)), np.ones((4, 3, 3, 3), F32)], {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 0]}),
    "deconv-group": Case("ConvTranspose", [In((1, 4, 5, 6)), np.ones((4, 2, 2, 3), F32)], {"group": 2, "dilations": [2, 1]}),
    "deconv-output-shape": Case("ConvTranspose", [In((1, 4, 5, 6)), np.ones((4, 3, 3, 3), F32)], {"strides": [2, 2], "output_shape": [10, 12]}),
    "deconv-same": Case("ConvTranspose", [In((1, 4, 5, 6)), np.ones((4, 3, 3, 3), F32)], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    # linear layers and matmuls
    "gemm": Case("Gemm", [In((4, 7)), np.ones((5, 7), F32), np.ones(5, F32)], {"transB": 1}),
    "gemm-transA": Case("Gemm", [In((7, 4)), In((7, 5))], {"transA": 1}),
    "matmul": Case("MatMul", [In((3, 4)), In((4, 5))], {}),
    "matmul-batched": Case("MatMul", [In((2, 1, 5, 4)), In((3, 4, 6))], {}),
    "matmul-vector-left": Case("MatMul", [In((4,)), In((2, 4, 6))], {}),
    "matmul-vector-right": Case("MatMul", [In((2, 3, 4)), In((4,))], {}),
    "einsum": Case("Einsum", [In((2, 3, 4)), In((2, 4, 5))], {"equation": "bij,bjk->bik"}),
    "einsum-implicit": Case("Einsum", [In((3, 4)), In((4, 5))], {"equation": "ij,jk"}),
    # pools
    "maxpool": Case("MaxPool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "maxpool-indices": Case("MaxPool", [X4], {"kernel_shape": [2, 2]}, outputs=2),
    "maxpool-ceil": Case("MaxPool", [In((1, 2, 10, 11))], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "maxpool-ceil-padded": Case("MaxPool", [In((1, 2, 6, 6))], {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "maxpool-dilated": Case("MaxPool", [In((1, 2, 12, 12))], {"kernel_shape": [3, 3], "dilations": [2, 2]}),
    "avgpool-ceil": Case("AveragePool", [In((1, 2, 7, 8))], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "avgpool-same-lower": Case("AveragePool", [In((1, 2, 7, 8))], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "lppool": Case("LpPool", [X4], {"kernel_shape": [2, 3], "strides": [1, 2]}),
    "global-avgpool": Case("GlobalAveragePool", [X4], {}),
    "global-maxpool": Case("GlobalMaxPool", [X4], {}),
    "global-lppool": Case("GlobalLpPool", [X4], {}),
    # normalisation, dropout
    "batchnorm": Case("BatchNormalization", [X4, f32(1, 2, 3), f32(0, 0, 0), f32(0, 1, 0), f32(1, 1, 1)], {}),
    "instancenorm": Case("InstanceNormalization", [X4, f32(1, 2, 3), f32(0, 0, 0)], {}),
    "layernorm-stats": Case("LayerNormalization", [In((2, 5, 6)), np.ones((5, 6), F32)], {"axis": -2}, outputs=3),
    "groupnorm": Case("GroupNormalization", [In((2, 4, 5, 5)), np.ones(4, F32), np.zeros(4, F32)], {"num_groups": 2}, opset=21),
    "lrn": Case("LRN", [X4], {"size": 3}),
    "dropout-mask": Case("Dropout", [X4], {}, outputs=2),
    # recurrent layers
    "lstm-bidirectional": Case("LSTM", [In((7, 3, 4)), LSTM_W, LSTM_R], {"hidden_size": 5, "direction": "bidirectional"}, outputs=3),
    "lstm-batch-first": Case("LSTM", [In((3, 7, 4)), LSTM_W[:1], LSTM_R[:1]], {"hidden_size": 5, "layout": 1}, outputs=3, runtime=False),
    "gru": Case("GRU", [In((7, 3, 4)), np.ones((1, 15, 4), F32), np.ones((1, 15, 5), F32)], {"hidden_size": 5}, outputs=2),
    "rnn": Case("RNN", [In((7, 3, 4)), np.ones((1, 5, 4), F32), np.ones((1, 5, 5), F32)], {"hidden_size": 5}, outputs=2),
    # elementwise
    "add-broadcast": Case("Add", [In((2, 1, 4)), In((3, 1))], {}),
    "pow": Case("Pow", [In((2, 3)), In((3,))], {}),
    "mod": Case("Mod", [In((2, 3), np.int64), i64(2, 3, 4)], {}),
    "max-variadic": Case("Max", [In((2, 1)), In((3,)), In((4, 1, 1))], {}),
    "mean": Case("Mean", [In((2, 3)), In((3,))], {}),
    "equal": Case("Equal", [In((2, 3), np.int64), In((3,), np.int64)], {}),
    "and": Case("And", [In((2, 3), np.bool_), In((1, 3), np.bool_)], {}),
    "where": Case("Where", [In((3, 1), np.bool_), In((2, 1, 4)), In((4,))], {}),
    "prelu": Case("PRelu", [X4, np.ones((3, 1, 1), F32)], {}),
    "clip": Case("Clip", [X4, np.array(0, F32), np.array(6, F32)], {}),
    "not": Case("Not", [In((2, 3), np.bool_)], {}),
    "gelu": Case("Gelu", [X4], {"approximate": "tanh"}, opset=20),
    # reshaping
    "reshape": Case("Reshape", [X4, i64(0, -1, 9)], {}),
    "reshape-allowzero": Case("Reshape", [In((2, 0, 3)), i64(3, 0, 4)], {"allowzero": 1}),
    "flatten": Case("Flatten", [X4], {"axis": 2}),
    "flatten-0": Case("Flatten", [X4], {"axis": 0}),
    "flatten-negative": Case("Flatten", [X4], {"axis": -1}),
    "transpose": Case("Transpose", [X4], {"perm": [0, 2, 3, 1]}),
    "transpose-default": Case("Transpose", [X4], {}),
    "squeeze": Case("Squeeze", [In((1, 3, 1, 4)), i64(-2)], {}),
    "squeeze-all": Case("Squeeze", [In((1, 3, 1, 4))], {}),
    "unsqueeze": Case("Unsqueeze", [In((3, 4)), i64(0, -1)], {}),
    "depth-to-space": Case("DepthToSpace", [In((1, 8, 2, 3))], {"blocksize": 2}),
    "space-to-depth": Case("SpaceToDepth", [In((1, 2, 4, 6))], {"blocksize": 2}),
    # joining, slicing, indexing
    "concat": Case("Concat", [In((2, 3, 4)), In((2, 5, 4)), In((2, 1, 4))], {"axis": -2}),
    "split-sizes": Case("Split", [X4, i64(2, 3, 4)], {"axis": 3}, outputs=3),
    "split-num-outputs": Case("Split", [In((2, 7))], {"axis": 1, "num_outputs": 3}, outputs=3),
    "slice": Case("Slice", [X4, i64(1, -100), i64(100, -2), i64(2, 3)], {}),
    "slice-steps": Case("Slice", [X4, i64(-1, 7), i64(-100, 0), i64(3, 2), i64(-2, -3)], {}),
    "gather": Case("Gather", [X4, i64(2, 0)], {"axis": 1}),
    "gather-scalar": Case("Gather", [X4, np.array(1, np.int64)], {"axis": 0}),
    "gather-elements": Case("GatherElements", [In((3, 4)), np.zeros((2, 4), np.int64)], {"axis": 0}),
    "scatter-elements": Case("ScatterElements", [In((3, 4)), np.zeros((2, 4), np.int64), np.ones((2, 4), F32)], {}),
    "scatter-nd": Case("ScatterND", [In((3, 4)), i64(1, 0).reshape(2, 1), np.ones((2, 4), F32)], {}),
    "tile": Case("Tile", [In((2, 3)), i64(3, 1)], {}),
    "expand": Case("Expand", [In((3, 1)), i64(2, 1, 4)], {}),
    "pad": Case("Pad", [X4, i64(0, 1, 2, 3, 0, 0, 1, 0)], {}),
    "pad-axes": Case("Pad", [X4, i64(1, 2, 3, 1), None, i64(-1, 1)], {"mode": "reflect"}),
    "resize-scales": Case("Resize", [X4, None, f32(1, 1, 2, 1.5)], {}),
    "resize-sizes": Case("Resize", [X4, None, None, i64(2, 3, 5, 20)], {"mode": "linear"}),
    "resize-not-larger": Case("Resize", [X4, None, None, i64(4, 7)], {"axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}),
    "resize-not-smaller": Case("Resize", [X4, None, None, i64(4, 7)], {"axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller"}),
    # shapes, constants, casts
    "shape": Case("Shape", [X4], {}),
    "shape-start-end": Case("Shape", [X4], {"start": 1, "end": -1}),
    "size": Case("Size", [X4], {}),
    "nonzero": Case("NonZero", [In((3, 4), np.int64)], {}, unknown_dims=1),
    "range": Case("Range", [np.array(2, np.int64), np.array(11, np.int64), np.array(3, np.int64)], {}),
    "range-float": Case("Range", [np.array(1, F32), np.array(-2, F32), np.array(-0.7, F32)], {}),
    "constant": Case("Constant", [], {"value": np.ones((2, 3), np.int32)}),
    "constant-ints": Case("Constant", [], {"value_ints": [1, 2, 3]}),
    "constant-float": Case("Constant", [], {"value_float": 2.5}),
    "constant-of-shape": Case("ConstantOfShape", [i64(2, 3)], {"value": np.array([7], np.int32)}),
    "cast": Case("Cast", [X4], {"to": onnx.TensorProto.INT8}),
    "cast-like": Case("CastLike", [X4, In((1,), np.float16)], {}),
    "identity": Case("Identity", [X4], {}),
    # reductions, softmax, sorting
    "reduce-keepdims": Case("ReduceMean", [X4, i64(1, -1)], {}),
    "reduce-dropdims": Case("ReduceMax", [X4, i64(2)], {"keepdims": 0}),
    "reduce-all": Case("ReduceSum", [X4], {"keepdims": 0}),
    "reduce-noop": Case("ReduceL2", [X4], {"noop_with_empty_axes": 1}),
    "argmax": Case("ArgMax", [X4], {"axis": 2, "keepdims": 0}),
    "topk": Case("TopK", [X4, i64(3)], {"axis": 2}, outputs=2),
    "softmax": Case("Softmax", [X4], {"axis": 1}),
    "cumsum": Case("CumSum", [X4, np.array(1, np.int64)], {}),
    "trilu": Case("Trilu", [X4], {}),
    # quantisation
    "quantize": Case("QuantizeLinear", [X4, np.array(0.1, F32)], {}),
    "quantize-per-channel": Case("QuantizeLinear", [X4, f32(0.1, 0.2, 0.3), np.zeros(3, np.int8)], {"axis": 1}),
    "dequantize": Case("DequantizeLinear", [In((2, 3), np.int8), np.array(0.5, F32), np.array(1, np.int8)], {}),
    "dynamic-quantize": Case("DynamicQuantizeLinear", [X4], {}, outputs=3),
}
_ONE_INPUT = {
    **{op: {} for op in "Relu Sigmoid Tanh Softplus Softsign Mish HardSwish HardSigmoid LeakyRelu Elu Celu".split()},
    **{op: {} for op in "ThresholdedRelu Selu Neg Abs Sqrt Exp Log Erf Reciprocal Floor Ceil Round Sign".split()},
    **{op: {} for op in "Sin Cos LogSoftmax Hardmax".split()},
    **{op: {} for op in "ReduceMin ReduceProd ReduceL1 ReduceLogSum ReduceLogSumExp ReduceSumSquare ArgMin".split()},
}
CASES.update({op.lower(): Case(op, [X4], attrs) for op, attrs in _ONE_INPUT.items()})
CASES.update({op.lower(): Case(op, [In((2, 1, 4)), In((3, 1))], {}) for op in "Sub Mul Div Min Sum".split()})
CASES.update({op.lower(): Case(op, [In((2, 3)), In((3,))], {}) for op in "Less Greater LessOrEqual GreaterOrEqual".split()})
CASES.update({op.lower(): Case(op, [In((2, 3), np.bool_), In((3,), np.bool_)], {}) for op in "Or Xor".split()})


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_shape_rule_matches_onnxruntime(case):
    expected = _reference(case)
    got = _infer(case)
    assert len(got) == len(expected)
    for ours, (dtype, shape) in zip(got, expected):
        assert ours is not None
        assert ours.dtype == DType.from_numpy(dtype)
        assert len(ours.shape) == len(shape)
        unknown = [i for i, d in enumerate(ours.shape) if d is None]
        assert len(unknown) <= case.unknown_dims
        assert [d for i, d in enumerate(ours.shape) if i not in unknown] == [
            d for i, d in enumerate(shape) if i not in unknown
        ]


def test_every_op_has_a_shape_rule_tested_against_onnxruntime():
    tested = {case.op for case in CASES.values()}
    assert sorted(d.name for d in all_ops() if d.shape is None) == []
    assert sorted(d.name for d in all_ops() if d.name not in tested) == []


# -- symbolic and unknown dims ------------------------------------------------------------
def _node(op, inputs, attrs=None, outputs=1, source=""):
    graph = Graph()
    values = []
    for i, x in enumerate(inputs):
        if x is None or isinstance(x, np.ndarray):
            values.append(None if x is None else graph.add_constant(f"c{i}", x))
        else:
            values.append(graph.add_input(f"x{i}", TensorType(DType.float32, x)))
    node = graph.add_node(op, values, attrs or {}, outputs=outputs, name="n", source=source)
    return graph, node


def _shapes(op, inputs, attrs=None, outputs=1):
    graph, node = _node(op, inputs, attrs, outputs)
    infer_shapes(graph)
    return [v.type.shape for v in node.outputs]


def test_symbolic_dims_pass_through_where_they_are_not_computed_on():
    w = np.ones((8, 3, 3, 3), F32)
    assert _shapes("Conv", [("N", 3, "H", 16), w], {"pads": [1, 1, 1, 1]}) == [("N", 8, None, 16)]
    assert _shapes("Add", [("N", 1, 4), (3, 1)]) == [("N", 3, 4)]
    assert _shapes("Add", [("N", 3), ("M", 3)]) == [(None, 3)]
    assert _shapes("Flatten", [("N", 512, 1, 1)]) == [("N", 512)]
    assert _shapes("Reshape", [("N", 4, 6), i64(0, -1)]) == [("N", 24)]
    assert _shapes("Reshape", [("N", 4, "S"), i64(-1, 4)]) == [(None, 4)]
    assert _shapes("Transpose", [("N", "S", 8)], {"perm": [1, 0, 2]}) == [("S", "N", 8)]
    assert _shapes("Slice", [("N", 8), i64(0, 2), i64(2**63 - 1, 6), i64(0, 1)]) == [("N", 4)]
    assert _shapes("Concat", [("N", 2), ("N", 3)], {"axis": 1}) == [("N", 5)]
    assert _shapes("MatMul", [("B", 4, 5), (5, 7)]) == [("B", 4, 7)]


def test_unknown_constant_operands_give_unknown_dims_of_the_right_rank():
    graph = Graph()
    x = graph.add_input("x", TensorType(DType.float32, (2, 3, 4)))
    target = graph.add_input("target", TensorType(DType.int64, (2,)))
    node = graph.add_node("Reshape", [x, target], name="r")
    infer_shapes(graph)
    assert node.outputs[0].type == TensorType(DType.float32, (None, None))


# -- inconsistent inputs ------------------------------------------------------------------
@pytest.mark.parametrize(
    "op, inputs, attrs, message",
    [
        ("Conv", [(1, 32, 8, 8), np.ones((16, 64, 3, 3), F32)], {}, "input has 32 channels, weight expects 64 (group=1)"),
        ("Conv", [(1, 32, 8, 8), np.ones((32, 1, 3, 3), F32)], {"group": 16}, "input has 32 channels, weight expects 16 (group=16)"),
        ("Conv", [(1, 3, 8, 8), np.ones((4, 3, 3, 3), F32), np.ones(5, F32)], {}, "bias has 5 values for 4 output channels"),
        ("Gemm", [(1, 1024), np.ones((10, 2048), F32)], {"transB": 1}, "A has 1024 features, B expects 2048 (transB=1)"),
        ("MatMul", [(2, 3, 4), (5, 6)], {}, "A 2x3x4 has 4 columns, B 5x6 has 5 rows"),
        ("Add", [(1, 32, 8, 8), (1, 64, 8, 8)], {}, "cannot broadcast shapes 1x32x8x8 and 1x64x8x8"),
        ("Concat", [(1, 3, 8), (1, 3, 9)], {"axis": 1}, "inputs 1x3x8, 1x3x9 differ outside the concat axis 1"),
        ("Reshape", [(1, 1024, 1, 1), i64(1, 2048)], {}, "cannot reshape 1x1024x1x1 (1024 elements) to 1x2048"),
        ("Reshape", [(1, 1000), i64(-1, 3)], {}, "cannot reshape 1x1000 to -1x3"),
        ("BatchNormalization", [(1, 32, 4, 4), *[np.ones(64, F32)] * 4], {}, "input has 32 channels, scale has 64"),
        ("Split", [(4, 10), i64(9)], {"axis": 1}, "parts [9] do not split axis 1 of size 10"),
        ("QuantizeLinear", [(1, 32, 4, 4), np.ones(64, F32)], {}, "scale has 64 values for axis 1 of size 32"),
        ("LSTM", [(5, 1, 32), np.ones((1, 80, 64), F32), np.ones((1, 80, 20), F32)], {"hidden_size": 20}, "input has 32 features, W expects 64"),
        ("Transpose", [(1, 2, 3)], {"perm": [0, 1]}, "perm [0, 1] is not a permutation of 3 axes"),
        ("Squeeze", [(1, 3), i64(1)], {}, "cannot squeeze axis 1 of size 3 in 1x3"),
    ],
)
def test_inconsistent_inputs_raise_a_located_error(op, inputs, attrs, message):
    graph, node = _node(op, inputs, attrs, source="layer1.0.conv1")
    with pytest.raises(IrtoolError) as info:
        infer_shapes(graph)
    assert str(info.value) == f"{op} 'layer1.0.conv1': {message}"


# -- costs ---------------------------------------------------------------------------------
def _cost(op, inputs, attrs=None, outputs=1):
    graph, node = _node(op, inputs, attrs, outputs)
    return get_op(op).cost(node)


def test_conv_costs_match_hand_counts():
    w = np.ones((32, 16, 3, 3), F32)
    assert _cost("Conv", [(1, 16, 32, 32), w], {"pads": [1] * 4}) == 32 * 32 * 32 * 16 * 9
    assert _cost("Conv", [(2, 16, 32, 32), w], {"pads": [1] * 4}) == 2 * 32 * 32 * 32 * 16 * 9
    assert _cost("Conv", [("N", 16, 32, 32), w], {"pads": [1] * 4}) == 32 * 32 * 32 * 16 * 9
    depthwise = np.ones((32, 1, 3, 3), F32)
    assert _cost("Conv", [(1, 32, 16, 16), depthwise], {"group": 32, "strides": [2, 2], "pads": [1] * 4}) == 32 * 8 * 8 * 9
    assert _cost("Conv", [(1, 16, "H", 32), w]) is None
    assert _cost("ConvTranspose", [(1, 8, 5, 5), np.ones((8, 4, 3, 3), F32)]) == 8 * 25 * 4 * 9
    assert _cost("ConvTranspose", [(1, 8, 5, 5), np.ones((8, 2, 3, 3), F32)], {"group": 2}) == 8 * 25 * 2 * 9


def test_linear_and_matmul_costs_match_hand_counts():
    assert _cost("Gemm", [(4, 64), np.ones((10, 64), F32)], {"transB": 1}) == 4 * 10 * 64
    assert _cost("Gemm", [(64, 4), np.ones((64, 10), F32)], {"transA": 1}) == 4 * 10 * 64
    assert _cost("MatMul", [(2, 4, 16, 8), (2, 4, 8, 16)]) == 2 * 4 * 16 * 16 * 8  # attention scores
    assert _cost("MatMul", [(1, 197, 192), np.ones((192, 576), F32)]) == 197 * 192 * 576
    assert _cost("MatMul", [(8,), (8, 3)]) == 8 * 3
    assert _cost("Einsum", [(2, 3, 4), (2, 4, 5)], {"equation": "bij,bjk->bik"}) == 2 * 3 * 4 * 5


def test_recurrent_costs_match_hand_counts():
    t, n, features, hidden = 5, 3, 10, 20
    lstm = [(t, n, features), np.ones((2, 4 * hidden, features), F32), np.ones((2, 4 * hidden, hidden), F32)]
    assert _cost("LSTM", lstm, {"hidden_size": hidden, "direction": "bidirectional"}, 3) == (
        2 * t * n * 4 * (features + hidden) * hidden
    )
    gru = [(n, t, features), np.ones((1, 3 * hidden, features), F32), np.ones((1, 3 * hidden, hidden), F32)]
    assert _cost("GRU", gru, {"layout": 1}, 2) == t * n * 3 * (features + hidden) * hidden
    rnn = [(t, "N", features), np.ones((1, hidden, features), F32), np.ones((1, hidden, hidden), F32)]
    assert _cost("RNN", rnn, {"hidden_size": hidden}, 2) == t * 1 * (features + hidden) * hidden


def test_ops_without_macs_have_no_cost_rule():
    for op in ("Relu", "Add", "BatchNormalization", "MaxPool", "GlobalAveragePool", "Softmax", "Reshape"):
        assert get_op(op).cost is None, op


# -- weight layouts and int8 forms ------------------------------------------------------------
def _one_layer(op: str, w: np.ndarray, x_shape, attrs) -> tuple[Graph, np.ndarray]:
    graph = Graph("layer")
    x = graph.add_input("x", TensorType(DType.float32, x_shape))
    node = graph.add_node(op, [x, graph.add_constant("w", w)], attrs)
    graph.outputs = list(node.outputs)
    infer_shapes(graph)
    return graph, RNG.standard_normal(x_shape).astype(F32)


@pytest.mark.parametrize(
    "op, w_shape, x_shape, attrs",
    [
        ("Conv", (6, 2, 3, 3), (1, 4, 5, 5), {"group": 2}),
        ("ConvTranspose", (4, 3, 2, 2), (1, 4, 3, 3), {"group": 2}),
        ("ConvTranspose", (4, 6, 2, 2), (1, 4, 3, 3), {}),
        ("Gemm", (5, 3), (2, 3), {"transB": 1, "alpha": 0.5}),
        ("Gemm", (3, 5), (2, 3), {}),
    ],
)
def test_scaling_a_weight_along_its_output_channels_scales_the_layer_output(op, w_shape, x_shape, attrs):
    from irtool.backends.onnx import run_onnxruntime

    w = RNG.standard_normal(w_shape).astype(F32)
    graph, x = _one_layer(op, w, x_shape, attrs)
    (y,) = run_onnxruntime(graph, [x])
    s = RNG.uniform(0.5, 2.0, y.shape[1]).astype(F32)
    scaled = get_op(op).weight.scaled(graph.nodes[0], w, s)
    graph.nodes[0].inputs[1].const = scaled
    (got,) = run_onnxruntime(graph, [x])
    expected = y * s.reshape((1, -1) + (1,) * (y.ndim - 2))
    assert np.abs(got - expected).max() < 1e-5


def test_int8_forms_and_bounds_are_declared_where_onnxruntime_has_int8_kernels():
    from irtool.ir.registry import INT8_FORMS

    forms = {d.name: d.int8 for d in all_ops() if d.int8}
    assert set(forms.values()) <= set(INT8_FORMS)
    assert forms["Conv"] == "layer" and forms["Gemm"] == "layer-float" and forms["MaxPool"] == "select"
    assert forms["Add"] == forms["Concat"] == forms["GlobalAveragePool"] == "own-range"
    assert "Sub" not in forms and "LeakyRelu" not in forms
    relu, clip = get_op("Relu"), get_op("Clip")
    graph = Graph("clamp")
    x = graph.add_input("x", TensorType(DType.float32, (4,)))
    low = graph.add_constant("low", np.array(-1.5, F32))
    assert relu.lower_bound(graph.add_node("Relu", [x])) == 0.0
    assert clip.lower_bound(graph.add_node("Clip", [x, low])) == -1.5
    assert clip.lower_bound(graph.add_node("Clip", [x])) == -np.inf
    with pytest.raises(IrtoolError, match="int8 form 'fast'"):
        from irtool.ir.registry import OpDef

        OpDef("Fancy", int8="fast")


# -- foreign models: ops behind an op irtool does not know, resampling sizes, block channels --
def test_costs_of_layers_behind_an_untyped_value_are_unknown_not_a_crash():
    """Behind an opaque op (a custom-domain node without declared types) inputs are untyped;
    ``irtool opt`` asks every node's cost before anything else and died in the Conv rule."""
    graph = Graph()
    x = graph.add_input("x", TensorType(DType.float32, (1, 3, 8, 8)))
    (hidden,) = graph.add_node("FancyOp", [x], domain="com.example", name="fancy").outputs
    w, b = graph.add_constant("w", np.ones((4, 3, 3, 3), F32)), graph.add_constant("b", np.ones((4,), F32))
    fc = graph.add_constant("fc", np.ones((3, 5), F32))
    conv = graph.add_node("Conv", [hidden, w, b], name="conv")
    gemm = graph.add_node("Gemm", [hidden, fc], name="gemm")
    matmul = graph.add_node("MatMul", [hidden, fc], name="matmul")
    assert hidden.type is None
    assert [get_op(n.op).cost(n) for n in (conv, gemm, matmul)] == [None, None, None]


def test_resize_by_a_scale_sizes_the_output_in_float32_as_onnxruntime_does():
    """5 x float32(1.8) is 9 in float32 (onnxruntime), 8.99999... in double (what the rule said)."""
    scales = np.array([1, 1, 1.8, 1.4], np.float32)
    (shape,) = _shapes("Resize", [(1, 2, 5, 5), None, scales], {"mode": "nearest"})
    assert shape == (1, 2, 9, 7)
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")], "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 5, 5])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [numpy_helper.from_array(scales, "s")],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((1, 2, 5, 5), F32)})[0].shape == shape


def _channel_effect(op, inputs, attrs, port, axis):
    graph, node = _node(op, inputs, attrs)
    infer_shapes(graph)
    return lookup(op).channel(node, port, axis)


def _ties(effect):
    return {(t.port, t.axis): (list(t.here), list(t.there)) for t in effect.ties}


@pytest.mark.parametrize(
    "mode, deep_to_shallow",
    [("DCR", [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]), ("CRD", [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])],
)
def test_depth_to_space_ties_each_output_channel_to_its_block_of_input_channels(mode, deep_to_shallow):
    """12 channels, blocks of 2x2: DCR takes input channel k*3 + c to output channel c, CRD c*4 + k."""
    attrs = {"blocksize": 2, "mode": mode}
    from_input = _channel_effect("DepthToSpace", [(1, 12, 4, 4)], attrs, ("in", 0), 1)
    assert _ties(from_input) == {(("out", 0), 1): (list(range(12)), deep_to_shallow)}
    from_output = _channel_effect("DepthToSpace", [(1, 12, 4, 4)], attrs, ("out", 0), 1)
    assert _ties(from_output) == {(("in", 0), 1): (deep_to_shallow, list(range(12)))}
    assert not from_input.isolates and from_input.barrier is None
    assert "interleaves" in _channel_effect("DepthToSpace", [(1, 12, 4, 4)], attrs, ("out", 0), 2).barrier
    assert _ties(_channel_effect("DepthToSpace", [(2, 12, 4, 4)], attrs, ("in", 0), 0)) == {
        (("out", 0), 0): ([0, 1], [0, 1])
    }


def test_space_to_depth_and_cumsum_channel_rules():
    effect = _channel_effect("SpaceToDepth", [(1, 3, 4, 4)], {"blocksize": 2}, ("out", 0), 1)
    assert _ties(effect) == {(("in", 0), 1): (list(range(12)), [0, 1, 2] * 4)}
    axis = np.array(3, np.int64)
    along_width = _channel_effect("CumSum", [(1, 6, 4, 5), axis], {}, ("in", 0), 1)
    assert _ties(along_width) == {(("out", 0), 1): (list(range(6)), list(range(6)))}
    assert "accumulates along axis 3" in _channel_effect("CumSum", [(1, 6, 4, 5), axis], {}, ("in", 0), 3).barrier
