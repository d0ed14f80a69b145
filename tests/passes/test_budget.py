"""The budget chooser and ``prune{target-macs=...}``/``prune{target-latency=...}``: MAC targets
reached exactly (within one step of rounding), round-to respected, sensitivity steering the
choice, the latency loop corrected by measurement (on int8 models with ``int8=true``), the
pipeline's data reaching data-driven criteria and fine-tuning after a target, bad targets refused."""

from __future__ import annotations

import numpy as np
import pytest

from irtool.ir.errors import IrtoolError
from irtool.passes import budget as budget_module
from irtool.passes.base import PassContext, PassManager
from irtool.passes.budget import Budget, LatencyRound, choose_channels, choose_to_budget, closest_round, resolve_target
from irtool.passes.cost import graph_cost
from irtool.passes.criteria_data import using_data
from irtool.passes.data import ArrayDataset
from irtool.passes.dependency import analyze_channels
from irtool.passes.latency import LatencyModel, LayerLatency, build_latency_model, layer_work, predicted_macs
from irtool.passes.oracle import check_equivalence, copy_graph
from irtool.passes.pipeline import parse_pipeline
from irtool.ir.types import DType, TensorType
from irtool.passes.prune import Prune
from tests.passes.test_dependency import zoo_graph
from tests.passes.test_sparsify import small_cnn
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
    result = PassManager("prune{target-macs=0.5}").run(copy_graph(graph))
    after = graph_cost(result.graph).macs
    assert after <= 0.5 * full
    assert 0.5 * full - after <= _largest_step(analyze_channels(graph))
    assert check_equivalence(graph, result.graph).ok
    (spec,) = parse_pipeline("prune{target-macs=50% round-to=4}")
    assert str(spec) == "prune{round-to=4 target-macs=50%}"


def test_mac_target_leaves_excluded_groups_whole():
    graph = tiny_graph()
    result = PassManager("prune{target-macs=0.6 exclude=[expand]}").run(copy_graph(graph))
    assert result.graph.constants["expand.weight"].const.shape[0] == 24
    assert graph_cost(result.graph).macs <= 0.6 * graph_cost(graph).macs


def test_pass_with_latency_target_reports_prediction_and_measurement(cache_dir):
    graph = tiny_graph()
    result = PassManager("prune{target-latency=0.97 round-to=2}").run(copy_graph(graph))
    log = [l for record in result.records for l in record.log]
    rounds = [l for l in log if l.startswith("latency round")]
    (line,) = [l for l in log if l.startswith("latency:")]
    assert 1 <= len(rounds) <= 3
    assert all("predicted" in l and "measured" in l and "speedup" in l for l in rounds)
    assert "predicted" in line and "measured" in line and "speedup" in line and "round-to 2" in line
    assert graph_cost(result.graph).macs < graph_cost(graph).macs
    assert check_equivalence(graph, result.graph).ok


def _mac_latency_model(analysis, ms_per_mac: float, int8: bool = False) -> LatencyModel:
    """A latency model predicting ``ms_per_mac`` per MAC and no overhead."""
    layers = [LayerLatency(w, [(0.0, 0.0), (1.0, w.macs * ms_per_mac)]) for w in layer_work(analysis)]
    channels = {g.id: g.channels for g in analysis.groups}
    full = sum(w.macs for w in layer_work(analysis)) * ms_per_mac
    return LatencyModel("ort", 1, layers, channels, full, 0.0, int8=int8)


@pytest.fixture
def runtime_with_overhead(monkeypatch):
    """A 'runtime' that takes 3 ms plus 1 ms per million MACs: the model above misses the 3 ms.
    Returns the list of graphs it timed."""
    timed = []

    def compare(graphs, **_):
        timed.extend(graphs)
        return [3.0 + 1e-6 * graph_cost(g).macs for g in graphs]

    monkeypatch.setattr(budget_module, "session_call", lambda graph, **_: graph)
    monkeypatch.setattr(budget_module, "compare_ms", compare)
    return timed


