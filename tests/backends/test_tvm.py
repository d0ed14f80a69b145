"""TVM backend: every zoo model and every emitted op computes what onnxruntime computes.

Compiling is the slow part (seconds per model), so each model is compiled once; the op table
is covered by one model with one output per case.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from irtool.backends.onnx import onnx_bytes, run_onnxruntime
from irtool.backends.tvm import compile_graph, load_compiled
from irtool.backends.tvm_schedule import CpuModel, choose_tile, pack_panels
from irtool.frontends.onnx import load_onnx
from irtool.ir.core import Graph
from irtool.ir.errors import IrtoolError
from irtool.ir.types import DType, TensorType
from tests.zoo import ZOO, export_onnx

TOLERANCE = 1e-4
"""Largest difference to onnxruntime, relative to the largest magnitude of the output."""


def relative_error(reference: np.ndarray, result: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    result = np.asarray(result, dtype=np.float64)
    assert reference.shape == result.shape, (reference.shape, result.shape)
    return float(np.abs(reference - result).max(initial=0.0) / max(np.abs(reference).max(initial=0.0), 1e-6))


# -- the zoo -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_matches_onnxruntime(name, tmp_path):
    path = export_onnx(name, tmp_path / f"{name}.onnx")
    x = ZOO[name].example_input().numpy()
    expected = run_onnxruntime(path, [x], threads=1)
    got = compile_graph(load_onnx(path)).run([x])
    assert len(got) == len(expected)
    assert got[0].shape == ZOO[name].output_shape
    assert relative_error(expected[0], got[0]) <= TOLERANCE


@pytest.mark.parametrize("name", sorted(ZOO))
def test_pruned_zoo_model_matches_onnxruntime(name, tmp_path):
    """Pruning leaves odd channel counts, fewer heads, a smaller LSTM, U-Net skips cut to
    match: every zoo model compiles and computes what onnxruntime computes after it too."""
    from irtool.passes.base import PassContext, PassManager
    from irtool.passes.cost import graph_cost

    graph = load_onnx(export_onnx(name, tmp_path / f"{name}.onnx"))
    before = graph_cost(graph).macs
    graph = PassManager("prune{sparsity=0.5}").run(graph, PassContext()).graph
    assert graph_cost(graph).macs < before
    x = ZOO[name].example_input().numpy()
    expected = run_onnxruntime(onnx_bytes(graph), [x], threads=1)
    got = compile_graph(graph).run([x])
    assert relative_error(expected[0], got[0]) <= TOLERANCE


# -- export and load ---------------------------------------------------------------------------
def test_exported_library_loads_and_computes_the_same(tmp_path):
    path = export_onnx("squeezenet1_1", tmp_path / "squeezenet.onnx", input_shape=(1, 3, 32, 32))
    x = ZOO["squeezenet1_1"].example_input((1, 3, 32, 32)).numpy()
    compiled = compile_graph(load_onnx(path), threads=1)
    library = compiled.export(tmp_path / "squeezenet.so")
    assert library.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = load_compiled(library, threads=1)
    first, again = compiled.run([x])[0], loaded.run([x])[0]
    assert np.array_equal(first, again)
    assert relative_error(run_onnxruntime(path, [x], threads=1)[0], again) <= TOLERANCE


def test_export_and_load_errors_name_the_file(tmp_path):
    graph = _single_op_graph("Relu")
    compiled = compile_graph(graph)
    with pytest.raises(IrtoolError, match=r"must end in \.so"):
        compiled.export(tmp_path / "model.bin")
    with pytest.raises(IrtoolError, match="missing.so' does not exist"):
        load_compiled(tmp_path / "missing.so")
    with pytest.raises(IrtoolError, match="takes 1 inputs, got 2"):
        compiled.run([np.zeros((2, 3), np.float32)] * 2)


# -- errors ------------------------------------------------------------------------------------
def _single_op_graph(op: str, domain: str = "") -> Graph:
    graph = Graph("g")
    x = graph.add_input("x", TensorType(DType.float32, (2, 3)))
    node = graph.add_node(op, [x], domain=domain, name="the_node", output_types=[TensorType(DType.float32, (2, 3))])
    graph.outputs.append(node.outputs[0])
    return graph


def test_opaque_op_error_names_op_and_node():
    with pytest.raises(IrtoolError) as info:
        compile_graph(_single_op_graph("FancyOp", domain="com.example"))
    assert str(info.value) == "TVM backend: op 'com.example::FancyOp' (node 'the_node') cannot be emitted"


def test_symbolic_input_shape_is_a_clear_error():
    graph = Graph("g")
    x = graph.add_input("x", TensorType(DType.float32, ("batch", 3)))
    graph.outputs.append(graph.add_node("Relu", [x]).outputs[0])
    with pytest.raises(IrtoolError, match="input 'x' has shape .*static shapes"):
        compile_graph(graph)


def test_missing_tvm_is_one_clear_line(monkeypatch):
    import sys

    from irtool.backends import tvm as backend

    monkeypatch.setitem(sys.modules, "tvm", None)  # what Python does for an absent package
    with pytest.raises(IrtoolError) as info:
        backend.require_tvm()
    assert str(info.value) == "TVM is not installed (pip install 'irtool[tvm]')"


def test_compiler_errors_are_reported_by_their_message_not_tvms_metadata_note():
    from irtool.backends.tvm import _first_line

    message = (
        "CodeGenVM cannot emit this Relax operator directly.\n"
        "Offending call:\nR.nn.conv2d_transpose(alloc1, metadata[\"ir.GenericConst\"][0])\n"
        "# Metadata omitted. Use show_meta=True in script() method to show it."
    )
    assert _first_line(RuntimeError(message)) == "R.nn.conv2d_transpose(alloc1, metadata[\"ir.GenericConst\"][0])"
    assert _first_line(RuntimeError("InternalError: boom\n# Metadata omitted.")) == "InternalError: boom"


def _chain_model(nodes, initializers, x_shape, opset):
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(x_shape))],
        [numpy_helper.from_array(a, n) for n, a in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_transposed_conv_behind_a_conv_compiles():
    """The NHWC layout pass dragged conv2d_transpose into NHWC after a conv, which Relax cannot
    lower: every encoder-decoder with a learned upsampling failed to compile."""
    model = _chain_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("ConvTranspose", ["r", "wt", "bt"], ["t"], strides=[2, 2]),
         helper.make_node("Conv", ["t", "w2"], ["y"])],
        {"w": _floats(8, 3, 3, 3), "b": _floats(8), "wt": _floats(8, 4, 2, 2), "bt": _floats(4), "w2": _floats(2, 4, 1, 1)},
        [1, 3, 16, 16], 17,
    )
    x = _floats(1, 3, 16, 16)
    expected = run_onnxruntime(model, [x], threads=1)[0]
    got = compile_graph(load_onnx(model)).run([x])[0]
    assert got.shape == (1, 2, 16, 16)
    assert relative_error(expected, got) <= TOLERANCE


def test_wrap_pad_matches_onnxruntime():
    """Pad mode wrap (torch's circular padding, opset 19) is concatenated slices."""
    model = _chain_model(
        [helper.make_node("Pad", ["x", "pads"], ["y"], mode="wrap")],
        {"pads": _i64([0, 0, 2, 1, 0, 0, 1, 3])}, [1, 2, 5, 6], 19,
    )
    x = _floats(1, 2, 5, 6)
    expected = run_onnxruntime(model, [x], threads=1)[0]
    got = compile_graph(load_onnx(model)).run([x])[0]
    assert got.shape == expected.shape == (1, 2, 8, 10)
    np.testing.assert_array_equal(got, expected)


# -- the schedule model ------------------------------------------------------------------------
def test_tile_choice_fills_the_registers_and_divides_the_loops():
    avx2 = CpuModel()
    assert choose_tile(rows=56 * 56, row_last=56, n=64, k=576, model=avx2) == (4, 16)
    mr, nr = choose_tile(rows=49, row_last=7, n=512, k=4608, model=avx2)
    assert 49 % mr == 0 and 512 % nr == 0 and mr * nr // 8 >= 7  # enough accumulators to hide latency
    assert choose_tile(rows=1, row_last=1, n=1000, k=2048, model=avx2) == (1, 40)  # a GEMV row: 5 registers
    assert choose_tile(rows=56 * 56, row_last=56, n=58, k=522, model=avx2)[1] == 2  # no whole register fits


def test_pruned_channel_counts_are_padded_to_whole_registers():
    """45 output channels run as 48 (zero filters), then the 3 extra are sliced off."""
    import tvm
    from tvm import relax

    from irtool.backends.tvm import to_relax
    from irtool.backends.tvm_schedule import pad_channels_pass

    graph = Graph("g")
    x = graph.add_input("x", TensorType(DType.float32, (1, 5, 8, 8)))
    w = graph.add_constant("w", np.ones((45, 5, 3, 3), np.float32))
    dw = graph.add_constant("dw", np.ones((45, 1, 3, 3), np.float32))
    conv = graph.add_node("Conv", [x, w], {"pads": [1, 1, 1, 1]})
    depthwise = graph.add_node("Conv", [conv.outputs[0], dw], {"group": 45, "pads": [1, 1, 1, 1]})
    graph.outputs.append(depthwise.outputs[0])
    padded = pad_channels_pass(CpuModel())(to_relax(graph))
    calls = []
    relax.analysis.post_order_visit(padded["main"], lambda e: calls.append(e) if isinstance(e, relax.Call) else None)
    convs = [c for c in calls if c.op.same_as(tvm.ir.Op.get("relax.nn.conv2d"))]
    assert [[int(d) for d in c.args[1].ty.shape.values] for c in convs] == [[48, 5, 3, 3], [48, 1, 3, 3]]
    assert convs[1].attrs.groups == 48
    assert sum(c.op.same_as(tvm.ir.Op.get("relax.strided_slice")) for c in calls) == 2


def test_weight_panels_are_contiguous_tiles_of_the_last_axis():
    w = np.arange(2 * 3 * 32, dtype=np.float32).reshape(2, 3, 32)
    panels = pack_panels(w, 16)
    assert panels.shape == (2, 2, 3, 16)
    assert np.array_equal(panels[1, :, :, 5], w[:, :, 16 + 5])


# -- one case per op ---------------------------------------------------------------------------
RNG = np.random.default_rng(0)
IMAGE = (2, 4, 6, 6)
MATRIX = (3, 8)


def _floats(*shape, positive=False, scale=1.0):
    a = RNG.standard_normal(shape).astype(np.float32) * scale
    return np.abs(a) + 0.5 if positive else a


def _i64(values):
    return np.asarray(values, dtype=np.int64)


# (output name, op, inputs (graph inputs by name or initializer arrays), attributes)
CASES = [
    *[(op.lower(), op, ["x"], {}) for op in (
        "Abs", "Ceil", "Cos", "Erf", "Exp", "Floor", "Neg", "Relu", "Sigmoid", "Sign", "Sin", "Tanh",
        "Softsign", "Softplus", "Identity", "HardSwish", "Mish", "Elu", "Selu", "Celu", "HardSigmoid",
    )],  # fmt: skip
    *[(op.lower(), op, ["p"], {}) for op in ("Reciprocal", "Sqrt", "Log")],
    ("leaky", "LeakyRelu", ["x"], {"alpha": 0.1}),
    ("thresholded", "ThresholdedRelu", ["x"], {"alpha": 0.5}),
    ("round", "Round", ["x3"], {}),
    ("prelu", "PRelu", ["x", _floats(4, 1, 1)], {}),
    ("clip", "Clip", ["x", np.float32(-0.5), np.float32(0.7)], {}),
    *[(op.lower(), op, ["x", "x2"], {}) for op in ("Add", "Sub", "Mul", "Max", "Min")],
    ("div", "Div", ["x", "p"], {}),
    ("pow", "Pow", ["p", np.float32(1.7)], {}),
    ("sum3", "Sum", ["x", "x2", "p"], {}),
    ("mean3", "Mean", ["x", "x2", "p"], {}),
    ("fmod", "Mod", ["x3", np.float32(0.7)], {"fmod": 1}),
    ("where", "Where", [np.array(RNG.random(IMAGE) > 0.5), "x", "x2"], {}),
    ("reshape", "Reshape", ["x", _i64([2, 0, -1])], {}),
    ("flatten", "Flatten", ["x"], {"axis": 2}),
    ("squeeze", "Squeeze", ["x1", _i64([2])], {}),
    ("unsqueeze", "Unsqueeze", ["x", _i64([0, -1])], {}),
    ("transpose", "Transpose", ["x"], {"perm": [0, 2, 3, 1]}),
    ("concat", "Concat", ["x", "x2", "p"], {"axis": 1}),
    ("slice", "Slice", ["x", _i64([1, -1]), _i64([5, -7]), _i64([2, 3]), _i64([2, -2])], {}),
    ("gather", "Gather", ["x", _i64([[3, -1], [0, 2]])], {"axis": 1}),
    ("gather_elements", "GatherElements", ["m", _i64([[1, 7, -2], [0, 0, 5], [3, 2, 1]])], {"axis": 1}),
    ("expand", "Expand", ["col", _i64([2, 3, 5])], {}),
    ("tile", "Tile", ["m", _i64([2, 1])], {}),
    ("pad", "Pad", ["x", _i64([0, 0, 1, 2, 0, 0, 2, 1]), np.float32(0.5)], {"mode": "constant"}),
    ("pad_reflect", "Pad", ["x", _i64([0, 0, 2, 1, 0, 0, 1, 2])], {"mode": "reflect"}),
    ("pad_edge", "Pad", ["x", _i64([0, 0, 1, 1, 0, 0, 2, 2])], {"mode": "edge"}),
    ("depth_to_space", "DepthToSpace", ["x"], {"blocksize": 2, "mode": "CRD"}),
    ("depth_to_space_dcr", "DepthToSpace", ["x"], {"blocksize": 2}),
    ("space_to_depth", "SpaceToDepth", ["x"], {"blocksize": 2}),
    ("triu", "Trilu", ["m", _i64(1)], {}),
    ("tril", "Trilu", ["m"], {"upper": 0}),
    ("cumsum", "CumSum", ["m", _i64(1)], {"exclusive": 1, "reverse": 1}),
    ("einsum", "Einsum", ["m", "m2"], {"equation": "ij,kj->ik"}),
    ("hardmax", "Hardmax", ["m"], {"axis": 1}),
    ("reduce_mean", "ReduceMean", ["x", _i64([2, 3])], {}),
    ("reduce_sum", "ReduceSum", ["x", _i64([1])], {"keepdims": 0}),
    ("reduce_max", "ReduceMax", ["x", _i64([-1])], {}),
    ("reduce_min", "ReduceMin", ["x"], {"keepdims": 0}),
    ("reduce_prod", "ReduceProd", ["m", _i64([0])], {}),
    ("reduce_l1", "ReduceL1", ["x", _i64([1, 3])], {}),
    ("reduce_l2", "ReduceL2", ["x", _i64([2])], {}),
    ("reduce_log_sum", "ReduceLogSum", ["p", _i64([1])], {}),
    ("reduce_log_sum_exp", "ReduceLogSumExp", ["x", _i64([1])], {"keepdims": 0}),
    ("reduce_sum_square", "ReduceSumSquare", ["x", _i64([0, 2])], {}),
    ("softmax", "Softmax", ["x"], {"axis": 1}),
    ("log_softmax", "LogSoftmax", ["m"], {}),
    ("matmul", "MatMul", ["x", _floats(6, 5)], {}),
    ("gemm", "Gemm", ["m", _floats(5, 8), _floats(5)], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    ("gemm_ta", "Gemm", ["mt", "m2"], {"transA": 1, "transB": 1}),
    ("conv", "Conv", ["x", _floats(6, 2, 3, 3), _floats(6)], {"group": 2, "pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ("conv_dilated", "Conv", ["x", _floats(8, 4, 3, 3)], {"dilations": [2, 2], "pads": [2, 1, 2, 1]}),
    ("conv_same", "Conv", ["x", _floats(8, 4, 3, 3)], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("conv_depthwise", "Conv", ["x", _floats(4, 1, 3, 3)], {"group": 4, "pads": [1, 1, 1, 1]}),
    ("conv1d", "Conv", ["seq", _floats(5, 3, 3)], {"pads": [1, 1]}),
    ("conv_prime_channels", "Conv", ["x", _floats(67, 4, 3, 3), _floats(67)], {"pads": [1, 1, 1, 1]}),
    ("gemm_prime_units", "Gemm", ["m", _floats(67, 8)], {"transB": 1}),
    ("conv_transpose", "ConvTranspose", ["x", _floats(4, 3, 3, 3), _floats(3)], {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ("max_pool", "MaxPool", ["x"], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ("avg_pool", "AveragePool", ["x"], {"kernel_shape": [2, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ("avg_pool_exclude", "AveragePool", ["x"], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("global_avg", "GlobalAveragePool", ["x"], {}),
    ("global_max", "GlobalMaxPool", ["x"], {}),
    ("global_lp", "GlobalLpPool", ["x"], {"p": 2}),
    ("lp_pool", "LpPool", ["x"], {"kernel_shape": [2, 2], "strides": [2, 2], "p": 2}),
    ("batch_norm", "BatchNormalization", ["x", _floats(4), _floats(4), _floats(4), _floats(4, positive=True)], {"epsilon": 1e-3}),
    ("instance_norm", "InstanceNormalization", ["x", _floats(4), _floats(4)], {}),
    ("layer_norm", "LayerNormalization", ["x", _floats(6, 6), _floats(6, 6)], {"axis": 2}),
    ("lrn", "LRN", ["x"], {"size": 3, "alpha": 0.01, "beta": 0.6, "bias": 1.5}),
    ("resize_nearest", "Resize", ["x", "", np.array([1, 1, 2, 2], np.float32)], {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
    ("resize_linear", "Resize", ["x", "", "", _i64([2, 4, 9, 12])], {"mode": "linear"}),
    ("resize_cubic", "Resize", ["x", "", np.array([1, 1, 2, 2], np.float32)], {"mode": "cubic", "coordinate_transformation_mode": "align_corners"}),
]
EXTRA_CASES = [
    # (outputs, op, inputs, attributes): ops with several outputs or non-float outputs
    (["split_a", "split_b", "split_c"], "Split", ["x", _i64([1, 1, 2])], {"axis": 1}),
    (["topk_values", "topk_indices"], "TopK", ["m", _i64([3])], {"axis": 1, "largest": 1}),
    (["argmax"], "ArgMax", ["m"], {"axis": 1, "select_last_index": 1}),
    (["argmin"], "ArgMin", ["x"], {"axis": 2, "keepdims": 0}),
    (["greater"], "Greater", ["x", "x2"], {}),
    (["equal"], "Equal", ["x1", "x1"], {}),
    (["cast"], "Cast", ["x3"], {"to": TensorProto.INT32}),
    (["scatter_elements"], "ScatterElements", ["m", _i64([[1, 0], [2, 7], [0, 3]]), _floats(3, 2)], {"axis": 1, "reduction": "add"}),
    (["scatter_nd"], "ScatterND", ["m", _i64([[1], [0]]), _floats(2, 8)], {}),
    (["lstm_y", "lstm_h", "lstm_c"], "LSTM", ["seq_t", _floats(2, 12, 3, scale=0.4), _floats(2, 12, 3, scale=0.4), _floats(2, 24, scale=0.1)], {"hidden_size": 3, "direction": "bidirectional"}),
    (["gru_y", "gru_h"], "GRU", ["seq_t", _floats(1, 9, 3, scale=0.4), _floats(1, 9, 3, scale=0.4), _floats(1, 18, scale=0.1)], {"hidden_size": 3, "linear_before_reset": 1}),
    (["gru2_y"], "GRU", ["seq_t", _floats(1, 9, 3, scale=0.4), _floats(1, 9, 3, scale=0.4)], {"hidden_size": 3, "direction": "reverse"}),
    (["rnn_y", "rnn_h"], "RNN", ["seq_t", _floats(1, 4, 3, scale=0.4), _floats(1, 4, 4, scale=0.4), _floats(1, 8, scale=0.1)], {"hidden_size": 4}),
]
FEEDS = {
    "x": _floats(*IMAGE),
    "x2": _floats(*IMAGE),
    "x3": (RNG.integers(-6, 6, IMAGE) * 0.5 + RNG.choice([0.0, 0.25], IMAGE)).astype(np.float32),
    "x1": _floats(2, 4, 1, 6),
    "p": _floats(*IMAGE, positive=True),
    "m": _floats(*MATRIX),
    "m2": _floats(5, 8),
    "mt": _floats(8, 3),
    "col": _floats(3, 1),
    "seq": _floats(2, 3, 7),
    "seq_t": _floats(5, 2, 3),
}


def _op_coverage_model() -> onnx.ModelProto:
    nodes, initializers = [], []
    outputs = []
    for outs, op, inputs, attrs in [([c[0]], *c[1:]) for c in CASES] + EXTRA_CASES:
        names = []
        for i, source in enumerate(inputs):
            if isinstance(source, str):
                names.append(source)
            else:
                names.append(f"{outs[0]}_in{i}")
                initializers.append(numpy_helper.from_array(np.asarray(source), names[-1]))
        nodes.append(helper.make_node(op, names, outs, name=f"{outs[0]}_node", **attrs))
        outputs += outs
    graph = helper.make_graph(
        nodes,
        "ops",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in FEEDS.items()],
        [],
        initializers,
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    inferred = {v.name: v for v in model.graph.value_info}
    model.graph.output.extend(inferred[name] for name in outputs)
    return model


def test_every_op_case_matches_onnxruntime():
    model = _op_coverage_model()
    graph = load_onnx(model)
    feeds = [FEEDS[v.name] for v in graph.inputs]
    expected = run_onnxruntime(model, feeds, threads=1)
    got = compile_graph(graph).run(feeds)
    names = [o.name for o in model.graph.output]
    wrong = {}
    for name, e, g in zip(names, expected, got):
        if e.dtype.kind in "biu":
            if not np.array_equal(e, g.astype(e.dtype)) or e.shape != g.shape:
                wrong[name] = "differs"
        elif relative_error(e, g) > TOLERANCE:
            wrong[name] = f"{relative_error(e, g):.1e}"
    assert not wrong, wrong
    assert len(got) == len(names) >= 95
