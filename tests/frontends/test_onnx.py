"""ONNX frontend: source names, opset-18 forms, types, external data and bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from irtool.backends.onnx import run_onnxruntime, to_onnx
from irtool.frontends.onnx import load_onnx, source_name
from irtool.ir.errors import IrtoolError
from irtool.ir.types import DType, TensorType
from irtool.ir.verify import verify
from tests.zoo import ZOO, export_onnx


def tiny_model(nodes, inputs, outputs, initializers=(), *, opset=17, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, list(initializers))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=imports, ir_version=8)


def float_input_3(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [3])


def relu_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(2048, dtype=np.float32).reshape(2, 1024), "w")
    return tiny_model(
        [
            helper.make_node("Add", ["x", "w"], ["s"], name="add"),
            helper.make_node("Relu", ["s"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1024])],
        [weight],
    )


# -- source names ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "node_name, op, expected",
    [
        ("/layer1/layer1.0/conv1/Conv", "Conv", "layer1.0.conv1"),
        ("/layer1/layer1.0/relu/Relu_1", "Relu", "layer1.0.relu"),
        ("/features/features.1/conv/conv.0/conv.0.0/Conv", "Conv", "features.1.conv.0.0"),
        ("/features/denseblock1/denselayer1/norm1/BatchNormalization", "BatchNormalization",
         "features.denseblock1.denselayer1.norm1"),
        ("/ups.0/up/Resize", "Resize", "ups.0.up"),
        ("/downs.3/downs.3.1/downs.3.1.5/Relu", "Relu", "downs.3.1.5"),
        ("/features/features.4/features.4.2/block/block.2/scale_activation/Sigmoid", "Sigmoid",
         "features.4.2.block.2.scale_activation"),
        ("/Flatten", "Flatten", "/Flatten"),  # called in the root module: no layer
        ("Identity_3", "Identity", "Identity_3"),
        ("conv1", "Conv", "conv1"),
        ("/a/b/NotTheOp", "Conv", "/a/b/NotTheOp"),
    ],
)  # fmt: skip
def test_source_name_rebuilds_module_path(node_name, op, expected):
    assert source_name(node_name, op) == expected


def test_source_name_of_a_module_called_twice():
    scopes = {"layer1/layer1.0/relu", "layer1/layer1.0/relu_1", "head/fc_1"}
    assert source_name("/layer1/layer1.0/relu_1/Relu", "Relu", scopes) == "layer1.0.relu"
    assert source_name("/layer1/layer1.0/relu_1/Relu", "Relu") == "layer1.0.relu_1"
    assert source_name("/head/fc_1/Gemm", "Gemm", scopes) == "head.fc_1"  # no scope 'head/fc'


# Models whose module trees exercise every naming pattern (containers, attributes, lists).
SOURCE_MODELS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x1_0", "unet", "vit_tiny",
                 "lstm_classifier", "inception"]


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    cache: dict[str, object] = {}

    def get(name):
        if name not in cache:
            cache[name] = export_onnx(name, folder / f"{name}.onnx")
        return cache[name]

    return get


@pytest.mark.parametrize("name", SOURCE_MODELS)
def test_zoo_sources_are_module_names(name, zoo_files):
    """Every node of a PyTorch export called inside a module is named after that module."""
    graph = load_onnx(zoo_files(name))
    verify(graph)
    modules = {n for n, _ in ZOO[name].build().named_modules()}
    scoped = [n for n in graph.nodes if n.name.startswith("/") and n.name.count("/") >= 2]
    assert len(scoped) > 0.5 * len(graph)
    wrong = [(n.name, n.source) for n in scoped if n.source not in modules]
    assert wrong == []
    layers = [n for n in graph.nodes if n.op in ("Conv", "Gemm", "LSTM")]
    assert layers and all(n.source in modules and n.source for n in layers)


def test_resnet_node_names_and_sources(zoo_files):
    graph = load_onnx(zoo_files("resnet18"))
    conv = graph.find_nodes(source="layer1.0.conv1")
    assert [n.op for n in conv] == ["Conv"]
    assert conv[0].name == "/layer1/layer1.0/conv1/Conv"
    assert len({n.name for n in graph.nodes}) == len(graph)


# -- lowering ----------------------------------------------------------------------------------
def test_initializers_and_constant_nodes_become_constants(zoo_files):
    path = zoo_files("mobilenet_v2")
    model = onnx.load(path)
    graph = load_onnx(path)
    constant_nodes = [n for n in model.graph.node if n.op_type == "Constant"]
    assert constant_nodes, "the export has Constant nodes (Clip bounds)"
    assert not graph.find_nodes(op="Constant")
    assert len(graph.constants) == len(model.graph.initializer) + len(constant_nodes)
    assert len(graph) == len(model.graph.node) - len(constant_nodes)
    for tensor in model.graph.initializer:
        const = graph.constants[tensor.name].const
        assert np.array_equal(const, numpy_helper.to_array(tensor))
        assert not const.flags.writeable
    clip = graph.find_nodes(op="Clip")[0]
    assert clip.inputs[1].const.dtype == np.float32 and float(clip.inputs[2].const) == 6.0


def test_types_and_symbolic_dims(tmp_path):
    path = export_onnx("resnet18", tmp_path / "r.onnx", input_shape=(2, 3, 32, 32), dynamic_batch=True)
    graph = load_onnx(path)
    assert graph.inputs[0].type == TensorType(DType.float32, ("batch", 3, 32, 32))
    assert graph.outputs[0].type == TensorType(DType.float32, ("batch", 1000))
    conv = graph.find_nodes(source="conv1")[0]
    assert conv.outputs[0].type == TensorType(DType.float32, ("batch", 64, 16, 16))
    untyped = [v.name for n in graph.nodes for v in n.outputs if v.type is None]
    assert untyped == []
    assert graph.opset == 17 and graph.meta["producer_name"] == "pytorch"


def test_model_proto_input_and_attributes():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1], strides=[1, 1], group=1)
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    model = tiny_model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [weight],
    )
    graph = load_onnx(model)
    (conv,) = graph.nodes
    assert conv.attrs == {"pads": [1, 1, 1, 1], "strides": [1, 1], "group": 1}
    assert conv.source == "c" and conv.inputs[1].const.shape == (4, 3, 3, 3)
    assert conv.outputs[0].type == TensorType(DType.float32, (1, 4, 8, 8))


def test_opset13_reduce_and_split_take_opset18_form():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 4])
    model = tiny_model(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[2], keepdims=1),
            helper.make_node("Split", ["m"], ["a", "b"], name="split", axis=1),
            helper.make_node("ReduceSum", ["a", "axes"], ["s"], name="sum", keepdims=0),
        ],
        [x],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 1]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3, 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
        opset=13,
    )
    graph = load_onnx(model)
    verify(graph)  # the registry's opset-18 schemas accept the converted nodes
    mean = graph.find_nodes(op="ReduceMean")[0]
    assert "axes" not in mean.attrs and mean.attrs["keepdims"] == 1
    assert mean.inputs[1].const.tolist() == [2] and mean.inputs[1].const.dtype == np.int64
    split = graph.find_nodes(op="Split")[0]
    assert split.attrs == {"axis": 1, "num_outputs": 2} and len(split.inputs) == 1
    reduce_sum = graph.find_nodes(op="ReduceSum")[0]
    assert reduce_sum.inputs[1].name == "axes" and "axes" not in reduce_sum.attrs

    data = np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32)
    expected = run_onnxruntime(model, [data], threads=1)
    for opset in (13, 17, 18):
        emitted = to_onnx(graph, opset=opset)
        onnx.checker.check_model(emitted, full_check=True)
        got = run_onnxruntime(emitted, [data], threads=1)
        assert all(np.array_equal(e, g) for e, g in zip(expected, got))
    back = {n.op_type: n for n in to_onnx(graph).graph.node}
    mean_attrs = {a.name: helper.get_attribute_value(a) for a in back["ReduceMean"].attribute}
    assert mean_attrs == {"axes": [2], "keepdims": 1} and list(back["ReduceMean"].input) == ["x"]
    assert [a.name for a in back["Split"].attribute] == ["axis"]


def test_omitted_optional_outputs_round_trip():
    hidden, size = 3, 2
    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("W", (1, 4 * hidden, size)), ("R", (1, 4 * hidden, hidden)))
    ]
    model = tiny_model(
        [helper.make_node("LSTM", ["x", "W", "R"], ["", "h"], name="lstm", hidden_size=hidden)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, size])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, hidden])],
        weights,
    )
    graph = load_onnx(model)
    (lstm,) = graph.nodes
    assert len(lstm.outputs) == 2 and lstm.outputs[1].name == "h"
    emitted = to_onnx(graph)
    assert list(emitted.graph.node[0].output) == ["", "h"]
    data = rng.standard_normal((5, 1, size)).astype(np.float32)
    assert np.array_equal(run_onnxruntime(model, [data])[0], run_onnxruntime(emitted, [data])[0])


def test_node_names_equal_to_value_names_are_kept():
    # Node names equal to their output names are common outside PyTorch; nodes and values
    # have separate namespaces, as in ONNX.
    model = tiny_model(
        [helper.make_node("Relu", ["x"], ["r"], name="r"), helper.make_node("Neg", ["r"], ["y"], name="")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    graph = load_onnx(model)
    relu, neg = graph.nodes
    assert relu.outputs[0].name == "r" and relu.name == "r" and relu.source == "r"
    assert neg.name and neg.name != "r"
    assert [v.name for v in graph.outputs] == ["y"]


# -- external data -----------------------------------------------------------------------------
def test_external_data_loads(tmp_path):
    model = relu_model()
    onnx.save_model(
        model, tmp_path / "m.onnx", save_as_external_data=True, location="m.weights", size_threshold=0
    )
    assert (tmp_path / "m.weights").stat().st_size >= 2048 * 4
    graph = load_onnx(tmp_path / "m.onnx")
    assert np.array_equal(graph.constants["w"].const, np.arange(2048, dtype=np.float32).reshape(2, 1024))
    data = np.random.default_rng(0).standard_normal((2, 1024)).astype(np.float32)
    assert np.array_equal(run_onnxruntime(graph, [data])[0], np.maximum(data + graph.constants["w"].const, 0))

    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "m.onnx").rename(moved / "m.onnx")
    with pytest.raises(IrtoolError, match="external data file 'm.weights' does not exist"):
        load_onnx(moved / "m.onnx")
    assert load_onnx(moved / "m.onnx", base_dir=tmp_path).constants["w"].const.shape == (2, 1024)


def _with_location(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(2048 * 4))):
        tensor.external_data.add(key=key, value=value)
    return model


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/passwd"])
def test_external_data_may_not_escape_the_model_folder(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 2048 * 4)
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(_with_location(relu_model(), location), path)
    with pytest.raises(IrtoolError) as error:
        load_onnx(path)
    message = str(error.value)
    assert str(path) in message and "tensor 'w'" in message and location in message
    assert "inside the model's folder" in message and "\n" not in message


def test_external_data_through_a_symlink_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 2048 * 4)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").symlink_to(tmp_path / "secret.bin")
    onnx.save_model(_with_location(relu_model(), "w.bin"), folder / "m.onnx")
    with pytest.raises(IrtoolError, match="leads outside the model's folder"):
        load_onnx(folder / "m.onnx")


def test_model_proto_with_external_data_needs_base_dir(tmp_path):
    model = _with_location(relu_model(), "w.bin")
    with pytest.raises(IrtoolError, match="pass base_dir"):
        load_onnx(model)
    (tmp_path / "w.bin").write_bytes(np.full(2048, 2.0, np.float32).tobytes())
    assert float(load_onnx(model, base_dir=tmp_path).constants["w"].const.sum()) == 4096.0


# -- bad input ---------------------------------------------------------------------------------
def _one_line_error(path) -> str:
    with pytest.raises(IrtoolError) as error:
        load_onnx(path)
    message = str(error.value)
    assert message.startswith(str(path) + ": ") and "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert _one_line_error(tmp_path / "nope.onnx").endswith("file does not exist")


def test_folder(tmp_path):
    assert "is a folder" in _one_line_error(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    assert "empty" in _one_line_error(tmp_path / "e.onnx")


def test_text_file_is_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n" * 20)
    assert "not an ONNX model" in _one_line_error(path)


def test_truncated_file(tmp_path, zoo_files):
    data = zoo_files("squeezenet1_1").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt ONNX file" in _one_line_error(path)


def test_truncated_inside_the_small_header(tmp_path):
    data = relu_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:9])
    assert "truncated or corrupt" in _one_line_error(path)


def test_checker_failure(tmp_path):
    model = tiny_model(
        [helper.make_node("Relu", ["missing"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    message = _one_line_error(path)
    assert "fails the ONNX checker" in message and "missing" in message


def test_raw_data_of_the_wrong_size(tmp_path):
    model = relu_model()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    path = tmp_path / "short.onnx"
    path.write_bytes(model.SerializeToString())
    message = _one_line_error(path)
    assert "tensor 'w' has 8188 bytes of raw data, its shape [2, 1024] needs 8192" in message


def test_old_opset_is_refused(tmp_path):
    model = tiny_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        opset=11,
    )
    path = tmp_path / "old.onnx"
    onnx.save_model(model, path)
    assert _one_line_error(path).endswith("opset 11 is older than 13; upgrade it with onnx.version_converter")


def test_import_matches_torch(zoo_files):
    """The imported graph computes what the PyTorch model computes."""
    zoo = ZOO["resnet18"]
    graph = load_onnx(zoo_files("resnet18"))
    x = zoo.example_input()
    with torch.no_grad():
        expected = zoo.build()(x).numpy()
    (got,) = run_onnxruntime(graph, [x.numpy()], threads=1)
    assert float(np.max(np.abs(got - expected))) < 1e-4 * float(np.max(np.abs(expected)))


def test_subgraphs_and_sparse_initializers_round_trip():
    """If branches stay serialized graphs that may use outer values; sparse tensors densify."""
    w = numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "w")
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "s"),
        numpy_helper.from_array(np.array([0, 2], np.int64), "s_indices"),
        [3],
    )

    def branch(op):
        out = helper.make_tensor_value_info(f"{op}_out", TensorProto.FLOAT, [3])
        return helper.make_graph([helper.make_node(op, ["x", "w"], [f"{op}_out"])], op, [], [out])

    model = tiny_model(
        [
            helper.make_node(
                "If", ["cond"], ["picked"], name="if", then_branch=branch("Add"), else_branch=branch("Sub")
            ),
            helper.make_node("Mul", ["picked", "s"], ["y"], name="mul"),
        ],
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), float_input_3("x")],
        [float_input_3("y")],
        [w],
    )
    model.graph.sparse_initializer.append(sparse)
    graph = load_onnx(model)
    assert graph.constants["s"].const.tolist() == [5.0, 0.0, 7.0]
    branch_graph = onnx.GraphProto.FromString(graph.find_nodes(op="If")[0].attrs["then_branch"])
    assert branch_graph.node[0].input == ["x", "w"]
    emitted = to_onnx(graph)
    onnx.checker.check_model(emitted, full_check=True)
    x = np.array([1.0, 1.0, 1.0], np.float32)
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "x": x}
        assert np.array_equal(run_onnxruntime(model, feeds)[0], run_onnxruntime(emitted, feeds)[0])
    assert run_onnxruntime(emitted, {"cond": np.array(True), "x": x})[0].tolist() == [10.0, 0.0, 28.0]


def test_initializers_listed_as_inputs_become_constants():
    model = tiny_model(
        [helper.make_node("Mul", ["x", "k"], ["y"], name="mul")],
        [float_input_3("x"), float_input_3("k")],
        [float_input_3("y")],
        [numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "k")],
    )
    graph = load_onnx(model)
    assert [v.name for v in graph.inputs] == ["x"] and graph.constants["k"].const.tolist() == [1.0, 2.0, 3.0]
    emitted = to_onnx(graph)
    assert [v.name for v in emitted.graph.input] == ["x"]
    (y,) = run_onnxruntime(emitted, [np.ones(3, np.float32)])
    assert y.tolist() == [1.0, 2.0, 3.0]
