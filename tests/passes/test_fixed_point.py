"""Fixed-point Qm.n fake quantization and int8 weights alone: reference numbers, onnxruntime and TVM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irtool.backends.onnx import run_onnxruntime, to_onnx
from irtool.frontends.onnx import load_onnx
from irtool.ir import DType, Graph, TensorType
from irtool.ir.errors import IrtoolError
from irtool.passes.base import PassContext, PassManager
from irtool.passes.fixed_point import fixed_point, fixed_point_codes
from irtool.passes.pipeline import parse_pipeline
from irtool.passes.quantize import quantization_record
from tests.zoo import export_onnx

F32 = DType.float32
RNG = np.random.default_rng(0)


def _randn(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def _conv_linear_graph() -> Graph:
    """x -> Conv -> Relu -> Flatten -> Gemm: two layers, two layer inputs."""
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (2, 3, 6, 6)))
    w = graph.add_constant("conv.weight", _randn(4, 3, 3, 3, scale=0.5))
    b = graph.add_constant("conv.bias", _randn(4))
    y = graph.add_node("Conv", [x, w, b], {"pads": [1, 1, 1, 1]}, name="conv").outputs[0]
    y = graph.add_node("Relu", [y], name="relu").outputs[0]
    y = graph.add_node("Flatten", [y], name="flatten").outputs[0]
    w2 = graph.add_constant("fc.weight", _randn(5, 4 * 6 * 6, scale=0.2))
    b2 = graph.add_constant("fc.bias", _randn(5))
    graph.outputs = [graph.add_node("Gemm", [y, w2, b2], {"transB": 1}, name="fc").outputs[0]]
    from irtool.ir.shapes import infer_shapes

    infer_shapes(graph)
    return graph


def _expected(graph: Graph, x: np.ndarray, bits: int, frac: int) -> np.ndarray:
    """The fixed-point model computed in torch from the float constants (MASE's semantics)."""
    c = {name: torch.from_numpy(fixed_point(v.const, bits, frac)) for name, v in graph.constants.items()}
    q = lambda t: torch.from_numpy(fixed_point(t.numpy(), bits, frac))  # noqa: E731
    y = torch.nn.functional.conv2d(q(torch.from_numpy(x)), c["conv.weight"], c["conv.bias"], padding=1)
    y = torch.relu(y).flatten(1)
    return (q(y) @ c["fc.weight"].T + c["fc.bias"]).numpy()


def test_fixed_point_reference_values():
    x = np.array([0.03, 7.99, -9.0, 1.03125, -0.03125, 0.09375], np.float32)
    np.testing.assert_array_equal(fixed_point(x, 8, 4), [0.0, 7.9375, -8.0, 1.0, 0.0, 0.125])
    np.testing.assert_array_equal(fixed_point_codes(x, 8, 4), [0, 127, -128, 16, 0, 2])
    np.testing.assert_array_equal(fixed_point(x, 4, 2), [0.0, 1.75, -2.0, 1.0, 0.0, 0.0])


@pytest.mark.parametrize("bits, frac", [(8, 4), (8, 6), (4, 2), (6, 3)])
def test_fixed_point_model_computes_the_reference_in_onnxruntime(bits, frac):
    graph = _conv_linear_graph()
    x = _randn(2, 3, 6, 6)
    expected = _expected(graph, x, bits, frac)
    result = PassManager(f"quantize{{mode=fixed bits={bits} frac-bits={frac}}}", verify=True).run(graph)
    step = 2.0**-frac
    low, high = -(2 ** (bits - 1)) * step, (2 ** (bits - 1) - 1) * step
    assert result.records[0].log == [
        f"fixed point Q{bits - frac}.{frac} ({bits} bits, step {step:g}, range [{low:g}, {high:g}]): "
        "weights of 2 layers, 2 layer inputs"
    ]
    assert len(graph.find_nodes(op="Clip")) == (2 if bits < 8 else 0)
    (got,) = run_onnxruntime(graph, [x])
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())
    record = quantization_record(graph)
    assert record == {"mode": "fixed", "weight_bits": bits, "activation_bits": bits, "frac_bits": frac}


def test_fixed_point_model_runs_in_tvm():
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    graph = _conv_linear_graph()
    x = _randn(2, 3, 6, 6)
    PassManager("quantize{mode=fixed bits=6 frac-bits=3}").run(graph)
    (in_onnxruntime,) = run_onnxruntime(graph, [x])
    module = from_onnx(to_onnx(graph), keep_params_in_input=False)
    machine = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
    in_tvm = machine["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(in_tvm, in_onnxruntime, atol=1e-5 * np.abs(in_onnxruntime).max())


def test_weight_only_int8_quarters_the_weights_and_keeps_activations_float(tmp_path):
    graph = load_onnx(export_onnx("resnet18", tmp_path / "r18.onnx", input_shape=(1, 3, 32, 32)))
    PassManager("fold-bn").run(graph)
    x = _randn(1, 3, 32, 32)
    (expected,) = run_onnxruntime(graph, [x])
    weights_before = sum(v.const.nbytes for v in graph.constants.values() if v.const.ndim >= 2)
    result = PassManager("quantize{mode=weight-int8}", verify=True).run(graph, PassContext())
    assert result.records[0].log[0].startswith("int8 weights (per-channel) for 21 conv/linear layers")
    assert not graph.find_nodes(op="QuantizeLinear")
    codes = [v.const for v in graph.constants.values() if v.const.dtype == np.int8 and v.const.ndim >= 2]
    assert len(codes) == 21 and sum(c.nbytes for c in codes) * 4 == weights_before
    (got,) = run_onnxruntime(graph, [x])
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    assert quantization_record(graph)["activation_bits"] == 32


@pytest.mark.parametrize(
    "spec, message",
    [
        ("quantize{mode=fixed bits=1}", "mode=fixed supports bits from 2 to 8, not bits=1"),
        ("quantize{mode=fixed bits=16}", "mode=fixed supports bits from 2 to 8, not bits=16"),
        ("quantize{mode=fixed frac-bits=-1}", "frac-bits must be between 0 and 24, not -1"),
    ],
)
def test_bad_fixed_point_options(spec, message):
    with pytest.raises(IrtoolError, match="quantize") as error:
        parse_pipeline(spec)
    assert message in str(error.value)
