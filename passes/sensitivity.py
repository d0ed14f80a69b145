"""Pruning sensitivity: how much pruning each channel group alone changes the model's output.

Each prunable group loses its least important channels by the criterion (the channels
``budget.pruned_copy`` would remove) and the model runs in onnxruntime on the given inputs. The
deviation is the relative L2 error of the outputs against the unpruned model's; for a classifier
output (rank 2) the top-1 agreement is kept too. The JSON form (``to_json``) is what
``prune{target-... sensitivity=FILE}`` reads, so the budget chooser trades measured deviation,
not weight norms, against cost.

A copy, an export and an onnxruntime session per group and sparsity cost far more than the runs
themselves, so exact groups are measured by masking instead. By the equivalence oracle
(``passes/oracle.py``), removing a channel computes what zeroing it everywhere computes: its
constant slices and every activation position it reaches (flattened ones included). Zeroing it
where it leaves the group is enough: every op between a group's producers and the layers that
read it into something else (its consumers) is per channel, so the channel reaches the rest of
the model only there, and its constant slices only shape positions zeroed before they leave.
One copy of the model multiplies each activation a consumer reads by a 0/1 mask that is a graph
input, and one session runs it with the masks of each group and sparsity. (Masking every
activation of a group is equivalent too, but a mask between a conv and its norm and activation
stops onnxruntime fusing them, and runs took three times as long.) Approximate groups
(normalisation over channels counts a zeroed channel in its statistics) and groups through
recurrent layers (a hidden unit feeds the others inside the op, where no mask reaches) are
still pruned on a copy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ir.core import Graph, Value
from ..ir.errors import IrtoolError
from ..ir.registry import opdef_of
from .dependency import ChannelAnalysis, ChannelGroup, SlotKey

Sensitivity = Mapping[int, list[tuple[float, float]]]
"""Group id -> (sparsity, output deviation) points, sparsity ascending."""


@dataclass
class GroupSensitivity:
    """Output deviation (and top-1 agreement, for classifiers) of one group per sparsity."""

    group: int
    name: str
    channels: int
    deviation: dict[float, float] = field(default_factory=dict)
    agreement: dict[float, float] = field(default_factory=dict)


RECURRENT_LABEL = "rnn"
"""The registry label of layers that feed their hidden units back inside the op (RNN, GRU,
LSTM): masking their outputs leaves a unit feeding the others through the recurrent weights,
which only removing (or zeroing) it stops."""


def _outputs(graph: Graph, feeds: list[np.ndarray]) -> list[np.ndarray]:
    from ..backends.onnx import run_onnxruntime

    return run_onnxruntime(graph, feeds)


def _maskable(group: ChannelGroup) -> bool:
    """Whether masking the group's activations computes what removing its channels does (see
    the module docstring): the group is exact, its activations are float, none is a graph input
    or output (a prunable group has none; a mask there would not be in the path) and none of
    its layers is recurrent."""
    activations = [m.value for m in group.members if not m.value.is_const]
    return (
        group.exact
        and all(v.type.dtype.is_float and not v.is_graph_input and not v.is_graph_output for v in activations)
        and not any(_label(node) == RECURRENT_LABEL for node in group.layers())
    )


def _label(node) -> str:
    opdef = opdef_of(node)
    return opdef.label if opdef is not None else ""


def _cut_slots(group: ChannelGroup) -> list[SlotKey]:
    """The group's activations that a layer reads to write something outside the group (a
    consumer): where the group's channels leave it, the only places a mask is needed."""
    activations = [m for m in group.members if not m.value.is_const]
    inside = {m.value for m in activations}
    return [m.key for m in activations if any(any(out not in inside for out in node.outputs) for node, _ in m.value.uses)]


class _MaskedModel:
    """A copy of the graph whose activations where the given groups leave are multiplied by 0/1
    mask inputs (one per slot), run in one onnxruntime session."""

    def __init__(self, graph: Graph, groups: list[ChannelGroup], inputs: list[np.ndarray]):
        from ..backends.onnx import make_session

        self.copy = graph.copy()
        self.feeds = {v.name: x for v, x in zip(self.copy.inputs, inputs)}
        values = {v.name: v for v in self.copy.values()}
        slots = dict.fromkeys(key for g in groups for key in _cut_slots(g))
        self.masks = {key: self._mask_input(values[key[0]], key[1]) for key in slots}
        self.ones = {v.name: np.ones(v.type.shape, v.type.dtype.numpy) for v in self.masks.values()}
        self.session = make_session(self.copy)

    def _mask_input(self, value: Value, axis: int) -> Value:
        shape = [int(d) if a == axis else 1 for a, d in enumerate(value.type.shape)]
        mask = self.copy.add_input(f"{value.name}.mask{axis}", value.type.with_shape(shape))
        uses = list(value.uses)
        node = self.copy.add_node(
            "Mul", [value, mask], name=f"{value.name}.masked{axis}", output_types=[value.type], after=value.producer
        )
        for user, i in uses:
            user.replace_input_with(i, node.outputs[0])
        return mask

    def run(self, group: ChannelGroup, channels: np.ndarray) -> list[np.ndarray]:
        """Outputs with the group's ``channels`` zeroed in its masked activations; its constant
        slices need no zeroing, since what they reach is zeroed before it leaves the group."""
        feeds = {**self.feeds, **self.ones}
        for member in group.members:
            if member.key in self.masks:
                name = self.masks[member.key].name
                feeds[name] = feeds[name].copy()
                np.moveaxis(feeds[name], member.axis, 0)[member.positions[np.isin(member.channels, channels)]] = 0
        return self.session.run(None, feeds)


