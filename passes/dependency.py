"""Channel dependency analysis: which channel positions must be removed together, and where.

Channels live on *slots*, a value's axis. Every slot gets one integer *atom* per position. Starting
from the channel slots of every isolating node (conv, linear, LSTM), the analysis asks the op
registry's channel rules where positions arriving at each node continue, and unions the atoms
each rule ties. A connected component of atoms is one *coupled channel*: every position that
goes when that channel goes (channel c of all producers joined by residual adds, and every
consumer's input slice; for attention, one whole head). Coupled channels that touch the same
slots form a ``ChannelGroup``: the unit users prune, named after its centre, the first layer
that produces it.

A group is blocked when a slot reaches a graph input or output, an op without a channel rule,
or a rule that says the channels cannot be removed there; it is approximate when removing a
channel changes more than that channel's contribution (normalisation over channels).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..ir.core import Graph, Node, Value
from ..ir.ops.channels import iota
from ..ir.registry import ChannelChoice, ChannelEffect, Port, opdef_of

SlotKey = tuple[str, int]
"""A slot by value name and axis: stable across copies of a graph."""

PRODUCER, CONSUMER, PARAM, ACTIVATION = "producer", "consumer", "param", "activation"


@dataclass(eq=False)
class Member:
    """One slot a group slices: which of its positions belong to the group, and to which channel."""

    value: Value
    axis: int
    positions: np.ndarray
    channels: np.ndarray
    """For each position, the index of its channel in the group."""
    role: str
    """``producer`` (weights that make the channels), ``consumer`` (weights that read them),
    ``param`` (other constants: norm params, biases of pass-through ops), or ``activation``."""

    @property
    def key(self) -> SlotKey:
        return (self.value.name, self.axis)


@dataclass(eq=False)
class ChannelGroup:
    """Channels that are pruned together, with everything that must be sliced for them."""

    id: int
    components: np.ndarray
    """The analysis' coupled-channel ids, one per channel of the group, in channel order."""
    members: list[Member]
    producers: list[Node]
    consumers: list[Node]
    centre: Node | None
    blocked: list[str] = field(default_factory=list)
    approximate: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return len(self.components)

    @property
    def prunable(self) -> bool:
        return not self.blocked and self.channels > 1

    @property
    def exact(self) -> bool:
        return not self.approximate

    @property
    def name(self) -> str:
        if self.centre is not None:
            return layer_name(self.centre)
        return f"{self.members[0].value.name}[{self.members[0].axis}]"

    def constant_members(self, role: str | None = None) -> list[Member]:
        return [m for m in self.members if m.value.is_const and (role is None or m.role == role)]

    def layers(self) -> list[Node]:
        """Every layer that changes when the group loses channels: producers, consumers and
        the nodes reading a sliced constant (norms, biases), in graph order."""
        nodes: dict[Node, None] = dict.fromkeys([*self.producers, *self.consumers])
        for member in self.constant_members():
            for node, _ in member.value.uses:
                nodes[node] = None
        graph = self.members[0].value.graph
        order = {n: i for i, n in enumerate(graph.nodes)} if graph is not None else {}
        return sorted(nodes, key=lambda n: order.get(n, 0))

    def state(self) -> str:
        if self.blocked:
            return "blocked: " + self.blocked[0] + (f" (+{len(self.blocked) - 1} more)" if len(self.blocked) > 1 else "")
        if self.channels <= 1:
            return "blocked: a single channel"
        return "prunable"


def layer_name(node: Node) -> str:
    return node.source or node.name


def _location(node: Node) -> str:
    return f"{node.op} '{layer_name(node)}'"


@dataclass
class _Choice:
    """The arrivals at one ``ChannelChoice`` group of a node, and the axis that won."""

    node: Node
    requests: list = field(default_factory=list)
    askers: list = field(default_factory=list)
    carrier: int | None = None


