"""Dead code elimination: drop nodes and constants nothing reaches the graph outputs through.

ONNX ops are pure (no side effects), so a node whose outputs are neither graph outputs nor used
by a live node is removed, whatever its op. Graph inputs stay: they are the model's interface.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Graph, Node
from .base import Pass, PassContext, PassResult


def _names_used_by_subgraphs(graph: Graph) -> set[str]:
    """Outer values that subgraph attributes (If/Loop/Scan bodies) may refer to by name.

    A body can capture an outer value by name only, so that value has no recorded use; it
    must not be taken for dead.
    """
    names: set[str] = set()
    for node in graph.nodes:
        for attr in node.attrs.values():
            for sub in attr if isinstance(attr, (list, tuple)) else [attr]:
                if isinstance(sub, Graph):
                    _collect_graph_inputs(sub, names)
                elif isinstance(sub, (bytes, bytearray)):  # an opaque op's serialized GraphProto
                    _collect_proto_inputs(_parse_graph_proto(bytes(sub)), names)
    return names


def _parse_graph_proto(data: bytes):
    from onnx import GraphProto

    proto = GraphProto()
    try:
        proto.ParseFromString(data)
    except Exception:  # protobuf's DecodeError: not a graph, so it captures nothing
        return GraphProto()
    return proto


def _collect_graph_inputs(sub: Graph, names: set[str]) -> None:
    for node in sub.nodes:
        names.update(v.name for v in node.inputs if v is not None)
    names.update(_names_used_by_subgraphs(sub))


def _collect_proto_inputs(graph_proto, names: set[str]) -> None:
    for node in graph_proto.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.HasField("g"):
                _collect_proto_inputs(attr.g, names)
            for sub in attr.graphs:
                _collect_proto_inputs(sub, names)


def dead_nodes(graph: Graph) -> list[Node]:
    """Nodes whose results never reach a graph output, in reverse topological order."""
    captured = _names_used_by_subgraphs(graph)
    dead: set[Node] = set()
    order: list[Node] = []
    for node in reversed(graph.nodes):
        live = any(
            value.is_graph_output
            or value.name in captured
            or any(user not in dead for user, _ in value.uses)
            for value in node.outputs
        )
        if not live:
            dead.add(node)
            order.append(node)
    return order


@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes whose outputs are unused, and constants no node uses."""

    name = "dce"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        dead = dead_nodes(graph)
        graph.remove_nodes(dead)
        captured = _names_used_by_subgraphs(graph)
        unused = [
            c for c in graph.constants.values() if not c.uses and not c.is_graph_output and c.name not in captured
        ]
        for constant in unused:
            graph.remove_constant(constant)
        log = []
        if dead:
            log.append(f"removed {len(dead)} dead node{'s' if len(dead) != 1 else ''}")
        if unused:
            elements = sum(int(c.const.size) for c in unused)
            log.append(f"removed {len(unused)} unused constant{'s' if len(unused) != 1 else ''} ({elements} elements)")
        return PassResult(graph, bool(dead or unused), log)
