"""Data-driven criteria: each score is checked against the quantity computed independently in
torch on the same data, and pruning with them gives a model that runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from irtool.backends.onnx import run_onnxruntime
from irtool.ir.errors import IrtoolError
from irtool.passes import criteria_data
from irtool.passes.base import PassContext
from irtool.passes.criteria import criterion_names, importance
from irtool.passes.criteria_data import (
    CriterionData,
    _contributions,
    read_members,
    thinet_order,
    using_data,
)
from irtool.passes.data import ArrayDataset
from irtool.passes.dependency import analyze_channels
from irtool.passes.prune import prune_graph

from .test_sparsify import small_cnn

ROWS = 96


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    return ArrayDataset(rng.random((ROWS, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, ROWS), batch_size=32)


def _graph():
    """small_cnn with conv1 channel 3 dead after its ReLU and channel 5 loud."""
    graph = small_cnn()
    w, b = graph.constants["conv1.weight"].const, graph.constants["conv1.bias"].const
    w[3], b[3] = 0.0, -1.0
    w[5] *= 4
    return graph


def _group(graph, layer):
    (group,) = analyze_channels(graph).group_for_layer(layer)
    return group


def _relu1(graph, x: np.ndarray) -> torch.Tensor:
    c = {k: torch.from_numpy(v.const) for k, v in graph.constants.items()}
    return F.relu(F.conv2d(torch.from_numpy(x), c["conv1.weight"], c["conv1.bias"], padding=1))


def test_the_criteria_are_registered():
    assert {"activation-mean", "apoz", "taylor", "thinet"} <= set(criterion_names())


def test_activation_mean_and_apoz_match_the_activations(data):
    graph = _graph()
    group = _group(graph, "conv1")
    assert [m.value.producer.op for m in read_members(group)] == ["Relu"]
    reference = _relu1(graph, data.inputs[0]).numpy()
    rng = np.random.default_rng(0)
    with using_data(data):
        mean = importance(group, "activation-mean", rng)
        apoz = importance(group, "apoz", rng)
    assert np.allclose(mean, np.abs(reference).mean(axis=(0, 2, 3)), rtol=1e-5)
    assert np.allclose(apoz, (reference != 0).mean(axis=(0, 2, 3)), rtol=1e-6)
    assert mean[3] == apoz[3] == 0 and np.argmax(mean) == 5


def test_taylor_matches_gradient_times_weight_in_torch(data):
    graph = _graph()
    group = _group(graph, "conv1")
    with using_data(data, samples=64):
        scores = importance(group, "taylor", np.random.default_rng(0))
    c = {k: torch.from_numpy(v.const.copy()).requires_grad_(True) for k, v in graph.constants.items()}
    per_batch = []
    for batch in data.batches():
        if len(per_batch) * 32 >= 64:
            break
        y = F.relu(F.conv2d(torch.from_numpy(batch.inputs[0]), c["conv1.weight"], c["conv1.bias"], padding=1))
        y = F.relu(F.conv2d(y, c["conv2.weight"], c["conv2.bias"], stride=2, padding=1))
        logits = F.linear(y.mean((2, 3)), c["fc.weight"], c["fc.bias"])
        for t in c.values():
            t.grad = None
        F.cross_entropy(logits, torch.from_numpy(batch.labels)).backward()
        w, b = c["conv1.weight"], c["conv1.bias"]
        per_batch.append(((w.grad * w).sum((1, 2, 3)) + b.grad * b).detach().double().numpy())
    expected = (np.stack(per_batch) ** 2).mean(axis=0)
    assert np.allclose(scores, expected, rtol=1e-4, atol=1e-12)
    assert scores[3] == 0  # a dead channel changes nothing to first order


def test_thinet_contributions_add_up_to_the_layer_output(data):
    graph = _graph()
    group = _group(graph, "conv1")
    (member,) = read_members(group)
    conv2 = graph.find_nodes(source="conv2")[0]
    inputs = _relu1(graph, data.inputs[0][:8]).numpy()
    parts = _contributions(conv2, member, inputs, group.channels, np.random.default_rng(0))
    assert parts.shape == (8, min(2048, 8 * 16 * 4 * 4))
    c = {k: torch.from_numpy(v.const) for k, v in graph.constants.items()}
    full = F.conv2d(torch.from_numpy(inputs), c["conv2.weight"], None, stride=2, padding=1).numpy().reshape(-1)
    entries = np.random.default_rng(0).choice(full.size, size=parts.shape[1], replace=False)
    scale = np.sqrt(np.mean(full[entries] ** 2))
    assert np.allclose(parts.sum(axis=0) * scale, full[entries], atol=1e-4)
    assert np.all(parts[3] == 0)


def test_thinet_order_is_greedy_on_the_summed_contribution():
    assert list(thinet_order(np.diag([3.0, 1.0, 2.0]))) == [1, 2, 0]
    # Contributions: channel 1 cancels what channel 3 left, so it goes before the smaller channel 0.
    z = np.array([[1.0, 1.0], [-1.0, -1.0], [0.1, 0.0], [0.5, 0.5]])
    assert list(thinet_order(z @ z.T)) == [2, 3, 1, 0]


def test_thinet_removes_what_the_next_layer_does_not_read_first(data):
    graph = _graph()
    graph.constants["conv2.weight"].const[:, 6] = 0  # conv2 ignores channel 6 of conv1
    graph.constants["conv2.weight"].const[:, 5] *= 5
    with using_data(data):
        scores = importance(_group(graph, "conv1"), "thinet", np.random.default_rng(0))
    assert sorted(scores.tolist()) == list(range(8))
    # Channels 1 (dead on this data, like 3) and 3 contribute nothing, nor does 6, which conv2 ignores.
    assert np.abs(_relu1(graph, data.inputs[0]).numpy()[:, [1, 3]]).max() == 0
    assert set(np.argsort(scores)[:3].tolist()) == {1, 3, 6}
    assert np.argmax(scores) == 5


def test_data_criteria_without_data_say_how_to_give_it():
    group = _group(_graph(), "conv1")
    with pytest.raises(IrtoolError, match="using_data"):
        importance(group, "apoz", np.random.default_rng(0))


def test_a_pass_context_supplies_data_and_caches_statistics(data):
    graph = _graph()
    ctx = PassContext(data=data)
    ctx.graph = graph
    group = _group(graph, "conv1")
    first = criteria_data.activation_mean(group, np.random.default_rng(0), ctx=ctx)
    again = criteria_data.average_percentage_of_nonzeros(group, np.random.default_rng(0), ctx=ctx)
    assert first[3] == again[3] == 0
    assert ctx.computed.count("criteria_data_source") == 1


def test_statistics_are_recomputed_when_the_graph_changes():
    graph = small_cnn()
    bound = CriterionData(data=None)
    calls = []
    compute = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert bound.cached(graph, "k", compute) == 1
    assert bound.cached(graph, "k", compute) == 1
    graph.constants["fc.bias"].const = np.zeros(10, np.float32)
    assert bound.cached(graph, "k", compute) == 2


@pytest.mark.parametrize("criterion", ["activation-mean", "apoz", "taylor", "thinet"])
def test_pruning_with_a_data_criterion(criterion, data):
    graph = _graph()
    with using_data(data):
        report = prune_graph(graph, sparsity=0.5, criterion=criterion)
    assert report.channels_removed == 12
    assert graph.constants["conv1.weight"].const.shape[0] == 4
    if criterion != "taylor":
        # The dead channel is among the removed: no channel left is all-zero weights.
        assert np.abs(graph.constants["conv1.weight"].const).sum(axis=(1, 2, 3)).min() > 0
    (out,) = run_onnxruntime(graph, [data.inputs[0][:4]])
    assert out.shape == (4, 10) and np.isfinite(out).all()
