"""Structured pruning: remove whole channels (conv filters, linear units, LSTM units, attention
heads) and every slice that depends on them, so the pruned model is a smaller dense model.

The channel dependency analysis says which positions go together (``ChannelGroup``); this pass
chooses channels per group by importance, removes them everywhere (or zeroes them, in mask
mode), lets the registry's retarget rules fix size-carrying operands (reshape targets, split
sizes, a depthwise conv's group, an LSTM's hidden size) and re-infers shapes. Graph outputs
never change shape: groups that reach one are blocked.

Which positions were removed is recorded under ``graph.meta["metadata_props"]`` (key
``irtool.pruned_channels``, per constant name and axis, in the numbering of the unpruned
model), which the ONNX backend writes into the model file, so ``irtool verify`` can rebuild the
masked original from the original model.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.errors import IrtoolError
from ..ir.ops.channels import FOLD_HINT, REMOVED_META
from ..ir.registry import opdef_of
from ..ir.shapes import infer_shapes
from .base import Pass, PassContext, PassResult, register_pass
from .budget import Budget, choose_to_budget, keep_selector
from .const_fold import ConstantFold
from .cost import Cost, format_comparison, graph_cost
from .criteria import get_criterion, importance
from .criteria_data import data_scope
from .dependency import ChannelAnalysis, ChannelGroup, SlotKey, analyze_channels, layer_name

RECORD_KEY = "irtool.pruned_channels"
"""``graph.meta["metadata_props"]`` key of the JSON record of removed positions."""

Select = Callable[[ChannelGroup, np.ndarray], "np.ndarray | list[int] | None"]
"""``select(group, importance) -> channel indices to remove``, or None for irtool's own choice."""

log = logging.getLogger("irtool.prune")


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruneConfig:
    """What to prune; the ``prune`` pass's options, usable directly from Python."""

    sparsity: float = 0.5
    layers: tuple[str, ...] = ()
    criterion: str = "l1"
    scope: str = "local"
    round_to: int = 1
    min_channels: int = 1
    exclude: tuple[str, ...] = ()
    mode: str = "remove"
    seed: int = 0

    def validate(self) -> None:
        _check_sparsity(self.sparsity)
        for spec in self.layers:
            parse_layer_spec(spec)
        get_criterion(self.criterion)  # raises with the known names
        if self.scope not in ("local", "global"):
            raise IrtoolError(f"scope '{self.scope}' is not local or global", where="prune")
        if self.mode not in ("remove", "mask"):
            raise IrtoolError(f"mode '{self.mode}' is not remove or mask", where="prune")
        if self.round_to < 1:
            raise IrtoolError(f"round-to {self.round_to} must be at least 1", where="prune")
        if self.min_channels < 1:
            raise IrtoolError(f"min-channels {self.min_channels} must be at least 1", where="prune")


def _check_sparsity(value: float) -> None:
    if not 0 <= value < 1:
        raise IrtoolError(f"sparsity {value:g} is outside [0, 1)", where="prune")


def parse_layer_spec(spec: str) -> tuple[str, float]:
    """``layer4.*:0.3`` -> (``layer4.*``, 0.3)."""
    pattern, sep, text = spec.rpartition(":")
    try:
        sparsity = float(text)
    except ValueError:
        sparsity = None
    if not sep or not pattern or sparsity is None:
        raise IrtoolError(f"layer sparsity '{spec}' is not like NAME:SPARSITY (e.g. layer4.1.conv1:0.2)", where="prune")
    _check_sparsity(sparsity)
    return pattern, sparsity


# -- the report ---------------------------------------------------------------------------------
@dataclass
class GroupChange:
    group: ChannelGroup
    before: int
    after: int


FAST_CHANNEL_MULTIPLE = 8
"""Channel multiple that CPU runtimes' blocked layouts (onnxruntime's NCHWc) process at a time:
a 10% prune of ResNet-50 to counts that are not multiples of it runs slower than the unpruned
model on onnxruntime (``tools/bench_sweep.py``)."""