class ChannelAnalysis:
    """The channel groups of a graph, and the atom-level map behind them."""

    def __init__(
        self,
        graph: Graph,
        slots: list[tuple[Value, int]],
        bases: np.ndarray,
        sizes: np.ndarray,
        labels: np.ndarray,
        groups: list[ChannelGroup],
        component_group: np.ndarray,
        isolating: dict[tuple[Node, Port], bool],
    ):
        self.graph = graph
        self.groups = groups
        self.isolating = isolating
        """(node, port) -> whether the node's rule isolates the channels on that port; the
        prune report says ``in``/``out`` for these."""
        self._slots = slots
        self._index = {(v.name, a): i for i, (v, a) in enumerate(slots)}
        self._bases = bases
        self._sizes = sizes
        self._labels = labels
        self._component_group = component_group

    # -- queries ---------------------------------------------------------------------------
    @property
    def components(self) -> int:
        return len(self._component_group)

    def component_group(self) -> np.ndarray:
        """Group id of every coupled channel."""
        return self._component_group

    def group_for_layer(self, name: str) -> list[ChannelGroup]:
        """Groups produced by the layer (its source or node name), centre first."""
        return [g for g in self.groups if any(layer_name(p) == name or p.name == name for p in g.producers)]

    def components_at(self, key: SlotKey, positions: Iterable[int]) -> np.ndarray:
        """Coupled-channel ids of positions on a slot; raises KeyError for an unknown slot."""
        s = self._index[key]
        positions = np.asarray(list(positions), dtype=np.int64)
        size = self._sizes[s]
        if len(positions) and (positions.min() < 0 or positions.max() >= size):
            raise IndexError(f"positions outside axis {key[1]} of '{key[0]}' ({size} positions)")
        return self._labels[self._bases[s] + positions]

    def slot_size(self, key: SlotKey) -> int | None:
        s = self._index.get(key)
        return None if s is None else int(self._sizes[s])

    def removal(self, removed: np.ndarray) -> dict[SlotKey, np.ndarray]:
        """Positions to remove on every slot, for a boolean mask over coupled channels."""
        gone = removed[self._labels]
        result = {}
        for s, (value, axis) in enumerate(self._slots):
            lo = self._bases[s]
            positions = np.flatnonzero(gone[lo : lo + self._sizes[s]])
            if len(positions):
                result[(value.name, axis)] = positions
        return result

    # -- report ------------------------------------------------------------------------------
    def format(self, *, members: bool = True) -> str:
        """A table of the groups: id, centre, channels, state, exactness, then the layers."""
        prunable = sum(g.prunable for g in self.groups)
        lines = [f"channel groups: {len(self.groups)} ({prunable} prunable, {len(self.groups) - prunable} blocked)"]
        rows = [(str(g.id), g.name, str(g.channels), g.state(), "exact" if g.exact else "approx") for g in self.groups]
        header = ("id", "centre", "channels", "state", "kind")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        fmt = "{:>%d}  {:<%d}  {:>%d}  {:<%d}  {}" % tuple(widths)
        lines.append(fmt.format(*header))
        for group, row in zip(self.groups, rows):
            lines.append(fmt.format(*row))
            if not members:
                continue
            indent = " " * (widths[0] + 2)
            for label, text in _member_lines(group, self.isolating):
                lines.append(f"{indent}{label}: {text}")
            for reason in group.blocked[1:]:
                lines.append(f"{indent}also blocked: {reason}")
            for reason in group.approximate:
                lines.append(f"{indent}approximate: {reason}")
        return "\n".join(lines)


def _member_lines(group: ChannelGroup, isolating) -> list[tuple[str, str]]:
    producers = [layer_name(n) for n in group.producers]
    consumers = [layer_name(n) for n in group.consumers]
    seen = set(group.producers) | set(group.consumers)
    params = [layer_name(n) for n in group.layers() if n not in seen]
    activations = sum(1 for m in group.members if not m.value.is_const)
    lines = []
    for label, names in (("producers", producers), ("consumers", consumers), ("params", params)):
        if names:
            lines.append((label, ", ".join(dict.fromkeys(names))))
    lines.append(("sliced", f"{len(group.constant_members())} constants, {activations} activations"))
    return lines


