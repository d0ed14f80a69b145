"""The equivalence oracle: a pruned model computes what the original computes with the removed
channels cut off.

Removing channel c of a group, and every slice it reaches, is the same as forcing c to zero
everywhere in the original: zero its positions in every constant of the group (producer
filters, biases, norm params, consumers' input slices) and multiply every activation of the
group by a 0/1 mask. For an *exact* group the two models agree up to float rounding; an
*approximate* group (normalisation over channels) differs by what the removed channels
contributed to the statistics, and the oracle reports that deviation separately.

The removed positions come from the pruned graph's record (``passes.prune.pruned_channels``,
kept in the ONNX file's metadata), or, for a model pruned elsewhere, from comparing constants
of the same name in both models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..ir.core import Graph
from ..ir.errors import IrtoolError
from ..ir.registry import index_bounds
from ..ir.shapes import infer_shapes
from .base import PassManager
from .dependency import ChannelAnalysis, SlotKey, analyze_channels
from .prune import apply_mask, apply_removal, pruned_channels

Record = Mapping[str, Mapping[int, np.ndarray]]


@dataclass
class OutputCheck:
    """One graph output: the largest difference over all trials and the output's scale."""

    name: str
    max_abs_diff: float
    scale: float

    @property
    def relative(self) -> float:
        return self.max_abs_diff / self.scale if self.scale > 0 else self.max_abs_diff


@dataclass
class OracleReport:
    outputs: list[OutputCheck]
    """The check on exact groups: pruned vs masked original, per output."""
    tol: float
    trials: int
    channels: int
    """Channels removed in the checked model, over all groups."""
    groups: list[str] = field(default_factory=list)
    approximate: list[str] = field(default_factory=list)
    """Approximate groups with removed channels, with why."""
    deviation: list[OutputCheck] = field(default_factory=list)
    """With approximate groups pruned: the whole pruned model vs the masked original."""

    @property
    def ok(self) -> bool:
        return all(o.max_abs_diff <= self.tol * o.scale or o.max_abs_diff == 0 for o in self.outputs)

    def format(self) -> str:
        lines = [
            f"oracle: {self.channels} removed channels in {len(self.groups)} groups, {self.trials} random inputs, "
            f"tolerance {self.tol:g} x output scale"
        ]
        if self.approximate:
            lines.append("exact groups only (approximate groups are reported below):")
        lines.extend(_table(self.outputs, self.tol))
        if self.approximate:
            lines.append(f"approximate groups ({len(self.approximate)}), deviation of the whole pruned model:")
            lines.extend(f"  {reason}" for reason in self.approximate)
            lines.extend(_table(self.deviation, None))
        lines.append("equivalent" if self.ok else "NOT equivalent")
        return "\n".join(lines)


def _table(checks: Sequence[OutputCheck], tol: float | None) -> list[str]:
    width = max([len("output"), *(len(c.name) for c in checks)])
    lines = [f"  {'output':<{width}}  {'max abs diff':>12}  {'scale':>10}  {'relative':>10}"]
    for c in checks:
        verdict = "" if tol is None else ("  ok" if c.max_abs_diff <= tol * c.scale or c.max_abs_diff == 0 else "  FAIL")
        lines.append(f"  {c.name:<{width}}  {c.max_abs_diff:12.3e}  {c.scale:10.3e}  {c.relative:10.3e}{verdict}")
    return lines


# -- copying and preparing ---------------------------------------------------------------------------
def copy_graph(graph: Graph) -> Graph:
    """A deep copy of ``graph`` (``Graph.copy``)."""
    return graph.copy()


def prepare(graph: Graph) -> Graph:
    """A copy with static shapes and shape computations folded, as the prune pass needs: the
    fold turns run-time shape arithmetic into constants, and shapes are inferred again through
    it, so the oracle sees the channel groups the prune pass sees."""
    copy = graph.copy()
    infer_shapes(copy)
    copy = PassManager("const-fold").run(copy).graph
    infer_shapes(copy)
    return copy


# -- the record --------------------------------------------------------------------------------------
def record_from_constants(original: Graph, pruned: Graph) -> dict[str, dict[int, np.ndarray]]:
    """Removed positions found by comparing constants of the same name (for models pruned
    without a record): a constant that shrank along one axis, or whose slices were zeroed."""
    record: dict[str, dict[int, np.ndarray]] = {}
    for name, value in original.constants.items():
        other = pruned.constants.get(name)
        if other is None or value.const.ndim != other.const.ndim or value.const.ndim == 0:
            continue
        a, b = value.const, other.const
        differing = [k for k in range(a.ndim) if a.shape[k] != b.shape[k]]
        if len(differing) == 1:
            positions = _deleted_slices(a, b, differing[0])
        elif not differing and not np.array_equal(a, b):
            positions, axis = _zeroed_slices(a, b)
            differing = [axis] if axis is not None else []
        else:
            continue
        if differing and positions is not None and len(positions):
            record[name] = {differing[0]: positions}
    return record


def _deleted_slices(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray | None:
    """Positions of ``a`` along ``axis`` missing from ``b`` (which keeps the rest in order)."""
    a, b = np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)
    missing, j = [], 0
    for i in range(len(a)):
        if j < len(b) and np.array_equal(a[i], b[j]):
            j += 1
        else:
            missing.append(i)
    return np.array(missing, dtype=np.int64) if j == len(b) else None


