"""IR -> torch: ONNX models run the same in torch as in onnxruntime; weights train and flow back."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from irtool.backends.torch import TrainableBatchNorm, TrainableDropout, constant_paths, to_torch, update_constants
from irtool.frontends.onnx import load_onnx
from irtool.frontends.torch import load_module
from irtool.ir.core import Graph
from irtool.ir.errors import IrtoolError
from irtool.ir.types import DType, TensorType
from tests.zoo import ZOO, export_onnx, run_onnxruntime

TOLERANCE = 1e-5


def relative_error(reference, result) -> float:
    reference, result = np.asarray(reference), np.asarray(result)
    return float(np.abs(reference - result).max() / max(np.abs(reference).max(), 1e-12))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_onnx_model_runs_the_same_in_torch(name, tmp_path):
    x = ZOO[name].example_input()
    path = export_onnx(name, tmp_path / f"{name}.onnx")
    module = to_torch(load_onnx(path)).eval()
    with torch.no_grad():
        result = module(x).numpy()
    assert relative_error(run_onnxruntime(path, x), result) <= TOLERANCE


# -- single ops against onnxruntime -------------------------------------------------------
def _model(nodes, inputs, output_rank, initializers=(), opset=18):
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * output_rank)],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ints(name, values):
    return name, np.asarray(values, dtype=np.int64)


def _floats(name, values):
    return name, np.asarray(values, dtype=np.float32)


RNG = np.random.default_rng(0)
LSTM_W = RNG.standard_normal((2, 32, 5)).astype(np.float32) * 0.3
LSTM_R = RNG.standard_normal((2, 32, 8)).astype(np.float32) * 0.3
LSTM_B = RNG.standard_normal((2, 64)).astype(np.float32) * 0.1
CONV_W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)

OP_CASES = {
    "resize_nearest": _model(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
        [("x", [1, 2, 5, 4])], 4, [_floats("scales", [1, 1, 2, 3])]),
    "resize_linear_sizes": _model(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                          coordinate_transformation_mode="half_pixel")],
        [("x", [1, 2, 5, 4])], 4, [_ints("sizes", [1, 2, 9, 7])]),
    "conv_asymmetric_pads": _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 1, 2, 0], strides=[2, 1])],
        [("x", [1, 3, 7, 6])], 4, [("w", CONV_W)]),
    "conv_same_upper": _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
        [("x", [1, 3, 8, 7])], 4, [("w", CONV_W)]),
    "max_pool_ceil": _model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
        [("x", [1, 2, 8, 8])], 4),
    "average_pool_pads": _model(
        [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [("x", [1, 2, 6, 6])], 4),
    "pad_reflect_axes": _model(
        [helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="reflect")],
        [("x", [1, 2, 5, 6])], 4, [_ints("pads", [1, 2, 2, 0]), _ints("axes", [2, 3])]),
    "slice_negative_step": _model(
        [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])],
        [("x", [2, 10, 4])], 3,
        [_ints("starts", [-2, 1]), _ints("ends", [-100, 1000]), _ints("axes", [1, 2]), _ints("steps", [-3, 2])]),
    "split_num_outputs": _model(
        [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3),
         helper.make_node("Concat", ["c", "a"], ["y"], axis=1)],
        [("x", [2, 7, 3])], 3),
    "gather_matrix_indices": _model(
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)],
        [("x", [2, 5, 3])], 4, [_ints("i", [[0, -1], [2, 2]])]),
    "expand_flatten_hardsigmoid": _model(
        [helper.make_node("Expand", ["x", "shape"], ["e"]),
         helper.make_node("Flatten", ["e"], ["f"], axis=2),
         helper.make_node("HardSigmoid", ["f"], ["y"], alpha=0.3, beta=0.4)],
        [("x", [3, 1, 4])], 2, [_ints("shape", [2, 1, 5, 1])]),
    "reduce_mean_where_clip": _model(
        [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
         helper.make_node("Greater", ["m", "zero"], ["positive"]),
         helper.make_node("Where", ["positive", "m", "small"], ["w"]),
         helper.make_node("Clip", ["w", "low", "high"], ["y"])],
        [("x", [2, 3, 4])], 1,
        [_ints("axes", [1, -1]), _floats("zero", 0.0), _floats("small", [0.5]),
         _floats("low", -0.2), _floats("high", 0.3)]),
    "lstm_bidirectional": _model(
        [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=8, direction="bidirectional")],
        [("x", [6, 2, 5])], 4, [("W", LSTM_W), ("R", LSTM_R), ("B", LSTM_B)]),
    # ops the PyTorch frontend now emits (GRU, norms, variances, scans), back in torch
    "gru_bidirectional_with_state": _model(
        [helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"], ["y"], hidden_size=8, direction="bidirectional",
                          linear_before_reset=1)],
        [("x", [6, 2, 5])], 4,
        [("W", LSTM_W[:, :24]), ("R", LSTM_R[:, :24]), ("B", LSTM_B[:, :48]), ("h0", LSTM_R[:, :2, :])]),
    "reductions_l1_l2_sumsquare_logsum": _model(
        [helper.make_node("Abs", ["x"], ["a"]),
         helper.make_node("ReduceL1", ["x", "axes"], ["l1"]),
         helper.make_node("ReduceL2", ["x", "axes"], ["l2"]),
         helper.make_node("ReduceSumSquare", ["x", "axes"], ["sq"], keepdims=1),
         helper.make_node("ReduceLogSum", ["a", "axes"], ["ls"]),
         helper.make_node("ReduceLogSumExp", ["x", "axes"], ["lse"]),
         helper.make_node("Sum", ["l1", "l2", "sq", "ls", "lse"], ["y"])],
        [("x", [2, 3, 4])], 3, [_ints("axes", [1])]),
    "selu_thresholded_relu_trilu": _model(
        [helper.make_node("Selu", ["x"], ["s"], alpha=1.5, gamma=1.1),
         helper.make_node("ThresholdedRelu", ["s"], ["t"], alpha=0.3),
         helper.make_node("Trilu", ["t", "k"], ["y"], upper=0)],
        [("x", [2, 5, 6])], 3, [_ints("k", 1)]),
    "cumsum_reverse_exclusive_topk": _model(
        [helper.make_node("CumSum", ["x", "axis"], ["c"], exclusive=1, reverse=1),
         helper.make_node("TopK", ["c", "k"], ["y", "i"], axis=1, largest=0)],
        [("x", [2, 6, 3])], 3, [_ints("axis", 1), _ints("k", [4])]),
    "pad_wrap": _model(
        [helper.make_node("Pad", ["x", "pads"], ["y"], mode="wrap")],
        [("x", [1, 2, 5, 6])], 4, [_ints("pads", [0, 0, 2, 1, 0, 0, 1, 3])], opset=19),
    "resize_nearest_non_integral_scale": _model(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
        [("x", [1, 2, 5, 7])], 4, [_floats("scales", [1, 1, 1.8, 1.4])]),
    "resize_nearest_exact": _model(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                          coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")],
        [("x", [1, 2, 5, 7])], 4, [_ints("sizes", [1, 2, 9, 3])]),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_matches_onnxruntime(case):
    model = OP_CASES[case]
    onnx.checker.check_model(model, full_check=True)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.standard_normal(shape).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"x": x})
    with torch.no_grad():
        result = to_torch(load_onnx(model))(torch.from_numpy(x))
    assert result.shape == reference.shape
    assert relative_error(reference, result.numpy()) <= TOLERANCE


# -- parameters, train mode and weights flowing back ---------------------------------------
class ConvBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2)
        return self.fc(self.drop(x.flatten(1)))


def _conv_block():
    torch.manual_seed(0)
    model = ConvBlock().eval()
    return model, load_module(model, torch.randn(2, 3, 8, 8), dynamic_batch=True)


def test_state_dict_keys_are_the_ir_constant_names():
    model, graph = _conv_block()
    module = to_torch(graph)
    assert not module.training, "the module starts computing what the graph computes"
    assert isinstance(module._layers.bn, TrainableBatchNorm) and isinstance(module._layers.drop, TrainableDropout)
    parameters = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    assert set(parameters) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias"}
    assert {"bn.running_mean", "bn.running_var"} <= set(buffers)
    assert all(p.requires_grad for p in parameters.values())
    for key, tensor in module.state_dict().items():
        assert np.array_equal(tensor.numpy(), graph.constants[module.constant_names[key]].const)
        assert key not in model.state_dict() or torch.equal(tensor, model.state_dict()[key])


def test_batchnorm_and_dropout_follow_train_mode():
    model, graph = _conv_block()
    module = to_torch(graph)
    x = torch.randn(4, 3, 8, 8)
    model.train()
    module.train()
    torch.manual_seed(1)
    expected = model(x)
    torch.manual_seed(1)
    result = module(x)
    assert torch.allclose(result, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(module.bn.running_mean, model.bn.running_mean, atol=1e-7)
    assert torch.allclose(module.bn.running_var, model.bn.running_var, atol=1e-7)
    assert not np.allclose(module.bn.running_mean.numpy(), graph.constants["bn.running_mean"].const)
    model.eval()
    module.eval()
    with torch.no_grad():
        assert relative_error(model(x).numpy(), module(x).numpy()) <= TOLERANCE


def test_update_constants_writes_back_and_checks_shapes():
    _, graph = _conv_block()
    module = to_torch(graph)
    with torch.no_grad():
        module.fc.weight.mul_(2.0)
    before = graph.constants["fc.weight"].const.copy()
    assert update_constants(graph, module) == len(module.state_dict())
    assert np.array_equal(graph.constants["fc.weight"].const, 2.0 * before)

    wrong = dict(module.state_dict())
    wrong["conv.bias"] = torch.zeros(6)
    wrong["fc.weight"] = torch.zeros(3, 5)
    with pytest.raises(IrtoolError, match=r"weight 'fc.weight' has shape \(3, 5\), constant 'fc.weight' has \(3, 96\)"):
        update_constants(graph, wrong)
    assert graph.constants["conv.bias"].const.any(), "a rejected update changes nothing"
    with pytest.raises(IrtoolError, match="weight 'extra.weight' matches no constant"):
        update_constants(graph, {"extra.weight": torch.zeros(1)})


def test_names_that_are_not_attribute_paths_map_back_one_to_one():
    graph = Graph("names")
    x = graph.add_input("x", TensorType(DType.float32, (2, 3)))
    names = ["onnx::Add_12", "a.b", "a.b.c", "7.weight", "training", "onnx/Add_12"]
    total = x
    for i, name in enumerate(names):
        constant = graph.add_constant(name, np.full((2, 3), float(i + 1), np.float32))
        total = graph.add_node("Add", [total, constant]).outputs[0]
    graph.outputs.append(total)
    paths = constant_paths(graph)
    assert paths["7.weight"] == "7.weight"
    assert paths["a.b"] == "a.b" and paths["a.b.c"].startswith("_constants.")
    assert paths["training"] == "_constants.c_training"
    assert len(set(paths.values())) == len(names)
    module = to_torch(graph)
    assert set(module.state_dict()) == set(paths.values())
    x_value = torch.ones(2, 3)
    assert torch.equal(module(x_value), torch.full((2, 3), 1.0 + sum(range(1, 7))))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    update_constants(graph, module.state_dict())
    assert all(not graph.constants[n].const.any() for n in names)


def test_opaque_op_is_an_error_naming_it():
    graph = Graph("opaque")
    x = graph.add_input("x", TensorType(DType.float32, (2,)))
    node = graph.add_node("Mystery", [x], domain="vendor", source="block.mystery")
    graph.outputs.append(node.outputs[0])
    with pytest.raises(IrtoolError, match=r"block.mystery.*op vendor::Mystery has no torch equivalent"):
        to_torch(graph)
