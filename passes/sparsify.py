"""Fine-grained sparsity: zero weights in patterns, and zero whole feature maps.

Unlike ``prune``, nothing is removed: the model keeps its shapes and carries the zeros (a sparse
kernel or a compressor can use them; onnxruntime and TVM run them as dense weights). Weights of
every compute layer (conv, linear, matmul with a constant weight; ``quantize.find_layers``)
are cut into *units* and the least important units are zeroed:

- ``element``: single weights;
- ``vector``: one row of a kernel (the last kernel axis); for a linear weight, ``block[1]``
  consecutive inputs of one output;
- ``kernel``: one input channel's whole kernel in one filter (a linear weight's kernel is one weight);
- ``channel``: kernels too, but ranked within each filter, so every filter loses the same
  share of its input channels (row-balanced for a linear weight);
- ``block``: ``block[0]`` outputs x ``block[1]`` inputs, with their whole kernels;
- ``N:M`` (e.g. ``2:4``): in every run of M weights along the input-channel axis, only the N
  most important stay. A weight whose input channels are not a multiple of M is not eligible
  and stays dense; ``sparsity`` does not apply (the pattern fixes it at 1 - N/M).

Importance is the unit's mean |w| (``l1``), its root mean square (``l2``), or ``random``;
``local`` scope zeroes ``sparsity`` of the units of each weight, ``global`` ranks all units of
all weights together until ``sparsity`` of all their weights are zero.

With ``activations > 0``, feature maps are zeroed too: every layer's input channels are ranked
on data (``PassContext.data``) by their mean l1 or l2 norm, or by ``similarity`` (a channel
whose map is most like another kept channel's is redundant), and the lowest are multiplied by
a constant 0/1 mask, which every backend runs.

The masks (True = kept) are recorded in ``graph.meta["masks"]`` by constant name, so
``finetune`` keeps the zeros at zero while it trains.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.errors import IrtoolError
from ..ir.registry import opdef_of
from .base import Pass, PassContext, PassResult, register_pass
from .dependency import layer_name
from .quantize import Layer, find_layers

MASKS_META = "masks"
"""``graph.meta`` key: constant name -> boolean array of its shape, True where the value is kept."""

GRANULARITIES = ("element", "vector", "kernel", "channel", "block")
ACTIVATION_CRITERIA = ("l1", "l2", "similarity")
_N_OF_M = re.compile(r"(\d+):(\d+)")


# -- configuration ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparsifyConfig:
    """What to zero; the ``sparsify`` pass's options, usable directly from Python."""

    sparsity: float = 0.5
    granularity: str = "element"
    block: tuple[int, ...] = (4, 4)
    criterion: str = "l1"
    scope: str = "local"
    exclude: tuple[str, ...] = ()
    activations: float = 0.0
    activation_criterion: str = "l1"
    samples: int = 64
    seed: int = 0

    def validate(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise IrtoolError(f"sparsity {self.sparsity:g} is outside [0, 1)", where="sparsify")
        if not 0 <= self.activations < 1:
            raise IrtoolError(f"activations {self.activations:g} is outside [0, 1)", where="sparsify")
        if self.granularity not in GRANULARITIES and n_of_m(self.granularity) is None:
            raise IrtoolError(
                f"granularity '{self.granularity}' is not one of {', '.join(GRANULARITIES)} or N:M (e.g. 2:4)",
                where="sparsify",
            )
        if len(self.block) != 2 or min(self.block) < 1:
            raise IrtoolError(f"block {list(self.block)} is not two sizes of at least 1 (e.g. [4,4])", where="sparsify")
        if self.criterion not in ("l1", "l2", "random"):
            raise IrtoolError(f"criterion '{self.criterion}' is not l1, l2 or random", where="sparsify")
        if self.scope not in ("local", "global"):
            raise IrtoolError(f"scope '{self.scope}' is not local or global", where="sparsify")
        if self.activation_criterion not in ACTIVATION_CRITERIA:
            raise IrtoolError(
                f"activation criterion '{self.activation_criterion}' is not one of {', '.join(ACTIVATION_CRITERIA)}",
                where="sparsify",
            )
        if self.samples < 1:
            raise IrtoolError(f"samples must be at least 1, not {self.samples}", where="sparsify")


def n_of_m(granularity: str) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4); None for the named granularities; an impossible pattern is an error."""
    match = _N_OF_M.fullmatch(granularity)
    if match is None:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise IrtoolError(f"pattern {granularity} must keep N of M weights with 0 < N < M", where="sparsify")
    return n, m


# -- the report -------------------------------------------------------------------------------------
@dataclass
class LayerSparsity:
    """Zeros in one layer's weight (or feature maps masked at one layer's input)."""

    layer: str
    label: str
    constant: str
    zeros: int
    size: int
    note: str = ""

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0

    def line(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"[{self.label}] {self.layer}: {100 * self.sparsity:.1f}% zeros ({self.zeros}/{self.size}){note}"


@dataclass
class SparsifyReport:
    weights: list[LayerSparsity] = field(default_factory=list)
    activations: list[LayerSparsity] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(e.zeros for e in [*self.weights, *self.activations])

    def overall(self) -> float:
        """Fraction of zeros over every eligible weight together."""
        size = sum(e.size for e in self.weights if not e.note)
        return sum(e.zeros for e in self.weights if not e.note) / size if size else 0.0

    def lines(self) -> list[str]:
        lines = [e.line() for e in self.weights]
        lines += [f"{e.line()} of feature maps" for e in self.activations]
        eligible = [e for e in self.weights if not e.note]
        lines.append(f"weights: {100 * self.overall():.1f}% zeros over {len(eligible)} layers")
        return lines


def _label(node: Node) -> str:
    opdef = opdef_of(node)
    return opdef.label if opdef is not None and opdef.label else node.op.lower()


def weight_sparsity(graph: Graph) -> list[LayerSparsity]:
    """The zeros measured in every compute layer's weight now (after training, too)."""
    result = []
    for layer in find_layers(graph):
        w = layer.weight.const
        zeros = int(w.size - np.count_nonzero(w))
        result.append(LayerSparsity(layer_name(layer.node), _label(layer.node), layer.weight.name, zeros, int(w.size)))
    return result


