"""Dead code elimination on hand-built graphs and on a zoo model."""

from __future__ import annotations

import numpy as np
from onnx import helper

from irtool.ir import DType, Graph, TensorType
from irtool.passes.base import PassContext, PassManager
from irtool.passes.const_fold import evaluate_graph
from irtool.passes.dce import DeadCodeElimination

F32 = DType.float32


def _run(graph: Graph):
    return DeadCodeElimination().run(graph, PassContext())


def _graph_with_dead_branch() -> Graph:
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (1, 4)))
    graph.add_input("unused_input", TensorType(F32, (1, 4)))
    bias = graph.add_constant("bias", np.arange(4, dtype=np.float32))
    graph.add_constant("orphan", np.ones((3, 3), np.float32))
    dead_weight = graph.add_constant("dead_weight", np.ones(4, np.float32))
    live = graph.add_node("Add", [x, bias], name="add").outputs[0]
    out = graph.add_node("Relu", [live], name="relu").outputs[0]
    dead = graph.add_node("Mul", [x, dead_weight], name="mul").outputs[0]
    dead = graph.add_node("Sigmoid", [dead], name="sigmoid").outputs[0]
    graph.add_node("Tanh", [dead], name="tanh")
    graph.outputs = [out]
    return graph


def test_removes_dead_chains_and_unused_constants():
    graph = _graph_with_dead_branch()
    feeds = {"x": np.linspace(-2, 2, 4, dtype=np.float32).reshape(1, 4), "unused_input": np.zeros((1, 4), np.float32)}
    before = evaluate_graph(graph, feeds)[0]
    result = _run(graph)
    assert result.modified
    assert [n.op for n in graph.nodes] == ["Add", "Relu"]
    assert sorted(graph.constants) == ["bias"]
    assert [v.name for v in graph.inputs] == ["x", "unused_input"]
    assert result.log == ["removed 3 dead nodes", "removed 2 unused constants (13 elements)"]
    assert np.abs(evaluate_graph(graph, feeds)[0] - before).max() == 0.0


def test_second_run_changes_nothing():
    graph = _graph_with_dead_branch()
    _run(graph)
    result = _run(graph)
    assert not result.modified and result.log == [] and len(graph) == 2


def test_keeps_multi_output_node_with_one_used_output_and_graph_outputs():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (2, 4)))
    split = graph.add_constant("split", np.array([2, 2], np.int64))
    parts = graph.add_node("Split", [x, split], {"axis": 1}, outputs=["left", "right"], name="split")
    side = graph.add_node("Neg", [x], name="neg").outputs[0]
    graph.outputs = [parts.outputs[0], side]
    assert not _run(graph).modified
    assert [n.op for n in graph.nodes] == ["Split", "Neg"]


def test_keeps_values_captured_by_subgraph_bodies():
    graph = Graph()
    cond = graph.add_input("cond", TensorType(DType.bool, ()))
    captured = graph.add_constant("captured", np.array([1.0, 2.0], np.float32))
    graph.add_constant("dropped", np.array([3.0], np.float32))
    body = helper.make_graph(
        [helper.make_node("Identity", ["captured"], ["y"])],
        "then",
        [],
        [helper.make_tensor_value_info("y", 1, [2])],
    )
    node = graph.add_node(
        "If",
        [cond],
        {"then_branch": body.SerializeToString(), "else_branch": body.SerializeToString()},
        name="if",
    )
    graph.outputs = [node.outputs[0]]
    result = _run(graph)
    assert sorted(graph.constants) == ["captured"] and captured.graph is graph
    assert result.log == ["removed 1 unused constant (1 elements)"]


def test_zoo_model_keeps_its_outputs_and_loses_an_added_dead_branch(tmp_path):
    from irtool.backends.onnx import run_onnxruntime
    from irtool.frontends.onnx import load_onnx
    from tests.zoo import ZOO, export_onnx

    zm = ZOO["resnet18"]
    path = export_onnx("resnet18", tmp_path / "r18.onnx", input_shape=(1, 3, 32, 32))
    graph = load_onnx(path)
    feeds = {graph.inputs[0].name: zm.example_input((1, 3, 32, 32)).numpy()}
    expected = run_onnxruntime(graph, feeds)
    count = len(graph)
    head = graph.find_nodes(op="Conv")[0].outputs[0]
    graph.add_node("Sigmoid", [head], name="dead_sigmoid")
    result = PassManager("dce", verify=True).run(graph)
    assert result.records[0].log[0] == "removed 1 dead node"
    assert len(graph) == count
    got = run_onnxruntime(graph, feeds)
    assert np.abs(np.asarray(got[0]) - np.asarray(expected[0])).max() == 0.0
