"""The verifier: each invariant it guards, broken on purpose, gives one located problem."""

from __future__ import annotations

import numpy as np
import pytest

from irtool.ir import registry
from irtool.ir.core import Graph, Node, Value
from irtool.ir.errors import IrtoolError
from irtool.ir.registry import Attr, OpDef
from irtool.ir.types import DType, TensorType
from irtool.ir.verify import VerificationError, find_problems, verify
from .test_text import resnet50_like, zoo_names, zoo_onnx

F32 = DType.float32
DOMAIN = "test.verify"


def t(*shape, dtype=F32) -> TensorType:
    return TensorType(dtype, tuple(shape))


def _conv_shape(node):
    x, w = node.inputs[0].type, node.inputs[1].type
    if x.shape[1] != w.shape[1]:
        raise IrtoolError(f"input has {x.shape[1]} channels, weight expects {w.shape[1]}")
    return [TensorType(x.dtype, (x.shape[0], w.shape[0], *x.shape[2:]))]


def _broken_shape(node):
    return [node.inputs[0].type.shape.nonexistent]


TEST_OPS = [
    OpDef(
        "Conv",
        inputs=("X", "W", "B?"),
        outputs=("Y",),
        attrs={"group": Attr("int", 1), "pads": Attr("ints", None), "mode": Attr("string")},
        shape=_conv_shape,
        domain=DOMAIN,
    ),
    OpDef("Concat", inputs=("inputs*",), attrs={"axis": Attr("int")}, domain=DOMAIN),
    OpDef("Dropout", inputs=("data", "ratio?"), outputs=("output", "mask?"), domain=DOMAIN),
    OpDef("Broken", inputs=("X",), shape=_broken_shape, domain=DOMAIN),
]


@pytest.fixture(autouse=True)
def test_ops(monkeypatch):
    """Register this module's ops for one test only, so other tests see the real registry."""
    registry.all_ops()  # load the real definitions first
    for opdef in TEST_OPS:
        monkeypatch.setitem(registry._REGISTRY, opdef.qualified_name, opdef)


def conv_graph(relu: bool = True) -> Graph:
    g = Graph("main")
    x = g.add_input("x", t("N", 3, 8, 8))
    w = g.add_constant("w", np.zeros((4, 3, 1, 1), np.float32))
    conv = g.add_node(
        "Conv", [x, w], {"mode": "fast", "pads": [0, 0, 0, 0]}, domain=DOMAIN,
        outputs=["y"], output_types=[t("N", 4, 8, 8)], name="conv1", source="layer1.conv",
    )
    g.outputs = list(conv.outputs)
    if relu:
        relu_node = g.add_node("Relu", conv.outputs, outputs=["z"], output_types=[t("N", 4, 8, 8)], name="relu1")
        g.outputs = list(relu_node.outputs)
    return g


def problems_of(graph: Graph) -> list[str]:
    problems = find_problems(graph)
    if problems:
        with pytest.raises(VerificationError) as info:
            verify(graph)
        assert info.value.problems == problems
    else:
        verify(graph)
    return problems


def test_a_valid_graph_has_no_problems():
    assert problems_of(conv_graph()) == []
    assert problems_of(resnet50_like()) == []


def test_all_problems_are_reported_together():
    g = conv_graph()
    g.nodes[0].attrs["colour"] = "red"
    g.outputs.append(Value("ghost"))
    g.value("z").name = "x"
    with pytest.raises(IrtoolError) as info:
        verify(g)
    lines = str(info.value).splitlines()
    assert lines[0] == "graph 'main' failed verification (3 problems):"
    assert lines[1:] == [
        "  value name %x is used by more than one value",
        "  graph output 1 %ghost is not defined in the graph",
        "  node 'conv1' (test.verify::Conv, source 'layer1.conv'): unknown attribute 'colour' (known: group, mode, pads)",
    ]


# -- use-def chains ----------------------------------------------------------------------
def test_an_input_missing_from_its_values_uses():
    g = conv_graph()
    relu = g.nodes[1]
    g.value("y")._uses.clear()  # drift that only hand-editing the use list can cause
    assert problems_of(g) == ["node 'relu1' (Relu): input 0 %y does not list this use"]
    assert relu.inputs[0] is g.value("y")


def test_a_use_that_is_not_an_input():
    g = conv_graph()
    relu = g.nodes[1]
    g.value("x")._uses[(relu, 0)] = None
    assert problems_of(g) == ["value %x lists a use as input 0 of node 'relu1' (Relu), which is not it"]