# -- units ------------------------------------------------------------------------------------------
@dataclass
class _Weight:
    layer: Layer
    out_axis: int
    in_axis: int

    @property
    def value(self) -> Value:
        return self.layer.weight

    @property
    def array(self) -> np.ndarray:
        return self.layer.weight.const


def _weights(graph: Graph, exclude: Iterable[str]) -> list[_Weight]:
    patterns = list(exclude)
    result, seen = [], set()
    for layer in find_layers(graph):
        node, value = layer.node, layer.weight
        if value in seen or any(_matches(node, p) for p in patterns):
            continue
        seen.add(value)
        out_axis = layer.axis
        in_axis = 1 - out_axis if out_axis in (0, 1) else out_axis - 1
        result.append(_Weight(layer, out_axis, in_axis))
    return result


def _matches(node: Node, pattern: str) -> bool:
    return fnmatch.fnmatchcase(node.source, pattern) or fnmatch.fnmatchcase(node.name, pattern) or node.op == pattern


def _tile(weight: _Weight, granularity: str, block: tuple[int, ...]) -> list[int]:
    """The unit's extent along every axis of the weight."""
    shape = weight.array.shape
    kernel_axes = [d for d in range(len(shape)) if d not in (weight.out_axis, weight.in_axis)]
    tile = [1] * len(shape)
    if granularity in ("kernel", "channel"):
        for d in kernel_axes:
            tile[d] = shape[d]
    elif granularity == "vector":
        if kernel_axes:
            tile[kernel_axes[-1]] = shape[kernel_axes[-1]]
        else:
            tile[weight.in_axis] = block[1]
    elif granularity == "block":
        tile = list(shape)
        tile[weight.out_axis], tile[weight.in_axis] = block[0], block[1]
    return tile


