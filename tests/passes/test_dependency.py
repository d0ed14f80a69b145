"""Channel dependency analysis: groups, their centres, members, and why a group is blocked or
approximate, on small hand-built graphs and on zoo models."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest

from irtool.frontends.onnx import load_onnx
from irtool.ir import DType, Graph, TensorType
from irtool.ir.shapes import infer_shapes
from irtool.passes.base import PassContext, PassManager
from irtool.passes.dependency import CONSUMER, PRODUCER, analyze_channels, layer_name
from irtool.passes.oracle import copy_graph
from tests.zoo import export_onnx

F32 = DType.float32
RNG = np.random.default_rng(0)
_EXPORTS = Path(tempfile.mkdtemp(prefix="irtool-zoo-"))


@functools.lru_cache(maxsize=4)
def _zoo_onnx(name: str) -> Graph:
    path = export_onnx(name, _EXPORTS / f"{name}.onnx") or _EXPORTS / f"{name}.onnx"
    graph = load_onnx(path)
    infer_shapes(graph)
    return PassManager("const-fold,dce").run(graph).graph


def zoo_graph(name: str) -> Graph:
    """A fresh copy of the zoo model, imported from its ONNX export (64x64) and const-folded."""
    return copy_graph(_zoo_onnx(name))


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _conv(graph, x, cin, cout, name, **attrs):
    w = graph.add_constant(f"{name}.weight", _randn(cout, cin // attrs.get("group", 1), 3, 3))
    b = graph.add_constant(f"{name}.bias", _randn(cout))
    return graph.add_node("Conv", [x, w, b], {"pads": [1, 1, 1, 1], **attrs}, name=name, source=name).outputs[0]


def _residual_graph() -> Graph:
    """conv_a and conv_b both write the channels that an add joins; conv_c reads them."""
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (1, 3, 8, 8)))
    a = _conv(graph, x, 3, 8, "conv_a")
    b = _conv(graph, graph.add_node("Relu", [a], name="relu").outputs[0], 8, 8, "conv_b")
    s = graph.add_node("Add", [a, b], name="add").outputs[0]
    graph.outputs = [_conv(graph, s, 8, 4, "conv_c")]
    infer_shapes(graph)
    return graph


def _group(analysis, centre: str):
    return next(g for g in analysis.groups if g.name == centre)


def test_a_residual_add_joins_both_producers_into_one_group():
    analysis = analyze_channels(_residual_graph())
    joined = _group(analysis, "conv_a")
    assert joined.channels == 8 and joined.prunable and joined.exact
    assert [layer_name(n) for n in joined.producers] == ["conv_a", "conv_b"]
    assert [layer_name(n) for n in joined.consumers] == ["conv_b", "conv_c"]
    constants = {(m.value.name, m.axis): m.role for m in joined.constant_members()}
    assert constants == {
        ("conv_a.weight", 0): PRODUCER,
        ("conv_a.bias", 0): PRODUCER,
        ("conv_b.weight", 0): PRODUCER,
        ("conv_b.bias", 0): PRODUCER,
        ("conv_b.weight", 1): CONSUMER,
        ("conv_c.weight", 1): CONSUMER,
    }
    assert "reaches graph output" in _group(analysis, "conv_c").blocked[0]
    assert sorted(g.channels for g in analysis.groups) == [3, 4, 8]


def test_an_op_without_a_channel_rule_blocks_the_group_it_touches():
    graph = _residual_graph()
    add = graph.find_nodes(op="Add")[0]
    custom = graph.add_node("Mystery", [add.outputs[0]], name="mystery", domain="com.example", after=add,
                            output_types=[add.outputs[0].type])
    graph.outputs.append(custom.outputs[0])
    group = _group(analyze_channels(graph), "conv_a")
    assert not group.prunable
    assert any("op com.example::Mystery has no channel rule" in reason for reason in group.blocked)


def test_an_axis_of_unknown_size_blocks_instead_of_failing():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (1, 3, 8, 8)))
    y = _conv(graph, x, 3, 8, "conv")
    graph.outputs = [_conv(graph, graph.add_node("Relu", [y], name="relu").outputs[0], 8, 4, "head")]
    infer_shapes(graph)
    graph.find_nodes(op="Relu")[0].outputs[0].type = TensorType(F32, (1, None, 8, 8))
    group = _group(analyze_channels(graph), "conv")
    assert not group.prunable and "not known" in group.blocked[0]


def test_removal_maps_coupled_channels_to_every_slot():
    graph = _residual_graph()
    analysis = analyze_channels(graph)
    joined = _group(analysis, "conv_a")
    removed = np.zeros(analysis.components, dtype=bool)
    removed[joined.components[[1, 5]]] = True
    removal = analysis.removal(removed)
    activations = [graph.find_nodes(op=op)[0].outputs[0].name for op in ("Relu", "Add")]
    activations += [graph.find_nodes(source=name)[0].outputs[0].name for name in ("conv_a", "conv_b")]
    constants = ["conv_a.weight", "conv_a.bias", "conv_b.weight", "conv_b.bias"]
    expected = {(name, 1): [1, 5] for name in activations}
    expected.update({(name, 0): [1, 5] for name in constants})
    expected.update({("conv_b.weight", 1): [1, 5], ("conv_c.weight", 1): [1, 5]})
    assert {key: v.tolist() for key, v in removal.items()} == expected


def test_resnet18_groups_follow_the_stages():
    analysis = analyze_channels(zoo_graph("resnet18"))
    assert len(analysis.groups) == 14 and sum(g.prunable for g in analysis.groups) == 12
    stem = _group(analysis, "conv1")
    assert stem.channels == 64 and stem.exact
    assert [layer_name(n) for n in stem.producers] == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    assert [layer_name(n) for n in stem.consumers] == [
        "layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0",
    ]
    last = _group(analysis, "layer4.0.conv2")
    assert "fc" in [layer_name(n) for n in last.consumers] and last.channels == 512
    assert _group(analysis, "fc").blocked == ["reaches graph output 'output'"]


def test_attention_heads_are_whole_channels():
    analysis = analyze_channels(zoo_graph("vit_tiny"))
    heads = _group(analysis, "blocks.0.attn.qkv")
    assert heads.channels == 3 and heads.prunable and heads.exact
    assert [layer_name(n) for n in heads.consumers] == ["blocks.0.attn.proj"]
    qkv = next(m for m in heads.constant_members(PRODUCER) if m.value.const.ndim == 2)
    assert np.bincount(qkv.channels).tolist() == [192, 192, 192]  # q, k and v rows of each head
    proj = next(m for m in heads.constant_members(CONSUMER))
    assert proj.axis == 0 and np.bincount(proj.channels).tolist() == [64, 64, 64]
    stream = _group(analysis, "patch_embed.proj")
    assert stream.prunable and not stream.exact and "LayerNormalization" in stream.approximate[0]


def test_depthwise_convs_join_their_producers_group():
    analysis = analyze_channels(zoo_graph("mobilenet_v2"))
    first = _group(analysis, "features.0.0")
    assert first.channels == 32 and first.prunable
    assert "features.1.conv.0.0" in [layer_name(n) for n in first.layers()]
    assert [layer_name(n) for n in first.consumers] == ["features.1.conv.1"]


@pytest.mark.parametrize(
    "name, prunable, approximate",
    [("shufflenet_v2_x1_0", 31, 0), ("convnext_tiny", 22, 4), ("densenet121", 120, 0), ("lstm_classifier", 2, 0)],
)
def test_zoo_group_counts(name, prunable, approximate):
    analysis = analyze_channels(zoo_graph(name))
    groups = [g for g in analysis.groups if g.prunable]
    assert len(groups) == prunable
    assert sum(not g.exact for g in groups) == approximate


def test_format_lists_every_group():
    text = analyze_channels(zoo_graph("resnet18")).format()
    lines = text.splitlines()
    assert lines[0] == "channel groups: 14 (12 prunable, 2 blocked)"
    assert lines[1].split() == ["id", "centre", "channels", "state", "kind"]
    assert any(line.split()[:5] == ["1", "conv1", "64", "prunable", "exact"] for line in lines)
    assert "producers: conv1, layer1.0.conv2, layer1.1.conv2" in text
    assert "blocked: reaches graph output 'output'" in text


def test_the_analysis_is_cached_per_graph():
    graph = _residual_graph()
    ctx = PassContext()
    ctx.graph = graph
    assert ctx.analysis("channels") is ctx.analysis("channels")
    assert ctx.computed == ["channels"]
