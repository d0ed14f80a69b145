"""ir/core.py's mutation API keeps use-def chains, names and node order right by itself."""

from __future__ import annotations

import numpy as np
import pytest

from irtool.ir.core import Graph, Node, Value
from irtool.ir.errors import IrtoolError
from irtool.ir.types import DType, TensorType
from irtool.ir.verify import find_problems

T = TensorType(DType.float32, (2,))


def chain(*ops: str) -> tuple[Graph, list[Node]]:
    """x -> ops[0] -> ops[1] -> ... -> graph output."""
    g = Graph("main")
    value = g.add_input("x", T)
    nodes = []
    for k, op in enumerate(ops):
        node = g.add_node(op, [value], outputs=[f"v{k}"], output_types=[T], name=f"n{k}")
        nodes.append(node)
        value = node.outputs[0]
    g.outputs = [value]
    return g, nodes


def uses(value: Value) -> list[tuple[str, int]]:
    return [(node.name, i) for node, i in value.uses]


# -- inputs and uses ---------------------------------------------------------------------
def test_replace_input_with_updates_both_use_lists():
    g = Graph("main")
    x, y = g.add_input("x", T), g.add_input("y", T)
    add = g.add_node("Pair", [x, x], outputs=["s"], name="add")  # an opaque op: inputs may be absent
    assert uses(x) == [("add", 0), ("add", 1)]
    add.replace_input_with(1, y)
    assert uses(x) == [("add", 0)] and uses(y) == [("add", 1)]
    assert add.inputs == (x, y)
    add.replace_input_with(0, None)
    assert uses(x) == [] and add.inputs == (None, y)
    add.replace_input_with(1, y)  # the same value: nothing changes
    assert uses(y) == [("add", 1)]
    assert find_problems(g) == []


def test_append_and_truncate_inputs_keep_uses_right():
    g = Graph("main")
    x = g.add_input("x", T)
    node = g.add_node("Sum", [x], outputs=["s"], name="sum")
    node.append_input(x)
    node.append_input(None)
    node.append_input(x)
    assert uses(x) == [("sum", 0), ("sum", 1), ("sum", 3)]
    node.truncate_inputs(2)
    assert node.inputs == (x, x) and uses(x) == [("sum", 0), ("sum", 1)]
    assert find_problems(g) == []


def test_replace_all_uses_with_moves_every_use():
    g = Graph("main")
    x, y = g.add_input("x", T), g.add_input("y", T)
    a = g.add_node("Relu", [x], outputs=["a"], name="a")
    b = g.add_node("Add", [x, a.outputs[0]], outputs=["b"], name="b")
    c = g.add_node("Mul", [y, x], outputs=["c"], name="c")
    g.outputs = [b.outputs[0], c.outputs[0]]
    x.replace_all_uses_with(y)
    assert uses(x) == []
    assert uses(y) == [("c", 0), ("a", 0), ("b", 0), ("c", 1)]
    assert a.inputs == (y,) and b.inputs[0] is y and c.inputs == (y, y)
    assert find_problems(g) == []


def test_replace_all_uses_with_refuses_graph_outputs_unless_asked():
    g, (n0, n1) = chain("Relu", "Neg")
    old, new = n1.outputs[0], n0.outputs[0]
    with pytest.raises(IrtoolError, match="'v1' is a graph output; pass replace_graph_outputs=True"):
        old.replace_all_uses_with(new)
    assert g.outputs == [old] and uses(new) == [("n1", 0)]  # nothing changed
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    assert g.outputs == [new]
    g.remove_nodes([n1])
    assert find_problems(g) == [] and len(g) == 1


