"""Data-driven channel importance: criteria that run the model on data.

- ``activation-mean``: the mean |activation| of each channel where the next layers read it
  (after the nonlinearity; Molchanov et al. 2017's baseline, NNI's ActivationMeanRank);
- ``apoz``: one minus the average percentage of zeros of each channel there (Hu et al. 2016):
  a channel that is mostly zero after its ReLU does little;
- ``taylor``: first-order Taylor estimate of the loss change when a channel goes (Molchanov et
  al. 2019): per batch, the sum of ``gradient x weight`` over every parameter that makes the
  channel (conv filters, their biases, the norm's scale and shift), squared, averaged over
  batches. Gradients come from the torch backend, so this one needs labelled data;
- ``thinet``: greedy selection by reconstruction error of the next layer (Luo et al. 2017): the
  channels whose joint contribution to the consuming layers' sampled outputs is smallest are
  removed first; a channel's score is its place in that removal order.

Each criterion is a regular ``criterion(group, rng)`` of ``passes/criteria.py``; where the data
comes from is resolved per call, in this order:

1. a ``ctx`` keyword (the ``PassContext`` of the running pipeline) whose ``data`` is set;
   statistics are then cached as an analysis of the graph, computed once per graph version;
2. the innermost ``using_data(data)`` block, which caches per graph state.

Activation statistics and Taylor sums are computed once per graph state for all its groups;
ThiNet reads only the activations its group's consumers read, per group.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.errors import IrtoolError
from ..ir.types import TensorType
from .criteria import register_criterion
from .dependency import ACTIVATION, CONSUMER, ChannelGroup, Member

DEFAULT_SAMPLES = 256
THINET_SAMPLES = 32
THINET_ENTRIES = 2048
"""Output entries of each consuming layer sampled for ThiNet's reconstruction error."""
CHUNK_FLOATS = 1 << 24
"""Floats per chunk when ThiNet runs a layer once per channel."""


# -- where the data comes from ----------------------------------------------------------------------
@dataclass
class CriterionData:
    """Data bound to the data-driven criteria, with the statistics computed from it per graph."""

    data: Any
    samples: int = DEFAULT_SAMPLES
    _cache: dict = field(default_factory=dict, repr=False)

    def cached(self, graph: Graph, key: str, compute):
        """``compute()``'s result for this graph in its current state (constants and nodes)."""
        state = (tuple(c.const for c in graph.constants.values()), graph.nodes)
        hit = self._cache.get((id(graph), key))
        if hit is not None and hit[0] is graph and _same_state(hit[1], state):
            return hit[2]
        result = compute()
        self._cache[(id(graph), key)] = (graph, state, result)
        return result


def _same_state(a, b) -> bool:
    return len(a[0]) == len(b[0]) and all(x is y for x, y in zip(a[0], b[0])) and a[1] == b[1]


_active: ContextVar[CriterionData | None] = ContextVar("irtool_criteria_data", default=None)


@contextmanager
def using_data(data: Any, *, samples: int = DEFAULT_SAMPLES) -> Iterator[CriterionData]:
    """Let the data-driven criteria use ``data`` (a dataset or an iterable of input batches)
    inside the block, e.g. around ``prune_graph(graph, criterion="apoz")``."""
    if data is None:
        raise IrtoolError("using_data needs data, not None")
    token = _active.set(CriterionData(data, samples))
    try:
        yield _active.get()
    finally:
        _active.reset(token)


def data_scope(data: Any):
    """``using_data(data)`` when there is data (a pipeline's ``--data``), else a block that does nothing."""
    return nullcontext() if data is None else using_data(data)


def criteria_data_source(graph: Graph, ctx) -> CriterionData:
    """An analysis: the context's data bound once per graph version, so its cache is shared."""
    return CriterionData(ctx.data)


def _source(name: str, ctx: Any) -> CriterionData:
    if ctx is not None and getattr(ctx, "data", None) is not None:
        return ctx.analysis(criteria_data_source)
    bound = _active.get()
    if bound is None:
        raise IrtoolError(
            f"criterion '{name}' needs data: give irtool opt --data FILE, PassContext(data=...), "
            "or run inside irtool.passes.criteria_data.using_data(data)",
            where="prune",
        )
    return bound


