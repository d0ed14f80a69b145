"""The quantize pass in int8 mode: accuracy on a trained model, the QDQ layout onnxruntime fuses
into int8 kernels, prune-then-quantize in onnxruntime and TVM, calibrators, and bad input."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from irtool.backends.onnx import make_session, run_onnxruntime, to_onnx
from irtool.frontends.onnx import load_onnx
from irtool.ir import DType, Graph, TensorType
from irtool.ir.errors import IrtoolError
from irtool.passes.base import PassContext, PassManager
from irtool.passes.calibration import RANDOM_FALLBACK_WARNING, TensorStats, choose_range
from irtool.passes.oracle import check_equivalence, copy_graph
from irtool.passes.pipeline import parse_pipeline
from irtool.passes.quantize import Quantize, quantization_record
from tests.zoo import export_onnx, onnx_bytes

F32 = DType.float32


# -- helpers -----------------------------------------------------------------------------------
def _optimized_ops(graph: Graph, tmp_path) -> Counter:
    """The op types onnxruntime runs after its graph optimizations (its QDQ fusions)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(to_onnx(graph).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def _zoo_graph(name: str, tmp_path, size: int = 32) -> Graph:
    graph = load_onnx(export_onnx(name, tmp_path / f"{name}.onnx", input_shape=(1, 3, size, size)))
    PassManager("fold-bn").run(graph)
    return graph


def _images(count: int, size: int, seed: int, batch: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((batch, 3, size, size)).astype(np.float32)} for _ in range(count)]


