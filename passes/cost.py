"""Cost analysis: parameters, multiply-accumulates and constant bytes, in total and per node.

MACs come from the op registry's cost rules (one execution, an unknown batch counting as 1).
A registered op without a cost rule does no multiply-accumulates (a ReLU, a reshape); a node
whose rule cannot tell (unknown shapes) or whose op is unregistered is listed in ``unknown``
rather than silently counted as free. Parameters are the elements of every constant.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..ir.core import Graph, Node
from ..ir.errors import IrtoolError
from ..ir.registry import opdef_of


@dataclass(frozen=True)
class NodeCost:
    node: str
    op: str
    source: str
    macs: int | None
    """None when the cost is unknown (unregistered op, or shapes the rule cannot use)."""
    params: int
    """Elements of the constants the node reads."""


@dataclass
class Cost:
    params: int
    macs: int
    bytes: int
    nodes: list[NodeCost] = field(default_factory=list)
    by_op: dict[str, int] = field(default_factory=dict)
    """Node count per op, most frequent first."""
    macs_by_op: dict[str, int] = field(default_factory=dict)
    """MACs per op, for ops that do any, largest first."""
    unknown: list[str] = field(default_factory=list)
    """Names of the nodes whose MACs are unknown (not included in ``macs``)."""

    @property
    def node_count(self) -> int:
        return len(self.nodes)

    def format(self) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in self.by_op.items())
        lines = [
            f"nodes: {self.node_count} ({ops})" if ops else "nodes: 0",
            f"params: {human(self.params)}",
            f"MACs: {human(self.macs)}",
            f"bytes: {human(self.bytes, 'B')}",
        ]
        if self.unknown:
            shown = ", ".join(self.unknown[:5]) + (", ..." if len(self.unknown) > 5 else "")
            lines.append(f"MACs unknown for {len(self.unknown)} node(s): {shown}")
        return "\n".join(lines)


def human(number: float, unit: str = "") -> str:
    """``4_089_184_256 -> '4.09 G'``, ``102_000 -> '102.00 k'``, ``512 -> '512'``."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= scale:
            return f"{number / scale:.2f} {prefix}{unit}"
    return f"{int(number)} {unit}".rstrip() if float(number).is_integer() else f"{number:.2f} {unit}".rstrip()


def node_macs(node: Node) -> int | None:
    """The node's MACs from its registry cost rule: 0 without a rule, None when unknown."""
    opdef = opdef_of(node)
    if opdef is None:
        return None
    if opdef.cost is None:
        return 0
    try:
        macs = opdef.cost(node)
    except IrtoolError:
        return None
    return None if macs is None else int(macs)


def graph_cost(graph: Graph) -> Cost:
    """Params, MACs and bytes of ``graph``; also registered as the ``cost`` analysis."""
    nodes: list[NodeCost] = []
    by_op: Counter[str] = Counter()
    macs_by_op: Counter[str] = Counter()
    unknown: list[str] = []
    for node in graph.nodes:
        macs = node_macs(node)
        params = sum(int(v.const.size) for v in dict.fromkeys(node.inputs) if v is not None and v.is_const)
        nodes.append(NodeCost(node.name, node.qualified_op, node.source, macs, params))
        by_op[node.qualified_op] += 1
        if macs is None:
            unknown.append(node.name)
        elif macs:
            macs_by_op[node.qualified_op] += macs
    constants = [c.const for c in graph.constants.values()]
    return Cost(
        params=sum(int(a.size) for a in constants),
        macs=sum(macs_by_op.values()),
        bytes=sum(int(a.nbytes) for a in constants),
        nodes=nodes,
        by_op=dict(by_op.most_common()),
        macs_by_op=dict(macs_by_op.most_common()),
        unknown=unknown,
    )


def _change(before: float, after: float) -> str:
    if before == after:
        return "0.0%"
    if before == 0:
        return "new"
    return f"{100 * (after - before) / before:+.1f}%"


def format_comparison(before: Cost, after: Cost) -> str:
    """A before/after table of params, MACs, bytes and nodes with the relative change."""
    rows = [
        ("params", before.params, after.params, ""),
        ("MACs", before.macs, after.macs, ""),
        ("bytes", before.bytes, after.bytes, "B"),
        ("nodes", before.node_count, after.node_count, ""),
    ]
    lines = [f"{'':8}{'before':>12}{'after':>12}{'change':>10}"]
    for label, b, a, unit in rows:
        lines.append(f"{label:8}{human(b, unit):>12}{human(a, unit):>12}{_change(b, a):>10}")
    return "\n".join(lines)