def test_latency_loop_corrects_the_target_by_measurement(runtime_with_overhead):
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    model = _mac_latency_model(analysis, 1e-6)
    choice = choose_to_budget(graph, analysis, Budget(target_latency="0.5"), latency_model=model)
    first, *later = choice.rounds
    full_ms = 3.0 + 1e-6 * graph_cost(graph).macs
    assert first.chooser_ms == pytest.approx(0.5 * model.predict())
    assert first.goal_ms == pytest.approx(0.5 * full_ms)
    assert first.miss > 0.2  # the unmodelled overhead makes the first choice too slow
    for before, after in zip(choice.rounds, later):
        assert after.chooser_ms == pytest.approx(before.goal_ms * before.predicted_ms / before.measured_ms)
        assert abs(after.miss) < abs(before.miss)
    assert len(choice.rounds) in (2, 3)
    assert abs(choice.final.miss) <= 0.05 and choice.final is choice.rounds[-1]
    assert choice.keep == choice.final.keep
    assert choice.log[-1].startswith("latency: ") and f"round {len(choice.rounds)} of {len(choice.rounds)}" in choice.log[-1]
    # pruned to the kept channels, the model runs at the measured latency the loop reported
    pruned = _prune_to(graph, choice.keep)
    assert 3.0 + 1e-6 * graph_cost(pruned).macs == pytest.approx(choice.final.measured_ms)


def test_int8_latency_loop_times_quantized_copies(runtime_with_overhead):
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    model = _mac_latency_model(analysis, 1e-6, int8=True)
    choice = choose_to_budget(graph, analysis, Budget(target_latency="0.5", int8=True), latency_model=model)
    timed = runtime_with_overhead
    assert len(timed) == 2 * len(choice.rounds) and len(choice.rounds) in (2, 3)
    for ops in ({n.op for n in g.nodes} for g in timed):
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    full = graph_cost(graph).macs
    assert [graph_cost(g).macs for g in timed[::2]] == [full] * len(choice.rounds)  # the unpruned, beside each prune
    assert all(graph_cost(g).macs < full for g in timed[1::2])
    assert abs(choice.final.miss) <= 0.05
    assert not any(n.op == "QuantizeLinear" for n in graph.nodes)  # the graph itself stays float
    with pytest.raises(IrtoolError, match="latency model is of float ort at 1 thread.*the target of int8 ort at 1"):
        choose_to_budget(graph, analysis, Budget(target_latency="0.5", int8=True), latency_model=_mac_latency_model(analysis, 1e-6))


def test_int8_target_then_finetune_then_quantize(runtime_with_overhead, monkeypatch):
    graph = small_cnn()
    graph.inputs[0].type = TensorType(DType.float32, (1, 1, 8, 8))  # latency is timed at a static shape
    built = []

    def build(graph, analysis, **options):
        built.append(options["int8"])
        return _mac_latency_model(analysis, 1e-6, int8=options["int8"])

    monkeypatch.setattr(budget_module, "build_latency_model", build)
    spec = "prune{target-latency=0.6 int8=true round-to=2},finetune{dataset=digits max-steps=2 progress=false},quantize"
    result = PassManager(spec).run(graph, PassContext())
    assert built == [True] and all(any(n.op == "QuantizeLinear" for n in g.nodes) for g in runtime_with_overhead)
    prune_log, tune_log, quant_log = (record.log for record in result.records)
    assert prune_log[-1].startswith("latency: ") and tune_log[-1].startswith("2 steps in")
    assert quant_log[0].startswith("int8 weights")
    assert graph.constants["conv2.weight_quantized"].const.shape[0] < 16  # pruned, then stored as int8
    (spec,) = parse_pipeline("prune{target-latency=0.5 int8=true}")
    assert str(spec) == "prune{int8=true target-latency=0.5}"