@dataclass
class PruneReport:
    """What pruning did: one line per changed layer, the groups, warnings, cost before/after."""

    mode: str
    lines: list[str] = field(default_factory=list)
    groups: list[GroupChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    removed: dict[SlotKey, np.ndarray] = field(default_factory=dict)
    before: Cost | None = None
    after: Cost | None = None

    @property
    def changed(self) -> bool:
        return bool(self.removed)

    @property
    def channels_removed(self) -> int:
        return sum(g.before - g.after for g in self.groups)

    def summary(self) -> list[str]:
        total = sum(g.before for g in self.groups)
        verb = "masked" if self.mode == "mask" else "removed"
        lines = [f"{verb} {self.channels_removed} of {total} channels in {len(self.groups)} group{'' if len(self.groups) == 1 else 's'}"]
        unaligned = self.unaligned_groups()
        if unaligned and self.mode == "remove":
            lines.append(
                f"note: {len(unaligned)} of {len(self.groups)} groups now have a channel count that is not a multiple "
                f"of {FAST_CHANNEL_MULTIPLE}; onnxruntime runs those layers with slower kernels (round-to={FAST_CHANNEL_MULTIPLE} avoids it)"
            )
        if self.before is not None and self.after is not None:
            lines.extend(format_comparison(self.before, self.after).splitlines())
        return lines

    def unaligned_groups(self, multiple: int = FAST_CHANNEL_MULTIPLE) -> list[GroupChange]:
        """Groups whose count was a multiple of ``multiple`` and no longer is."""
        return [g for g in self.groups if g.before % multiple == 0 and g.after % multiple]

    def log_lines(self) -> list[str]:
        return [*self.lines, *(f"warning: {w}" for w in self.warnings), *self.summary()]

    def format(self) -> str:
        return "\n".join(self.log_lines())

    def mac_reduction(self) -> float | None:
        """Fraction of MACs removed, e.g. 0.41."""
        if self.before is None or self.after is None or not self.before.macs:
            return None
        return 1 - self.after.macs / self.before.macs


# -- choosing channels --------------------------------------------------------------------------
def _matches(node: Node, pattern: str) -> bool:
    return (
        fnmatch.fnmatchcase(node.source, pattern)
        or fnmatch.fnmatchcase(node.name, pattern)
        or node.op == pattern
    )


def _check_patterns(graph: Graph, patterns: list[str], what: str) -> None:
    nodes = graph.nodes
    for pattern in patterns:
        if not any(_matches(n, pattern) for n in nodes):
            raise IrtoolError(f"{what} '{pattern}' matches no layer", where="prune")


def _names_group(group: ChannelGroup, pattern: str) -> bool:
    return any(_matches(n, pattern) for n in group.producers)


def _keep_count(channels: int, sparsity: float, config: PruneConfig) -> int:
    keep = channels - int(channels * sparsity + 1e-9)
    return _rounded_keep(channels, keep, config)


def _rounded_keep(channels: int, keep: int, config: PruneConfig) -> int:
    n = config.round_to
    if n > 1:
        keep = int(np.floor(keep / n + 0.5)) * n
        keep = max(keep, min(n, channels))
    floor = min(channels, config.min_channels)
    return int(min(channels, max(keep, floor)))


def _lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` least important channels (ties: lower index first)."""
    return np.sort(np.argsort(scores, kind="stable")[:count])


def choose_removed(
    analysis: ChannelAnalysis, graph: Graph, config: PruneConfig, select: Select | None, warnings: list[str]
) -> dict[int, np.ndarray]:
    """Channel indices to remove, per group id: what ``prune_graph`` removes with this config
    (sensitivity analysis masks the same channels instead of removing them)."""
    local, pooled = _targets(analysis, graph, config, warnings)
    rng = np.random.default_rng(config.seed)
    criterion = get_criterion(config.criterion)
    scores: dict[int, np.ndarray] = {}

    def scores_of(group: ChannelGroup) -> np.ndarray:
        if group.id not in scores:
            scores[group.id] = importance(group, criterion, rng)
        return scores[group.id]

    chosen: dict[int, np.ndarray] = {}
    for group, sparsity in local:
        if sparsity > 0:
            keep = _keep_count(group.channels, sparsity, config)
            chosen[group.id] = _lowest(scores_of(group), group.channels - keep)
    if pooled and config.sparsity > 0:
        chosen.update(_choose_globally(pooled, criterion, rng, config))
    if select is not None:
        for group in [g for g, _ in local] + pooled:
            picked = select(group, scores_of(group))
            if picked is not None:
                chosen[group.id] = _checked_selection(group, picked)
    return {gid: idx for gid, idx in chosen.items() if len(idx)}


def _targets(
    analysis: ChannelAnalysis, graph: Graph, config: PruneConfig, warnings: list[str]
) -> tuple[list[tuple[ChannelGroup, float]], list[ChannelGroup]]:
    """The groups pruned on their own, with their sparsity, and those ranked together (global)."""
    layer_specs = [parse_layer_spec(s) for s in config.layers]
    _check_patterns(graph, [p for p, _ in layer_specs], "layer")
    _check_patterns(graph, list(config.exclude), "exclude pattern")
    for pattern, _ in layer_specs:
        named = [g for g in analysis.groups if _names_group(g, pattern)]
        if not named:
            warnings.append(f"layer '{pattern}' produces no channel group; nothing of it is pruned")
        for group in named:
            if not group.prunable:
                warnings.append(f"layer '{pattern}' is in group {group.id} ({group.name}), which is {group.state()}")
    local: list[tuple[ChannelGroup, float]] = []
    pooled: list[ChannelGroup] = []
    for group in analysis.groups:
        if not group.prunable or any(_names_group(group, p) for p in config.exclude):
            continue
        explicit = [s for p, s in layer_specs if _names_group(group, p)]
        if explicit:
            local.append((group, explicit[-1]))
        elif config.scope == "global":
            pooled.append(group)
        else:
            local.append((group, config.sparsity))
    return local, pooled


def _choose_globally(groups: list[ChannelGroup], criterion, rng, config: PruneConfig) -> dict[int, np.ndarray]:
    """Rank normalised importance across groups; each group keeps at least min-channels."""
    scores = [importance(g, criterion, rng, normalise=True) for g in groups]
    total = sum(g.channels for g in groups)
    budget = int(total * config.sparsity + 1e-9)
    limits = [g.channels - _rounded_keep(g.channels, 0, replace(config, round_to=1)) for g in groups]
    owner = np.concatenate([np.full(g.channels, k) for k, g in enumerate(groups)])
    order = np.argsort(np.concatenate(scores), kind="stable")
    taken = [0] * len(groups)
    for k in owner[order]:
        if budget == 0:
            break
        if taken[k] < limits[k]:
            taken[k] += 1
            budget -= 1
    result = {}
    for k, group in enumerate(groups):
        keep = _rounded_keep(group.channels, group.channels - taken[k], config)
        result[group.id] = _lowest(scores[k], group.channels - keep)
    return result


def _checked_selection(group: ChannelGroup, picked) -> np.ndarray:
    indices = np.unique(np.asarray(picked, dtype=np.int64).reshape(-1))
    if len(indices) and (indices[0] < 0 or indices[-1] >= group.channels):
        raise IrtoolError(
            f"select returned channel {indices[-1] if indices[-1] >= group.channels else indices[0]} "
            f"for group {group.id} ({group.name}), which has {group.channels} channels",
            where="prune",
        )
    if len(indices) == group.channels:
        raise IrtoolError(
            f"select would remove all {group.channels} channels of group {group.id} ({group.name})", where="prune"
        )
    return indices


# -- applying a removal ---------------------------------------------------------------------------
def _by_value(graph: Graph, removal: Mapping[SlotKey, np.ndarray]) -> dict[Value, dict[int, np.ndarray]]:
    values = {v.name: v for v in graph.values()}
    result: dict[Value, dict[int, np.ndarray]] = defaultdict(dict)
    for (name, axis), positions in removal.items():
        if name not in values:
            raise IrtoolError(f"no value named '{name}' to prune", where="prune")
        result[values[name]][axis] = np.sort(np.asarray(positions, dtype=np.int64))
    return result


def apply_removal(graph: Graph, removal: Mapping[SlotKey, np.ndarray]) -> None:
    """Delete the given positions from every slot: slice constants, shrink value types, let
    retarget rules rewrite size-carrying operands, and re-infer shapes."""
    touched: dict[Node, dict] = {}
    expected: dict[Value, tuple] = {}
    for value, axes in _by_value(graph, removal).items():
        if value.is_const:
            value.const = _kept(value.const, axes)
        else:
            shape = list(value.type.shape)
            for axis, positions in axes.items():
                shape[axis] -= len(positions)
            value.type = value.type.with_shape(shape)
            expected[value] = tuple(shape)
        if value.producer is not None:
            touched.setdefault(value.producer, {})[("out", value.index)] = axes
        for node, i in value.uses:
            touched.setdefault(node, {})[("in", i)] = axes
    opdefs = _OpdefCache()
    for node, ports in touched.items():
        opdef = opdefs(node)
        if opdef is not None and opdef.retarget is not None:
            node.meta[REMOVED_META] = ports
            try:
                opdef.retarget(node)
            finally:
                node.meta.pop(REMOVED_META, None)
    _reinfer(graph, expected)


def _kept(array: np.ndarray, axes: Mapping[int, np.ndarray]) -> np.ndarray:
    """``array`` without the given positions (``np.take`` per axis copies whole blocks)."""
    for axis, positions in axes.items():
        mask = np.ones(array.shape[axis], dtype=bool)
        mask[positions] = False
        array = np.take(array, np.flatnonzero(mask), axis=axis)
    return array


class _OpdefCache:
    """``opdef_of`` once per op: report and retarget loops visit many nodes of few ops."""

    def __init__(self):
        self._by_op: dict[tuple[str, str], object] = {}

    def __call__(self, node: Node):
        key = (node.op, node.domain)
        if key not in self._by_op:
            self._by_op[key] = opdef_of(node)
        return self._by_op[key]


def _reinfer(graph: Graph, expected: Mapping[Value, tuple]) -> None:
    """Shape inference over the pruned graph must agree with the shapes pruning computed."""
    try:
        infer_shapes(graph)
    except IrtoolError as exc:
        raise IrtoolError(f"the pruned graph is inconsistent: {exc}", where="prune") from exc
    for value, shape in expected.items():
        inferred = value.type.shape if value.type is not None else None
        if inferred is not None and any(
            isinstance(a, int) and isinstance(b, (int, np.integer)) and a != b for a, b in zip(inferred, shape)
        ):
            raise IrtoolError(
                f"pruning computed shape {shape} for '{value.name}' but shape inference gives {inferred}", where="prune"
            )


def apply_mask(graph: Graph, removal: Mapping[SlotKey, np.ndarray], *, activations: bool = False) -> None:
    """Zero the given positions instead of removing them: every constant slot, and with
    ``activations`` every activation too (through a Mul by a 0/1 mask after its producer)."""
    for value, axes in _by_value(graph, removal).items():
        if value.is_const:
            if not np.issubdtype(value.const.dtype, np.number):
                continue
            array = np.array(value.const, copy=True)
            for axis, positions in axes.items():
                index = [slice(None)] * array.ndim
                index[axis] = positions
                array[tuple(index)] = 0
            value.const = array
        elif activations and value.type is not None and value.type.dtype.is_float:
            _mask_activation(graph, value, axes)


def _mask_activation(graph: Graph, value: Value, axes: Mapping[int, np.ndarray]) -> None:
    shape = value.type.shape
    mask = np.ones([int(shape[a]) if a in axes else 1 for a in range(len(shape))], dtype=value.type.dtype.numpy)
    for axis, positions in axes.items():
        index = [slice(None)] * len(shape)
        index[axis] = positions
        mask[tuple(index)] = 0
    uses = list(value.uses)
    constant = graph.add_constant(f"{value.name}.channel_mask", mask)
    anchor = {"after": value.producer} if value.producer is not None else {"before": graph.nodes[0]}
    node = graph.add_node("Mul", [value, constant], name=f"{value.name}.masked", output_types=[value.type], **anchor)
    for user, i in uses:
        user.replace_input_with(i, node.outputs[0])


# -- the record of removed positions --------------------------------------------------------------
def pruned_channels(graph: Graph) -> dict[str, dict[int, np.ndarray]]:
    """The removed positions recorded on ``graph``: constant name -> axis -> positions."""
    props = graph.meta.get("metadata_props") or {}
    text = props.get(RECORD_KEY)
    if not text:
        return {}
    try:
        raw = json.loads(text)
        return {name: {int(a): np.asarray(p, dtype=np.int64) for a, p in axes.items()} for name, axes in raw.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise IrtoolError(f"the pruning record '{RECORD_KEY}' is not valid JSON of the expected form: {exc}") from None


def _record(graph: Graph, removal: Mapping[SlotKey, np.ndarray], sizes: Mapping[SlotKey, int], shrink: bool) -> None:
    """Add this run's removed constant positions to the record, in the unpruned numbering."""
    record = pruned_channels(graph)
    constants = graph.constants
    for (name, axis), positions in removal.items():
        if name not in constants:
            continue
        earlier = record.setdefault(name, {}).get(axis)
        if earlier is None or not len(earlier):
            record[name][axis] = np.asarray(positions)
            continue
        original = sizes[(name, axis)] + (len(earlier) if shrink else 0)
        kept = np.delete(np.arange(original), earlier) if shrink else np.arange(original)
        record[name][axis] = np.union1d(earlier, kept[np.asarray(positions)])
    props = dict(graph.meta.get("metadata_props") or {})
    props[RECORD_KEY] = json.dumps(
        {name: {str(a): p.tolist() for a, p in axes.items()} for name, axes in record.items()},
        separators=(",", ":"),
    )
    graph.meta["metadata_props"] = props


# -- reporting ---------------------------------------------------------------------------------------
def _layer_lines(analysis: ChannelAnalysis, removal: Mapping[SlotKey, np.ndarray], sizes: Mapping[SlotKey, int]) -> list[str]:
    """``[conv] layer1.0.conv1: in 64 -> 48, out 64 -> 32``, one line per changed layer.

    A layer that isolates channels reports the sides it lost channels on; any other layer that
    reads a sliced constant (a norm, a depthwise conv, a bias) reports ``channels``.
    """
    changes: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (name, axis), positions in removal.items():
        changes[name].append((sizes[(name, axis)], len(positions)))
    lines: dict[str, str] = {}
    opdefs = _OpdefCache()
    for node in analysis.graph.nodes:
        opdef = opdefs(node)
        label = opdef.label if opdef is not None and opdef.label else node.op.lower()
        name = layer_name(node)
        parts = []
        for kind, values in (("in", node.inputs), ("out", node.outputs)):
            for i, value in enumerate(values):
                if value is not None and not value.is_const and analysis.isolating.get((node, (kind, i))):
                    parts.extend(f"{kind} {size} -> {size - count}" for size, count in changes.get(value.name, ()))
        if parts:
            lines[name] = f"[{label}] {name}: {', '.join(dict.fromkeys(parts))}"
            continue
        sliced = [c for v in node.inputs if v is not None and v.is_const for c in changes.get(v.name, ())]
        if sliced and name not in lines:
            size, count = sliced[0]
            lines[name] = f"[{label}] {name}: channels {size} -> {size - count}"
    return list(lines.values())


def _fill_shapes(graph: Graph) -> bool:
    """Type values from the shape rules (an export's run-time shape computations leave channel
    counts symbolic); True when a type changed."""
    return bool(infer_shapes(graph))


# -- entry points ------------------------------------------------------------------------------------
def prune_graph(
    graph: Graph,
    config: PruneConfig | None = None,
    *,
    select: Select | None = None,
    analysis: ChannelAnalysis | None = None,
    logger: logging.Logger | None = None,
    **options,
) -> PruneReport:
    """Prune ``graph`` in place and report what changed.

    ``config`` (or keyword options with the same names) says how much and how; ``select``
    lets the caller pick a group's channels: it gets the group and its importance and
    returns the channel indices to remove (None keeps irtool's choice).
    """
    for key in ("layers", "exclude"):
        if isinstance(options.get(key), str):
            options[key] = (options[key],)
    config = replace(config or PruneConfig(), **options) if options else (config or PruneConfig())
    config.validate()
    logger = logger or log
    if analysis is None:
        _fill_shapes(graph)
        analysis = analyze_channels(graph)
    report = PruneReport(mode=config.mode, before=graph_cost(graph))
    chosen = choose_removed(analysis, graph, config, select, report.warnings)
    folding = [g for g in analysis.groups if g.channels > 1 and any(FOLD_HINT in reason for reason in g.blocked)]
    if folding:
        report.warnings.append(
            f"{len(folding)} groups are blocked by shapes computed at run time; "
            "their shapes depend on a dynamic dimension"
        )
    removed = np.zeros(analysis.components, dtype=bool)
    by_id = {g.id: g for g in analysis.groups}
    for gid, indices in chosen.items():
        group = by_id[gid]
        removed[group.components[indices]] = True
        report.groups.append(GroupChange(group, group.channels, group.channels - len(indices)))
    report.removed = analysis.removal(removed)
    sizes = {key: analysis.slot_size(key) for key in report.removed}
    lines = _layer_lines(analysis, report.removed, sizes)
    report.lines = lines if config.mode == "remove" else [f"{line} (masked)" for line in lines]
    if report.removed:
        if config.mode == "remove":
            apply_removal(graph, report.removed)
        else:
            apply_mask(graph, report.removed)
        _record(graph, report.removed, sizes, shrink=config.mode == "remove")
    report.after = graph_cost(graph)
    for warning in report.warnings:
        logger.warning("prune: %s", warning)
    return report


DEFAULT_SPARSITY = 0.5


@register_pass
@dataclass(frozen=True)
class Prune(Pass):
    """Remove channels, filters and attention heads by importance, keeping every group consistent.

    ``layers=[GLOB:SPARSITY,...]`` gives the groups whose centre or a producing layer matches GLOB
    (a source name such as ``layer4.1.conv1`` or ``layer3.*``) their own sparsity; the last
    matching entry wins, and ``sparsity=0 layers=[layer4.1.conv1:0.2]`` prunes that layer's
    group alone. ``exclude=[...]`` leaves alone the groups produced by matching layers or op types.

    ``target-latency`` (``0.5``, ``50%`` of the unpruned, or ``3.5ms``) or ``target-macs``
    replaces the sparsity: each group's channel count is chosen to reach the target
    (``passes/budget.py``), a latency target on the measured latency of ``backend`` at ``threads``;
    with ``int8=true``, of the model as the ``quantize`` pass leaves it, for ``prune{...},quantize``.
    """

    name = "prune"
    sparsity: float = field(default=DEFAULT_SPARSITY, metadata={"help": "fraction of each group's channels to remove, in [0, 1)"})
    layers: tuple[str, ...] = field(
        default=(), metadata={"help": "sparsity of the groups these layers produce, last match wins: [layer4.1.conv1:0.2,layer3.*:0.3]"}
    )
    criterion: str = field(default="l1", metadata={"help": "channel importance: l1, l2, fpgm, random, bn-scale or a plug-in"})
    scope: Literal["local", "global"] = field(default="local", metadata={"help": "rank channels within each group, or across groups"})
    round_to: int = field(default=0, metadata={"help": "keep channel counts a multiple of this; 0: measured for target-latency, else 1"})
    min_channels: int = field(default=1, metadata={"help": "channels every group keeps at least"})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "layers (names, globs) or op types whose groups stay whole"})
    mode: Literal["remove", "mask"] = field(default="remove", metadata={"help": "remove channels, or zero them (for training with masks)"})
    seed: int = field(default=0, metadata={"help": "seed of the random criterion"})
    target_latency: str = field(default="", metadata={"help": "latency to reach instead of a sparsity: a fraction (0.5, 50%) or ms (3.5ms)"})
    target_macs: str = field(default="", metadata={"help": "MACs to reach instead of a sparsity: a fraction (0.5, 50%) or a count"})
    backend: Literal["ort", "tvm"] = field(default="ort", metadata={"help": "backend target-latency is measured on"})
    threads: int = field(default=1, metadata={"help": "thread count target-latency is measured at"})
    int8: bool = field(default=False, metadata={"help": "target-latency is of the model after quantize: time models quantized (ort)"})
    sensitivity: str = field(default="", metadata={"help": "JSON from 'irtool analyze --sensitivity --json' steering a target's choice"})

    def __post_init__(self) -> None:
        self.config().validate()
        self.budget().validate()
        if self.budget().active and (self.sparsity != DEFAULT_SPARSITY or self.layers or self.scope != "local"):
            raise IrtoolError("a target chooses every group's channel count: give it without sparsity, layers or scope", where="prune")

    def config(self) -> PruneConfig:
        values = {f.name: getattr(self, f.name) for f in fields(PruneConfig)}
        return PruneConfig(**{**values, "round_to": self.round_to or 1})

    def budget(self) -> Budget:
        return Budget(**{f.name: getattr(self, f.name) for f in fields(Budget)})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        # Exporters compute reshape targets at run time (Shape -> Gather -> Concat); with
        # static shapes those fold to constants, which frees the groups they would block.
        filled = _fill_shapes(graph)
        folded = ConstantFold().run(graph, ctx).modified
        if folded:
            _fill_shapes(graph)
        if filled or folded:
            ctx.invalidate()
        analysis = ctx.analysis("channels", graph)
        config, select, budget_log = self.config(), None, []
        with data_scope(ctx.data):
            if self.budget().active:
                _check_patterns(graph, list(self.exclude), "exclude pattern")
                excluded = {g.id for g in analysis.groups if any(_names_group(g, p) for p in self.exclude)}
                choice = choose_to_budget(graph, analysis, self.budget(), exclude_groups=excluded)
                config, select, budget_log = replace(config, sparsity=0.0), keep_selector(choice.keep), choice.log
            report = prune_graph(graph, config, select=select, analysis=analysis, logger=ctx.logger)
        return PassResult(graph, report.changed, [*report.lines, *report.summary(), *budget_log])