def test_a_node_built_but_never_inserted_leaves_a_use():
    g = conv_graph()
    Node("Relu", [g.value("z")], [Value("orphan")], name="lost")
    assert problems_of(g) == ["value %z lists a use by node 'lost', which is not in the graph"]


# -- definitions and order ---------------------------------------------------------------
def test_nodes_out_of_topological_order_until_sorted():
    g = Graph("main")
    x = g.add_input("x", t(2))
    a = g.add_node("Relu", [x], outputs=["a"], name="first")
    g.add_node("Neg", [a.outputs[0]], outputs=["b"], name="second", before=a)
    assert problems_of(g) == [
        "node 'second' (Neg): input 0 %a is used before it is produced (nodes out of topological order)"
    ]
    g.sort()
    assert [n.name for n in g.nodes] == ["first", "second"]
    assert problems_of(g) == []


def test_values_from_elsewhere_are_not_defined():
    other = Graph("other")
    stranger = other.add_input("stranger", t("N", 4, 8, 8))
    g = conv_graph()
    g.nodes[1].replace_input_with(0, stranger)
    assert problems_of(g) == ["node 'relu1' (Relu): input 0 %stranger is not defined in the graph"]


def test_a_value_whose_producer_was_removed():
    g = conv_graph()
    conv, relu = g.nodes
    g.remove_nodes([conv], safe=False)
    assert problems_of(g) == [
        "node 'relu1' (Relu): input 0 %y is produced by node 'conv1', which is not in the graph"
    ]
    assert relu.inputs[0].producer is conv


def test_a_value_with_two_producers():
    g = conv_graph()
    conv, relu = g.nodes
    relu._outputs = (conv.outputs[0],)  # what no public API allows
    problems = problems_of(g)
    assert problems == [
        "node 'relu1' (Relu): output 0 %y names node 'conv1' (index 0) as its producer",
        "node 'relu1' (Relu): output %y already has a producer or is an input or constant",
        "graph output 0 %z is not defined in the graph",
    ]


def test_graph_inputs_and_constants_are_not_produced():
    g = conv_graph()
    g.inputs.append(g.value("y"))
    g.outputs = [g.value("x")]
    problems = problems_of(g)
    assert problems[0] == "graph input %y is also produced by node 'conv1' (test.verify::Conv, source 'layer1.conv')"
    assert "node 'conv1' (test.verify::Conv, source 'layer1.conv'): output %y already has a producer or is an input or constant" in problems


def test_constants_table_and_types():
    g = conv_graph()
    w = g.constants["w"]
    w.type = t(4, 3, 1, 2)
    g.add_constant("k", np.ones(2, np.int64)).name = "renamed"
    assert problems_of(g) == [
        "constant %w declares type tensor<4x3x1x2xfloat32> but holds float32[4, 3, 1, 1]",
        "constant %renamed is listed under the name 'k'",
    ]


def test_duplicate_value_names():
    g = conv_graph()
    g.value("y").name = "w"
    assert problems_of(g) == ["value name %w is used by more than one value"]


# -- registry schema ---------------------------------------------------------------------
def test_input_counts_and_missing_required_inputs():
    g = conv_graph()
    conv = g.nodes[0]
    conv.replace_input_with(1, None)
    conv.append_input(None)
    conv.append_input(g.value("x"))
    assert problems_of(g) == [
        "node 'conv1' (test.verify::Conv, source 'layer1.conv'): has 4 inputs, test.verify::Conv takes 2 to 3",
        "node 'conv1' (test.verify::Conv, source 'layer1.conv'): required input 1 (W) is missing",
    ]
    conv.truncate_inputs(1)
    assert problems_of(g) == [
        "node 'conv1' (test.verify::Conv, source 'layer1.conv'): has 1 inputs, test.verify::Conv takes 2 to 3"
    ]


def test_variadic_inputs_and_optional_outputs():
    g = Graph("main")
    x = g.add_input("x", t(2))
    g.add_node("Concat", [x, x, x], {"axis": 0}, domain=DOMAIN, name="cat")
    g.add_node("Concat", [], {"axis": 0}, domain=DOMAIN, name="empty_cat")
    g.add_node("Dropout", [x], domain=DOMAIN, outputs=2, name="drop2")
    g.add_node("Dropout", [x], domain=DOMAIN, outputs=3, name="drop3")
    g.add_node("Dropout", [x], domain=DOMAIN, outputs=0, name="drop0")
    assert problems_of(g) == [
        "node 'drop3' (test.verify::Dropout): has 3 outputs, test.verify::Dropout gives 1 to 2",
        "node 'drop0' (test.verify::Dropout): has 0 outputs, test.verify::Dropout gives 1 to 2",
    ]


