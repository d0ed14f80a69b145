"""ONNX backend: zoo round trips, opaque ops, older opsets, external data, onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import irtool.backends.onnx as onnx_backend
from irtool.backends.onnx import make_session, onnx_bytes, run_onnxruntime, save_onnx, to_onnx
from irtool.frontends.onnx import load_onnx
from irtool.ir.core import Graph
from irtool.ir.errors import IrtoolError
from irtool.ir.types import DType, TensorType
from tests.zoo import ZOO, export_onnx


def tiny_model(nodes, inputs, outputs, initializers=(), *, opset=17, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, list(initializers))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=imports, ir_version=8)


def float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def same_outputs(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


# -- the zoo -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_round_trip_is_bit_identical(name, tmp_path):
    """torch -> ONNX file -> IR -> ONNX computes exactly what the exported file computes."""
    zoo = ZOO[name]
    path = export_onnx(name, tmp_path / f"{name}.onnx")
    graph = load_onnx(path)
    emitted = onnx_bytes(graph)  # to_onnx(graph) serialized: see the check below
    if len(emitted) < 50_000_000:  # spare the memory for VGG's 500 MB
        assert emitted == to_onnx(graph).SerializeToString()
    onnx.checker.check_model(emitted, full_check=True)

    x = zoo.example_input().numpy()
    expected = run_onnxruntime(path, [x], threads=1)
    got = run_onnxruntime(emitted, [x], threads=1)
    assert same_outputs(expected, got)
    assert got[0].shape == zoo.output_shape

    original = onnx.load(path, load_external_data=False)
    model = onnx.load_from_string(emitted)
    kept = [n.name for n in original.graph.node if n.op_type != "Constant"]
    assert [n.name for n in model.graph.node] == kept
    assert {t.name for t in model.graph.initializer} >= {t.name for t in original.graph.initializer}


def test_dynamic_batch_round_trip(tmp_path):
    path = export_onnx("mobilenet_v3_small", tmp_path / "m.onnx", dynamic_batch=True)
    emitted = to_onnx(load_onnx(path))
    dims = emitted.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    assert same_outputs(run_onnxruntime(path, [x], threads=1), run_onnxruntime(emitted, [x], threads=1))


# -- opaque ops --------------------------------------------------------------------------------
def opaque_model() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["b"])], "body", [float_input("a", [2])], [float_input("b", [2])]
    )
    attributes = dict(
        count=3,
        scale=0.1,
        mode="nearest",
        sizes=[1, 2, 3],
        weights=[0.5, 0.25],
        labels=["cat", "dog"],
        table=numpy_helper.from_array(np.arange(6, dtype=np.int32).reshape(2, 3), ""),
        body=body,
    )
    custom = helper.make_node("Mystery", ["x"], ["c"], name="custom", domain="com.example", **attributes)
    custom.attribute.append(helper.make_attribute("nothing", [], attr_type=onnx.AttributeProto.FLOATS))
    unknown = helper.make_node("NotAnOnnxOp", ["c"], ["y"], name="unknown", alpha=2.0, tags=["x"])
    unknown.attribute.append(helper.make_attribute("empty_ids", [], attr_type=onnx.AttributeProto.INTS))
    inputs, outputs = [float_input("x", [2])], [float_input("y", [2])]
    return tiny_model([custom, unknown], inputs, outputs, domains=["com.example"])


def test_opaque_ops_round_trip_with_identical_attributes():
    model = opaque_model()
    graph = load_onnx(model)
    custom, unknown = graph.nodes
    assert (custom.domain, custom.op) == ("com.example", "Mystery")
    assert (unknown.domain, unknown.op) == ("", "NotAnOnnxOp")
    assert custom.attrs["sizes"] == [1, 2, 3] and custom.attrs["mode"] == "nearest"
    assert isinstance(custom.attrs["body"], bytes) and custom.attrs["table"].dtype == np.int32
    emitted = to_onnx(graph)
    assert graph.opset_imports == {"com.example": 1}
    assert {(o.domain, o.version) for o in emitted.opset_import} == {("", 17), ("com.example", 1)}
    for before, after in zip(model.graph.node, emitted.graph.node):
        assert (after.op_type, after.domain, after.name) == (before.op_type, before.domain, before.name)
        assert list(after.attribute) == list(before.attribute)
    # The emitted file loads again and stays the same.
    assert to_onnx(load_onnx(emitted)).graph.node == emitted.graph.node


# -- graphs built with the IR API --------------------------------------------------------------
def test_graph_built_in_the_ir_runs():
    graph = Graph("built")
    x = graph.add_input("x", TensorType(DType.float32, ("n", 4)))
    bias = graph.add_constant("bias", np.array([1, -2, 3, -4], dtype=np.float32))
    typed = [TensorType(DType.float32, ("n", 4))]
    total = graph.add_node("Add", [x, bias], outputs=["total"], output_types=typed)
    relu = graph.add_node("Relu", [total.outputs[0]], outputs=["y"])
    graph.outputs.append(relu.outputs[0])
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 18 and model.graph.value_info[0].name == "total"
    data = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    (y,) = run_onnxruntime(graph, {"x": data})
    assert np.array_equal(y, np.maximum(data + bias.const, 0))


def test_constant_graph_output_becomes_a_constant_node():
    graph = Graph("consts")
    x = graph.add_input("x", TensorType(DType.float32, (2,)))
    negated = graph.add_node("Neg", [x], outputs=["y"]).outputs[0]
    graph.outputs += [negated, graph.add_constant("k", np.ones(2, np.int64))]
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Constant", "Neg"] and not model.graph.initializer
    y, k = run_onnxruntime(model, [np.array([1.0, -2.0], np.float32)])
    assert y.tolist() == [-1.0, 2.0] and k.tolist() == [1, 1]


# -- older opsets ------------------------------------------------------------------------------
def test_emit_older_opset_converts_opset18_forms():
    graph = Graph("forms", opset=18)
    x = graph.add_input("x", TensorType(DType.float32, (2, 5, 4)))
    axes = graph.add_constant("axes", np.array([2], np.int64))
    mean = graph.add_node("ReduceMean", [x, axes], {"keepdims": 1}, outputs=["m"])
    split = graph.add_node("Split", [x], {"axis": 1, "num_outputs": 2}, outputs=["a", "b"])
    pads = graph.add_constant("pads", np.array([1, 2], np.int64))
    pad_axes = graph.add_constant("pad_axes", np.array([-1], np.int64))
    pad = graph.add_node("Pad", [x, pads, None, pad_axes], outputs=["p"])
    resize_scales = graph.add_constant("scales", np.array([1, 1, 2], np.float32))
    resize_attrs = {"antialias": 0, "mode": "nearest"}
    resize = graph.add_node("Resize", [x, None, resize_scales], resize_attrs, outputs=["r"])
    graph.outputs += [mean.outputs[0], *split.outputs, pad.outputs[0], resize.outputs[0]]

    data = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    expected = run_onnxruntime(graph, [data])
    assert expected[1].shape == (2, 3, 4) and expected[2].shape == (2, 2, 4)  # opset 18: last chunk smaller
    assert expected[3].shape == (2, 5, 7)
    for opset in (13, 17):
        model = to_onnx(graph, opset=opset)
        onnx.checker.check_model(model, full_check=True)
        assert same_outputs(expected, run_onnxruntime(model, [data]))
        nodes = {n.op_type: n for n in model.graph.node}
        mean_attrs = {a.name: helper.get_attribute_value(a) for a in nodes["ReduceMean"].attribute}
        assert mean_attrs == {"keepdims": 1, "axes": [2]}
        initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        assert initializers[nodes["Split"].input[1]].tolist() == [3, 2]
        assert initializers[nodes["Pad"].input[1]].tolist() == [0, 0, 1, 0, 0, 2]
        assert [a.name for a in nodes["Resize"].attribute] == ["mode"]
    assert len(graph.constants) == 4  # emitting added nothing to the graph


def test_emit_older_opset_refuses_what_it_cannot_express():
    graph = Graph("bad", opset=18)
    x = graph.add_input("x", TensorType(DType.float32, (2, 3)))
    axes = graph.add_input("axes", TensorType(DType.int64, (1,)))
    graph.outputs.append(graph.add_node("ReduceMax", [x, axes], name="rmax", outputs=["y"]).outputs[0])
    message = r"node 'rmax' \(ReduceMax\): its axes input is not a constant; cannot emit opset 17"
    with pytest.raises(IrtoolError, match=message):
        to_onnx(graph, opset=17)
    assert to_onnx(graph).opset_import[0].version == 18
    with pytest.raises(IrtoolError, match="cannot emit opset 12"):
        to_onnx(graph, opset=12)


# -- files -------------------------------------------------------------------------------------
def relu_graph() -> Graph:
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(4, 1024) / 100, "w")
    small = numpy_helper.from_array(np.array([0.5], np.float32), "half")
    model = tiny_model(
        [
            helper.make_node("Add", ["x", "w"], ["s"], name="add"),
            helper.make_node("Mul", ["s", "half"], ["y"], name="mul"),
        ],
        [float_input("x", [4, 1024])],
        [float_input("y", [4, 1024])],
        [weight, small],
    )
    return load_onnx(model)


def test_save_and_load_without_external_data(tmp_path):
    graph = relu_graph()
    path = save_onnx(graph, tmp_path / "m.onnx")
    assert path.read_bytes() == onnx_bytes(graph) and not (tmp_path / "m.onnx.data").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary files left behind


def test_external_data_round_trip(tmp_path):
    graph = relu_graph()
    path = save_onnx(graph, tmp_path / "m.onnx", external_data=True)
    data_file = tmp_path / "m.onnx.data"
    assert data_file.stat().st_size == 4096 * 4 and path.stat().st_size < 4096
    onnx.checker.check_model(str(path), full_check=True)
    x = np.random.default_rng(0).standard_normal((4, 1024)).astype(np.float32)
    expected = run_onnxruntime(graph, [x])
    assert same_outputs(expected, run_onnxruntime(path, [x]))
    again = load_onnx(path)
    assert np.array_equal(again.constants["w"].const, graph.constants["w"].const)
    assert same_outputs(expected, run_onnxruntime(again, [x]))
    # Saving again replaces the data file instead of appending to it.
    save_onnx(again, tmp_path / "m.onnx", external_data=True)
    assert data_file.stat().st_size == 4096 * 4
    assert same_outputs(expected, run_onnxruntime(load_onnx(path), [x]))


def test_big_models_go_out_with_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_backend, "EXTERNAL_DATA_THRESHOLD", 10_000)
    graph = relu_graph()
    save_onnx(graph, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size == 4096 * 4
    with pytest.raises(IrtoolError, match="save it with external data"):
        onnx_bytes(graph)
    x = np.ones((4, 1024), np.float32)
    assert same_outputs(run_onnxruntime(graph, [x]), run_onnxruntime(tmp_path / "big.onnx", [x]))


def test_save_into_a_missing_folder(tmp_path):
    with pytest.raises(IrtoolError, match="does not exist"):
        save_onnx(relu_graph(), tmp_path / "no" / "m.onnx")


# -- onnxruntime -------------------------------------------------------------------------------
def test_run_onnxruntime_inputs_and_errors():
    graph = relu_graph()
    x = np.zeros((4, 1024), np.float32)
    (by_position,) = run_onnxruntime(graph, [x])
    (by_name,) = run_onnxruntime(graph, {"x": x}, threads=1)
    assert np.array_equal(by_position, by_name) and float(by_name[3, 1023]) == pytest.approx(40.95 / 2)
    with pytest.raises(IrtoolError, match=r"model takes 1 inputs \['x'\], got 2"):
        run_onnxruntime(graph, [x, x])
    with pytest.raises(IrtoolError, match=r"missing \['x'\], unknown \['z'\]"):
        run_onnxruntime(graph, {"z": x})
    with pytest.raises(IrtoolError, match="onnxruntime failed to run the model"):
        run_onnxruntime(graph, [np.zeros((3, 1024), np.float32)])


def test_make_session_options():
    session = make_session(relu_graph(), threads=1, optimization="basic")
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    with pytest.raises(IrtoolError, match="optimization 'fast' is not one of all, extended, basic, disable"):
        make_session(relu_graph(), optimization="fast")
    with pytest.raises(IrtoolError, match="onnxruntime cannot load the model"):
        make_session(opaque_model())
