"""The verifier: checks a graph's invariants after a frontend or pass has built or edited it.

It checks use-def consistency (each input is listed in its value's uses and each use is a real
input), that every value a node uses is a graph input, a constant of this graph or produced by an
earlier node (topological order), that each value has one producer which owns it, that graph
outputs exist, that value names are unique, and, for registered ops, the registry schema (input
and output counts, required and unknown attributes, attribute kinds) and that declared output
types agree with the op's shape rule. Opaque (unregistered) ops are only checked structurally.

All problems are collected and reported together in one ``VerificationError``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .core import Graph, Node, Value
from .errors import IrtoolError
from .registry import OpDef, opdef_of
from .types import TensorType


class VerificationError(IrtoolError):
    """A graph broke its invariants; ``problems`` lists each one."""

    def __init__(self, graph_name: str, problems: list[str]):
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "".join(f"\n  {p}" for p in problems)
        super().__init__(f"graph '{graph_name}' failed verification ({count}):{lines}")


def verify(graph: Graph) -> None:
    """Raise ``VerificationError`` listing every problem, or return when there is none."""
    problems = find_problems(graph)
    if problems:
        raise VerificationError(graph.name, problems)


def find_problems(graph: Graph) -> list[str]:
    """Every problem in the graph, one line each, naming the node or value it concerns."""
    problems: list[str] = []
    _StructureCheck(graph, problems).run()
    # Rules run in node order, as in infer_shapes, so shapes computed from shapes are known.
    with _shape_tracking():
        for node in graph.nodes:
            opdef = opdef_of(node)
            # Shape rules may assume the schema holds, so they only see nodes that pass it.
            if opdef is not None and _check_schema(node, opdef, problems):
                _check_types(node, opdef, problems)
    return problems


def _shape_tracking():
    try:
        from .ops.rules import tracking_values
    except ImportError:  # op definitions without value tracking
        return contextlib.nullcontext()
    return tracking_values()


def _node_label(node: Node) -> str:
    label = f"node '{node.name}' ({node.qualified_op}"
    return label + (f", source '{node.source}')" if node.source else ")")


# -- structure ---------------------------------------------------------------------------
class _StructureCheck:
    """Definitions, use-def chains and order; ``defined`` holds what earlier steps defined."""

    def __init__(self, graph: Graph, problems: list[str]):
        self.graph = graph
        self.problems = problems
        self.nodes = graph.nodes
        self.in_graph = set(self.nodes)
        self.defined: dict[Value, None] = {}  # ordered, so problems come out in graph order
        self.names: dict[str, Value] = {}
        self.uses: dict[Value, set] = {}

    def run(self) -> None:
        self.check_inputs()
        self.check_constants()
        self.check_nodes()
        self.check_uses()
        for k, value in enumerate(self.graph.outputs):
            if value not in self.defined:
                self.problems.append(f"graph output {k} %{value.name} is not defined in the graph")

    def define(self, value: Value) -> None:
        self.defined[value] = None
        if self.names.setdefault(value.name, value) is not value:
            self.problems.append(f"value name %{value.name} is used by more than one value")

    def check_inputs(self) -> None:
        for value in self.graph.inputs:
            if value in self.defined:
                self.problems.append(f"graph input %{value.name} is listed twice")
                continue
            self.define(value)
            if value.producer is not None:
                producer = _node_label(value.producer)
                self.problems.append(f"graph input %{value.name} is also produced by {producer}")

    def check_constants(self) -> None:
        for key, value in self.graph.constants.items():
            name = value.name
            if key != name:
                self.problems.append(f"constant %{name} is listed under the name '{key}'")
            array = value.const
            if array is None:
                self.problems.append(f"constant %{name} holds no data")
            elif value.type is None or value.type.shape != array.shape or value.type.dtype.numpy != array.dtype:
                holds = f"{array.dtype}{list(array.shape)}"
                self.problems.append(f"constant %{name} declares type {value.type} but holds {holds}")
            if value in self.defined:
                self.problems.append(f"constant %{name} is also a graph input")
            if value.producer is not None:
                self.problems.append(f"constant %{name} is also produced by {_node_label(value.producer)}")
            self.define(value)

    def check_nodes(self) -> None:
        produced_at: dict[Value, int] = {}
        for position, node in enumerate(self.nodes):
            for value in node.outputs:
                produced_at.setdefault(value, position)
        for position, node in enumerate(self.nodes):
            label = _node_label(node)
            if node.graph is not self.graph:
                self.problems.append(f"{label} does not point back to graph '{self.graph.name}'")
            for i, value in enumerate(node.inputs):
                if value is not None:
                    self.check_input(node, label, i, value, produced_at.get(value, -1) >= position)
            for j, value in enumerate(node.outputs):
                if value.producer is not node or value.index != j:
                    owner = "no node" if value.producer is None else f"node '{value.producer.name}'"
                    self.problems.append(
                        f"{label}: output {j} %{value.name} names {owner} (index {value.index}) as its producer"
                    )
                if value in self.defined:
                    self.problems.append(
                        f"{label}: output %{value.name} already has a producer or is an input or constant"
                    )
                else:
                    self.define(value)

    def check_input(self, node: Node, label: str, i: int, value: Value, produced_later: bool) -> None:
        if value not in self.uses:
            self.uses[value] = set(value.uses)
        if (node, i) not in self.uses[value]:
            self.problems.append(f"{label}: input {i} %{value.name} does not list this use")
        where = f"{label}: input {i} %{value.name}"
        if value in self.defined:
            return
        if produced_later:
            self.problems.append(f"{where} is used before it is produced (nodes out of topological order)")
        elif value.producer is not None and value.producer not in self.in_graph:
            self.problems.append(f"{where} is produced by node '{value.producer.name}', which is not in the graph")
        else:
            self.problems.append(f"{where} is not defined in the graph")

    def check_uses(self) -> None:
        for value in self.defined:
            if value.graph is not self.graph:
                self.problems.append(f"value %{value.name} does not point back to graph '{self.graph.name}'")
            for user, i in value.uses:
                if user not in self.in_graph:
                    self.problems.append(
                        f"value %{value.name} lists a use by node '{user.name}', which is not in the graph"
                    )
                elif i >= len(user.inputs) or user.inputs[i] is not value:
                    self.problems.append(
                        f"value %{value.name} lists a use as input {i} of {_node_label(user)}, which is not it"
                    )


# -- registry schema ---------------------------------------------------------------------
def _port_counts(ports: tuple[str, ...]) -> tuple[int, int | None]:
    low = sum(1 for p in ports if not p.endswith(("?", "*")))
    high = None if any(p.endswith("*") for p in ports) else len(ports)
    return low, high


def _count_text(low: int, high: int | None) -> str:
    if high is None:
        return f"at least {low}"
    return str(low) if low == high else f"{low} to {high}"


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating))


def _all(values: Any, test) -> bool:
    if isinstance(values, np.ndarray):
        return values.ndim == 1 and all(test(v) for v in values.tolist())
    return isinstance(values, (list, tuple)) and all(test(v) for v in values)


_ATTR_KINDS = {
    "int": _is_int,
    "float": _is_number,
    "string": lambda x: isinstance(x, str),
    "ints": lambda x: _all(x, _is_int),
    "floats": lambda x: _all(x, _is_number),
    "strings": lambda x: _all(x, lambda v: isinstance(v, str)),
    "tensor": lambda x: isinstance(x, np.ndarray),
    "graph": lambda x: isinstance(x, (bytes, bytearray)),
}


def _check_schema(node: Node, opdef: OpDef, problems: list[str]) -> bool:
    """Append the node's schema problems; True when there were none."""
    found = len(problems)
    label = _node_label(node)
    low, high = opdef.arity()
    count = len(node.inputs)
    if count < low or (high is not None and count > high):
        problems.append(f"{label}: has {count} inputs, {opdef.qualified_name} takes {_count_text(low, high)}")
    for i, port in enumerate(opdef.inputs):
        if port.endswith("*"):
            break
        if not port.endswith("?") and i < count and node.inputs[i] is None:
            problems.append(f"{label}: required input {i} ({port}) is missing")
    low, high = _port_counts(opdef.outputs)
    count = len(node.outputs)
    if count < low or (high is not None and count > high):
        problems.append(f"{label}: has {count} outputs, {opdef.qualified_name} gives {_count_text(low, high)}")
    for key, spec in opdef.attrs.items():
        if spec.required and key not in node.attrs:
            problems.append(f"{label}: required attribute '{key}' is missing")
    for key in sorted(node.attrs):
        value = node.attrs[key]
        spec = opdef.attrs.get(key)
        if spec is None:
            known = ", ".join(sorted(opdef.attrs)) or "none"
            problems.append(f"{label}: unknown attribute '{key}' (known: {known})")
        elif value is not None and not _ATTR_KINDS.get(spec.kind, lambda _: True)(value):
            got = f"{type(value).__name__} {value!r:.60}"
            problems.append(f"{label}: attribute '{key}' should be {spec.kind}, got {got}")
    return len(problems) == found