def _quantize(graph: Graph, spec: str = "quantize", data=None):
    return PassManager(spec, verify=True).run(graph, PassContext(data=data))


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# -- a model trained on scikit-learn's digits -------------------------------------------------------
class DigitsNet(nn.Module):
    """Conv-BN-ReLU, a residual Add, max pooling, ReLU6 (a Clip), a flatten and a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.conv3 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU6())
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x) + x), 2)
        return self.fc(self.conv3(x).flatten(1))


@pytest.fixture(scope="module")
def digits():
    """A DigitsNet trained for a few epochs (seconds), exported to ONNX with BN kept, and its data."""
    data = load_digits()
    images = (data.images.astype(np.float32) / 16.0)[:, None]
    labels = data.target.astype(np.int64)
    train_x, train_y, test_x, test_y = images[:1400], labels[:1400], images[1400:], labels[1400:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is fastest, and deterministic
    torch.manual_seed(0)
    model = DigitsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    for _ in range(6):
        for batch in torch.randperm(len(x), generator=generator).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    torch.set_num_threads(threads)
    model.eval()
    proto = onnx_bytes(model, example_input=x[:1], dynamic_batch=True)
    return proto, train_x, test_x, test_y


def _digits_graph(proto: bytes) -> Graph:
    graph = load_onnx(onnx.load_from_string(proto))
    PassManager("fold-bn").run(graph)
    return graph


def _accuracy(graph: Graph, x: np.ndarray, y: np.ndarray) -> float:
    (logits,) = run_onnxruntime(graph, [x])
    return float((logits.argmax(1) == y).mean())


@pytest.mark.parametrize(
    "options",
    ["", "calibration=percentile", "calibration=entropy", "calibration=mse", "activations=int8 calibration=percentile"],
)
def test_digits_int8_accuracy_is_within_one_point_of_fp32(digits, options, tmp_path):
    proto, train_x, test_x, test_y = digits
    graph = _digits_graph(proto)
    fp32 = _accuracy(graph, test_x, test_y)
    calibration = [{"input": train_x[i : i + 64]} for i in range(0, 512, 64)]
    result = _quantize(graph, f"quantize{{{options} samples=256}}", calibration)
    assert "256 samples of user data" in result.records[0].log[1]
    int8 = _accuracy(graph, test_x, test_y)
    assert fp32 > 0.95, fp32
    assert int8 >= fp32 - 0.01, (fp32, int8)
    if "activations=int8" not in options:  # onnxruntime's x86 kernels are uint8 x int8
        ops = _optimized_ops(graph, tmp_path)
        assert (ops["QLinearConv"], ops["QLinearAdd"], ops["QGemm"]) == (3, 1, 1) and "Conv" not in ops, ops


# -- the layout onnxruntime fuses -------------------------------------------------------------------
def test_resnet18_runs_on_int8_kernels_only(tmp_path):
    graph = _zoo_graph("resnet18", tmp_path)
    feed = _images(1, 32, seed=1)[0]
    (expected,) = run_onnxruntime(graph, feed)
    result = _quantize(graph, "quantize{reduce-range=off}", _images(2, 32, seed=0, batch=4))
    assert result.records[0].log == [
        "int8 weights (per-channel) for 20 conv, 1 linear layers",
        "32 activations quantized (uint8 asymmetric, minmax calibration over 8 samples of user data)",
        "17 relu/clip absorbed into quantized outputs",
    ]
    ops = Counter(node.op for node in graph.nodes)
    assert (ops["QuantizeLinear"], ops["DequantizeLinear"], ops["Relu"]) == (32, 74, 0)
    fused = _optimized_ops(graph, tmp_path)
    counts = (fused["QLinearConv"], fused["QLinearAdd"], fused["QGemm"], fused["QLinearGlobalAveragePool"])
    assert counts == (20, 8, 1, 1)
    assert not {"Conv", "Add", "Gemm", "Relu"} & set(fused), fused
    (got,) = run_onnxruntime(graph, feed)
    assert _relative(got, expected) < 0.1
    assert graph.outputs[0].name == "output" and graph.outputs[0].producer.op == "Gemm"  # logits stay float


def test_weights_are_per_channel_int8_and_biases_int32_at_input_times_weight_scale(tmp_path):
    graph = _zoo_graph("resnet18", tmp_path)
    _quantize(graph, "quantize{reduce-range=off}", _images(2, 32, seed=0))
    for conv in graph.find_nodes(op="Conv"):
        x, w, b = (v.producer for v in conv.inputs)
        assert w.inputs[0].const.dtype == np.int8 and w.attrs["axis"] == 0
        assert np.abs(w.inputs[0].const).max() == 127
        assert w.inputs[1].const.shape == (w.inputs[0].const.shape[0],) and not w.inputs[2].const.any()
        assert b.inputs[0].const.dtype == np.int32
        np.testing.assert_allclose(b.inputs[1].const, x.inputs[1].const * w.inputs[1].const, rtol=1e-6)
    assert quantization_record(graph)["weight_bits"] == 8


def test_int8_kernels_compute_the_qdq_semantics_with_reduced_range(digits):
    """7-bit weights keep onnxruntime's uint8 x int8 kernels out of int16 saturation (x86 without VNNI)."""
    proto, train_x, test_x, _ = digits
    graph = _digits_graph(proto)
    result = _quantize(graph, "quantize{reduce-range=on}", [{"input": train_x[:128]}])
    assert "7-bit range" in result.records[0].log[0]
    weights = [n.inputs[0].const for n in graph.find_nodes(op="DequantizeLinear") if n.inputs[0].const is not None]
    assert max(int(np.abs(w).max()) for w in weights if w.dtype == np.int8) == 63
    (fused,) = run_onnxruntime(graph, [test_x])
    (reference,) = make_session(graph, optimization="disable").run(None, {"input": test_x})
    assert _relative(fused, reference) < 0.02
    assert (fused.argmax(1) == reference.argmax(1)).mean() > 0.99


def test_mobilenet_v2_absorbs_relu6_and_quantizes_residual_adds(tmp_path):
    graph = _zoo_graph("mobilenet_v2", tmp_path)
    feed = _images(1, 32, seed=1)[0]
    (expected,) = run_onnxruntime(graph, feed)
    _quantize(graph, "quantize{calibration=percentile}", _images(4, 32, seed=0))
    assert not graph.find_nodes(op="Clip")
    fused = _optimized_ops(graph, tmp_path)
    assert (fused["QLinearConv"], fused["QLinearAdd"]) == (52, 10) and "Conv" not in fused, fused
    (got,) = run_onnxruntime(graph, feed)
    assert _relative(got, expected) < 0.2