def test_attributes_required_unknown_and_of_the_wrong_kind():
    g = conv_graph()
    conv = g.nodes[0]
    del conv.attrs["mode"]
    conv.attrs["group"] = "two"
    conv.attrs["pads"] = [0, 0.5]
    conv.attrs["strides"] = [1, 1]
    label = "node 'conv1' (test.verify::Conv, source 'layer1.conv')"
    assert problems_of(g) == [
        f"{label}: required attribute 'mode' is missing",
        f"{label}: attribute 'group' should be int, got str 'two'",
        f"{label}: attribute 'pads' should be ints, got list [0, 0.5]",
        f"{label}: unknown attribute 'strides' (known: group, mode, pads)",
    ]
    conv.attrs.update(mode="fast", group=np.int64(2), pads=np.array([0, 0]))
    del conv.attrs["strides"]
    assert problems_of(g) == []


def test_opaque_ops_are_checked_only_structurally():
    g = Graph("main")
    x = g.add_input("x", t(2))
    g.add_node("Anything", [x, None, x], {"whatever": object()}, domain="com.example", outputs=5, name="blob")
    assert problems_of(g) == []


# -- declared vs inferred types ----------------------------------------------------------
@pytest.mark.parametrize(
    "declared, problem",
    [
        (t("N", 4, 8, 8), None),
        (t("batch", 4, "H", None), None),  # symbolic and unknown dims agree with anything
        (TensorType(F32, None), None),
        (t("N", 5, 8, 8), "dim 1 differs"),
        (t("N", 4, 8), "ranks differ"),
        (t("N", 4, 8, 8, dtype=DType.float16), "element types differ"),
    ],
)
def test_declared_types_agree_with_the_shape_rule(declared, problem):
    g = conv_graph(relu=False)
    g.value("y").type = declared
    expected = [] if problem is None else [
        f"node 'conv1' (test.verify::Conv, source 'layer1.conv'): output %y declares {declared} "
        f"but its shape rule infers tensor<Nx4x8x8xfloat32> ({problem})"
    ]
    assert problems_of(g) == expected


def test_shape_rule_errors_become_problems():
    g = conv_graph()
    g.inputs[0].type = t("N", 5, 8, 8)
    g.add_node("Broken", [g.value("x")], domain=DOMAIN, outputs=["b"], output_types=[t(1)], name="broken")
    assert problems_of(g) == [
        "node 'conv1' (test.verify::Conv, source 'layer1.conv'): shape rule rejects the node: "
        "input has 5 channels, weight expects 3",
        "node 'broken' (test.verify::Broken): shape rule failed with AttributeError: "
        "'tuple' object has no attribute 'nonexistent'",
    ]


def test_types_are_not_checked_without_input_types():
    g = conv_graph(relu=False)
    g.inputs[0].type = None
    g.value("y").type = t(1, 2, 3)
    assert problems_of(g) == []


def test_real_op_definitions():
    """The verifier with the registry's own Conv and Relu (ir/ops)."""
    if registry.lookup("Conv") is None or registry.lookup("Conv").shape is None:
        pytest.skip("Conv is not registered")
    g = Graph("main")
    x = g.add_input("x", t(1, 3, 32, 32))
    w = g.add_constant("w", np.zeros((8, 3, 3, 3), np.float32))
    conv = g.add_node("Conv", [x, w], {"pads": [1, 1, 1, 1], "strides": [2, 2]}, outputs=["y"],
                      output_types=[t(1, 8, 16, 16)], name="conv")
    g.outputs = list(conv.outputs)
    assert problems_of(g) == []
    conv.outputs[0].type = t(1, 8, 32, 32)
    assert problems_of(g) == [
        "node 'conv' (Conv): output %y declares tensor<1x8x32x32xfloat32> but its shape rule infers "
        "tensor<1x8x16x16xfloat32> (dim 2 differs)"
    ]
    conv.attrs["bogus"] = 1  # shape rules only see nodes that fit their schema
    problems = problems_of(g)
    assert len(problems) == 1 and problems[0].startswith("node 'conv' (Conv): unknown attribute 'bogus'")


@pytest.mark.parametrize("model", zoo_names())
def test_zoo_models_verify(model):
    frontend = pytest.importorskip("irtool.frontends.onnx", reason="needs the ONNX frontend")
    graph = frontend.load_onnx(zoo_onnx(model))
    assert find_problems(graph) == []
