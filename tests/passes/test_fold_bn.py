"""Batch-norm folding: numbers before and after, what is left alone, and zoo models in onnxruntime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from irtool.ir import DType, Graph, TensorType
from irtool.passes.base import PassContext, PassManager
from irtool.backends.onnx import run_onnxruntime
from irtool.passes.fold_bn import FoldBatchNorm

F32 = DType.float32
RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _add_bn(graph: Graph, x, channels: int, name: str, **attrs):
    params = [
        graph.add_constant(f"{name}.weight", RNG.uniform(0.5, 1.5, channels).astype(np.float32)),
        graph.add_constant(f"{name}.bias", _randn(channels)),
        graph.add_constant(f"{name}.running_mean", _randn(channels)),
        graph.add_constant(f"{name}.running_var", RNG.uniform(0.2, 2.0, channels).astype(np.float32)),
    ]
    return graph.add_node("BatchNormalization", [x, *params], {"epsilon": 1e-3, **attrs}, name=name).outputs[0]


def _fold(graph: Graph):
    return FoldBatchNorm().run(graph, PassContext())


def _check_folds(graph: Graph, feeds, bn_left: int = 0):
    expected = run_onnxruntime(graph, feeds)
    result = _fold(graph)
    got = run_onnxruntime(graph, feeds)
    assert len(graph.find_nodes(op="BatchNormalization")) == bn_left
    for e, g in zip(expected, got):
        assert np.abs(e - g).max() <= 1e-5 * np.abs(e).max()
    return result


@pytest.mark.parametrize("bias, group", [(False, 1), (True, 1), (True, 2), (False, 4)])
def test_conv_then_bn(bias, group):
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (2, 4, 8, 8)))
    inputs = [x, graph.add_constant("conv.weight", _randn(8, 4 // group, 3, 3))]
    if bias:
        inputs.append(graph.add_constant("conv.bias", _randn(8)))
    y = graph.add_node("Conv", inputs, {"pads": [1, 1, 1, 1], "group": group}, name="conv").outputs[0]
    y = _add_bn(graph, y, 8, "bn")
    graph.outputs = [graph.add_node("Relu", [y], name="relu").outputs[0]]
    result = _check_folds(graph, {"x": _randn(2, 4, 8, 8)})
    assert result.log == ["folded 1 batch norm (1 into Conv)"]
    conv = graph.find_nodes(op="Conv")[0]
    assert [v.name for v in conv.inputs] == ["x", "conv.weight", "conv.bias"]
    assert sorted(graph.constants) == ["conv.bias", "conv.weight"]


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_then_bn(group):
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (1, 4, 5, 5)))
    w = graph.add_constant("up.weight", _randn(4, 6 // group, 2, 2))
    y = graph.add_node("ConvTranspose", [x, w], {"strides": [2, 2], "group": group}, name="up").outputs[0]
    graph.outputs = [_add_bn(graph, y, 6, "bn")]
    _check_folds(graph, {"x": _randn(1, 4, 5, 5)})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_then_bn(trans_b):
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (3, 16)))
    w = graph.add_constant("fc.weight", _randn(10, 16) if trans_b else _randn(16, 10))
    b = graph.add_constant("fc.bias", _randn(10))
    y = graph.add_node("Gemm", [x, w, b], {"transB": trans_b}, name="fc").outputs[0]
    graph.outputs = [_add_bn(graph, y, 10, "bn")]
    result = _check_folds(graph, {"x": _randn(3, 16)})
    assert result.log == ["folded 1 batch norm (1 into Gemm)"]


def test_graph_output_keeps_its_name():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (1, 2, 4, 4)))
    y = graph.add_node("Conv", [x, graph.add_constant("w", _randn(3, 2, 1, 1))], name="conv").outputs[0]
    bn_out = _add_bn(graph, y, 3, "bn")
    name = bn_out.name
    graph.outputs = [bn_out]
    _check_folds(graph, {"x": _randn(1, 2, 4, 4)})
    assert graph.outputs[0].name == name and graph.outputs[0].producer.op == "Conv"
    assert graph.find_nodes(op="Conv")[0].inputs[2].name == "w.bias"


def test_shared_weight_is_copied_not_overwritten():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (1, 3, 6, 6)))
    w = graph.add_constant("shared.weight", _randn(3, 3, 3, 3))
    a = graph.add_node("Conv", [x, w], {"pads": [1, 1, 1, 1]}, name="conv_a").outputs[0]
    a = _add_bn(graph, a, 3, "bn_a")
    b = graph.add_node("Conv", [a, w], {"pads": [1, 1, 1, 1]}, name="conv_b").outputs[0]
    graph.outputs = [_add_bn(graph, b, 3, "bn_b")]
    result = _check_folds(graph, {"x": _randn(1, 3, 6, 6)})
    assert result.log == ["folded 2 batch norms (2 into Conv)"]
    weights = [n.inputs[1] for n in graph.find_nodes(op="Conv")]
    assert weights[0] is not weights[1]


def test_bn_that_cannot_fold_is_left_alone():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (1, 3, 4, 4)))
    w_in = graph.add_input("w_in", TensorType(F32, (3, 3, 1, 1)))
    conv = graph.add_node("Conv", [x, graph.add_constant("w", _randn(3, 3, 1, 1))], name="conv").outputs[0]
    after_shared = _add_bn(graph, conv, 3, "bn_shared_input")  # conv output also feeds the Add below
    relu = graph.add_node("Relu", [x], name="relu").outputs[0]
    after_relu = _add_bn(graph, relu, 3, "bn_after_relu")
    dynamic = graph.add_node("Conv", [x, w_in], name="conv_dynamic_weight").outputs[0]
    after_dynamic = _add_bn(graph, dynamic, 3, "bn_dynamic")
    total = graph.add_node("Add", [after_shared, conv], name="add").outputs[0]
    total = graph.add_node("Add", [total, after_relu], name="add2").outputs[0]
    graph.outputs = [graph.add_node("Add", [total, after_dynamic], name="add3").outputs[0]]
    feeds = {"x": _randn(1, 3, 4, 4), "w_in": _randn(3, 3, 1, 1)}
    result = _check_folds(graph, feeds, bn_left=3)
    assert not result.modified
    assert result.log == ["left 3 batch norms that follow no foldable conv/linear layer"]


def test_training_mode_bn_is_not_folded():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (1, 2, 3, 3)))
    y = graph.add_node("Conv", [x, graph.add_constant("w", _randn(2, 2, 1, 1))], name="conv").outputs[0]
    graph.outputs = [_add_bn(graph, y, 2, "bn", training_mode=1)]
    assert not _fold(graph).modified
    assert len(graph.find_nodes(op="BatchNormalization")) == 1


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_zoo_model_loses_every_batch_norm(tmp_path, name):
    from irtool.frontends.onnx import load_onnx
    from tests.zoo import ZOO, export_onnx

    zm = ZOO[name]
    graph = load_onnx(export_onnx(name, tmp_path / f"{name}.onnx"))
    bn_count = len(graph.find_nodes(op="BatchNormalization"))
    conv_count = len(graph.find_nodes(op="Conv"))
    feeds = {graph.inputs[0].name: zm.example_input().numpy()}
    expected = np.asarray(run_onnxruntime(graph, feeds)[0])
    result = PassManager("fold-bn,dce", verify=True).run(graph)
    assert bn_count > 0 and not graph.find_nodes(op="BatchNormalization")
    assert result.records[0].log == [f"folded {bn_count} batch norms ({bn_count} into Conv)"]
    assert len(graph.find_nodes(op="Conv")) == conv_count
    got = np.asarray(run_onnxruntime(graph, feeds)[0])
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


FOLD_BN_IR = """
// RUN: fold-bn,dce
graph @main(%x: tensor<1x2x4x4xfloat32>) -> (%y) opset 18 {
  const %conv.weight = dense<[[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]> : tensor<2x2x1x1xfloat32>
  const %bn.weight = dense<[2.0, 0.5]> : tensor<2xfloat32>
  const %bn.bias = dense<[1.0, -1.0]> : tensor<2xfloat32>
  const %bn.mean = dense<[0.0, 4.0]> : tensor<2xfloat32>
  const %bn.var = dense<[1.0, 1.0]> : tensor<2xfloat32>
  %c = Conv(%x, %conv.weight) : tensor<1x2x4x4xfloat32>  loc("conv")
  %y = BatchNormalization(%c, %bn.weight, %bn.bias, %bn.mean, %bn.var) {epsilon = 0.0} : tensor<1x2x4x4xfloat32>
}
// CHECK:      graph @main(%x: tensor<1x2x4x4xfloat32>) -> (%y)
// CHECK-NEXT:   const %conv.weight = dense<{{\\[\\[\\[\\[2.0\\]\\], \\[\\[4.0\\]\\]\\], \\[\\[\\[1.5\\]\\], \\[\\[2.0\\]\\]\\]\\]}}>
// CHECK-NEXT:   const %conv.bias = dense<[1.0, -3.0]> : tensor<2xfloat32>
// CHECK-NEXT:   %y = Conv(%x, %conv.weight, %conv.bias) : tensor<1x2x4x4xfloat32>  loc("conv")
// CHECK-NEXT: }
"""


def test_printed_ir_after_fold_bn(tmp_path):
    """Read as documentation: scale (2, 0.5) goes into the weight rows, the shift into a new bias."""
    from irtool.ir.text import parse_graph, print_graph

    graph = parse_graph(FOLD_BN_IR)
    pipeline = FOLD_BN_IR.split("RUN:")[1].splitlines()[0].strip()
    PassManager(pipeline, verify=True).run(graph)
    checks = tmp_path / "fold_bn.checks"
    checks.write_text(FOLD_BN_IR)
    proc = subprocess.run([sys.executable, "-m", "filecheck", str(checks)], input=print_graph(graph), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
