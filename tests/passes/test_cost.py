"""Cost analysis: hand-counted conv/linear graphs, the zoo's own MAC counter, and formatting."""

from __future__ import annotations

import numpy as np
import pytest

from irtool.ir import DType, Graph, TensorType
from irtool.passes.base import PassContext
from irtool.passes.cost import Cost, format_comparison, graph_cost, human

F32 = DType.float32


def _conv_linear_graph() -> Graph:
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (1, 3, 8, 8)))
    w = graph.add_constant("conv.weight", np.zeros((4, 3, 3, 3), np.float32))
    b = graph.add_constant("conv.bias", np.zeros(4, np.float32))
    y = graph.add_node(
        "Conv", [x, w, b], {"pads": [1, 1, 1, 1]}, name="conv", output_types=[TensorType(F32, (1, 4, 8, 8))]
    ).outputs[0]
    y = graph.add_node("Relu", [y], name="relu", output_types=[TensorType(F32, (1, 4, 8, 8))]).outputs[0]
    y = graph.add_node("GlobalAveragePool", [y], name="pool", output_types=[TensorType(F32, (1, 4, 1, 1))]).outputs[0]
    shape = graph.add_constant("shape", np.array([1, 4], np.int64))
    y = graph.add_node("Reshape", [y, shape], name="flatten", output_types=[TensorType(F32, (1, 4))]).outputs[0]
    fc_w = graph.add_constant("fc.weight", np.zeros((10, 4), np.float64))
    fc_b = graph.add_constant("fc.bias", np.zeros(10, np.float32))
    y = graph.add_node("Gemm", [y, fc_w, fc_b], {"transB": 1}, name="fc", output_types=[TensorType(F32, (1, 10))])
    graph.outputs = [y.outputs[0]]
    return graph


def test_hand_counted_conv_and_linear():
    cost = graph_cost(_conv_linear_graph())
    conv_macs = 4 * 8 * 8 * 3 * 3 * 3  # C_out x H x W x C_in x kH x kW
    fc_macs = 4 * 10
    assert cost.macs == conv_macs + fc_macs == 6952
    assert cost.macs_by_op == {"Conv": conv_macs, "Gemm": fc_macs}
    assert cost.params == 108 + 4 + 2 + 40 + 10
    assert cost.bytes == 4 * (108 + 4 + 10) + 8 * 2 + 8 * 40
    assert cost.by_op == {"Conv": 1, "Relu": 1, "GlobalAveragePool": 1, "Reshape": 1, "Gemm": 1}
    per_node = {n.node: (n.macs, n.params) for n in cost.nodes}
    assert per_node == {"conv": (conv_macs, 112), "relu": (0, 0), "pool": (0, 0), "flatten": (0, 2), "fc": (fc_macs, 50)}
    assert cost.unknown == []


def test_unregistered_ops_are_reported_not_counted():
    graph = _conv_linear_graph()
    last = graph.outputs[0]
    graph.outputs = [graph.add_node("FancyOp", [last], domain="com.example", name="fancy").outputs[0]]
    cost = graph_cost(graph)
    assert cost.macs == 6952 and cost.unknown == ["fancy"]
    assert cost.by_op["com.example::FancyOp"] == 1
    assert "MACs unknown for 1 node(s): fancy" in cost.format()


def test_cost_is_a_cached_analysis():
    graph = _conv_linear_graph()
    ctx = PassContext()
    first = ctx.analysis("cost", graph)
    assert isinstance(first, Cost) and first.macs == 6952
    assert ctx.analysis("cost", graph) is first


@pytest.mark.parametrize(
    "number, unit, text",
    [
        (4_089_184_256, "", "4.09 G"),
        (25_557_032, "", "25.56 M"),
        (1536, "B", "1.54 kB"),
        (512, "", "512"),
        (0, "B", "0 B"),
        (2.5e12, "", "2.50 T"),
    ],
)
def test_human_units(number, unit, text):
    assert human(number, unit) == text


def test_format_shows_counts_and_the_comparison_shows_reductions():
    before = graph_cost(_conv_linear_graph())
    text = before.format()
    assert "nodes: 5 (Conv 1, Relu 1, GlobalAveragePool 1, Reshape 1, Gemm 1)" in text
    assert "params: 164" in text and "MACs: 6.95 k" in text and "bytes: 824 B" in text
    after = Cost(params=82, macs=3476, bytes=412, nodes=before.nodes[:4])
    table = format_comparison(before, after).splitlines()
    assert table[1].split() == ["params", "164", "82", "-50.0%"]
    assert table[2].split() == ["MACs", "6.95", "k", "3.48", "k", "-50.0%"]
    assert table[4].split() == ["nodes", "5", "4", "-20.0%"]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_tiny"])
def test_macs_match_the_zoo_counter(tmp_path, name):
    from irtool.frontends.onnx import load_onnx
    from tests.zoo import ZOO, export_onnx
    from tests.zoo.macs import count_macs

    zm = ZOO[name]
    cost = graph_cost(load_onnx(export_onnx(name, tmp_path / f"{name}.onnx")))
    assert cost.macs == count_macs(zm.build(), zm.input_shape)
    assert cost.unknown == []
    weights = sum(p.numel() for p in zm.build().parameters())
    assert weights <= cost.params <= 1.01 * weights  # plus BN running stats and shape constants
