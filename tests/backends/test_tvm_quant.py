"""QuantizeLinear / DequantizeLinear emitted to Relax compute what onnxruntime computes."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from irtool.backends.onnx import make_session
from irtool.backends.tvm_quant import QUANT_EMITTERS
from irtool.ir import DType, Graph, TensorType
from irtool.ir.errors import IrtoolError
from irtool.ir.shapes import infer_shapes

RNG = np.random.default_rng(0)


def _run_in_tvm(graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Emit a graph made only of Q/DQ ops with the emitters, compile it and run it."""
    bb = relax.BlockBuilder()
    params = [relax.Var(v.name, relax.TensorType(shape=v.type.shape, dtype=v.type.dtype.name)) for v in graph.inputs]
    with bb.function("main", params):
        with bb.dataflow():
            env = dict(zip(graph.inputs, params))
            for node in graph.nodes:
                args = [None if v is None else env[v] if v in env else relax.const(v.const) for v in node.inputs]
                env[node.outputs[0]] = QUANT_EMITTERS[node.op](bb, node, args)
            out = bb.emit_output(relax.Tuple([env[v] for v in graph.outputs]))
        bb.emit_func_output(out)
    machine = relax.VirtualMachine(tvm.compile(bb.get(), target="llvm"), tvm.cpu())
    result = machine["main"](*(tvm.runtime.tensor(feeds[v.name]) for v in graph.inputs))
    return [r.numpy() for r in result]


def _qdq(graph: Graph, x, scale, zero_point, axis=None):
    attrs = {} if axis is None else {"axis": axis}
    s = graph.add_constant("s", np.asarray(scale, np.float32))
    z = graph.add_constant("z", zero_point) if zero_point is not None else None
    q = graph.add_node("QuantizeLinear", [x, s, z], attrs).outputs[0]
    return q, graph.add_node("DequantizeLinear", [q, s, z], attrs).outputs[0]


def _graph() -> Graph:
    graph = Graph()
    x = graph.add_input("x", TensorType(DType.float32, (2, 3, 4, 4)))
    v = graph.add_input("v", TensorType(DType.float32, (6,)))
    outputs = []
    outputs += _qdq(graph, x, 0.05, np.array(10, np.uint8))  # per tensor, asymmetric uint8
    outputs += _qdq(graph, x, [0.1, 0.02, 0.05], np.array([0, 1, -2], np.int8), axis=1)  # per channel
    outputs += _qdq(graph, x, [0.1, 0.2, 0.05, 0.01], np.zeros(4, np.int8), axis=-1)  # negative axis
    outputs += _qdq(graph, v, 0.1, None)  # rank 1, default uint8 zero point
    weight = graph.add_constant("w", RNG.integers(-127, 128, (4, 3, 2, 2)).astype(np.int8))
    w_scale = graph.add_constant("w_scale", RNG.uniform(0.001, 0.1, 4).astype(np.float32))
    w_zero = graph.add_constant("w_zero", np.zeros(4, np.int8))
    outputs.append(graph.add_node("DequantizeLinear", [weight, w_scale, w_zero], {"axis": 0}).outputs[0])
    bias = graph.add_constant("b", RNG.integers(-(2**20), 2**20, 4).astype(np.int32))
    b_zero = graph.add_constant("b_zero", np.zeros(4, np.int32))
    outputs.append(graph.add_node("DequantizeLinear", [bias, w_scale, b_zero], {"axis": 0}).outputs[0])
    graph.outputs = outputs
    infer_shapes(graph)
    return graph


def test_quantize_and_dequantize_match_onnxruntime():
    graph = _graph()
    feeds = {
        "x": (RNG.standard_normal((2, 3, 4, 4)) * 4).astype(np.float32),
        "v": np.array([0.05, 0.15, -0.05, 30.0, -1.0, 0.25], np.float32),  # ties round to even; saturation
    }
    expected = make_session(graph, optimization="disable").run(None, feeds)
    got = _run_in_tvm(graph, feeds)
    assert len(got) == len(expected) == 10
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype and e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)
    assert got[6].tolist() == [0, 2, 0, 255, 0, 2]


def test_an_unsupported_integer_type_is_a_clear_error():
    graph = Graph()
    x = graph.add_input("x", TensorType(DType.float32, (4,)))
    _qdq(graph, x, 0.1, np.array(0, np.uint16))
    infer_shapes(graph)
    with pytest.raises(IrtoolError, match="QuantizeLinear .*: uint16 outputs are not supported by the TVM backend"):
        _run_in_tvm(graph, {"x": np.zeros(4, np.float32)})