def _graph_of(group: ChannelGroup) -> Graph:
    graph = group.members[0].value.graph
    if graph is None:
        raise IrtoolError(f"group {group.id} ({group.name}) is not in a graph", where="prune")
    return graph


# -- activations where the next layers read them --------------------------------------------------------
def read_members(group: ChannelGroup) -> list[Member]:
    """The group's activations that its consuming layers read (after any nonlinearity), or,
    for a group nobody consumes, the activations its producers write."""
    consumers = set(group.consumers)
    activations = [m for m in group.members if m.role == ACTIVATION]
    reads = [m for m in activations if any(node in consumers for node, _ in m.value.uses)]
    producers = set(group.producers)
    return reads or [m for m in activations if m.value.producer in producers]


@dataclass
class AxisStats:
    """Per position along one axis of an activation: sum of |x|, count of zeros, and elements."""

    abs_sum: np.ndarray
    zeros: np.ndarray
    count: np.ndarray


def _is_float_activation(value: Value) -> bool:
    return (
        not value.is_const
        and value.type is not None
        and value.type.shape is not None
        and len(value.type.shape) >= 2
        and value.type.dtype.is_float
    )


def activation_batches(graph: Graph, values: list[Value], data: Any, samples: int) -> Iterator[dict[str, np.ndarray]]:
    """The named activations for each batch of up to ``samples`` rows of data, from
    onnxruntime with those activations exposed as extra outputs."""
    import onnx

    from ..backends.onnx import make_session, to_onnx
    from .calibration import calibration_feeds

    feeds, _ = calibration_feeds(graph, data, samples=samples)
    model = to_onnx(graph)
    present = {o.name for o in model.graph.output}
    for value in values:
        if value.name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(value.name, onnx.TensorProto.FLOAT, None))
    session = make_session(model)
    names = [v.name for v in values]
    for feed in feeds:
        yield dict(zip(names, session.run(names, feed)))


def collect_activations(graph: Graph, values: list[Value], data: Any, samples: int) -> dict[str, np.ndarray]:
    """The named activations over up to ``samples`` rows, concatenated along the batch axis."""
    parts: dict[str, list[np.ndarray]] = {v.name: [] for v in values}
    for batch in activation_batches(graph, values, data, samples):
        for name, array in batch.items():
            parts[name].append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items() if arrays}