def _chosen(graph: Graph, analysis: ChannelAnalysis, groups: list[ChannelGroup], sparsity: float, criterion: str):
    """Group id -> the channels ``pruned_copy`` removes from the group pruned alone at
    ``sparsity``: the prune pass's own choice, for all groups at once, since a group's choice
    does not depend on the others' counts."""
    from .budget import keep_selector
    from .prune import PruneConfig, choose_removed

    keep = {g.id: _keep(g.channels, sparsity) for g in groups}
    chosen = choose_removed(analysis, graph, PruneConfig(sparsity=0.0, criterion=criterion), keep_selector(keep), [])
    return {g.id: chosen.get(g.id, np.zeros(0, np.int64)) for g in groups}


def _keep(channels: int, sparsity: float) -> int:
    return max(1, channels - int(channels * sparsity + 1e-9))


def measure_sensitivity(
    graph: Graph, sparsities: list[float], inputs: list[np.ndarray], *, criterion: str = "l1"
) -> list[GroupSensitivity]:
    """Prune each prunable group of the prepared ``graph`` alone at each sparsity and compare
    outputs: masked in one session where that is exact, on a pruned copy otherwise."""
    from .budget import pruned_copy
    from .dependency import analyze_channels

    reference = _outputs(graph, inputs)
    analysis = analyze_channels(graph)
    groups = [g for g in analysis.groups if g.prunable]
    masked = [g for g in groups if _maskable(g)]
    model = _MaskedModel(graph, masked, inputs) if masked else None
    chosen = {s: _chosen(graph, analysis, masked, s, criterion) if masked else {} for s in sparsities}
    results = []
    for group in groups:
        row = GroupSensitivity(group.id, group.name, group.channels)
        for sparsity in sparsities:
            channels = chosen[sparsity].get(group.id)
            if channels is not None:
                outputs = model.run(group, channels)
            else:
                outputs = _outputs(pruned_copy(graph, {group.id: _keep(group.channels, sparsity)}, criterion), inputs)
            errors = [np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-12) for o, r in zip(outputs, reference)]
            row.deviation[sparsity] = float(max(errors))
            if reference[0].ndim == 2:
                row.agreement[sparsity] = float(np.mean(outputs[0].argmax(1) == reference[0].argmax(1)))
        results.append(row)
    return results


def to_json(rows: list[GroupSensitivity]) -> dict:
    """``{"groups": {id: {"name", "channels", "points": [[sparsity, deviation], ...]}}}``."""
    return {
        "groups": {
            str(r.group): {"name": r.name, "channels": r.channels, "points": [[s, d] for s, d in sorted(r.deviation.items())]}
            for r in rows
        }
    }


def load_sensitivity(path: str | Path, analysis: ChannelAnalysis | None = None) -> dict[int, list[tuple[float, float]]]:
    """The chooser's sensitivity mapping from a file ``to_json`` wrote; with ``analysis``, the
    file must describe that model's groups (same ids, names and channel counts), since a file
    measured on another model would steer the chooser silently wrong."""
    try:
        raw = json.loads(Path(path).read_text())
        groups = {int(gid): entry for gid, entry in raw["groups"].items()}
        result = {gid: [(float(s), float(d)) for s, d in entry["points"]] for gid, entry in groups.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IrtoolError(f"sensitivity file '{path}' is unreadable: {exc}") from None
    if analysis is not None:
        model = {g.id: (g.name, g.channels) for g in analysis.groups}
        for gid, entry in groups.items():
            if model.get(gid) != (entry.get("name"), entry.get("channels")):
                found = "no such group" if gid not in model else "{} with {} channels".format(*model[gid])
                raise IrtoolError(
                    f"sensitivity file '{path}' does not fit this model: its group {gid} is {entry.get('name')} "
                    f"with {entry.get('channels')} channels, the model's is {found}"
                )
    return result
