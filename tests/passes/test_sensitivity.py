"""Sensitivity analysis: the deviation of each group's pruning (checked against zeroing the same
channels, and against pruning a copy per group and sparsity as masking replaces), the JSON form,
and ``prune{target-... sensitivity=FILE}`` sparing a sensitive group."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from irtool.backends.onnx import run_onnxruntime
from irtool.frontends.torch import load_module
from irtool.ir.errors import IrtoolError
from irtool.passes.base import PassManager
from irtool.passes.budget import choose_channels, keep_selector, pruned_copy
from irtool.passes.cost import graph_cost
from irtool.passes.dependency import analyze_channels
from irtool.passes.oracle import copy_graph, prepare
from irtool.passes.prune import PruneConfig, prune_graph
from irtool.passes.sensitivity import (
    _chosen,
    _maskable,
    _MaskedModel,
    load_sensitivity,
    measure_sensitivity,
    to_json,
)
from tests.passes.test_latency import tiny_graph
from tests.zoo import get


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


# -- masking instead of a pruned copy per group and sparsity ------------------------------------------
class FlattenNet(nn.Module):
    """conv-bn-relu-pool whose 8 channels reach a linear layer flattened, 16 positions each."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(8 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.features(x), 1))))


def _load(module: nn.Module, shape: tuple[int, ...]):
    return prepare(load_module(module.eval(), (torch.randn(shape),)))


def _input(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(3).standard_normal(shape).astype(np.float32)


def _pruned_copy_deviations(graph, sparsities, x, criterion="l1") -> dict[int, dict[float, float]]:
    """Each group's deviation the slow way: pruned alone on a copy that runs in its own session."""
    reference = run_onnxruntime(graph, [x])
    result: dict[int, dict[float, float]] = {}
    for group in (g for g in analyze_channels(graph).groups if g.prunable):
        for sparsity in sparsities:
            keep = max(1, group.channels - int(group.channels * sparsity + 1e-9))
            outputs = run_onnxruntime(pruned_copy(graph, {group.id: keep}, criterion), [x])
            errors = [np.linalg.norm(o - r) / np.linalg.norm(r) for o, r in zip(outputs, reference)]
            result.setdefault(group.id, {})[sparsity] = float(max(errors))
    return result


def _assert_as_pruned_copies(graph, x, sparsities, criterion="l1") -> dict[int, dict[float, float]]:
    measured = {r.group: r.deviation for r in measure_sensitivity(graph, sparsities, [x], criterion=criterion)}
    expected = _pruned_copy_deviations(graph, sparsities, x, criterion)
    assert measured.keys() == expected.keys()
    for gid, points in expected.items():
        assert list(measured[gid]) == sparsities
        for sparsity, deviation in points.items():
            assert abs(measured[gid][sparsity] - deviation) <= 1e-4, (gid, sparsity, measured[gid][sparsity], deviation)
    return expected


@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_masked_groups_through_a_flatten_measure_what_pruned_copies_do(criterion):
    graph = _load(FlattenNet(), (1, 3, 8, 8))
    groups = [g for g in analyze_channels(graph).groups if g.prunable]
    assert len(groups) == 2 and all(_maskable(g) for g in groups)
    conv = next(g for g in groups if g.channels == 8)
    assert max(len(m.positions) for m in conv.members if not m.value.is_const) == 8 * 16  # the flattened slot
    expected = _assert_as_pruned_copies(graph, _input((1, 3, 8, 8)), [0.25, 0.5, 0.75], criterion)
    assert max(d for points in expected.values() for d in points.values()) > 1e-2


def test_resnet18_measures_what_pruned_copies_do():
    shape = (1, 3, 32, 32)
    zoo = get("resnet18")
    graph = _load(zoo.build(shape), shape)
    groups = [g for g in analyze_channels(graph).groups if g.prunable]
    assert len(groups) >= 10 and all(_maskable(g) for g in groups)
    expected = _assert_as_pruned_copies(graph, _input(shape), [0.25, 0.75])
    assert max(d for points in expected.values() for d in points.values()) > 0.1


def test_a_recurrent_group_is_pruned_on_a_copy_as_masking_its_outputs_is_not_removal():
    zoo = get("lstm_classifier")
    graph, x = _load(zoo.build(), zoo.input_shape), _input(zoo.input_shape)
    analysis = analyze_channels(graph)
    hidden = [g for g in analysis.groups if g.prunable]
    assert hidden and all(g.exact and not _maskable(g) for g in hidden)
    expected = _assert_as_pruned_copies(graph, x, [0.5])
    # a hidden unit whose outputs are masked still feeds the others through the recurrent weights:
    # the deviation is off by more than the tolerance masked groups meet
    (reference,), model = run_onnxruntime(graph, [x]), _MaskedModel(graph, hidden, [x])
    chosen = _chosen(graph, analysis, hidden, 0.5, "l1")
    for group in hidden:
        (out,) = model.run(group, chosen[group.id])
        masked = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
        assert abs(masked - expected[group.id][0.5]) > 1e-4
