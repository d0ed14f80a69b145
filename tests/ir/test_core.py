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


# -- found while writing these tests (see the report; core.py is not ours to edit) ---------
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