def test_prune_then_quantize_runs_in_onnxruntime_and_tvm(tmp_path):
    from irtool.backends.tvm import compile_graph

    graph = _zoo_graph("resnet18", tmp_path)
    original = copy_graph(graph)
    data = _images(4, 32, seed=0)
    PassManager("prune{sparsity=0.5}", verify=True).run(graph)
    oracle = check_equivalence(original, graph)
    assert oracle.ok and oracle.channels > 0
    pruned = copy_graph(graph)
    _quantize(graph, "quantize{calibration=percentile}", data)

    feed = _images(1, 32, seed=1)[0]
    (reference,) = run_onnxruntime(pruned, feed)
    (int8,) = run_onnxruntime(graph, feed)
    assert _relative(int8, reference) < 0.1
    (qdq,) = make_session(graph, optimization="disable").run(None, feed)  # QDQ reference semantics

    (in_tvm,) = compile_graph(graph).run([feed["input"]])  # irtool's own Relax emission of the QDQ graph
    assert _relative(in_tvm, qdq) < 1e-3
    assert _relative(in_tvm, reference) < 0.1


def test_the_pipeline_from_the_issue_parses_and_runs(tmp_path):
    graph = _zoo_graph("resnet18", tmp_path)
    pipeline = "fold-bn,prune{sparsity=0.5},quantize{mode=int8 calibration=percentile}"
    result = PassManager(pipeline).run(graph, PassContext(data=_images(2, 32, seed=0)))
    assert [r.spec for r in result.records] == ["fold-bn", "prune", "quantize{calibration=percentile}"]
    assert all(r.modified for r in result.records[1:])
    assert run_onnxruntime(graph, _images(1, 32, seed=1)[0])[0].shape == (1, 1000)


# -- small graphs ----------------------------------------------------------------------------------
def _conv_graph(batch=1) -> Graph:
    rng = np.random.default_rng(0)
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (batch, 4, 8, 8)))
    w = graph.add_constant("conv.weight", rng.standard_normal((8, 4, 3, 3)).astype(np.float32))
    b = graph.add_constant("conv.bias", rng.standard_normal(8).astype(np.float32))
    y_type = TensorType(F32, (batch, 8, 8, 8))
    y = graph.add_node("Conv", [x, w, b], {"pads": [1, 1, 1, 1]}, name="conv", output_types=[y_type])
    graph.outputs = [y.outputs[0]]
    return graph


def test_symmetric_int8_activations_have_zero_points_of_zero():
    graph = _conv_graph()
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    (expected,) = run_onnxruntime(graph, feed)
    _quantize(graph, "quantize{activations=int8}", [feed])
    quantizers = graph.find_nodes(op="QuantizeLinear")
    assert len(quantizers) == 2
    for q in quantizers:
        assert q.inputs[2].const.dtype == np.int8 and q.inputs[2].const == 0
    (got,) = run_onnxruntime(graph, feed)
    assert _relative(got, expected) < 0.03
    assert graph.outputs[0].name == "conv" and graph.outputs[0].producer.op == "DequantizeLinear"


def test_a_quantized_graph_is_left_alone():
    graph = _conv_graph()
    data = [{"x": np.ones((1, 4, 8, 8), np.float32)}]
    assert _quantize(graph, data=data).modified
    again = _quantize(graph, data=data)
    assert not again.modified and "already" in again.records[0].log[0]


def test_random_fallback_says_so(caplog):
    graph = _conv_graph()
    with caplog.at_level(logging.WARNING, logger="irtool.passes"):
        result = _quantize(graph, "quantize{samples=3}")
    assert RANDOM_FALLBACK_WARNING in caplog.messages
    assert RANDOM_FALLBACK_WARNING == (
        "quantize: no calibration data given; calibrating on random inputs (accuracy will not be representative)"
    )
    assert "3 random inputs (not representative)" in result.records[0].log[1]