# -- removal -----------------------------------------------------------------------------
def test_remove_nodes_checks_the_whole_batch_before_changing_anything():
    g, (n0, n1, n2) = chain("Relu", "Neg", "Abs")
    before = [uses(v) for v in g.values()]
    with pytest.raises(IrtoolError, match="cannot remove node 'n1': output 'v1' is still used by 'n2'"):
        g.remove_nodes([n0, n1])
    with pytest.raises(IrtoolError, match="cannot remove node 'n2': its output 'v2' is a graph output"):
        g.remove_nodes([n2])
    other, (stranger,) = chain("Relu")
    with pytest.raises(IrtoolError, match="is not in graph 'main'"):
        g.remove_nodes([n0, stranger])
    assert g.nodes == (n0, n1, n2)
    assert [uses(v) for v in g.values()] == before
    assert all(n.graph is g for n in (n0, n1, n2))
    assert find_problems(g) == []


def test_remove_nodes_takes_a_connected_batch_in_any_order():
    g, (n0, n1, n2, n3) = chain("Relu", "Neg", "Abs", "Exp")
    n3.replace_input_with(0, g.inputs[0])
    g.remove_nodes([n2, n0, n1, n1])
    assert g.nodes == (n3,)
    assert uses(g.inputs[0]) == [("n3", 0)]
    assert all(v is None for n in (n0, n1, n2) for v in n.inputs)
    assert find_problems(g) == []


def test_unsafe_removal_leaves_what_the_verifier_reports():
    g, (n0, n1) = chain("Relu", "Neg")
    g.remove_nodes([n0], safe=False)
    assert find_problems(g) == [
        "node 'n1' (Neg): input 0 %v0 is produced by node 'n0', which is not in the graph"
    ]


def test_iterating_nodes_stays_safe_while_editing():
    g, nodes = chain("Relu", "Neg", "Abs", "Exp")
    g.outputs = [g.inputs[0]]
    seen = []
    for node in g:  # a snapshot: removing and inserting do not disturb the loop
        seen.append(node.name)
        g.add_node("Identity", [g.inputs[0]], name=f"added_{node.name}", before=node)
        g.remove_nodes([node], safe=False)
    assert seen == ["n0", "n1", "n2", "n3"]
    assert [n.name for n in g.nodes] == ["added_n0", "added_n1", "added_n2", "added_n3"]
    assert uses(g.inputs[0]) == [(f"added_n{k}", 0) for k in range(4)]
    assert find_problems(g) == []


# -- order -------------------------------------------------------------------------------
def test_sort_keeps_an_ordered_graph_as_it_is():
    g = Graph("main")
    x = g.add_input("x", T)
    a = g.add_node("Relu", [x], name="a")
    b = g.add_node("Neg", [x], name="b")
    c = g.add_node("Add", [b.outputs[0], a.outputs[0]], name="c")
    d = g.add_node("Abs", [x], name="d")
    g.sort()
    assert g.nodes == (a, b, c, d)


def test_sort_moves_producers_before_users_and_keeps_independent_nodes_in_order():
    g = Graph("main")
    x = g.add_input("x", T)
    p = g.add_node("Relu", [x], name="p")
    q = g.add_node("Neg", [p.outputs[0]], name="q")
    independent = g.add_node("Abs", [x], name="independent")
    late = g.add_node("Exp", [x], name="late")
    q.replace_input_with(0, late.outputs[0])  # q now needs a node placed after it
    g.sort()
    order = [n.name for n in g.nodes]
    assert order == ["p", "late", "q", "independent"]
    assert find_problems(g) == []


def test_sort_reports_a_cycle_and_leaves_the_order_unchanged():
    g, (n0, n1, n2) = chain("Relu", "Neg", "Abs")
    n0.replace_input_with(0, n2.outputs[0])
    with pytest.raises(IrtoolError, match="has a cycle"):
        g.sort()
    assert g.nodes == (n0, n1, n2)