def _zeroed_slices(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray | None, int | None]:
    """The axis and positions whose slices ``b`` zeroed (mask mode), when the changes are that."""
    for axis in range(a.ndim):
        others = tuple(k for k in range(a.ndim) if k != axis)
        changed = np.any(a != b, axis=others)
        zeroed = ~np.any(b != 0, axis=others)
        if changed.any() and zeroed[changed].all():
            return np.flatnonzero(changed), axis
    return None, None


def removed_components(analysis: ChannelAnalysis, record: Record) -> np.ndarray:
    """The coupled channels of ``analysis`` that the record removes; they must be whole."""
    removed = np.zeros(analysis.components, dtype=bool)
    matched: dict[SlotKey, np.ndarray] = {}
    for name, axes in record.items():
        for axis, positions in axes.items():
            key = (name, int(axis))
            if analysis.slot_size(key) is None or not len(positions):
                continue
            removed[analysis.components_at(key, positions)] = True
            matched[key] = np.sort(np.asarray(positions, dtype=np.int64))
    if record and not matched:
        raise IrtoolError("none of the pruned constants is a channel slot of the original; is it the model the prune pass saw?")
    implied = analysis.removal(removed)
    for key, positions in matched.items():
        if not np.array_equal(implied.get(key, np.zeros(0, np.int64)), positions):
            raise IrtoolError(
                f"the removed positions of '{key[0]}' (axis {key[1]}) do not form whole channel groups of the original"
            )
    return removed


# -- running ------------------------------------------------------------------------------------------
def random_inputs(graph: Graph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input; symbolic dims are 1. Indices (an embedding's token
    ids) are drawn over the entries they address, so every input row is checked, not row 0."""
    bounds = index_bounds(graph)
    feeds = {}
    for value in graph.inputs:
        if value.type is None or value.type.shape is None:
            raise IrtoolError(f"input '{value.name}' has no known shape; pass inputs to the oracle")
        shape = [d if isinstance(d, (int, np.integer)) else 1 for d in value.type.shape]
        dtype = value.type.dtype.numpy
        if value.type.dtype.is_float:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif value in bounds:
            feeds[value.name] = rng.integers(0, bounds[value], shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _compare(reference: Graph, candidate: Graph, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[OutputCheck]:
    from ..backends.onnx import make_session

    sessions = [make_session(g) for g in (reference, candidate)]
    names = [v.name for v in reference.outputs]
    diffs, scales = np.zeros(len(names)), np.zeros(len(names))
    for feed in feeds:
        expected, actual = (s.run(None, {k: np.asarray(v) for k, v in feed.items()}) for s in sessions)
        for k, (e, a) in enumerate(zip(expected, actual)):
            if np.shape(e) != np.shape(a):
                raise IrtoolError(f"output '{names[k]}' has shape {np.shape(a)} after pruning, {np.shape(e)} before")
            e, a = np.asarray(e, dtype=np.float64), np.asarray(a, dtype=np.float64)
            diffs[k] = max(diffs[k], float(np.max(np.abs(e - a))) if e.size else 0.0)
            scales[k] = max(scales[k], float(np.max(np.abs(e))) if e.size else 0.0)
    return [OutputCheck(n, float(d), float(s)) for n, d, s in zip(names, diffs, scales)]


def check_equivalence(
    original: Graph,
    pruned: Graph,
    *,
    removed: Record | None = None,
    inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    trials: int = 2,
    tol: float = 1e-4,
    seed: int = 0,
) -> OracleReport:
    """Compare ``pruned`` with the original whose removed channels are zeroed, on random inputs.

    ``removed`` (constant name -> axis -> positions, in the original's numbering) defaults to
    the record the prune pass left on ``pruned``. When approximate groups lost channels, the
    exact groups are checked on their own (the original pruned of those alone) and the whole
    model's deviation is reported beside.
    """
    base = prepare(original)
    analysis = analyze_channels(base)
    record = removed if removed is not None else (pruned_channels(pruned) or record_from_constants(base, pruned))
    gone = removed_components(analysis, record)
    group_of = analysis.component_group()
    groups = [g for g in analysis.groups if gone[g.components].any()]
    approximate = [g for g in groups if not g.exact]
    if inputs is None:
        rng = np.random.default_rng(seed)
        feeds = [random_inputs(base, rng) for _ in range(trials)]
    else:
        feeds = [inputs] if isinstance(inputs, Mapping) else list(inputs)

    masked = base.copy()
    apply_mask(masked, analysis.removal(gone), activations=True)
    whole = _compare(masked, pruned, feeds)
    report = OracleReport(
        outputs=whole,
        tol=tol,
        trials=len(feeds),
        channels=int(gone.sum()),
        groups=[g.name for g in groups],
        approximate=[f"{g.name}: {g.approximate[0]}" for g in approximate],
    )
    if approximate:
        exact_only = gone & np.isin(group_of, [g.id for g in groups if g.exact])
        removal = analysis.removal(exact_only)
        pruned_exact, masked_exact = base.copy(), base.copy()
        apply_removal(pruned_exact, removal)
        apply_mask(masked_exact, removal, activations=True)
        report.outputs = _compare(masked_exact, pruned_exact, feeds)
        report.deviation = whole
    return report
