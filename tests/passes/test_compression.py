"""The compression report: Huffman coding, sizes through prune and quantize, and the lab's score."""

from __future__ import annotations

import numpy as np
import pytest

from irtool.frontends.onnx import load_onnx
from irtool.passes.base import PassContext, PassManager
from irtool.passes.compression import compression_report, huffman_code_lengths, huffman_size, lab_score
from irtool.passes.oracle import copy_graph
from tests.zoo import export_onnx


def test_huffman_code_lengths_of_a_known_distribution():
    np.testing.assert_array_equal(huffman_code_lengths(np.array([5, 2, 1, 1])), [1, 2, 3, 3])
    values = np.array([7] * 5 + [-3] * 2 + [0, 1], np.int8)
    assert huffman_size(values) == (5 * 1 + 2 * 2 + 3 + 3, 2 * 4)
    assert huffman_size(np.zeros(10, np.int8)) == (10, 2)


def test_huffman_codes_are_complete_and_within_one_bit_of_the_entropy():
    counts = np.random.default_rng(0).integers(1, 1000, size=200)
    lengths = huffman_code_lengths(counts)
    assert np.isclose(np.sum(2.0 ** -lengths), 1.0)
    p = counts / counts.sum()
    entropy = -(p * np.log2(p)).sum()
    average = (p * lengths).sum()
    assert entropy <= average < entropy + 1


def test_lab_score_formula():
    assert lab_score(ps=0.5, pu=0.1, qw=8, qa=8, w=5.6e6, f=8.3e8) == pytest.approx((0.1, 0.125))
    # The reference: ResNet-18 (11.2 M weights) at half precision scores 1 + 1.
    assert sum(lab_score(ps=0, pu=0, qw=16, qa=16, w=11.2e6, f=1.66e9)) == pytest.approx(2.0)
    assert lab_score(ps=0, pu=0, qw=8, qa=32, w=5.6e6, f=8.3e8) == pytest.approx((0.25, 1.0))


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    path = export_onnx("resnet18", tmp_path_factory.mktemp("zoo") / "resnet18.onnx", input_shape=(1, 3, 32, 32))
    graph = load_onnx(path)
    PassManager("fold-bn").run(graph)
    return graph


def _float_elements(graph) -> int:
    return sum(v.const.size for v in graph.constants.values() if v.const.dtype.kind == "f")


def test_an_unchanged_model_scores_its_size_at_fp32(resnet18):
    report = compression_report(resnet18, resnet18)
    weights = _float_elements(resnet18)
    assert report.weights_before == report.weights_after == weights
    assert report.fp32_bytes == report.pruned_bytes == report.quantized_bytes == report.huffman_bytes == 4 * weights
    assert (report.structured, report.unstructured, report.weight_bits, report.activation_bits) == (0, 0, 32, 32)
    assert report.score == pytest.approx(weights / 5.6e6 + report.macs_before / 8.3e8)


def test_prune_then_quantize_shrinks_each_step(resnet18):
    original = resnet18
    graph = copy_graph(original)
    data = [{"input": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}]
    PassManager("prune{sparsity=0.5},quantize").run(graph, PassContext(data=data))
    report = compression_report(original, graph)

    assert report.fp32_bytes == 4 * _float_elements(original)
    assert report.pruned_bytes == 4 * report.weights_after
    assert 0.2 * report.fp32_bytes < report.pruned_bytes < 0.35 * report.fp32_bytes
    assert report.pruned_bytes / 4 < report.quantized_bytes < 1.05 * report.pruned_bytes / 4
    assert report.huffman_bytes < report.quantized_bytes
    assert (report.weight_bits, report.activation_bits) == (8, 8)
    assert report.structured == pytest.approx(1 - report.weights_after / report.weights_before)
    assert report.macs_after < 0.35 * report.macs_before

    param, ops = report.scores
    ps, pu = report.structured, report.unstructured
    assert param == pytest.approx((1 - ps - pu) * (8 / 32) * report.weights_before / 5.6e6)
    assert ops == pytest.approx((1 - ps) * (8 / 32) * report.macs_before / 8.3e8)
    text = report.format()
    assert "after Huffman coding" in text and f"= {report.score:.4f}" in text


def test_zeroed_weights_count_as_unstructured_pruning(resnet18):
    graph = copy_graph(resnet18)
    weight = graph.constants["fc.weight"] if "fc.weight" in graph.constants else max(
        graph.constants.values(), key=lambda v: v.const.size
    )
    array = weight.const.copy()
    array.reshape(-1)[::2] = 0
    weight.const = array
    report = compression_report(resnet18, graph)
    assert report.structured == 0
    assert report.unstructured == pytest.approx((array.size - array.size // 2) / report.weights_before, rel=1e-3)
    PassManager("quantize{mode=weight-int8}").run(graph)
    quantized = compression_report(resnet18, graph)
    assert quantized.unstructured >= report.unstructured  # small weights also round to code 0
    assert (quantized.weight_bits, quantized.activation_bits) == (8, 32)
