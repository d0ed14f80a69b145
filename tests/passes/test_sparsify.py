"""The sparsify pass: every granularity zeroes the right pattern, N:M is exact, masks are
recorded, the ONNX model carries the zeros, and feature maps are masked from data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from irtool.backends.onnx import run_onnxruntime, to_onnx
from irtool.ir import DType, Graph, TensorType
from irtool.ir.errors import IrtoolError
from irtool.ir.shapes import infer_shapes
from irtool.passes.base import PassContext, PassManager
from irtool.passes.data import ArrayDataset
from irtool.passes.pipeline import parse_pipeline
from irtool.passes.sparsify import (
    MASKS_META,
    SparsifyConfig,
    feature_map_scores,
    graph_masks,
    sparsify_graph,
    weight_sparsity,
)

F32 = DType.float32


def small_cnn(seed: int = 0, *, width: int = 8) -> Graph:
    """conv 1->width (3x3) -> relu -> conv width->2*width (3x3, stride 2) -> relu -> pool -> linear 10."""
    rng = np.random.default_rng(seed)
    graph = Graph("small_cnn")
    x = graph.add_input("x", TensorType(F32, ("batch", 1, 8, 8)))

    def const(name, *shape, scale):
        return graph.add_constant(name, rng.normal(0, scale, shape).astype(np.float32))

    y = graph.add_node(
        "Conv", [x, const("conv1.weight", width, 1, 3, 3, scale=0.5), const("conv1.bias", width, scale=0.1)],
        {"pads": [1, 1, 1, 1]}, name="conv1", source="conv1",
    ).outputs[0]
    y = graph.add_node("Relu", [y], name="relu1", source="relu1").outputs[0]
    y = graph.add_node(
        "Conv", [y, const("conv2.weight", 2 * width, width, 3, 3, scale=0.2), const("conv2.bias", 2 * width, scale=0.1)],
        {"pads": [1, 1, 1, 1], "strides": [2, 2]}, name="conv2", source="conv2",
    ).outputs[0]
    y = graph.add_node("Relu", [y], name="relu2", source="relu2").outputs[0]
    y = graph.add_node("GlobalAveragePool", [y], name="pool").outputs[0]
    y = graph.add_node("Flatten", [y], {"axis": 1}, name="flatten").outputs[0]
    y = graph.add_node(
        "Gemm", [y, const("fc.weight", 10, 2 * width, scale=0.3), const("fc.bias", 10, scale=0.1)],
        {"transB": 1}, name="fc", source="fc",
    ).outputs[0]
    graph.outputs = [y]
    infer_shapes(graph)
    return graph


def _weights(graph: Graph) -> dict[str, np.ndarray]:
    return {n: graph.constants[n].const for n in ("conv1.weight", "conv2.weight", "fc.weight")}


def test_two_of_four_zeroes_exactly_half_of_every_eligible_weight():
    graph = small_cnn()
    before = _weights(graph)
    report = sparsify_graph(graph, granularity="2:4")
    after = _weights(graph)
    # conv1 reads one input channel: not a multiple of 4, left dense and reported so.
    assert np.array_equal(after["conv1.weight"], before["conv1.weight"])
    line = next(e for e in report.weights if e.constant == "conv1.weight")
    assert line.zeros == 0 and "not eligible" in line.note
    for name, axis in (("conv2.weight", 1), ("fc.weight", 1)):
        w = after[name]
        assert (w == 0).sum() == w.size // 2, name
        runs = np.moveaxis(w, axis, -1).reshape(-1, 4)
        assert np.all((runs == 0).sum(axis=1) == 2), name
        # The two kept in every run are the two largest by magnitude.
        original = np.abs(np.moveaxis(before[name], axis, -1).reshape(-1, 4))
        kept = runs != 0
        assert np.all(original[kept].reshape(-1, 2).min(axis=1) >= original[~kept].reshape(-1, 2).max(axis=1))
    assert report.overall() == 0.5
    assert any("50.0% zeros" in line and "conv2" in line for line in report.lines())


def test_element_l1_zeroes_the_smallest_weights_of_each_layer():
    graph = small_cnn()
    before = _weights(graph)
    report = sparsify_graph(graph, sparsity=0.3)
    for name, w in _weights(graph).items():
        zeroed = w == 0
        assert zeroed.sum() == int(w.size * 0.3), name
        assert np.abs(before[name][zeroed]).max() <= np.abs(before[name][~zeroed]).min()
    assert [(e.zeros, e.size) for e in report.weights] == [(21, 72), (345, 1152), (48, 160)]


def test_kernel_vector_and_block_zero_whole_units():
    w = _weights(small_cnn())["conv2.weight"]
    assert np.count_nonzero(w) == w.size
    for granularity, unit_zero in (
        ("kernel", lambda z: z.all(axis=(2, 3)) | ~z.any(axis=(2, 3))),
        ("vector", lambda z: z.all(axis=3) | ~z.any(axis=3)),
        ("block", lambda z: _blocks(z).all(axis=(1, 3, 4, 5)) | ~_blocks(z).any(axis=(1, 3, 4, 5))),
    ):
        graph = small_cnn()
        sparsify_graph(graph, granularity=granularity, sparsity=0.5, block=(4, 4))
        zeros = _weights(graph)["conv2.weight"] == 0
        assert np.all(unit_zero(zeros)), granularity
        assert zeros.sum() == w.size // 2, granularity


def _blocks(zeros: np.ndarray) -> np.ndarray:
    # (16, 8, 3, 3) -> (4 output blocks, 4, 2 input blocks, 4, 3, 3)
    return zeros.reshape(4, 4, 2, 4, 3, 3)


def test_channel_granularity_drops_the_same_share_of_every_filter():
    graph = small_cnn()
    sparsify_graph(graph, granularity="channel", sparsity=0.5)
    zeros = _weights(graph)["conv2.weight"] == 0
    dead_kernels = zeros.all(axis=(2, 3))
    assert np.all(dead_kernels.sum(axis=1) == 4)  # 4 of 8 input kernels in every one of 16 filters
    assert np.all(dead_kernels | ~zeros.any(axis=(2, 3)))
    fc = _weights(graph)["fc.weight"] == 0
    assert np.all(fc.sum(axis=1) == 8)  # linear rows are balanced too


def test_global_scope_reaches_the_overall_sparsity_with_uneven_layers():
    graph = small_cnn()
    report = sparsify_graph(graph, sparsity=0.5, scope="global")
    weights = _weights(graph)
    total = sum(w.size for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == total // 2
    per_layer = {e.constant: e.sparsity for e in report.weights}
    assert len({round(s, 3) for s in per_layer.values()}) == 3


def test_masks_are_recorded_and_combine_with_earlier_ones():
    graph = small_cnn()
    sparsify_graph(graph, sparsity=0.25)
    first = {k: v.copy() for k, v in graph_masks(graph).items()}
    assert set(first) == {"conv1.weight", "conv2.weight", "fc.weight"}
    for name, mask in first.items():
        assert np.array_equal(mask, graph.constants[name].const != 0)
    sparsify_graph(graph, sparsity=0.5, criterion="random", seed=3)
    for name, mask in graph_masks(graph).items():
        assert not np.any(mask & ~first[name]), "a zero came back"
        assert np.array_equal(mask, graph.constants[name].const != 0)
        assert (~mask).mean() >= 0.5
    graph.constants["fc.weight"].const = np.zeros((10, 3), np.float32)
    assert "fc.weight" not in graph_masks(graph)  # a stale mask (after prune) is dropped


def test_the_emitted_onnx_model_carries_the_zeros_and_computes_the_sparse_model():
    graph = small_cnn()
    x = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
    (dense,) = run_onnxruntime(graph, [x])
    sparsify_graph(graph, granularity="2:4")
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert (weights["conv2.weight"] == 0).sum() == weights["conv2.weight"].size // 2
    (sparse,) = run_onnxruntime(model, [x])
    assert np.abs(sparse - dense).max() > 1e-3  # the zeros change the result...
    expected = _reference(graph, x)
    assert np.abs(sparse - expected).max() < 1e-4  # ...to what the sparse weights compute


def _reference(graph: Graph, x: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    c = {k: torch.from_numpy(v.const) for k, v in graph.constants.items()}
    y = F.relu(F.conv2d(torch.from_numpy(x), c["conv1.weight"], c["conv1.bias"], padding=1))
    y = F.relu(F.conv2d(y, c["conv2.weight"], c["conv2.bias"], stride=2, padding=1))
    return F.linear(y.mean((2, 3)), c["fc.weight"], c["fc.bias"]).numpy()


def test_feature_maps_are_masked_from_data():
    graph = small_cnn()
    data = ArrayDataset(np.random.default_rng(2).random((32, 1, 8, 8), dtype=np.float32), batch_size=16)
    report = sparsify_graph(graph, sparsity=0.0, activations=0.25, data=data)
    masked = {e.layer: (e.zeros, e.size) for e in report.activations}
    assert masked == {"conv2": (2, 8), "fc": (4, 16)}
    muls = graph.find_nodes(op="Mul")
    assert len(muls) == 2
    mask = next(m for m in muls if m.source == "relu1").inputs[1]
    assert mask.meta["trainable"] is False and mask.const.shape == (1, 8, 1, 1) and mask.const.sum() == 6
    # The masked feature maps are exactly zero where conv2 reads them.
    from irtool.passes.criteria_data import collect_activations

    seen = collect_activations(graph, [m.outputs[0] for m in muls], data, 32)
    dead = np.flatnonzero(mask.const.reshape(-1) == 0)
    read = seen[next(m for m in muls if m.source == "relu1").outputs[0].name]
    assert np.all(read[:, dead] == 0) and np.all(read.any(axis=(0, 2, 3))[mask.const.reshape(-1) == 1])
    assert not any(e.zeros for e in report.weights)


def test_feature_map_scores_l1_l2_and_similarity():
    rng = np.random.default_rng(0)
    a, b, c = rng.random((3, 5, 4, 4))
    maps = np.stack([a, 2 * a, 0.1 * b, c], axis=1)  # channel 1 is channel 0 scaled: redundant
    assert np.argmin(feature_map_scores(maps, 1, "l1", 1)) == 2
    assert np.argmin(feature_map_scores(maps, 1, "l2", 1)) == 2
    similar = feature_map_scores(maps, 1, "similarity", 1)
    assert np.argmin(similar) in (0, 1) and (similar == 1.0).sum() == 3


def test_activation_sparsity_without_data_is_a_clear_error():
    with pytest.raises(IrtoolError, match="activation sparsity needs data"):
        sparsify_graph(small_cnn(), activations=0.5)


def test_the_pass_in_a_pipeline():
    (p,) = parse_pipeline("sparsify{granularity=2:4 exclude=[conv1]}")
    assert str(p) == "sparsify{exclude=[conv1] granularity=2:4}"
    assert parse_pipeline(str(p)) == [p]
    graph = small_cnn()
    result = PassManager([p], verify=True).run(graph, PassContext())
    assert result.modified
    lines = result.records[0].log
    assert [line for line in lines if "conv1" in line] == []
    assert lines[-1] == "weights: 50.0% zeros over 2 layers"
    assert set(graph.meta[MASKS_META]) == {"conv2.weight", "fc.weight"}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("sparsify{granularity=3:2}", "0 < N < M"),
        ("sparsify{granularity=row}", "granularity 'row' is not one of"),
        ("sparsify{sparsity=1.0}", r"outside \[0, 1\)"),
        ("sparsify{block=[4]}", "not two sizes"),
    ],
)
def test_bad_options_are_refused_when_parsed(spec, message):
    with pytest.raises(IrtoolError, match=message):
        parse_pipeline(spec)


def test_weight_sparsity_measures_the_graph_as_it_is():
    graph = small_cnn()
    assert all(e.zeros == 0 for e in weight_sparsity(graph))
    graph.constants["fc.weight"].const[:, :4] = 0
    fc = next(e for e in weight_sparsity(graph) if e.layer == "fc")
    assert (fc.zeros, fc.size, fc.label) == (40, 160, "linear")


def test_config_defaults_validate():
    SparsifyConfig().validate()