def activation_stats(graph: Graph, data: Any, samples: int) -> dict[str, dict[int, AxisStats]]:
    """Per-axis statistics of every float activation of the graph over ``samples`` rows of data."""
    values = [v for node in graph.nodes for v in node.outputs if _is_float_activation(v)]
    stats: dict[str, dict[int, AxisStats]] = {}
    for batch in activation_batches(graph, values, data, samples):
        for name, array in batch.items():
            per_axis = stats.setdefault(name, {})
            absolute, zero = np.abs(array), array == 0
            for axis in range(1, array.ndim):
                others = tuple(a for a in range(array.ndim) if a != axis)
                count = np.full(array.shape[axis], array.size // max(array.shape[axis], 1), dtype=np.float64)
                sums = absolute.sum(axis=others, dtype=np.float64)
                part = AxisStats(sums, zero.sum(axis=others).astype(np.float64), count)
                entry = per_axis.get(axis)
                if entry is None:
                    per_axis[axis] = part
                else:
                    entry.abs_sum += part.abs_sum
                    entry.zeros += part.zeros
                    entry.count += part.count
    return stats


def _per_channel(group: ChannelGroup, stats: dict[str, dict[int, AxisStats]], score) -> np.ndarray:
    """Combine a per-position statistic over every read member into one score per channel."""
    numerator = np.zeros(group.channels)
    denominator = np.zeros(group.channels)
    members = [m for m in read_members(group) if m.axis in stats.get(m.value.name, {})]
    if not members:
        raise IrtoolError(f"group {group.id} ({group.name}) has no activation to measure", where="prune")
    for member in members:
        entry = stats[member.value.name][member.axis]
        top, bottom = score(entry)
        numerator += np.bincount(member.channels, weights=top[member.positions], minlength=group.channels)
        denominator += np.bincount(member.channels, weights=bottom[member.positions], minlength=group.channels)
    return numerator / np.maximum(denominator, 1)


def _stats_for(group: ChannelGroup, ctx: Any, name: str):
    source = _source(name, ctx)
    graph = _graph_of(group)
    return source.cached(graph, "activations", lambda: activation_stats(graph, source.data, source.samples))


@register_criterion("activation-mean")
def activation_mean(group: ChannelGroup, rng: np.random.Generator, ctx: Any = None) -> np.ndarray:
    """Mean |activation| of each channel where the next layers read it."""
    stats = _stats_for(group, ctx, "activation-mean")
    return _per_channel(group, stats, lambda e: (e.abs_sum, e.count))


@register_criterion("apoz")
def average_percentage_of_nonzeros(group: ChannelGroup, rng: np.random.Generator, ctx: Any = None) -> np.ndarray:
    """1 - APoZ: the share of each channel's values that are not zero where they are read."""
    stats = _stats_for(group, ctx, "apoz")
    return _per_channel(group, stats, lambda e: (e.count - e.zeros, e.count))


# -- first-order Taylor -------------------------------------------------------------------------------------
def taylor_sums(graph: Graph, data: Any, samples: int) -> dict[str, dict[int, np.ndarray]]:
    """For every trainable constant and axis, the per-batch sums of ``gradient x weight`` along
    the other axes: ``{name: {axis: array (batches, size)}}``."""
    import torch

    from ..backends.torch import to_torch
    from .data import labelled
    from .finetune import first_output, input_tensors, label_tensor, make_loss

    dataset = labelled(data, "criterion 'taylor'")
    module = to_torch(graph)
    module.eval()
    names = dict(getattr(module, "constant_names", {}))
    params = dict(module.named_parameters())
    loss_fn = make_loss("cross-entropy")
    sums: dict[str, dict[int, list[np.ndarray]]] = {}
    rows = 0
    for batch in dataset.batches():
        take = min(len(batch), samples - rows)
        inputs = tuple(a[:take] for a in batch.inputs)
        module.zero_grad(set_to_none=True)
        output = first_output(module(*input_tensors(inputs, graph)))
        loss = loss_fn(output, label_tensor(batch.labels[:take], "cross-entropy"))
        loss.backward()
        with torch.no_grad():
            for key, param in params.items():
                if param.grad is None:
                    continue
                product = (param.grad * param).double().numpy()
                per_axis = sums.setdefault(names.get(key, key), {})
                for axis in range(product.ndim):
                    others = tuple(a for a in range(product.ndim) if a != axis)
                    per_axis.setdefault(axis, []).append(product.sum(axis=others))
        rows += take
        if rows >= samples:
            break
    return {name: {axis: np.stack(parts) for axis, parts in axes.items()} for name, axes in sums.items()}


@register_criterion("taylor")
def taylor(group: ChannelGroup, rng: np.random.Generator, ctx: Any = None) -> np.ndarray:
    """Squared first-order Taylor estimate of the loss change when each channel is removed,
    averaged over batches (needs labelled data)."""
    source = _source("taylor", ctx)
    graph = _graph_of(group)
    sums = source.cached(graph, "taylor", lambda: taylor_sums(graph, source.data, source.samples))
    per_batch = None
    for member in group.constant_members():
        if member.role == CONSUMER or member.axis not in sums.get(member.value.name, {}):
            continue
        rows = sums[member.value.name][member.axis][:, member.positions]
        part = np.stack([np.bincount(member.channels, weights=r, minlength=group.channels) for r in rows])
        per_batch = part if per_batch is None else per_batch + part
    if per_batch is None:
        raise IrtoolError(
            f"group {group.id} ({group.name}) has no trainable weights for the taylor criterion", where="prune"
        )
    return (per_batch**2).mean(axis=0)


# -- ThiNet -----------------------------------------------------------------------------------------------------
def _layer_graph(node: Node, reads: Value) -> Graph | None:
    """A graph of ``node`` alone, reading ``reads`` from its input; None when the node has
    another computed input (its output would depend on more than this activation)."""
    graph = Graph(f"{node.name}.alone")
    x = graph.add_input("x", TensorType(reads.type.dtype, ("rows", *reads.type.shape[1:])))
    inputs: list[Value | None] = []
    for value in node.inputs:
        if value is None:
            inputs.append(None)
        elif value is reads:
            inputs.append(x)
        elif value.is_const:
            inputs.append(graph.add_constant(value.name, value.const))
        else:
            return None
    copy = graph.add_node(node.op, inputs, dict(node.attrs), outputs=len(node.outputs), name=node.name, domain=node.domain)
    graph.outputs = [copy.outputs[0]]
    return graph


def _contributions(
    node: Node, member: Member, inputs: np.ndarray, channels: int, rng: np.random.Generator
) -> np.ndarray | None:
    """(channels, entries): each channel's contribution to sampled outputs of ``node``, scaled
    by the output's RMS, assuming the layer is linear in the channel (conv, linear)."""
    import torch

    from ..backends.torch import to_torch

    graph = _layer_graph(node, member.value)
    if graph is None:
        return None
    module = to_torch(graph).eval()
    with torch.no_grad():
        run = lambda x: module(torch.from_numpy(np.ascontiguousarray(x))).numpy()  # noqa: E731
        base = run(np.zeros_like(inputs[:1]))
        full = run(inputs) - base
        entries = rng.choice(full.size, size=min(THINET_ENTRIES, full.size), replace=False)
        scale = float(np.sqrt(np.mean(full.reshape(-1)[entries] ** 2))) or 1.0
        owner = np.full(inputs.shape[member.axis], -1)
        owner[member.positions] = member.channels
        shape = [1] * inputs.ndim
        shape[member.axis] = -1
        owner = owner.reshape(shape)
        result = np.zeros((channels, len(entries)))
        chunk = max(1, CHUNK_FLOATS // max(inputs.size, 1))
        for start in range(0, channels, chunk):
            picked = np.arange(start, min(channels, start + chunk))
            masked = np.concatenate([np.where(owner == c, inputs, 0) for c in picked])
            out = (run(masked) - base).reshape(len(picked), -1)
            result[picked] = out[:, entries] / scale
    return result


def thinet_order(gram: np.ndarray) -> np.ndarray:
    """The greedy removal order: each step removes the channel that keeps the summed
    contribution of all removed channels smallest (``gram`` is their contributions' Gram matrix)."""
    channels = len(gram)
    removed = np.zeros(channels, dtype=bool)
    cross = np.zeros(channels)  # sum over removed t of gram[t, c]
    order = []
    for _ in range(channels):
        cost = np.where(removed, np.inf, 2 * cross + np.diag(gram))
        pick = int(np.argmin(cost))
        order.append(pick)
        removed[pick] = True
        cross += gram[pick]
    return np.asarray(order)


@register_criterion("thinet")
def thinet(group: ChannelGroup, rng: np.random.Generator, ctx: Any = None) -> np.ndarray:
    """Place in ThiNet's greedy removal order (later = more important). A group whose
    consumers cannot be run alone falls back to ``activation-mean``."""
    source = _source("thinet", ctx)
    graph = _graph_of(group)
    consumers = set(group.consumers)
    pairs = [(node, m) for m in read_members(group) for node, _ in m.value.uses if node in consumers]
    pairs = list({(node, id(m)): (node, m) for node, m in pairs}.values())
    values = list({m.value: None for _, m in pairs})
    arrays = collect_activations(graph, values, source.data, min(source.samples, THINET_SAMPLES)) if pairs else {}
    gram = np.zeros((group.channels, group.channels))
    used = 0
    for node, member in pairs:
        parts = _contributions(node, member, arrays[member.value.name], group.channels, rng)
        if parts is not None:
            gram += parts @ parts.T
            used += 1
    if not used:
        return activation_mean(group, rng, ctx=ctx)
    scores = np.empty(group.channels)
    scores[thinet_order(gram)] = np.arange(group.channels, dtype=np.float64)
    return scores
