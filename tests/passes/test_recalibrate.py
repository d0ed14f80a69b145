"""BatchNormalization recalibration: the statistics equal torch's cumulative ones, nothing else
changes, and after pruning it recovers most of the accuracy without training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from irtool.backends.onnx import run_onnxruntime
from irtool.frontends.torch import load_module
from irtool.ir.errors import IrtoolError
from irtool.passes.base import PassContext, PassManager, get_pass
from irtool.passes.data import ArrayDataset, digits
from irtool.passes.finetune import TrainConfig, train_module
from irtool.passes.pipeline import parse_pipeline
from irtool.tools.demo import digits_resnet

from .test_sparsify import small_cnn

STATS = ("running_mean", "running_var")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_bn_net() -> nn.Module:
    """conv-BN-relu twice, pooled into a linear layer; running statistics far from the data's."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10),
    )
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-3, 3)
        bn.running_var.uniform_(2, 5)
    return model.eval()


def torch_statistics(model: nn.Module, rows: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """BN statistics of ``model`` measured in torch itself: train mode, momentum=None."""
    model = copy.deepcopy(model).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            model(torch.from_numpy(rows[start : start + batch_size]))
    return {k: v.numpy() for k, v in model.state_dict().items() if k.endswith(STATS)}


def recalibrate(graph, data=None, spec="bn-recalibrate"):
    result = PassManager(spec).run(graph, PassContext(data=data))
    return result.records[0]


def test_statistics_equal_torch_and_nothing_else_changes():
    model = conv_bn_net()
    rows = np.random.default_rng(0).normal(0.5, 2.0, (200, 1, 8, 8)).astype(np.float32)
    graph = load_module(model, torch.from_numpy(rows[:2]), dynamic_batch=True)
    before = {name: v.const.copy() for name, v in graph.constants.items()}
    record = recalibrate(graph, ArrayDataset(rows), "bn-recalibrate{samples=150 batch-size=64}")
    assert record.modified and record.log == ["recalibrated 2 BatchNormalization layers on 150 samples"]
    # Batches of 64, 64 and 22 rows, each weighing the same, as torch does.
    expected = torch_statistics(model, rows[:150], 64)
    assert sorted(expected) == ["1.running_mean", "1.running_var", "4.running_mean", "4.running_var"]
    for name, array in expected.items():
        np.testing.assert_allclose(graph.constants[name].const, array, atol=1e-5, rtol=1e-5)
        assert np.abs(array - before[name]).min() > 0.1, f"{name} barely moved"
    for name, array in before.items():
        if name not in expected:
            assert np.array_equal(graph.constants[name].const, array), f"{name} changed"


def test_a_builtin_dataset_wins_over_the_pipeline_data():
    model = conv_bn_net()
    train = digits("train")
    graph = load_module(model, torch.from_numpy(train.arrays(2).inputs[0]), dynamic_batch=True)
    noise = ArrayDataset(np.zeros((64, 1, 8, 8), np.float32))
    record = recalibrate(graph, noise, "bn-recalibrate{dataset=digits samples=100 batch-size=50}")
    assert record.log == ["recalibrated 2 BatchNormalization layers on 100 samples"]
    expected = torch_statistics(model, train.arrays(100).inputs[0], 50)
    for name, array in expected.items():
        np.testing.assert_allclose(graph.constants[name].const, array, atol=1e-5, rtol=1e-5)


def test_recalibration_recovers_accuracy_after_pruning():
    train, test = digits("train"), digits("test")
    model = digits_resnet(seed=0)
    train_module(model, train, TrainConfig(epochs=2, lr=0.05, progress=False))
    graph = load_module(model.eval(), torch.from_numpy(train.arrays(2).inputs[0]), dynamic_batch=True)
    batch = test.arrays()

    def accuracy() -> float:
        (logits,) = run_onnxruntime(graph, [batch.inputs[0]])
        return float((logits.argmax(1) == batch.labels).mean())

    baseline = accuracy()
    PassManager("prune{sparsity=0.5}").run(graph, PassContext(data=train))
    pruned = accuracy()
    record = recalibrate(graph, train)
    recalibrated = accuracy()
    # Seen: 97.2% -> 13.1% pruned -> 56.4% recalibrated (seeds 1, 2: 20.6 -> 57.5, 17.5 -> 46.9).
    assert baseline > 0.9 and pruned < 0.3, (baseline, pruned)
    assert recalibrated > pruned + 0.2, (pruned, recalibrated)
    assert record.log == ["recalibrated 9 BatchNormalization layers on 512 samples"]


def test_a_graph_without_batchnorm_is_left_alone():
    graph = small_cnn()
    before = {name: v.const.copy() for name, v in graph.constants.items()}
    record = recalibrate(graph)
    assert not record.modified and record.log == ["no BatchNormalization: nothing to recalibrate"]
    assert all(np.array_equal(graph.constants[n].const, a) for n, a in before.items())


def test_without_data_the_error_says_where_to_give_it():
    graph = load_module(conv_bn_net(), torch.zeros(2, 1, 8, 8), dynamic_batch=True)
    message = r"^bn-recalibrate: needs input data: give irtool opt --data FILE or dataset="
    with pytest.raises(IrtoolError, match=message):
        recalibrate(graph)


def test_data_with_the_wrong_number_of_inputs_is_refused():
    graph = load_module(conv_bn_net(), torch.zeros(2, 1, 8, 8), dynamic_batch=True)
    two = ArrayDataset([np.zeros((4, 1, 8, 8), np.float32)] * 2)
    with pytest.raises(IrtoolError, match="the data has 2 inputs per row, the model takes 1"):
        recalibrate(graph, two)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bn-recalibrate{samples=0}", "samples must be at least 1"),
        ("bn-recalibrate{batch-size=0}", "batch size must be at least 1"),
        ("bn-recalibrate{dataset=mnist}", "unknown dataset 'mnist'"),
    ],
)
def test_bad_options_are_refused_when_parsed(spec, message):
    with pytest.raises(IrtoolError, match=message):
        parse_pipeline(spec)


def test_the_pass_changes_outputs_on_purpose():
    assert get_pass("bn-recalibrate").preserves_function is False
