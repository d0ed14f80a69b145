"""Pruning sensitivity: how much pruning each channel group alone changes the model's output.

Each prunable group is pruned alone (its least important channels by the criterion) on a copy
of the model, which runs in onnxruntime on the given inputs. The deviation is the relative L2
error of the outputs against the unpruned model's; for a classifier output (rank 2) the top-1
agreement is kept too. The JSON form (``to_json``) is what ``prune{target-... sensitivity=FILE}``
reads, so the budget chooser trades measured deviation, not weight norms, against cost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ir.core import Graph
from ..ir.errors import IrtoolError
from .dependency import ChannelAnalysis

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


def _outputs(graph: Graph, feeds: list[np.ndarray]) -> list[np.ndarray]:
    from ..backends.onnx import run_onnxruntime

    return run_onnxruntime(graph, feeds)


def measure_sensitivity(
    graph: Graph, sparsities: list[float], inputs: list[np.ndarray], *, criterion: str = "l1"
) -> list[GroupSensitivity]:
    """Prune each prunable group of the prepared ``graph`` alone at each sparsity and compare outputs."""
    from .budget import pruned_copy
    from .dependency import analyze_channels

    reference = _outputs(graph, inputs)
    results = []
    for group in analyze_channels(graph).groups:
        if not group.prunable:
            continue
        row = GroupSensitivity(group.id, group.name, group.channels)
        for sparsity in sparsities:
            keep = max(1, group.channels - int(group.channels * sparsity + 1e-9))
            outputs = _outputs(pruned_copy(graph, {group.id: keep}, criterion), inputs)
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