# -- building --------------------------------------------------------------------------------
class _Builder:
    """One run of the analysis: the worklist over slots, atoms and the ties between them."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.order = {node: i for i, node in enumerate(graph.nodes)}
        self.slots: list[tuple[Value, int]] = []
        self.index: dict[tuple[Value, int], int] = {}
        self.sizes: list[int] = []
        self.parent: list[int] = []
        self.ties: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        self.blocked: dict[int, list[str]] = defaultdict(list)
        self.approximate: dict[int, list[str]] = defaultdict(list)
        self.producers: dict[int, list[Node]] = defaultdict(list)
        self.consumers: dict[int, list[Node]] = defaultdict(list)
        self.roles: dict[int, str] = {}
        self.effects: dict[tuple[Node, Port, int], ChannelEffect | None] = {}
        self.isolating: dict[tuple[Node, Port], bool] = {}
        self.opdefs: dict[Node, object] = {}
        self.worklist: list[int] = []
        self.choices: dict[tuple[Node, tuple], _Choice] = {}
        self.outputs = {id(v) for v in graph.outputs}
        self.inputs = {id(v) for v in graph.inputs}

    # slots
    def slot(self, value: Value, axis: int) -> int | None:
        key = (value, axis)
        s = self.index.get(key)
        if s is not None:
            return s
        shape = value.type.shape if value.type is not None else None
        if shape is None or not 0 <= axis < len(shape) or not isinstance(shape[axis], (int, np.integer)):
            return None
        s = len(self.slots)
        self.slots.append(key)
        self.index[key] = s
        self.sizes.append(int(shape[axis]))
        self.parent.append(s)
        if id(value) in self.outputs:
            self.blocked[s].append(f"reaches graph output '{value.name}'")
        if id(value) in self.inputs:
            self.blocked[s].append(f"reaches graph input '{value.name}'")
        self.worklist.append(s)
        return s

    def effect(self, node: Node, port: Port, axis: int) -> ChannelEffect | None:
        key = (node, port, axis)
        if key in self.effects:
            return self.effects[key]
        opdef = self.opdef(node)
        if opdef is None or opdef.channel is None:
            effect = None
        else:
            try:
                effect = opdef.channel(node, port, axis)
            except Exception as exc:  # noqa: BLE001 - a failing rule blocks its group, it does not stop the analysis
                effect = ChannelEffect(barrier=f"its channel rule failed: {type(exc).__name__}: {exc}")
        self.effects[key] = effect
        return effect

    def opdef(self, node: Node):
        if node not in self.opdefs:
            self.opdefs[node] = opdef_of(node)
        return self.opdefs[node]

    # seeds and worklist
    def seed(self) -> None:
        """Start from every slot an isolating node produces or consumes channels on.

        Layers isolate channels through their weights, so only nodes with a constant input are
        asked; any other isolating node is reached from the channels that flow into it.
        """
        for node in self.graph.nodes:
            opdef = self.opdef(node)
            if opdef is None or opdef.channel is None or not any(v is not None and v.is_const for v in node.inputs):
                continue
            ports = [(("in", i), v) for i, v in enumerate(node.inputs)] + [(("out", i), v) for i, v in enumerate(node.outputs)]
            for port, value in ports:
                if value is None or value.is_const or value.type is None or value.type.shape is None:
                    continue
                for axis in range(len(value.type.shape)):
                    effect = self.effect(node, port, axis)
                    if effect is not None and effect.isolates and effect.barrier is None:
                        self.slot(value, axis)

    def drain(self) -> None:
        while self.worklist:
            self.visit(self.worklist.pop())

    def visit(self, s: int) -> None:
        value, axis = self.slots[s]
        arrivals: list[tuple[Node, Port]] = []
        if value.producer is not None:
            arrivals.append((value.producer, ("out", value.index)))
        arrivals.extend((node, ("in", i)) for node, i in value.uses)
        for node, port in arrivals:
            effect = self.effect(node, port, axis)
            where = _location(node)
            if effect is None:
                self.blocked[s].append(f"{where}: op {node.qualified_op} has no channel rule")
                continue
            if effect.barrier:
                self.blocked[s].append(f"{where}: {effect.barrier}")
            if effect.approximate:
                self.approximate[s].append(f"{where}: {effect.approximate}")
            for tie in effect.ties:
                self.tie(s, node, tie, where)
            if effect.isolates:
                self.isolating[(node, port)] = True
                self.record_role(s, node, port, effect)
            if isinstance(effect, ChannelChoice) and effect.options:
                choice = self.choices.setdefault((node, effect.key), _Choice(node))
                if effect.candidate is None:
                    choice.askers.append((s, port, effect.options))
                else:
                    choice.requests.append((s, effect.candidate, effect.options[0]))

    def record_role(self, s: int, node: Node, port: Port, effect: ChannelEffect) -> None:
        kind, i = port
        if kind == "in" and node.inputs[i].is_const:
            return
        role = PRODUCER if kind == "out" else CONSUMER
        (self.producers if role == PRODUCER else self.consumers)[s].append(node)
        for tie in effect.ties:
            target = node.inputs[tie.port[1]] if tie.port[0] == "in" else node.outputs[tie.port[1]]
            if target is not None and target.is_const:
                t = self.index.get((target, tie.axis))
                if t is not None and self.roles.get(t) != PRODUCER:
                    self.roles[t] = role

    def tie(self, s: int, node: Node, tie, where: str) -> None:
        kind, i = tie.port
        values = node.inputs if kind == "in" else node.outputs
        target = values[i] if i < len(values) else None
        if target is None:
            return
        t = self.slot(target, tie.axis)
        if t is None:
            self.blocked[s].append(f"{where}: the size of axis {tie.axis} of '{target.name}' is not known")
            return
        here, there = np.asarray(tie.here, dtype=np.int64), np.asarray(tie.there, dtype=np.int64)
        size_here, size_there = self.sizes[s], self.sizes[t]
        if not (_within(here, size_here) and _within(there, size_there)) or here.shape != there.shape:
            self.blocked[s].append(f"{where}: its channel rule tied positions outside axis {tie.axis} of '{target.name}'")
            return
        if size_here == size_there == len(here) and here is there is iota(len(here)):
            self.union(s, t)  # the same positions on both: the slots share their atoms
        else:
            self.ties.append((s, t, here, there))

    def find(self, s: int) -> int:
        parent = self.parent
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    def union(self, s: int, t: int) -> None:
        a, b = self.find(s), self.find(t)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def resolve_choices(self) -> None:
        """Settle every ``ChannelChoice``: the outermost requested axis carries the channels.

        Groups nobody requested an axis of get their outermost one, one group at a time, so
        each default can reach other groups first. Merges seen from the layer that reads them
        (the heads merged before an out-projection) go first: the split that made the heads
        then finds the head axis requested.
        """
        while True:
            self.drain()
            settled = False
            for choice in self.choices.values():
                if choice.carrier is None and choice.requests:
                    choice.carrier = min(k for _, k, _ in choice.requests)
                if choice.carrier is not None:
                    settled |= self.settle(choice)
            if settled:
                continue
            waiting = [c for c in self.choices.values() if c.carrier is None and c.askers]
            if not waiting:
                return
            pick = min(waiting, key=self.default_order)
            pick.carrier = 0
            self.settle(pick)

    def default_order(self, choice: _Choice) -> tuple:
        position = self.order.get(choice.node, 0)
        from_output = any(port[0] == "out" for _, port, _ in choice.askers)
        return (not from_output, -position if from_output else position)

    def settle(self, choice: _Choice) -> bool:
        where = _location(choice.node)
        done = bool(choice.requests or choice.askers)
        for s, k, tie in choice.requests:
            if k == choice.carrier:
                self.tie(s, choice.node, tie, where)
            else:
                self.blocked[s].append(f"{where}: another axis of this reshape group carries channels already")
        for s, _, options in choice.askers:
            self.tie(s, choice.node, options[choice.carrier], where)
        choice.requests, choice.askers = [], []
        return done

    @staticmethod
    def port_value(node: Node, port: Port) -> Value | None:
        kind, i = port
        values = node.inputs if kind == "in" else node.outputs
        return values[i] if i < len(values) else None

    # components and groups
    def run(self) -> ChannelAnalysis:
        self.seed()
        self.resolve_choices()
        roots = np.array([self.find(s) for s in range(len(self.slots))], dtype=np.int64)
        sizes = np.asarray(self.sizes, dtype=np.int64)
        root_ids = np.flatnonzero(roots == np.arange(len(roots)))
        root_bases = np.zeros(len(roots), dtype=np.int64)
        root_bases[root_ids] = np.cumsum(np.r_[0, sizes[root_ids]])[:-1]
        bases = root_bases[roots]
        atoms = int(sizes[root_ids].sum())
        here, there = self.links(bases)
        links = coo_matrix((np.ones(len(here), dtype=np.int8), (here, there)), shape=(atoms, atoms))
        count, labels = connected_components(links, directed=False)
        labels = labels.astype(np.int64)
        root_of_atom = np.repeat(np.arange(len(root_ids)), sizes[root_ids])
        component_group = self.group_components(labels, root_of_atom, len(root_ids), count)
        groups = self.build_groups(labels, component_group, bases, sizes, roots)
        return ChannelAnalysis(self.graph, self.slots, bases, sizes, labels, groups, component_group, dict(self.isolating))

    def links(self, bases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.ties:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        here = np.concatenate([h + bases[s] for s, _, h, _ in self.ties])
        there = np.concatenate([t + bases[d] for _, d, _, t in self.ties])
        return here, there

    @staticmethod
    def group_components(labels: np.ndarray, root_of_atom: np.ndarray, n_roots: int, count: int) -> np.ndarray:
        """Group id per component: components touching the same set of slots share a group.

        Slots that share atoms are one unit here. A set is identified by the wrapping sum of
        one random 64-bit key per unit; groups are numbered by their first atom, so group ids
        follow graph order.
        """
        pairs = np.sort(labels * n_roots + root_of_atom)
        pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
        comps, units = pairs // n_roots, pairs % n_roots
        keys = np.random.default_rng(0).integers(0, 2**63, size=n_roots, dtype=np.uint64)
        starts = np.flatnonzero(np.r_[True, np.diff(comps) != 0])
        signature = np.add.reduceat(keys[units], starts)
        first_atom = np.full(count, np.iinfo(np.int64).max)
        np.minimum.at(first_atom, labels, np.arange(len(labels)))
        order = np.argsort(signature, kind="stable")
        ranks = np.cumsum(np.r_[0, signature[order][1:] != signature[order][:-1]])
        inverse = np.empty(len(signature), dtype=np.int64)
        inverse[order] = ranks
        group_first = np.full(inverse.max() + 1 if len(inverse) else 0, np.iinfo(np.int64).max)
        np.minimum.at(group_first, inverse, first_atom)
        rank = np.empty_like(group_first)
        rank[np.argsort(group_first, kind="stable")] = np.arange(len(group_first))
        return rank[inverse]

    def build_groups(
        self, labels: np.ndarray, component_group: np.ndarray, bases: np.ndarray, sizes: np.ndarray, roots: np.ndarray
    ) -> list[ChannelGroup]:
        n_groups = int(component_group.max()) + 1 if len(component_group) else 0
        atom_group = component_group[labels]
        channel_index = np.zeros(len(component_group), dtype=np.int64)
        members_of: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n_groups)]
        parts_of_root: dict[int, list[tuple[int, np.ndarray]]] = {}
        for s in range(len(self.slots)):
            parts = parts_of_root.get(roots[s])
            if parts is None:
                owners = atom_group[bases[s] : bases[s] + sizes[s]]
                if (owners == owners[0]).all():
                    parts = [(int(owners[0]), iota(int(sizes[s])))]
                else:
                    parts = [(int(g), np.flatnonzero(owners == g)) for g in np.unique(owners)]
                parts_of_root[roots[s]] = parts
            for g, positions in parts:
                members_of[g].append((s, positions))
        groups = []
        for g in range(n_groups):
            producers = self.nodes_for(members_of[g], self.producers)
            consumers = self.nodes_for(members_of[g], self.consumers)
            centre = producers[0] if producers else None
            reference = self.reference_slot(members_of[g], centre)
            ref_positions = dict(members_of[g])[reference]
            ref_components = labels[bases[reference] + ref_positions]
            _, first = np.unique(ref_components, return_index=True)
            components = ref_components[np.sort(first)]
            channel_index[components] = np.arange(len(components))
            members = []
            blocked: list[str] = []
            approximate: list[str] = []
            for s, positions in members_of[g]:
                value, axis = self.slots[s]
                comps = labels[bases[s] + positions]
                role = self.roles.get(s, PARAM) if value.is_const else ACTIVATION
                members.append(Member(value, axis, positions, channel_index[comps], role))
                blocked.extend(self.blocked.get(s, ()))
                approximate.extend(self.approximate.get(s, ()))
            groups.append(
                ChannelGroup(
                    id=g,
                    components=components,
                    members=members,
                    producers=producers,
                    consumers=consumers,
                    centre=centre,
                    blocked=list(dict.fromkeys(blocked)),
                    approximate=list(dict.fromkeys(approximate)),
                )
            )
        return groups

    def nodes_for(self, slots: Sequence[tuple[int, np.ndarray]], table: dict[int, list[Node]]) -> list[Node]:
        nodes: dict[Node, None] = {}
        for s, _ in slots:
            for node in table.get(s, ()):
                nodes[node] = None
        return sorted(nodes, key=lambda n: self.order.get(n, 0))

    def reference_slot(self, slots: Sequence[tuple[int, np.ndarray]], centre: Node | None) -> int:
        """The slot whose position order names the group's channels: the centre's output."""
        if centre is not None:
            for s, _ in slots:
                value, _axis = self.slots[s]
                if value.producer is centre:
                    return s
        return min(s for s, _ in slots)


def _within(positions: np.ndarray, size: int) -> bool:
    """Whether every position lies on an axis of ``size``; identity ties need no scan."""
    if positions.ndim != 1:
        return False
    if not len(positions):
        return True
    if positions is iota(len(positions)):
        return len(positions) <= size
    return 0 <= positions.min() and positions.max() < size


def analyze_channels(graph: Graph) -> ChannelAnalysis:
    """The channel groups of ``graph``; also registered as the ``channels`` analysis.

    Needs value types with static channel sizes (run shape inference, and const-fold for
    exported models that compute shapes at run time); a slot of unknown size blocks its group.
    """
    return _Builder(graph).run()

