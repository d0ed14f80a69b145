"""Sensitivity analysis: the deviation of each group's pruning (checked against zeroing the same
channels), the JSON form, and ``prune{target-... sensitivity=FILE}`` sparing a sensitive group."""

from __future__ import annotations

import json

import numpy as np
import pytest

from irtool.backends.onnx import run_onnxruntime
from irtool.ir.errors import IrtoolError
from irtool.passes.base import PassManager
from irtool.passes.budget import choose_channels, keep_selector
from irtool.passes.cost import graph_cost
from irtool.passes.dependency import analyze_channels
from irtool.passes.oracle import copy_graph
from irtool.passes.prune import PruneConfig, prune_graph
from irtool.passes.sensitivity import load_sensitivity, measure_sensitivity, to_json
from tests.passes.test_latency import tiny_graph


def _masked_deviation(graph, gid: int, keep: int, x: np.ndarray) -> float:
    """Relative output error with the group's weakest channels zeroed instead of removed."""
    masked = copy_graph(graph)
    prune_graph(masked, PruneConfig(sparsity=0.0, mode="mask"), select=keep_selector({gid: keep}), analysis=analyze_channels(masked))
    (reference,), (out,) = run_onnxruntime(graph, [x]), run_onnxruntime(masked, [x])
    return float(np.linalg.norm(out - reference) / np.linalg.norm(reference))


def test_deviation_is_that_of_zeroing_the_same_channels():
    graph = tiny_graph()
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    rows = measure_sensitivity(graph, [0.25, 0.5], [x])
    prunable = [g for g in analyze_channels(graph).groups if g.prunable]
    assert [(r.group, r.channels) for r in rows] == [(g.id, g.channels) for g in prunable]
    for row in rows:
        assert set(row.deviation) == {0.25, 0.5} and set(row.agreement) <= {0.25, 0.5}
        assert all(a in (0.0, 1.0) for a in row.agreement.values())  # one input: top-1 agrees or not
        for sparsity, deviation in row.deviation.items():
            keep = row.channels - int(row.channels * sparsity)
            assert deviation == pytest.approx(_masked_deviation(graph, row.group, keep, x), rel=1e-4, abs=1e-6)
            assert deviation > 0


def test_json_round_trip_and_a_file_of_another_model(tmp_path):
    graph = tiny_graph()
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    rows = measure_sensitivity(graph, [0.5], [x])
    path = tmp_path / "sens.json"
    path.write_text(json.dumps(to_json(rows)))
    loaded = load_sensitivity(path, analyze_channels(graph))
    assert loaded == {r.group: [(0.5, r.deviation[0.5])] for r in rows}
    raw = to_json(rows)
    raw["groups"][str(rows[0].group)]["channels"] += 1
    path.write_text(json.dumps(raw))
    with pytest.raises(IrtoolError, match=f"does not fit this model: its group {rows[0].group} is {rows[0].name} with"):
        load_sensitivity(path, analyze_channels(graph))
    with pytest.raises(IrtoolError, match="does not fit this model"):
        PassManager(f"prune{{target-macs=0.6 sensitivity={path}}}").run(copy_graph(graph))


def test_the_pass_spares_the_group_the_file_says_is_sensitive(tmp_path):
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    plain = choose_channels(graph, analysis, target_macs=0.6)
    spared = max(plain, key=lambda gid: next(g.channels for g in analysis.groups if g.id == gid) - plain[gid])
    groups = {}
    for group in (g for g in analysis.groups if g.prunable):
        scale = 1000.0 if group.id == spared else 0.01
        groups[str(group.id)] = {"name": group.name, "channels": group.channels, "points": [[0.5, scale], [0.75, 2 * scale]]}
    path = tmp_path / "sens.json"
    path.write_text(json.dumps({"groups": groups}))
    result = PassManager(f"prune{{target-macs=0.6 sensitivity={path}}}").run(copy_graph(graph))
    after = analyze_channels(result.graph)
    spared_name = next(g.name for g in analysis.groups if g.id == spared)
    assert next(g.channels for g in after.groups if g.name == spared_name) == next(g.channels for g in analysis.groups if g.id == spared)
    assert graph_cost(result.graph).macs <= 0.6 * graph_cost(graph).macs
