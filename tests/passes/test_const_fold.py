"""Constant folding: values checked against numpy, node counts, and a zoo model in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from irtool.ir import DType, Graph, TensorType
from irtool.passes.base import PassContext, PassManager
from irtool.passes.const_fold import ConstantFold, evaluate_graph

F32 = DType.float32


def _run(graph: Graph, **options):
    return ConstantFold(**options).run(graph, PassContext())


def test_folds_a_chain_of_constant_nodes_in_one_run():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (2, 3)))
    a = graph.add_constant("a", np.arange(6, dtype=np.float32).reshape(2, 3))
    b = graph.add_constant("b", np.full((2, 3), 0.5, np.float32))
    summed = graph.add_node("Add", [a, b], name="add").outputs[0]
    scaled = graph.add_node("Mul", [summed, summed], name="square").outputs[0]
    out = graph.add_node("Sub", [x, scaled], name="sub").outputs[0]
    graph.outputs = [out]
    feeds = {"x": np.ones((2, 3), np.float32)}
    before = evaluate_graph(graph, feeds)[0]
    folded_name = scaled.name

    result = _run(graph)
    assert result.modified and result.log == ["folded 2 nodes (Add, Mul) into constants"]
    assert [n.op for n in graph.nodes] == ["Sub"]
    folded = graph.nodes[0].inputs[1]
    assert folded.name == folded_name and folded.is_const
    np.testing.assert_array_equal(folded.const, (np.arange(6).reshape(2, 3) + 0.5) ** 2)
    assert sorted(graph.constants) == [folded_name]  # a and b went with the nodes that used them
    assert np.abs(evaluate_graph(graph, feeds)[0] - before).max() == 0.0


def test_folds_shape_arithmetic_of_static_values():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (2, 3, 4, 5)))
    shape = graph.add_node("Shape", [x], name="shape", output_types=[TensorType(DType.int64, (4,))]).outputs[0]
    tail = graph.add_node("Shape", [x], {"start": -2}, name="tail").outputs[0]
    index = graph.add_constant("index", np.array([0], np.int64))
    batch = graph.add_node("Gather", [shape, index], {"axis": 0}, name="batch").outputs[0]
    minus_one = graph.add_constant("minus_one", np.array([-1], np.int64))
    target = graph.add_node("Concat", [batch, minus_one], {"axis": 0}, name="target").outputs[0]
    flat = graph.add_node("Reshape", [x, target], name="flatten").outputs[0]
    size = graph.add_node("Size", [x], name="size").outputs[0]
    graph.outputs = [flat, tail, size]

    result = _run(graph)
    assert result.log == ["folded 3 nodes (Concat, Gather, Shape) into constants"]
    assert [n.op for n in graph.nodes] == ["Shape", "Reshape", "Size"]  # outputs stay computed
    np.testing.assert_array_equal(graph.nodes[1].inputs[1].const, [2, -1])
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)}
    flat_out, tail_out, size_out = evaluate_graph(graph, feeds)
    assert flat_out.shape == (2, 60) and list(tail_out) == [4, 5] and int(size_out) == 120


def test_shape_of_symbolic_dims_stays():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, ("N", 3)))
    shape = graph.add_node("Shape", [x], name="shape").outputs[0]
    graph.outputs = [graph.add_node("Identity", [shape], name="id").outputs[0]]
    assert not _run(graph).modified and len(graph) == 2


def test_size_limit_keeps_growing_results_unfolded():
    def build():
        graph = Graph()
        x = graph.add_input("x", TensorType(F32, (100, 100)))
        one = graph.add_constant("one", np.array(1.0, np.float32))
        shape = graph.add_constant("shape", np.array([100, 100], np.int64))
        graph.add_node("Expand", [one, shape], name="expand", outputs=["big"])
        graph.outputs = [graph.add_node("Add", [x, graph.value("big")], name="add").outputs[0]]
        return graph

    small_limit = build()
    assert not _run(small_limit, max_elements=1000).modified
    assert [n.op for n in small_limit.nodes] == ["Expand", "Add"]
    large_limit = build()
    assert _run(large_limit, max_elements=10_000).modified
    assert large_limit.constants["big"].const.shape == (100, 100)


def test_results_no_larger_than_their_inputs_always_fold():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (8, 64)))
    weight = graph.add_constant("weight", np.arange(64 * 8, dtype=np.float32).reshape(64, 8))
    transposed = graph.add_node("Transpose", [weight], {"perm": [1, 0]}, outputs=["wt"]).outputs[0]
    graph.outputs = [graph.add_node("Add", [x, transposed], name="add").outputs[0]]
    assert _run(graph, max_elements=10).modified
    np.testing.assert_array_equal(graph.constants["wt"].const, np.arange(512).reshape(64, 8).T)


def test_random_ops_and_graph_outputs_are_not_folded():
    graph = Graph()
    c = graph.add_constant("c", np.zeros((2, 2), np.float32))
    noise = graph.add_node("RandomNormalLike", [c], name="noise").outputs[0]
    doubled = graph.add_node("Add", [c, c], name="double").outputs[0]
    graph.outputs = [graph.add_node("Add", [noise, doubled], name="sum").outputs[0], doubled]
    assert not _run(graph).modified
    assert len(graph) == 3


def test_attributes_reach_the_evaluator():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (3,)))
    data = graph.add_constant("data", np.array([[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0]], np.float32))
    gemm_b = graph.add_constant("b", np.eye(2, 3, dtype=np.float32))
    product = graph.add_node("Gemm", [data, gemm_b], {"alpha": 2, "transB": 0}, name="gemm").outputs[0]
    clipped = graph.add_node("LeakyRelu", [product], {"alpha": 0.5}, name="leaky").outputs[0]
    axes = graph.add_constant("axes", np.array([0], np.int64))
    summed = graph.add_node("ReduceSum", [clipped, axes], {"keepdims": 0}, outputs=["sum"])
    graph.outputs = [graph.add_node("Add", [x, summed.outputs[0]], name="add").outputs[0]]
    assert _run(graph).modified
    expected = 2 * (np.array([[1, -2], [3, 4], [-5, 6]]) @ np.eye(2, 3))
    expected = np.where(expected > 0, expected, 0.5 * expected).sum(axis=0)
    np.testing.assert_allclose(graph.constants["sum"].const, expected)


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "vit_tiny"])
def test_zoo_model_outputs_are_unchanged_in_onnxruntime(tmp_path, name):
    from irtool.backends.onnx import run_onnxruntime
    from irtool.frontends.onnx import load_onnx
    from tests.zoo import ZOO, export_onnx

    zm = ZOO[name]
    graph = load_onnx(export_onnx(name, tmp_path / f"{name}.onnx"))
    feeds = {graph.inputs[0].name: zm.example_input().numpy()}
    expected = np.asarray(run_onnxruntime(graph, feeds)[0])
    count = len(graph)
    result = PassManager("const-fold,dce", verify=True).run(graph)
    got = np.asarray(run_onnxruntime(graph, feeds)[0])
    assert len(graph) <= count
    assert result.records[0].modified == (len(graph) < count or result.records[1].modified)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
