"""The budget chooser and the ``prune-budget`` pass: MAC targets reached exactly (within one
step of rounding), round-to respected, sensitivity steering the choice, latency targets
predicted and measured, bad targets refused."""

from __future__ import annotations

import pytest

from irtool.ir.errors import IrtoolError
from irtool.passes.base import PassManager
from irtool.passes.budget import PruneBudget, choose_channels, resolve_target
from irtool.passes.cost import graph_cost
from irtool.passes.dependency import analyze_channels
from irtool.passes.latency import build_latency_model, layer_work, predicted_macs
from irtool.passes.oracle import check_equivalence, copy_graph
from irtool.passes.pipeline import parse_pipeline
from tests.passes.test_dependency import zoo_graph
from tests.passes.test_latency import _channels, _prune_to, cache_dir, tiny_graph  # noqa: F401 - fixture


def _largest_step(analysis, round_to: int = 1) -> float:
    """The most MACs removing ``round_to`` channels of one group can save."""
    works, channels = layer_work(analysis), _channels(analysis)
    full = predicted_macs(works, {}, channels)
    return max(
        full - predicted_macs(works, {g.id: g.channels - round_to}, channels)
        for g in analysis.groups
        if g.prunable and g.channels > round_to
    )


@pytest.mark.parametrize("fraction", [0.7, 0.5, 0.3])
def test_mac_target_is_reached_within_one_channel(fraction):
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    keep = choose_channels(graph, analysis, target_macs=fraction)
    pruned = _prune_to(graph, keep)
    full, after = graph_cost(graph).macs, graph_cost(pruned).macs
    target = fraction * full
    assert after <= target
    assert target - after <= _largest_step(analysis)
    assert check_equivalence(graph, pruned).ok


def test_mobilenet_v2_mac_target_with_round_to():
    graph = zoo_graph("mobilenet_v2")
    analysis = analyze_channels(graph)
    keep = choose_channels(graph, analysis, target_macs="40%", round_to=8)
    assert len(keep) >= 5  # the budget is spread over groups, not taken from one
    assert all(k % 8 == 0 for k in keep.values())
    pruned = _prune_to(graph, keep)
    full, after = graph_cost(graph).macs, graph_cost(pruned).macs
    assert after <= 0.4 * full
    assert 0.4 * full - after <= _largest_step(analysis, 8)


def test_absolute_mac_target():
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    full = graph_cost(graph).macs
    keep = choose_channels(graph, analysis, target_macs=str(int(full * 0.6)))
    after = graph_cost(_prune_to(graph, keep)).macs
    assert full * 0.6 - _largest_step(analysis) <= after <= full * 0.6


def test_sensitivity_steers_the_choice():
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    prunable = [g.id for g in analysis.groups if g.prunable]
    plain = choose_channels(graph, analysis, target_macs=0.6)
    spared = max(plain, key=lambda gid: _channels(analysis)[gid] - plain[gid])
    sensitivity = {gid: [(0.25, 0.01), (0.5, 0.02), (0.75, 0.04)] for gid in prunable}
    sensitivity[spared] = [(0.25, 50.0), (0.5, 100.0), (0.75, 200.0)]
    steered = choose_channels(graph, analysis, target_macs=0.6, sensitivity=sensitivity)
    assert spared not in steered  # the sensitive group keeps every channel
    after = graph_cost(_prune_to(graph, steered)).macs
    assert after <= 0.6 * graph_cost(graph).macs


def test_latency_target_on_the_model(cache_dir):
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    model = build_latency_model(graph, analysis, runs=2, probe_alignment=False)
    floor = model.predict({g.id: 8 for g in analysis.groups if g.prunable})
    target = (floor + model.predict()) / 2  # reachable whatever the machine's per-layer costs
    keep = choose_channels(graph, analysis, target_latency=f"{target}ms", latency_model=model, round_to=4)
    assert keep and all(k % 4 == 0 for k in keep.values())
    assert model.predict(keep) <= target + 1e-9


def test_pass_with_mac_target():
    graph = tiny_graph()
    full = graph_cost(graph).macs
    result = PassManager("prune-budget{target-macs=0.5}").run(copy_graph(graph))
    after = graph_cost(result.graph).macs
    assert after <= 0.5 * full
    assert 0.5 * full - after <= _largest_step(analyze_channels(graph))
    assert check_equivalence(graph, result.graph).ok
    (spec,) = parse_pipeline("prune-budget{target-macs=50% round-to=4}")
    assert str(spec) == "prune-budget{round-to=4 target-macs=50%}"


def test_pass_with_latency_target_reports_prediction_and_measurement(cache_dir):
    graph = tiny_graph()
    result = PassManager("prune-budget{target-latency=0.97 round-to=2}").run(copy_graph(graph))
    (line,) = [l for record in result.records for l in record.log if l.startswith("latency:")]
    assert "predicted" in line and "measured" in line and "speedup" in line
    assert graph_cost(result.graph).macs < graph_cost(graph).macs
    assert check_equivalence(graph, result.graph).ok


def test_resolve_target():
    assert resolve_target("50%", 200.0, "ms") == 100.0
    assert resolve_target(0.25, 200.0, "ms") == 50.0
    assert resolve_target("3.5ms", 200.0, "ms") == 3.5
    assert resolve_target("2e6", 1e7, "") == 2e6
    with pytest.raises(IrtoolError, match="not a fraction"):
        resolve_target("fast", 1.0, "ms")
    with pytest.raises(IrtoolError, match="positive"):
        resolve_target("-1", 1.0, "ms")


def test_bad_requests_are_refused():
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    with pytest.raises(IrtoolError, match="cannot reach the target"):
        choose_channels(graph, analysis, target_macs=0.001)
    with pytest.raises(IrtoolError, match="exactly one"):
        choose_channels(graph, analysis)
    with pytest.raises(IrtoolError, match="needs a latency model"):
        choose_channels(graph, analysis, target_latency=0.5)
    with pytest.raises(IrtoolError, match="exactly one"):
        PruneBudget()
    with pytest.raises(IrtoolError, match="tvm"):
        PruneBudget(target_latency="0.5", backend="tvm")