def _unit_ids(shape: tuple[int, ...], tile: list[int]) -> tuple[np.ndarray, list[int]]:
    """Every element's unit index (units numbered in C order over the grid of tiles), and that grid."""
    grid = [-(-s // t) for s, t in zip(shape, tile)]
    ids = np.zeros((1,) * len(shape), dtype=np.int64)
    stride = 1
    for d in reversed(range(len(shape))):
        coordinate = (np.arange(shape[d]) // tile[d]).reshape([-1 if k == d else 1 for k in range(len(shape))])
        ids = ids + coordinate * stride
        stride *= grid[d]
    return np.broadcast_to(ids, shape), grid


def _unit_scores(array: np.ndarray, ids: np.ndarray, units: int, criterion: str, rng: np.random.Generator) -> np.ndarray:
    """Mean |w| (l1) or root mean square (l2) of each unit, or random scores."""
    if criterion == "random":
        return rng.random(units)
    flat = ids.reshape(-1)
    counts = np.bincount(flat, minlength=units).astype(np.float64)
    values = np.abs(array).reshape(-1).astype(np.float64)
    if criterion == "l2":
        return np.sqrt(np.bincount(flat, weights=values * values, minlength=units) / counts)
    return np.bincount(flat, weights=values, minlength=units) / counts


def _lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` lowest scores (ties: lower index first)."""
    return np.argsort(scores, kind="stable")[:count]


def _local_keep(weight: _Weight, config: SparsifyConfig, rng: np.random.Generator) -> np.ndarray:
    array = weight.array
    ids, grid = _unit_ids(array.shape, _tile(weight, config.granularity, config.block))
    units = int(np.prod(grid))
    scores = _unit_scores(array, ids, units, config.criterion, rng)
    if config.granularity != "channel":
        keep_unit = np.ones(units, dtype=bool)
        keep_unit[_lowest(scores, int(units * config.sparsity + 1e-9))] = False
        return keep_unit[ids]
    # One row of units per filter (output channel): every filter drops the same number.
    rows = np.moveaxis(scores.reshape(grid), weight.out_axis, 0)
    flat = rows.reshape(rows.shape[0], -1)
    drop = int(flat.shape[1] * config.sparsity + 1e-9)
    keep_rows = np.ones(flat.shape, dtype=bool)
    np.put_along_axis(keep_rows, np.argsort(flat, axis=1, kind="stable")[:, :drop], False, axis=1)
    keep_unit = np.moveaxis(keep_rows.reshape(rows.shape), 0, weight.out_axis).reshape(-1)
    return keep_unit[ids]


def _n_of_m_keep(weight: _Weight, n: int, m: int, criterion: str, rng: np.random.Generator) -> np.ndarray | None:
    """Keep the N most important of every M consecutive weights along the input axis."""
    array = weight.array
    channels = array.shape[weight.in_axis]
    if channels % m:
        return None
    moved = np.moveaxis(array, weight.in_axis, -1)
    runs = moved.reshape(-1, m)
    scores = rng.random(runs.shape) if criterion == "random" else np.abs(runs)
    keep = np.ones(runs.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(scores, axis=1, kind="stable")[:, : m - n], False, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, weight.in_axis)


def _global_keep(weights: list[_Weight], config: SparsifyConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Rank the units of all weights together and zero the lowest while at most ``sparsity``
    of all their weights are zero."""
    parts = []
    for weight in weights:
        ids, grid = _unit_ids(weight.array.shape, _tile(weight, config.granularity, config.block))
        units = int(np.prod(grid))
        parts.append((ids, units, _unit_scores(weight.array, ids, units, config.criterion, rng)))
    if not parts:
        return []
    sizes = np.concatenate([np.bincount(ids.reshape(-1), minlength=units) for ids, units, _ in parts])
    order = np.argsort(np.concatenate([scores for _, _, scores in parts]), kind="stable")
    budget = int(sizes.sum() * config.sparsity + 1e-9)
    count = int(np.searchsorted(np.cumsum(sizes[order]), budget, side="right"))
    keep_all = np.ones(len(sizes), dtype=bool)
    keep_all[order[:count]] = False
    offsets = np.cumsum([0] + [units for _, units, _ in parts])
    return [keep_all[offsets[k] : offsets[k + 1]][ids] for k, (ids, _, _) in enumerate(parts)]


# -- masks ------------------------------------------------------------------------------------------
def graph_masks(graph: Graph) -> dict[str, np.ndarray]:
    """The masks recorded on the graph (constant name -> keep), dropping stale ones whose
    constant is gone or changed shape (after ``prune``)."""
    masks = graph.meta.get(MASKS_META) or {}
    return {
        name: mask
        for name, mask in masks.items()
        if name in graph.constants and graph.constants[name].const.shape == mask.shape
    }


def record_mask(graph: Graph, value: Value, keep: np.ndarray) -> np.ndarray:
    """Combine ``keep`` with the mask already recorded for ``value``, zero the weight, record it."""
    combined = keep & graph_masks(graph).get(value.name, np.ones(keep.shape, dtype=bool))
    value.const = np.where(combined, value.const, np.zeros((), dtype=value.const.dtype))
    masks = dict(graph.meta.get(MASKS_META) or {})
    masks[value.name] = combined
    graph.meta[MASKS_META] = masks
    return combined


# -- feature maps -------------------------------------------------------------------------------------
def _channel_axis(node: Node) -> int | None:
    """The axis along which the layer reads input channels, as its channel rule says."""
    opdef = opdef_of(node)
    value = node.inputs[0]
    if opdef is None or opdef.channel is None or value.type is None or value.type.shape is None:
        return None
    for axis in range(1, len(value.type.shape)):
        try:
            effect = opdef.channel(node, ("in", 0), axis)
        except Exception:  # noqa: BLE001 - a rule that cannot answer means: not this axis
            continue
        if effect is not None and effect.isolates and effect.barrier is None:
            return axis
    return None


def _feature_targets(weights: list[_Weight]) -> list[tuple[Node, Value, int]]:
    targets: dict[Value, tuple[Node, Value, int]] = {}
    for weight in weights:
        node = weight.layer.node
        value = node.inputs[0]
        if value in targets or value.is_graph_input or value.is_graph_output or value.producer is None:
            continue
        axis = _channel_axis(node)
        if axis is not None and isinstance(value.type.shape[axis], (int, np.integer)) and value.type.shape[axis] > 1:
            targets[value] = (node, value, axis)
    return list(targets.values())


def feature_map_scores(maps: np.ndarray, axis: int, criterion: str, drop: int) -> np.ndarray:
    """Importance of each channel of ``maps`` (higher = keep); ``similarity`` ranks the
    ``drop`` most redundant channels lowest, greedily, each against the channels still kept."""
    channels = np.moveaxis(maps, axis, 0).reshape(maps.shape[axis], -1).astype(np.float64)
    if criterion == "l1":
        return np.abs(channels).mean(axis=1)
    if criterion == "l2":
        return np.sqrt((channels * channels).mean(axis=1))
    norms = np.linalg.norm(channels, axis=1)
    unit = channels / np.where(norms > 0, norms, 1)[:, None]
    similar = unit @ unit.T
    np.fill_diagonal(similar, -np.inf)
    similar[norms == 0, :] = np.inf  # a dead channel is the most redundant of all
    scores = np.zeros(len(channels))
    alive = np.ones(len(channels), dtype=bool)
    for rank in range(drop):
        redundancy = np.where(alive, np.max(np.where(alive[None, :], similar, -np.inf), axis=1), -np.inf)
        worst = int(np.argmax(redundancy))
        alive[worst] = False
        scores[worst] = rank - drop - 1
    scores[alive] = 1.0
    return scores


def _mask_feature_map(graph: Graph, node: Node, value: Value, axis: int, keep: np.ndarray) -> Value:
    shape = [int(keep.size) if a == axis else 1 for a in range(len(value.type.shape))]
    array = keep.astype(value.type.dtype.numpy).reshape(shape)
    mask = graph.add_constant(graph.fresh_name(f"{value.name}.feature_mask"), array)
    mask.meta["trainable"] = False
    uses = list(value.uses)
    masked = graph.add_node(
        "Mul",
        [value, mask],
        name=f"{value.name}.sparsified",
        source=value.producer.source,
        output_types=[value.type],
        after=value.producer,
    ).outputs[0]
    for user, i in uses:
        user.replace_input_with(i, masked)
    return mask


def _sparsify_activations(
    graph: Graph, weights: list[_Weight], config: SparsifyConfig, data: Any
) -> list[LayerSparsity]:
    if data is None:
        raise IrtoolError(
            "activation sparsity needs data to rank feature maps: pass PassContext(data=...) or data=", where="sparsify"
        )
    targets = _feature_targets(weights)
    from .criteria_data import collect_activations

    maps = collect_activations(graph, [v for _, v, _ in targets], data, config.samples)
    result = []
    for node, value, axis in targets:
        channels = int(value.type.shape[axis])
        drop = int(channels * config.activations + 1e-9)
        if not drop:
            continue
        scores = feature_map_scores(maps[value.name], axis, config.activation_criterion, drop)
        keep = np.ones(channels, dtype=bool)
        keep[_lowest(scores, drop)] = False
        _mask_feature_map(graph, node, value, axis, keep)
        result.append(LayerSparsity(layer_name(node), _label(node), value.name, drop, channels, "input"))
    return result


# -- entry points -------------------------------------------------------------------------------------
def sparsify_graph(graph: Graph, config: SparsifyConfig | None = None, *, data: Any = None, **options) -> SparsifyReport:
    """Zero weights (and feature maps) of ``graph`` in place; report the sparsity reached per layer.

    ``data`` (an iterable of input batches, e.g. a ``passes.data.Dataset``) is needed only for
    activation sparsity.
    """
    config = replace(config or SparsifyConfig(), **options)
    config.validate()
    rng = np.random.default_rng(config.seed)
    weights = _weights(graph, config.exclude)
    pattern = n_of_m(config.granularity)
    report = SparsifyReport()
    if pattern is not None:
        keeps: list[np.ndarray | None] = [_n_of_m_keep(w, *pattern, config.criterion, rng) for w in weights]
    elif config.sparsity == 0:
        keeps = [None] * len(weights)
    elif config.scope == "global":
        keeps = list(_global_keep(weights, config, rng))
    else:
        keeps = [_local_keep(w, config, rng) for w in weights]
    for weight, keep in zip(weights, keeps):
        node, value = weight.layer.node, weight.value
        note = ""
        if keep is not None:
            record_mask(graph, value, keep)
        elif pattern is not None:
            note = f"not eligible: {value.const.shape[weight.in_axis]} input channels is not a multiple of {pattern[1]}"
        array = value.const
        zeros = int(array.size - np.count_nonzero(array))
        report.weights.append(LayerSparsity(layer_name(node), _label(node), value.name, zeros, int(array.size), note))
    if config.activations > 0:
        report.activations = _sparsify_activations(graph, weights, config, data)
    return report


@register_pass
@dataclass(frozen=True)
class Sparsify(Pass):
    """Zero weights in fine-grained patterns (element, vector, kernel, channel, block, N:M) and feature maps.

    The model keeps its shapes and carries the zeros; the log gives the sparsity reached per
    layer. Masks are recorded so that ``finetune`` keeps them.
    """

    name = "sparsify"
    preserves_function = False
    sparsity: float = field(default=0.5, metadata={"help": "fraction of each weight's units to zero, in [0, 1)"})
    granularity: str = field(
        default="element", metadata={"help": "element, vector, kernel, channel, block, or N:M such as 2:4"}
    )
    block: tuple[int, ...] = field(
        default=(4, 4), metadata={"help": "block size [outputs,inputs]; vector length of linear layers"}
    )
    criterion: Literal["l1", "l2", "random"] = field(default="l1", metadata={"help": "unit importance"})
    scope: Literal["local", "global"] = field(
        default="local", metadata={"help": "rank within each weight, or across all"}
    )
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "layers (names, globs) or op types left dense"})
    activations: float = field(
        default=0.0, metadata={"help": "fraction of each layer's input feature maps to zero (needs data)"}
    )
    activation_criterion: Literal["l1", "l2", "similarity"] = field(
        default="l1", metadata={"help": "feature map ranking: mean l1 or l2 norm, or similarity to another map"}
    )
    samples: int = field(default=64, metadata={"help": "rows of data used to rank feature maps"})
    seed: int = field(default=0, metadata={"help": "seed of the random criterion"})

    def __post_init__(self) -> None:
        self.config().validate()

    def config(self) -> SparsifyConfig:
        return SparsifyConfig(**{f.name: getattr(self, f.name) for f in fields(SparsifyConfig)})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = ctx.data if ctx.data is not None else ([ctx.inputs] if ctx.inputs is not None else None)
        report = sparsify_graph(graph, self.config(), data=data)
        return PassResult(graph, report.changed, report.lines())
