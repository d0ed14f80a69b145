"""Fine-tuning through the torch backend: training helps, weights flow back into the IR, masks
stay fixed, and the pruning schedules reach their targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irtool.backends.onnx import run_onnxruntime
from irtool.backends.torch import to_torch
from irtool.ir.errors import IrtoolError
from irtool.passes.base import PassContext, PassManager
from irtool.passes.data import digits
from irtool.passes.finetune import (
    ChannelPruner,
    MaskKeeper,
    TrainConfig,
    WeightPruner,
    evaluate,
    finetune,
    prune_and_finetune,
    schedule_targets,
)
from irtool.passes.pipeline import parse_pipeline
from irtool.passes.sparsify import graph_masks, sparsify_graph

from .test_sparsify import small_cnn

QUICK = TrainConfig(epochs=1, max_steps=4, progress=False)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def train():
    return digits("train")


@pytest.fixture(scope="module")
def test():
    return digits("test")


def test_finetune_learns_digits_and_writes_the_weights_back(train, test):
    graph = small_cnn()
    before = evaluate(graph, test)
    report = finetune(graph, train, epochs=10, lr=0.02, optimizer="adam", progress=False, eval_data=test)
    assert before < 0.2 < 0.8 < report.accuracy, (before, report.accuracy)
    assert report.steps == 10 * 23 and len(report.epochs) == 10
    assert report.epochs[-1].loss < 0.5 * report.epochs[0].loss
    # The graph now holds the trained weights: onnxruntime agrees with the torch module.
    batch = test.arrays()
    (logits,) = run_onnxruntime(graph, [batch.inputs[0]])
    assert float((logits.argmax(1) == batch.labels).mean()) == pytest.approx(report.accuracy)
    assert any("evaluation accuracy" in line for line in report.lines())


def test_two_of_four_masks_stay_zero_through_fine_tuning(train):
    graph = small_cnn()
    sparsify_graph(graph, granularity="2:4")
    masks = {k: v.copy() for k, v in graph_masks(graph).items()}
    before = {k: graph.constants[k].const.copy() for k in masks}
    report = finetune(graph, train, epochs=1, lr=0.05, optimizer="adam", weight_decay=1e-3, progress=False)
    assert report.masked_weights == 2 and report.steps == 23
    for name, mask in masks.items():
        w = graph.constants[name].const
        assert np.all(w[~mask] == 0), name
        assert (w == 0).sum() == w.size // 2, name
        assert np.abs(w[mask] - before[name][mask]).max() > 1e-3, f"{name} did not train"
    # A weight without a mask trained freely.
    assert np.count_nonzero(graph.constants["conv1.weight"].const) == 72


def test_mask_keeper_zeroes_masked_gradients_and_weights():
    graph = small_cnn()
    keep = np.zeros((10, 16), dtype=bool)
    keep[:, :8] = True
    module = to_torch(graph)
    keeper = MaskKeeper(module, {"fc.weight": keep})
    assert len(keeper) == 1
    module(torch.ones(2, 1, 8, 8)).sum().backward()
    grad = dict(module.named_parameters())["fc.weight"].grad.numpy()
    assert np.all(grad[:, 8:] == 0) and np.abs(grad[:, :8]).max() > 0
    keeper.apply()
    assert np.all(dict(module.named_parameters())["fc.weight"].detach().numpy()[:, 8:] == 0)
    keeper.remove()


def test_schedule_targets():
    assert schedule_targets("one-shot", 0.5, 3) == [0.5]
    assert np.allclose(schedule_targets("iterative", 0.6, 3), [0.2, 0.4, 0.6])
    # AGP: s (1 - (1 - t/n)^3): most of the pruning early.
    assert np.allclose(schedule_targets("gradual", 0.5, 3), [0.5 * (1 - (2 / 3) ** 3), 0.5 * (1 - (1 / 3) ** 3), 0.5])
    with pytest.raises(IrtoolError, match="unknown schedule"):
        schedule_targets("cyclic", 0.5, 3)


def _channels(graph) -> tuple[int, int]:
    return graph.constants["conv1.weight"].const.shape[0], graph.constants["conv2.weight"].const.shape[0]


def test_iterative_channel_schedule_reaches_the_target(train, test):
    graph = small_cnn()
    report = prune_and_finetune(graph, train, sparsity=0.5, schedule="iterative", steps=2, train=QUICK, eval_data=test)
    assert [s.target for s in report.steps] == [0.25, 0.5]
    assert _channels(graph) == (4, 8)
    assert all(s.finetune.steps == 4 and s.finetune.accuracy is not None for s in report.steps)
    assert "iterative step 2: sparsity 0.500" in report.lines()[1]


def test_layer_by_layer_prunes_one_group_at_a_time(train):
    graph = small_cnn()
    pruner = ChannelPruner(train, criterion="l2")
    assert pruner.layers(graph) == ["conv1", "conv2"]
    shapes = []

    def spy(g, target, layer):
        lines = pruner(g, target, layer)
        shapes.append(_channels(g))
        return lines

    spy.layers = pruner.layers
    report = prune_and_finetune(graph, train, sparsity=0.5, schedule="layer-by-layer", pruner=spy, train=QUICK)
    assert [s.layer for s in report.steps] == ["conv1", "conv2"]
    assert shapes == [(4, 16), (4, 8)]


def test_gradual_weight_schedule_keeps_earlier_zeros(train):
    graph = small_cnn()
    report = prune_and_finetune(
        graph, train, sparsity=0.6, schedule="gradual", steps=3, pruner=WeightPruner(granularity="element"), train=QUICK
    )
    assert len(report.steps) == 3
    for name in ("conv1.weight", "conv2.weight", "fc.weight"):
        w = graph.constants[name].const
        assert (w == 0).sum() == int(w.size * 0.6), name
        assert np.array_equal(graph_masks(graph)[name], w != 0)


def test_the_pass_trains_on_a_builtin_dataset():
    graph = small_cnn()
    before = graph.constants["fc.weight"].const.copy()
    result = PassManager("finetune{dataset=digits max-steps=3 progress=false}", verify=True).run(graph, PassContext())
    assert result.modified and result.records[0].log[-1].startswith("3 steps in")
    assert np.abs(graph.constants["fc.weight"].const - before).max() > 0


def test_the_pass_prefers_its_own_dataset_to_the_pipeline_data():
    # unlabelled pipeline data would stop finetune; dataset=digits names the data to train on
    unlabelled = [np.zeros((8, 1, 8, 8), np.float32)]
    spec = "finetune{dataset=digits max-steps=2 progress=false}"
    result = PassManager(spec).run(small_cnn(), PassContext(data=unlabelled))
    assert result.records[0].log[-1].startswith("2 steps in")


def test_the_pass_runs_a_schedule_on_context_data(train):
    graph = small_cnn()
    spec = "finetune{max-steps=2 progress=false schedule=one-shot sparsity=0.5 criterion=apoz}"
    result = PassManager(spec).run(graph, PassContext(data=train))
    assert _channels(graph) == (4, 8)
    assert result.records[0].log[0].startswith("one-shot step 1: sparsity 0.500: removed 12 of 24 channels")


def test_the_pass_needs_labelled_data():
    with pytest.raises(IrtoolError, match="finetune needs labelled data"):
        PassManager("finetune{progress=false}").run(small_cnn(), PassContext())


@pytest.mark.parametrize(
    "spec, message",
    [
        ("finetune{optimizer=lbfgs}", "optimizer"),
        ("finetune{lr=0}", "learning rate must be positive"),
        ("finetune{schedule=gradual steps=0}", "steps must be at least 1"),
        ("finetune{batch-size=0}", "batch size must be at least 1"),
        ("finetune{dataset=digit}", "unknown dataset 'digit' \\(did you mean 'digits'\\?\\)"),
    ],
)
def test_bad_options_are_refused_when_parsed(spec, message):
    with pytest.raises(IrtoolError, match=message):
        parse_pipeline(spec)