# -- declared vs inferred types ----------------------------------------------------------
def _disagreement(declared: TensorType, inferred: TensorType) -> str | None:
    """Why two types cannot describe one tensor; symbolic and unknown dims match anything."""
    if declared.dtype != inferred.dtype:
        return "element types differ"
    if declared.shape is None or inferred.shape is None:
        return None
    if len(declared.shape) != len(inferred.shape):
        return "ranks differ"
    for axis, (d, e) in enumerate(zip(declared.shape, inferred.shape)):
        if isinstance(d, (int, np.integer)) and isinstance(e, (int, np.integer)) and d != e:
            return f"dim {axis} differs"
    return None


def _check_types(node: Node, opdef: OpDef, problems: list[str]) -> None:
    """Compare each typed output with what the op's shape rule infers from the input types."""
    if opdef.shape is None or all(v.type is None for v in node.outputs):
        return
    if any(v is not None and v.type is None for v in node.inputs):
        return  # rules assume typed inputs, as in infer_shapes
    label = _node_label(node)
    try:
        inferred = list(opdef.shape(node))
    except IrtoolError as exc:
        problems.append(f"{label}: shape rule rejects the node: {exc.message}")
        return
    except Exception as exc:  # a broken shape rule must not hide the other problems
        problems.append(f"{label}: shape rule failed with {type(exc).__name__}: {exc}")
        return
    for value, inferred_type in zip(node.outputs, inferred):
        if value.type is None or inferred_type is None:
            continue
        reason = _disagreement(value.type, inferred_type)
        if reason:
            problems.append(
                f"{label}: output %{value.name} declares {value.type} "
                f"but its shape rule infers {inferred_type} ({reason})"
            )
