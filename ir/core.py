"""The dataflow IR: a ``Graph`` of ``Node``s connected by ``Value``s.

Use-def chains are maintained by the mutation API itself: a value knows its uses as
``(node, input index)`` pairs, a node's inputs change only through ``Node.replace_input_with``,
and a node owns its outputs. Passes never edit ``_uses`` or ``_inputs`` by hand.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np

from .errors import IrtoolError
from .types import TensorType


class Value:
    """A tensor in the graph: a graph input, a constant (``const`` is set) or a node output."""

    __slots__ = ("name", "type", "_producer", "_index", "_uses", "_const", "graph", "meta")

    def __init__(self, name: str, type: TensorType | None = None):
        self.name = name
        self.type = type
        self._producer: Node | None = None
        self._index: int | None = None
        # Insertion-ordered set of (node, input index).
        self._uses: dict[tuple[Node, int], None] = {}
        self._const: np.ndarray | None = None
        self.graph: Graph | None = None
        self.meta: dict[str, Any] = {}

    # -- structure -------------------------------------------------------------------
    @property
    def producer(self) -> Node | None:
        return self._producer

    @property
    def index(self) -> int | None:
        """The output index of this value on its producer."""
        return self._index

    @property
    def uses(self) -> tuple[tuple[Node, int], ...]:
        return tuple(self._uses)

    @property
    def users(self) -> list[Node]:
        """Consuming nodes, each once, in use order."""
        return list(dict.fromkeys(node for node, _ in self._uses))

    @property
    def is_graph_output(self) -> bool:
        return self.graph is not None and any(v is self for v in self.graph.outputs)

    @property
    def is_graph_input(self) -> bool:
        return self.graph is not None and any(v is self for v in self.graph.inputs)

    # -- constants -------------------------------------------------------------------
    @property
    def const(self) -> np.ndarray | None:
        return self._const

    @const.setter
    def const(self, array: np.ndarray | None) -> None:
        if array is None:
            self._const = None
            return
        array = np.asarray(array)
        self._const = array
        self.type = TensorType.of(array)

    @property
    def is_const(self) -> bool:
        return self._const is not None

    # -- mutation --------------------------------------------------------------------
    def replace_all_uses_with(self, other: Value, *, replace_graph_outputs: bool = False) -> None:
        """Make every user of this value use ``other``.

        A graph output is rewired only when asked: it changes the graph's interface.
        """
        if other is self:
            return
        if self.is_graph_output:
            if not replace_graph_outputs:
                raise IrtoolError(
                    f"value '{self.name}' is a graph output; pass replace_graph_outputs=True to rewire it"
                )
            graph = self.graph
            assert graph is not None
            graph.outputs = [other if v is self else v for v in graph.outputs]
        for node, i in list(self._uses):
            node.replace_input_with(i, other)

    def __repr__(self) -> str:
        return f"Value(%{self.name}: {self.type})"


class Node:
    """An operation: an op name from the op registry, inputs, outputs and attributes.

    ``source`` is the name users know the layer by (``layer4.1.conv1`` from PyTorch, the node
    name from ONNX). ``domain`` is empty for the standard op set.
    """

    __slots__ = ("op", "domain", "name", "source", "attrs", "_inputs", "_outputs", "graph", "meta")

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None],
        outputs: Sequence[Value],
        attrs: Mapping[str, Any] | None = None,
        *,
        name: str = "",
        source: str = "",
        domain: str = "",
    ):
        self.op = op
        self.domain = domain
        self.name = name
        self.source = source
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.graph: Graph | None = None
        self.meta: dict[str, Any] = {}
        # Check everything before touching any value, so a refused node leaves no trace.
        self._outputs: tuple[Value, ...] = tuple(outputs)
        if len({id(v) for v in self._outputs}) != len(self._outputs):
            raise IrtoolError(f"node '{name or op}' lists the same output value twice")
        for value in self._outputs:
            if value._producer is not None:
                raise IrtoolError(f"value '{value.name}' already has a producer")
        self._inputs: list[Value | None] = []
        for i, value in enumerate(inputs):
            self._inputs.append(value)
            if value is not None:
                value._uses[(self, i)] = None
        for i, value in enumerate(self._outputs):
            value._producer = self
            value._index = i

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return self._outputs

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op}" if self.domain else self.op

    def replace_input_with(self, index: int, value: Value | None) -> None:
        """The only way a node's input changes; keeps both values' use lists right."""
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            old._uses.pop((self, index), None)
        self._inputs[index] = value
        if value is not None:
            value._uses[(self, index)] = None

    def append_input(self, value: Value | None) -> None:
        self._inputs.append(None)
        self.replace_input_with(len(self._inputs) - 1, value)

    def truncate_inputs(self, count: int) -> None:
        """Drop inputs from ``count`` on (optional trailing inputs)."""
        for i in range(len(self._inputs) - 1, count - 1, -1):
            self.replace_input_with(i, None)
        del self._inputs[count:]

    def _detach_inputs(self) -> None:
        for i in range(len(self._inputs)):
            self.replace_input_with(i, None)

    def __repr__(self) -> str:
        return f"Node({self.qualified_op} '{self.name}')"


class Graph:
    """Inputs, outputs, nodes in topological order and named constants.

    ``nodes`` returns a snapshot, so iterating it stays safe while a pass edits the graph.
    """

    def __init__(self, name: str = "main", *, opset: int = 18):
        self.name = name
        self.opset = opset
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.opset_imports: dict[str, int] = {}
        self.meta: dict[str, Any] = {}
        self._nodes: dict[Node, None] = {}
        self._names: set[str] = set()  # value names
        self._node_names: set[str] = set()  # node names: a namespace of their own, as in ONNX
        self._counter = itertools.count()

    # -- queries ---------------------------------------------------------------------
    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def values(self) -> Iterator[Value]:
        """Every value once: inputs, constants, then node outputs in order."""
        yield from self.inputs
        yield from self.constants.values()
        for node in self._nodes:
            yield from node.outputs

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise IrtoolError(f"no value named '{name}'", where=self.name)

    def find_nodes(self, *, op: str | None = None, source: str | None = None) -> list[Node]:
        return [
            n
            for n in self._nodes
            if (op is None or n.op == op) and (source is None or n.source == source)
        ]

    # -- names -----------------------------------------------------------------------
    def fresh_name(self, hint: str = "v", *, node: bool = False) -> str:
        """A value (or, with ``node``, node) name not used in this graph yet."""
        used = self._node_names if node else self._names
        hint = hint or "v"
        if hint not in used:
            used.add(hint)
            return hint
        while True:
            candidate = f"{hint}_{next(self._counter)}"
            if candidate not in used:
                used.add(candidate)
                return candidate

    def _claim(self, value: Value) -> Value:
        if value.name in self._names and value.graph is not self:
            value.name = self.fresh_name(value.name)
        self._names.add(value.name)
        value.graph = self
        return value

    # -- building --------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType | None = None) -> Value:
        value = self._claim(Value(name, type))
        self.inputs.append(value)
        return value

    def add_constant(self, name: str, array: np.ndarray) -> Value:
        value = Value(name)
        value.const = np.asarray(array)
        self._claim(value)
        self.constants[value.name] = value
        return value

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: Mapping[str, Any] | None = None,
        *,
        outputs: int | Sequence[str] = 1,
        output_types: Sequence[TensorType | None] | None = None,
        name: str = "",
        source: str = "",
        domain: str = "",
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node with fresh output values and place it (at the end by default)."""
        anchor = before or after
        if anchor is not None and anchor.graph is not self:
            raise IrtoolError(f"{anchor!r} is not in graph '{self.name}'")
        if isinstance(outputs, int):
            base = name or op.lower()
            out_names = [base if outputs == 1 else f"{base}_{i}" for i in range(outputs)]
        else:
            out_names = list(outputs)
        types = list(output_types) if output_types is not None else [None] * len(out_names)
        values = [Value(n, t) for n, t in zip(out_names, types)]
        node = Node(op, inputs, values, attrs, name=name, source=source, domain=domain)
        self.insert(node, before=before, after=after)
        return node

    def insert(self, node: Node, *, before: Node | None = None, after: Node | None = None) -> Node:
        """Place an existing node; its outputs' names are made unique in this graph."""
        if node.graph is not None:
            raise IrtoolError(f"{node!r} already belongs to a graph")
        anchor = before or after
        if anchor is not None and anchor.graph is not self:
            raise IrtoolError(f"{anchor!r} is not in graph '{self.name}'")
        node.name = self.fresh_name(node.name or node.op.lower(), node=True)
        node.graph = self
        for value in node.outputs:
            self._claim(value)
        if anchor is None:
            self._nodes[node] = None
            return node
        ordered: dict[Node, None] = {}
        for n in self._nodes:
            if n is anchor and before is not None:
                ordered[node] = None
            ordered[n] = None
            if n is anchor and after is not None:
                ordered[node] = None
        self._nodes = ordered
        return node

    # -- removal ---------------------------------------------------------------------
    def remove_nodes(self, nodes: Iterable[Node], *, safe: bool = True) -> None:
        """Remove a batch of nodes.

        With ``safe`` (the default) the whole batch is checked first: no output may be a graph
        output or be used by a node outside the batch. Nothing changes when a check fails.
        """
        batch = list(dict.fromkeys(nodes))
        members = set(batch)
        for node in batch:
            if node.graph is not self:
                raise IrtoolError(f"{node!r} is not in graph '{self.name}'")
        if safe:
            for node in batch:
                for value in node.outputs:
                    if value.is_graph_output:
                        raise IrtoolError(
                            f"cannot remove node '{node.name}': its output '{value.name}' is a graph output"
                        )
                    outside = [u for u, _ in value._uses if u not in members]
                    if outside:
                        raise IrtoolError(
                            f"cannot remove node '{node.name}': output '{value.name}' is still used by '{outside[0].name}'"
                        )
        for node in batch:
            node._detach_inputs()
            del self._nodes[node]
            self._node_names.discard(node.name)
            node.graph = None

    def remove_constant(self, value: Value) -> None:
        if self.constants.get(value.name) is not value:
            raise IrtoolError(f"'{value.name}' is not a constant of graph '{self.name}'")
        if value._uses or value.is_graph_output:
            raise IrtoolError(f"constant '{value.name}' is still used")
        self.constants.pop(value.name, None)
        self._names.discard(value.name)
        value.graph = None

    def rename_value(self, value: Value, name: str) -> None:
        """Give a value a new name, keeping names unique and the constant table keyed right."""
        if name == value.name:
            return
        if name in self._names:
            raise IrtoolError(f"name '{name}' is already used in graph '{self.name}'")
        self._set_name(value, name)

    def take_name(self, name: str) -> str:
        """Free ``name`` for a value that replaces the one holding it, and return it.

        Passes that swap a value for a new one keep the old name, so graph outputs and the
        constant names users know stay the same; the old value, if still in the graph, gets a
        fresh name such as ``name_0``.
        """
        holder = next((v for v in self.values() if v.name == name), None)
        if holder is not None:
            self._set_name(holder, self.fresh_name(name))
        self._names.discard(name)
        return name

    def _set_name(self, value: Value, name: str) -> None:
        self._names.discard(value.name)
        if value.is_const and self.constants.get(value.name) is value:
            del self.constants[value.name]
            self.constants[name] = value
        value.name = name
        self._names.add(name)

    # -- copying ---------------------------------------------------------------------
    def copy(self) -> Graph:
        """A deep copy with the same names, node order and types.

        Nothing is shared but the (immutable) types: editing the copy, its constants in place
        included, never changes this graph. Constants keep their writeable flag.
        """
        new = Graph(self.name, opset=self.opset)
        new.opset_imports = dict(self.opset_imports)
        new.meta = deepcopy(self.meta)
        twins: dict[Value, Value] = {}

        def twin(value: Value) -> Value:
            twins[value] = Value(value.name, value.type)
            twins[value].meta = deepcopy(value.meta)
            return twins[value]

        def twin_of(value: Value, reader: str) -> Value:
            if value not in twins:
                raise IrtoolError(f"{reader} '{value.name}', which is not in graph '{self.name}'")
            return twins[value]

        for value in self.inputs:
            new.inputs.append(new._claim(twin(value)))
        for value in self.constants.values():
            constant = new._claim(twin(value))
            constant.const = value.const.copy()
            constant.const.flags.writeable = value.const.flags.writeable
            new.constants[constant.name] = constant
        outputs = {node: [twin(v) for v in node.outputs] for node in self._nodes}
        for node, values in outputs.items():
            inputs = [None if v is None else twin_of(v, f"node '{node.name}' reads") for v in node.inputs]
            attrs = deepcopy(node.attrs)
            copy = Node(node.op, inputs, values, attrs, name=node.name, source=node.source, domain=node.domain)
            copy.meta = deepcopy(node.meta)
            new.insert(copy)
        new.outputs = [twin_of(v, "the graph outputs list") for v in self.outputs]
        return new

    # -- order -----------------------------------------------------------------------
    def sort(self) -> None:
        """Stable topological sort: nodes already in order keep their order."""
        order: dict[Node, None] = {}
        visiting: set[Node] = set()

        def visit(node: Node) -> None:
            stack = [(node, iter(node.inputs))]
            visiting.add(node)
            while stack:
                current, it = stack[-1]
                for value in it:
                    producer = value.producer if value is not None else None
                    if producer is None or producer in order or producer.graph is not self:
                        continue
                    if producer in visiting:
                        raise IrtoolError(f"graph '{self.name}' has a cycle through '{producer.name}'")
                    visiting.add(producer)
                    stack.append((producer, iter(producer.inputs)))
                    break
                else:
                    stack.pop()
                    visiting.discard(current)
                    order[current] = None

        for node in self._nodes:
            if node not in order:
                visit(node)
        self._nodes = order

    def __repr__(self) -> str:
        return f"Graph('{self.name}', {len(self._nodes)} nodes)"
