"""The latency model: relative work of layers, one-layer models, the cached table, the
alignment probe, int8 timing, the TVM backend. Timings are asserted only loosely (the machine is shared);
structure and exact MAC bookkeeping are asserted exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from irtool.backends.onnx import run_onnxruntime
from irtool.frontends.torch import load_module
from irtool.ir.errors import IrtoolError
from irtool.passes import latency as latency_module
from irtool.passes.base import PassManager
from irtool.passes.budget import keep_selector
from irtool.passes.cost import graph_cost
from irtool.passes.dependency import analyze_channels
from irtool.passes.latency import (
    LatencyTable,
    alignment_probe,
    best_alignment,
    build_latency_model,
    cache_path,
    is_weighted_layer,
    layer_graph,
    layer_work,
    measure_graph_ms,
    predicted_macs,
    quantized_copy,
)
from irtool.passes.oracle import copy_graph, prepare
from irtool.passes.prune import PruneConfig, prune_graph


class TinyNet(nn.Module):
    """conv-bn-relu, depthwise conv, pointwise conv, a residual add, pooling and a classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.expand = nn.Conv2d(32, 24, 3, padding=1)
        self.project = nn.Conv2d(24, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pw(torch.relu(self.dw(self.stem(x))))
        x = x + self.project(torch.relu(self.expand(x)))
        return self.fc(x.mean((2, 3)))


def tiny_graph(size: int = 32):
    return prepare(load_module(TinyNet().eval(), (torch.randn(1, 3, size, size),)))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IRTOOL_CACHE_DIR", str(tmp_path))
    return tmp_path


def _channels(analysis):
    return {g.id: g.channels for g in analysis.groups}


def _prune_to(graph, keep, criterion: str = "l1"):
    copy = copy_graph(graph)
    prune_graph(copy, PruneConfig(sparsity=0.0, criterion=criterion), select=keep_selector(keep), analysis=analyze_channels(copy))
    return copy


def test_relative_work_gives_exact_macs():
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    works = layer_work(analysis)
    channels = _channels(analysis)
    assert predicted_macs(works, {}, channels) == graph_cost(graph).macs
    prunable = [g for g in analysis.groups if g.prunable]
    assert len(prunable) >= 3
    # every prunable group at a different odd count: MACs of the pruned model match exactly
    keep = {g.id: max(1, g.channels // 2 - 1 - k) for k, g in enumerate(prunable)}
    pruned = _prune_to(graph, keep)
    assert abs(predicted_macs(works, keep, channels) - graph_cost(pruned).macs) < 1e-6 * graph_cost(graph).macs


def test_depthwise_conv_work_is_linear_in_its_group():
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    depthwise = next(w for w in layer_work(analysis) if w.node.attrs.get("group", 1) == 16)
    assert len(depthwise.slots) == 1  # input and output share the group: one slot
    (gid,) = depthwise.groups
    assert depthwise.fraction({gid: 4}, _channels(analysis)) == pytest.approx(0.25)


def test_layer_graph_is_cut_to_the_kept_channels():
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    layers = [n for n in graph.nodes if is_weighted_layer(n)]
    assert len(layers) == 6  # stem, dw, pw, expand, project convs and fc
    pw = next(w for w in layer_work(analysis) if w.node in layers and len(w.slots) == 2 and w.node.op == "Conv")
    keep = {gid: 8 for gid in pw.groups}
    single = layer_graph(pw.node, analysis, keep)
    assert len(single.nodes) == 1
    x = np.random.default_rng(0).standard_normal([int(d) for d in single.inputs[0].type.shape]).astype(np.float32)
    (y,) = run_onnxruntime(single, [x])
    assert x.shape[1] == 8 and y.shape[1] == 8
    assert tuple(y.shape) == tuple(single.outputs[0].type.shape)


def test_model_is_built_cached_and_reused(cache_dir):
    graph = tiny_graph()
    analysis = analyze_channels(graph)
    model = build_latency_model(graph, analysis, runs=2, probe_alignment=False)
    assert len(model.layers) == 6
    for layer in model.layers:
        xs = [x for x, _ in layer.points]
        assert xs == sorted(xs) and xs[-1] == pytest.approx(1.0)
        assert all(ms >= 0 for _, ms in layer.points)
    assert sum(len(layer.points) for layer in model.layers) >= 15  # 4 fractions where a group scales the layer
    assert model.predict() == pytest.approx(model.measured_ms)
    assert model.scale <= 1.0
    keep = {g.id: g.channels // 2 for g in analysis.groups if g.prunable}
    assert model.predict(keep) < model.predict()
    path = cache_path("ort", 1)
    assert path.parent == cache_dir and path.name.startswith("latency-ort-1-")
    saved = json.loads(path.read_text())
    assert saved["meta"]["threads"] == 1 and "run-overhead" in saved["layers"]
    table = LatencyTable("ort", 1, runs=2)
    assert len(table.entries) == len(saved["layers"])
    build_latency_model(graph, analysis, runs=2, probe_alignment=False, table=table)
    assert table.measured == 0  # every layer timing came from the cache


def test_alignment_probe_and_choice(cache_dir):
    graph = tiny_graph()
    model = build_latency_model(graph, analyze_channels(graph), runs=2)
    assert set(model.alignment) == {2, 4, 8, 16}
    assert all(r > 0 for r in model.alignment.values())
    assert model.round_to in (1, 2, 4, 8, 16)
    assert best_alignment({2: 0.99, 4: 0.6, 8: 0.5, 16: 0.51}) == 8
    assert best_alignment({2: 0.99, 4: 0.98}) == 1
    assert best_alignment({}) == 1


def test_int8_model_times_quantized_models_under_their_own_keys(cache_dir, monkeypatch):
    graph = tiny_graph(16)
    analysis = analyze_channels(graph)
    timed = []

    def spy(model, **options):
        ops = frozenset(n.op for n in model.nodes)
        timed.append((ops, model.inputs[0].type.dtype.name, model.outputs[0].type.dtype.name))
        return session_call(model, **options)

    session_call = latency_module.session_call
    monkeypatch.setattr(latency_module, "session_call", spy)
    plain = build_latency_model(graph, analysis, fractions=(1.0, 0.5), runs=2, probe_alignment=False)
    float_timed, timed[:] = list(timed), []
    int8 = build_latency_model(graph, analysis, fractions=(1.0, 0.5), runs=2, probe_alignment=False, int8=True)
    assert len(float_timed) == len(timed) == 1 + 1 + 12  # the whole model, the empty one, 12 layer models
    assert not any("QuantizeLinear" in ops for ops, _, _ in float_timed)
    (whole, _, _), *layers = [t for t in timed if t[0] != {"Relu"}]  # less the empty model
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= whole
    # each layer quantized, reading (and but for the float logits, writing) int8 codes as inside the int8 model
    assert all("DequantizeLinear" in ops and i == "uint8" for ops, i, _ in layers)
    assert sorted(out for _, _, out in layers) == ["float32"] * 2 + ["uint8"] * 10
    timed.clear()
    assert len(alignment_probe(graph, int8=True, runs=2)) == 6  # the unpruned and 5 uniform prunes
    assert len(timed) == 6 and all("QuantizeLinear" in ops for ops, _, _ in timed)
    assert (plain.int8, int8.int8) == (False, True) and "ort int8, 1 thread(s), 6 layers" in int8.format()
    assert [len(l.points) for l in plain.layers] == [len(l.points) for l in int8.layers]
    float_path, int8_path = cache_path("ort", 1), cache_path("ort", 1, int8=True)
    assert int8_path.name.startswith("latency-ort-int8-1-") and float_path != int8_path
    float_keys = set(json.loads(float_path.read_text())["layers"]) - {"run-overhead"}
    saved = json.loads(int8_path.read_text())
    assert saved["meta"]["int8"] is True
    assert set(saved["layers"]) - {"run-overhead"} == {f"int8|{k}" for k in float_keys}
    assert len(float_keys) == 12  # 6 layers at 2 fractions
    table = LatencyTable("ort", 1, runs=2, int8=True)
    build_latency_model(graph, analysis, fractions=(1.0, 0.5), runs=2, probe_alignment=False, table=table, int8=True)
    assert table.measured == 0


def test_int8_timing_is_refused_where_it_means_nothing(cache_dir):
    graph = tiny_graph(16)
    analysis = analyze_channels(graph)
    with pytest.raises(IrtoolError, match="int8=true needs backend=ort: the tvm backend runs quantize/dequantize as float"):
        build_latency_model(graph, analysis, backend="tvm", int8=True)
    with pytest.raises(IrtoolError, match="the latency table holds float timings, the model asks int8"):
        build_latency_model(graph, analysis, int8=True, table=LatencyTable("ort", 1))
    quantized = PassManager("quantize").run(copy_graph(graph)).graph
    with pytest.raises(IrtoolError, match="already has quantize/dequantize ops"):
        quantized_copy(quantized)


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_tvm_model_is_built_cached_and_reused(cache_dir):
    pytest.importorskip("tvm")
    graph = prepare(load_module(TwoConvs().eval(), (torch.randn(1, 3, 16, 16),)))
    analysis = analyze_channels(graph)
    # two fractions: every point is a TVM compile (about a second)
    model = build_latency_model(graph, analysis, backend="tvm", fractions=(1.0, 0.5), runs=5, probe_alignment=False)
    assert (model.backend, len(model.layers)) == ("tvm", 2)
    assert [len(layer.points) for layer in model.layers] == [2, 2]  # both convs scale with the one group
    measured = measure_graph_ms(graph, backend="tvm", runs=20)
    assert 0 < model.predict() and measured / 3 < model.predict() < measured * 3
    (group,) = [g for g in analysis.groups if g.prunable]
    assert model.predict({group.id: 8}) < model.predict()
    path = cache_path("tvm", 1)
    assert path.exists() and path.name.startswith("latency-tvm-1-")
    table = LatencyTable("tvm", 1, runs=5)
    assert len(table.entries) == 1 + 4  # the run overhead and 2 layers x 2 fractions
    build_latency_model(graph, analysis, backend="tvm", fractions=(1.0, 0.5), runs=5, probe_alignment=False, table=table)
    assert table.measured == 0


def test_whole_model_fit_never_gives_a_negative_per_run_cost():
    from irtool.passes.latency import LatencyModel, ProbeSample, _fit_to_whole_models

    class Layer:  # a layer whose latency is its kept fraction of 10 ms
        work = type("Work", (), {"fraction": staticmethod(lambda keep, channels: keep.get(0, 4) / 4)})()

        def ms(self, fraction):
            return 10.0 * fraction

    model = LatencyModel("ort", 1, [Layer()], {0: 4}, measured_ms=9.0, overhead_ms=0.2)
    # noisy points close together whose free line crosses zero at -3 ms
    samples = [ProbeSample(0, {}, 9.0, 4), ProbeSample(8, {0: 3}, 6.0, 3)]
    _fit_to_whole_models(model, samples)
    assert model.overhead_ms == 0.2
    assert model.scale == pytest.approx((10 * 8.8 + 7.5 * 5.8) / (10 * 10 + 7.5 * 7.5))
    model = LatencyModel("ort", 1, [Layer()], {0: 4}, measured_ms=9.0, overhead_ms=0.2)
    _fit_to_whole_models(model, [ProbeSample(0, {}, 11.0, 4), ProbeSample(8, {0: 3}, 8.5, 3)])
    assert model.overhead_ms == pytest.approx(1.0) and model.scale == pytest.approx(1.0)