# -- names -------------------------------------------------------------------------------
def test_fresh_names_never_repeat_a_name_in_the_graph():
    g = Graph("main")
    x = g.add_input("x", T)
    g.add_constant("w", np.zeros(3, np.float32))
    node = g.add_node("Relu", [x], outputs=["y"], name="relu")
    taken = {"x", "w", "y"}
    fresh = [g.fresh_name(hint) for hint in ["x", "w", "y", "relu", "relu", "z", "z", ""]]
    assert fresh[3] == "relu" and fresh[5] == "z" and fresh[7] == "v"
    assert len(set(fresh)) == len(fresh) and not set(fresh[:3]) & taken and fresh[6] != "z"
    clash = g.add_node("Relu", [node.outputs[0]], outputs=["y"], name="relu")
    assert clash.name != "relu" and clash.outputs[0].name not in taken | set(fresh)


def test_nodes_and_values_have_separate_namespaces():
    g = Graph("main")
    x = g.add_input("x", T)
    node = g.add_node("Relu", [x])
    assert node.name == "relu" and node.outputs[0].name == "relu"
    assert find_problems(g) == []


def test_take_name_hands_a_name_to_the_replacing_value():
    g, (n0, n1) = chain("Relu", "Neg")
    old = n0.outputs[0]
    folded = g.add_constant(g.take_name("v0"), np.ones(2, np.float32))
    assert folded.name == "v0" and old.name == "v0_0" and g.constants == {"v0": folded}
    old.replace_all_uses_with(folded)
    g.remove_nodes([n0])
    assert uses(folded) == [("n1", 0)] and find_problems(g) == []


def test_take_name_rekeys_a_constant_and_frees_a_removed_value_name():
    g, (n0, n1) = chain("Relu", "Neg")
    w = g.add_constant("w", np.ones(2, np.float32))
    assert g.take_name("w") == "w" and g.constants == {"w_0": w}
    assert g.add_constant("w", np.zeros(2, np.float32)).name == "w"
    # A removed node's output still holds its name; taking it hands it on (as fold-bn does).
    g.outputs = [n0.outputs[0]]
    g.remove_nodes([n1])
    g.rename_value(n0.outputs[0], g.take_name("v1"))
    assert [v.name for v in g.outputs] == ["v1"] and find_problems(g) == []
    assert g.take_name("unused") == "unused" and g.fresh_name("unused") == "unused"


def test_rename_value_keeps_names_unique_and_constants_keyed():
    g = Graph("main")
    x = g.add_input("x", T)
    w = g.add_constant("w", np.ones(2, np.float32))
    g.add_node("Add", [x, w], outputs=["y"], name="add")
    with pytest.raises(IrtoolError, match="name 'x' is already used"):
        g.rename_value(w, "x")
    g.rename_value(w, "weight")
    assert g.constants == {"weight": w} and w.name == "weight"
    assert g.fresh_name("w") == "w"  # the old name is free again
    assert find_problems(g) == []


# -- regressions -------------------------------------------------------------------------
def test_a_refused_node_leaves_no_uses_behind():
    g, (n0,) = chain("Relu")
    x = g.inputs[0]
    with pytest.raises(IrtoolError, match="already has a producer"):
        Node("Neg", [x], [n0.outputs[0]])
    assert uses(x) == [("n0", 0)]


def test_inserting_at_a_foreign_anchor_changes_nothing():
    g, (n0,) = chain("Relu")
    other, (anchor,) = chain("Relu")
    x = g.inputs[0]
    with pytest.raises(IrtoolError, match="is not in graph"):
        g.add_node("Neg", [x], name="neg", before=anchor)
    assert uses(x) == [("n0", 0)]
    assert g.fresh_name("neg") == "neg"


def test_remove_constant_refuses_a_node_output():
    g, (n0, n1) = chain("Relu", "Neg")
    g.outputs = [g.inputs[0]]
    g.remove_nodes([n1])
    with pytest.raises(IrtoolError):
        g.remove_constant(n0.outputs[0])
    assert n0.outputs[0].graph is g and g.fresh_name("v0") != "v0"