def test_latency_loop_stops_after_the_round_limit(runtime_with_overhead):
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    choice = choose_to_budget(graph, analysis, Budget(target_latency="0.5"), latency_model=_mac_latency_model(analysis, 1e-6), max_rounds=1)
    assert len(choice.rounds) == 1 and choice.final.miss > 0.05


def test_the_kept_round_is_closest_without_being_too_slow():
    def made(measured: float) -> LatencyRound:
        return LatencyRound(1.0, {}, 1.0, 2.0, measured, 1.0)

    assert closest_round([made(1.08), made(0.93), made(1.06)], 0.05).measured_ms == 0.93
    assert closest_round([made(1.08), made(0.93), made(1.04)], 0.05).measured_ms == 1.04
    assert closest_round([made(1.3), made(1.1)], 0.05).measured_ms == 1.1


def test_pipeline_data_reaches_data_driven_criteria():
    graph = tiny_graph()
    rng = np.random.default_rng(3)
    data = ArrayDataset(rng.standard_normal((4, 3, 32, 32)).astype(np.float32), batch_size=1)
    result = PassManager("prune{target-macs=0.6 criterion=activation-mean}").run(copy_graph(graph), PassContext(data=data))
    analysis = analyze_channels(graph)
    with using_data(data):
        keep = choose_channels(graph, analysis, target_macs=0.6, criterion="activation-mean")
        expected = _prune_to(graph, keep, criterion="activation-mean")
    assert graph_cost(result.graph).macs == graph_cost(expected).macs <= 0.6 * graph_cost(graph).macs
    for name, value in expected.constants.items():
        assert np.array_equal(result.graph.constants[name].const, value.const)
    plain = PassManager("prune{sparsity=0.5 criterion=apoz}").run(copy_graph(graph), PassContext(data=data))
    assert plain.graph.constants["expand.weight"].const.shape[0] == 12


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
    cases = [
        ({"target_macs": "0.5", "target_latency": "0.5"}, "prune: give one of target-macs and target-latency, not both"),
        ({"target_latency": "0.5", "sparsity": 0.3}, "prune: a target chooses every group's channel count"),
        ({"target_macs": "0.5", "layers": ("expand:0.3",)}, "without sparsity, layers or scope"),
        ({"target_latency": "fast"}, "prune: target 'fast' is not a fraction, a percentage or an amount like 3.5ms"),
        ({"target_macs": "-5%"}, "prune: target '-5%' must be positive"),
        ({"target_latency": "0.5", "threads": 0}, "threads 0 must be at least 1"),
        ({"sensitivity": "sens.json"}, "prune: sensitivity steers a target: give target-macs or target-latency"),
        ({"backend": "tvm"}, "prune: backend and threads say where target-latency is measured"),
        ({"int8": True}, "prune: int8 says target-latency is the int8 model's: give target-latency"),
        ({"target_macs": "0.5", "int8": True}, "give target-latency"),
        ({"target_latency": "0.5", "int8": True, "backend": "tvm"}, "prune: int8=true needs backend=ort: the tvm backend runs"),
    ]
    for options, message in cases:
        with pytest.raises(IrtoolError) as error:
            Prune(**options)
        assert message in str(error.value)
    with pytest.raises(IrtoolError, match="option 'backend'"):
        parse_pipeline("prune{target-latency=0.5 backend=gpu}")
    with pytest.raises(IrtoolError, match="option 'int8'"):
        parse_pipeline("prune{target-latency=0.5 int8=maybe}")
    quantized = PassManager("quantize").run(copy_graph(graph)).graph
    with pytest.raises(IrtoolError, match="already has quantize/dequantize ops: prune before quantize"):
        PassManager("prune{target-latency=0.5 int8=true}").run(quantized)
    with pytest.raises(IrtoolError, match="unknown pass 'prune-budget'"):
        parse_pipeline("prune-budget{target-macs=0.5}")