def test_a_batch_is_split_for_a_fixed_batch_input_and_capped_at_samples():
    graph = _conv_graph(batch=1)
    data = [{"x": np.ones((5, 4, 8, 8), np.float32)}, {"x": np.ones((5, 4, 8, 8), np.float32)}]
    result = _quantize(graph, "quantize{samples=7}", data)
    assert "7 samples of user data" in result.records[0].log[1]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("quantize{bits=3}", "mode=int8 supports bits=8 only, not bits=3"),
        ("quantize{mode=weight-int8 bits=4}", "mode=weight-int8 supports bits=8 only, not bits=4"),
        ("quantize{mode=fixed bits=12}", "mode=fixed supports bits from 2 to 8, not bits=12"),
        ("quantize{percentile=120}", "percentile must be in (0, 100], not 120.0"),
        ("quantize{calibration=kl}", "expects one of minmax, percentile, entropy, mse, got 'kl'"),
    ],
)
def test_bad_options_are_clear_errors(spec, message):
    with pytest.raises(IrtoolError) as error:
        parse_pipeline(spec)
    assert message in str(error.value) and "quantize" in str(error.value)


@pytest.mark.parametrize(
    "sample, message",
    [
        (
            {"x": np.ones((1, 4, 6, 6), np.float32)},
            "input 'x': expected shape (1, 4, 8, 8) (the batch may be any multiple of 1), got (1, 4, 6, 6)",
        ),
        ({"x": np.ones((4, 8, 8), np.float32)}, "expected shape (1, 4, 8, 8)"),
        ({"image": np.ones((1, 4, 8, 8), np.float32)}, "calibration sample 0 has no array for input 'x'"),
    ],
)
def test_calibration_data_of_the_wrong_shape_is_a_clear_error(sample, message):
    graph = _conv_graph()
    with pytest.raises(IrtoolError) as error:
        _quantize(graph, data=[sample])
    assert message in str(error.value) and "quantize" in str(error.value)
    assert not graph.find_nodes(op="QuantizeLinear")


def test_spec_round_trips():
    (p,) = parse_pipeline("quantize{calibration=percentile activations=int8 samples=64}")
    assert p == Quantize(calibration="percentile", activations="int8", samples=64)
    assert str(p) == "quantize{activations=int8 calibration=percentile samples=64}"
    assert parse_pipeline(str(p)) == [p]


# -- calibrators -----------------------------------------------------------------------------------
def _stats(values: np.ndarray) -> TensorStats:
    lo, hi = float(values.min()), float(values.max())
    return TensorStats(lo, hi, np.histogram(values, bins=2048, range=(lo, hi))[0].astype(np.float64))


def test_calibrators_clip_outliers_that_minmax_keeps():
    rng = np.random.default_rng(0)
    gauss = np.concatenate([rng.standard_normal(200_000), [40.0, -30.0]])
    stats = _stats(gauss)
    assert choose_range(stats, "minmax", symmetric=False) == (-30.0, 40.0)
    assert choose_range(stats, "minmax", symmetric=True) == (-40.0, 40.0)
    lo, hi = choose_range(stats, "percentile", symmetric=False, percentile=99.9)
    assert abs(hi - 3.09) < 0.1 and abs(lo + 3.09) < 0.1
    _, t = choose_range(stats, "percentile", symmetric=True, percentile=99.9)
    assert abs(t - 3.29) < 0.1
    _, t = choose_range(stats, "entropy", symmetric=True)
    assert 2.0 < t < 12.0, t
    _, t = choose_range(stats, "mse", symmetric=True)  # two outliers weigh less than 200k rounding errors
    assert 3.0 < t < 0.8 * 40.0, t


def test_calibrators_keep_a_range_without_outliers():
    uniform = np.random.default_rng(0).uniform(0.0, 6.0, 100_000)
    stats = _stats(uniform)
    for method in ("percentile", "entropy", "mse"):
        lo, hi = choose_range(stats, method, symmetric=False)
        assert lo >= 0.0 and hi > 5.7, (method, lo, hi)