# -- copies ------------------------------------------------------------------------------------
def small_net() -> Graph:
    """x -> Conv(w, b, pads 1) -> Relu -> Mul(scale) -> y, typed, with meta on every level."""
    from irtool.ir.shapes import infer_shapes

    rng = np.random.default_rng(0)
    g = Graph("small")
    x = g.add_input("x", TensorType(DType.float32, (1, 2, 4, 4)))
    w = g.add_constant("w", rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    b = g.add_constant("b", np.array([0.5, -0.5, 0.25], np.float32))
    scale = g.add_constant("scale", np.array(2.0, np.float32))
    conv = g.add_node("Conv", [x, w, b], {"pads": [1, 1, 1, 1]}, outputs=["c"], name="conv", source="layer1.conv")
    relu = g.add_node("Relu", conv.outputs, outputs=["r"], name="relu")
    mul = g.add_node("Mul", [relu.outputs[0], scale], outputs=["y"], name="mul")
    g.outputs = list(mul.outputs)
    infer_shapes(g)
    g.meta["metadata_props"] = {"irtool.pruned_channels": "{}"}
    conv.meta["notes"] = ["folded"]
    w.meta["trainable"] = False
    return g


def test_copy_is_a_deep_copy():
    from irtool.ir.text import print_graph

    g = small_net()
    text, weights = print_graph(g), g.constants["w"].const.copy()
    copy = g.copy()
    assert print_graph(copy) == text
    assert not {id(v) for v in g.values()} & {id(v) for v in copy.values()}
    assert not {id(n) for n in g.nodes} & {id(n) for n in copy.nodes}

    copy.constants["w"].const[0, 0, 0, 0] = 100.0
    copy.constants["b"].const = np.zeros(3, np.float32)
    conv, relu, mul = copy.nodes
    conv.attrs["pads"][0] = 0
    conv.meta["notes"].append("edited")
    copy.constants["w"].meta["trainable"] = True
    copy.meta["metadata_props"]["irtool.pruned_channels"] = '{"w": {}}'
    relu.outputs[0].replace_all_uses_with(conv.outputs[0])
    copy.remove_nodes([relu])
    copy.rename_value(mul.outputs[0], "out")
    copy.add_input("z", T)

    assert print_graph(g) == text
    assert np.array_equal(g.constants["w"].const, weights)
    assert g.constants["b"].const.tolist() == [0.5, -0.5, 0.25]
    original_conv = g.nodes[0]
    assert original_conv.attrs == {"pads": [1, 1, 1, 1]} and original_conv.meta == {"notes": ["folded"]}
    assert g.constants["w"].meta == {"trainable": False}
    assert g.meta == {"metadata_props": {"irtool.pruned_channels": "{}"}}
    assert [n.name for n in g.nodes] == ["conv", "relu", "mul"] and [v.name for v in g.outputs] == ["y"]
    assert [v.name for v in g.inputs] == ["x"] and g.fresh_name("out") == "out"
    assert all(v.graph is g for v in g.values()) and find_problems(g) == []


def test_copy_keeps_read_only_constants_read_only():
    g = Graph("main")
    frozen = np.arange(4, dtype=np.float32)
    frozen.flags.writeable = False
    g.add_constant("w", frozen)
    g.add_constant("b", np.zeros(4, np.float32))
    copy = g.copy()
    assert not copy.constants["w"].const.flags.writeable and copy.constants["b"].const.flags.writeable
    assert not np.shares_memory(copy.constants["w"].const, frozen)


def test_copy_runs_in_onnxruntime_exactly_as_the_original():
    from irtool.backends.onnx import onnx_bytes, run_onnxruntime

    g = small_net()
    copy = g.copy()
    assert onnx_bytes(copy) == onnx_bytes(g)
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    (expected,), (got,) = run_onnxruntime(g, {"x": x}), run_onnxruntime(copy, {"x": x})
    assert expected.shape == (1, 3, 4, 4) and np.array_equal(got, expected)


def test_copy_refuses_a_node_reading_a_value_of_another_graph():
    g, _ = chain("Relu")
    stranger = Graph("other").add_input("z", T)
    g.add_node("Neg", [stranger], name="neg")
    with pytest.raises(IrtoolError, match="node 'neg' reads 'z', which is not in graph 'main'"):
        g.copy()
