"""Type propagation over whole graphs: ``infer_shapes`` against onnxruntime and published MACs.

Every zoo model is exported with a symbolic batch; after erasing every node output's type,
``infer_shapes`` must give each value the shape onnxruntime produces, with the batch kept
symbolic, and summing the cost rules must give the MACs the zoo counts with torch hooks.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from irtool.ir import DType, Graph, IrtoolError, TensorType
from irtool.ir.registry import opdef_of
from irtool.ir.shapes import infer_shapes

zoo = pytest.importorskip("tests.zoo")
F32 = DType.float32


# -- an ONNX model as IR, independent of the ONNX frontend --------------------------------
def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [_attr(v) for v in value]
    return value


def _type(info) -> TensorType:
    t = info.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in t.shape.dim)
    return TensorType(DType.from_onnx(t.elem_type), dims)


def _opset18_form(graph: Graph, op: str, inputs: list, attrs: dict, outputs: int) -> tuple[list, dict]:
    """Torch exports opset 17: reductions carry ``axes`` as an attribute, Split its count implicitly."""
    if op.startswith("Reduce") and "axes" in attrs:
        inputs = [inputs[0], graph.add_constant(graph.fresh_name("axes"), np.array(attrs.pop("axes")))]
    if op == "Split" and len(inputs) == 1:
        attrs["num_outputs"] = outputs
    return inputs, attrs


def graph_from_onnx(model: onnx.ModelProto) -> Graph:
    """The model's nodes one to one (Constant nodes included), in opset-18 form, untyped."""
    assert model.opset_import[0].version in (17, 18)
    graph = Graph()
    values = {t.name: graph.add_constant(t.name, numpy_helper.to_array(t)) for t in model.graph.initializer}
    for info in model.graph.input:
        if info.name not in values:
            values[info.name] = graph.add_input(info.name, _type(info))
    for node in model.graph.node:
        attrs = {a.name: _attr(helper.get_attribute_value(a)) for a in node.attribute}
        outputs = [o or f"{node.name}_unused_{i}" for i, o in enumerate(node.output)]
        inputs = [values[i] if i else None for i in node.input]
        inputs, attrs = _opset18_form(graph, node.op_type, inputs, attrs, len(outputs))
        created = graph.add_node(node.op_type, inputs, attrs, outputs=outputs, name=node.name or node.op_type, source=node.name)
        values.update(zip(node.output, created.outputs))
    graph.outputs = [values[o.name] for o in model.graph.output]
    return graph


def _runtime_shapes(model: onnx.ModelProto, x: np.ndarray) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Every node output's dtype and shape when onnxruntime runs the model on ``x``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    listed = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in listed:
                model.graph.output.append(helper.make_empty_tensor_value_info(name))
                listed.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    arrays = session.run(None, {session.get_inputs()[0].name: x})
    return {o.name: (a.dtype, a.shape) for o, a in zip(session.get_outputs(), arrays)}


def _total_macs(graph: Graph) -> int:
    total = 0
    for node in graph.nodes:
        opdef = opdef_of(node)
        if opdef is not None and opdef.cost is not None:
            macs = opdef.cost(node)
            assert macs is not None, f"MACs of {node.op} '{node.name}' unknown"
            total += macs
    return total


# -- the zoo ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_shapes_match_onnxruntime_and_macs_match_torch(name):
    from tests.zoo.macs import count_macs

    entry = zoo.ZOO[name]
    model = onnx.load_from_string(zoo.onnx_bytes(name, dynamic_batch=True))
    graph = graph_from_onnx(model)
    for node in graph.nodes:
        for value in node.outputs:
            value.type = None
    infer_shapes(graph)

    batch = 2
    x = np.random.default_rng(0).standard_normal((batch, *entry.input_shape[1:])).astype(np.float32)
    runtime = _runtime_shapes(model, x)
    checked = 0
    for node in graph.nodes:
        for value in node.outputs:
            if value.name not in runtime:
                continue
            dtype, shape = runtime[value.name]
            t = value.type
            assert t is not None and t.shape is not None, f"{node.op} '{node.name}' left untyped"
            assert t.dtype == DType.from_numpy(dtype), value.name
            # a symbolic dim must be the batch, which onnxruntime ran as 2
            ours = tuple(batch if d == "batch" else d for d in t.shape)
            assert ours == shape, (node.op, value.name, t.shape, shape)
            checked += 1
    assert checked == len(runtime)

    macs, reference = _total_macs(graph), count_macs(entry.build(), entry.input_shape)
    # VGG at 64x64 pools adaptively with two small constant MatMuls the hooks do not count.
    assert macs == pytest.approx(reference, rel=1e-3)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_published_macs_at_224(name):
    entry = zoo.ZOO[name]
    graph = graph_from_onnx(onnx.load_from_string(zoo.onnx_bytes(name, entry.full_input_shape)))
    infer_shapes(graph)
    assert _total_macs(graph) == pytest.approx(entry.published_macs, rel=0.01)
    assert entry.published_macs == {"resnet50": 4.09e9, "mobilenet_v2": 0.30e9}[name]


# -- the propagation itself -----------------------------------------------------------------
def _conv_graph(channels_in=3, channels_out=8):
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, ("N", channels_in, 16, 16)))
    w1 = graph.add_constant("w1", np.ones((channels_out, channels_in, 3, 3), np.float32))
    conv1 = graph.add_node("Conv", [x, w1], {"pads": [1, 1, 1, 1], "strides": [2, 2]}, name="conv1", source="layer1.0.conv1")
    relu = graph.add_node("Relu", conv1.outputs, name="relu")
    w2 = graph.add_constant("w2", np.ones((4, channels_out, 1, 1), np.float32))
    conv2 = graph.add_node("Conv", [relu.outputs[0], w2], name="conv2", source="layer1.0.conv2")
    graph.outputs = list(conv2.outputs)
    return graph, (conv1, relu, conv2)


def test_types_flow_through_a_graph_in_node_order():
    graph, (conv1, relu, conv2) = _conv_graph()
    assert infer_shapes(graph) == 3
    assert [str(n.outputs[0].type) for n in (conv1, relu, conv2)] == [
        "tensor<Nx8x8x8xfloat32>",
        "tensor<Nx8x8x8xfloat32>",
        "tensor<Nx4x8x8xfloat32>",
    ]
    assert infer_shapes(graph) == 0


def test_a_pruned_producer_with_an_unpruned_consumer_is_named():
    graph, (conv1, _, conv2) = _conv_graph()
    graph.constants["w1"].const = np.ones((6, 3, 3, 3), np.float32)  # 2 output channels pruned
    with pytest.raises(IrtoolError, match=r"^Conv 'layer1.0.conv2': input has 6 channels, weight expects 8 \(group=1\)$"):
        infer_shapes(graph)


def test_opaque_ops_and_untyped_inputs_keep_their_types():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (2, 3)))
    custom = graph.add_node("Frobnicate", [x], domain="com.example", output_types=[TensorType(F32, (7,))], name="f")
    relu = graph.add_node("Relu", custom.outputs, name="r")
    untyped = graph.add_input("u")
    kept = graph.add_node("Add", [x, untyped], output_types=[TensorType(F32, (2, 3))], name="a")
    infer_shapes(graph)
    assert custom.outputs[0].type == TensorType(F32, (7,))
    assert relu.outputs[0].type == TensorType(F32, (7,))
    assert kept.outputs[0].type == TensorType(F32, (2, 3))


def test_without_overwrite_only_missing_dims_are_filled():
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (2, 6)))
    target = graph.add_input("target", TensorType(DType.int64, (2,)))
    stale = graph.add_node("Relu", [x], output_types=[TensorType(F32, (2, 5))], name="stale")
    partial = graph.add_node("Reshape", [x, target], output_types=[TensorType(F32, (3, None))], name="partial")
    infer_shapes(graph, overwrite=False)
    assert stale.outputs[0].type.shape == (2, 5)
    assert partial.outputs[0].type.shape == (3, None)
    fresh = graph.add_node("Relu", [x], name="fresh")
    infer_shapes(graph, overwrite=False)
    assert fresh.outputs[0].type.shape == (2, 6)
    infer_shapes(graph)
    assert stale.outputs[0].type.shape == (2, 6)
    assert partial.outputs[0].type.shape == (None, None)  # the target shape is not known


def test_shape_arithmetic_is_followed_to_a_reshape_target():
    """``x.view(x.size(0), -1)`` and ``x.view(b, 2, c // 2, h, w)`` as exporters write them."""
    graph = Graph()
    x = graph.add_input("x", TensorType(F32, ("N", 8, 4, 4)))
    shape = graph.add_node("Shape", [x], name="shape").outputs[0]
    batch = graph.add_node("Gather", [shape, graph.add_constant("zero", np.array(0))], name="batch").outputs[0]
    channels = graph.add_node("Gather", [shape, graph.add_constant("one", np.array(1))], name="ch").outputs[0]
    half = graph.add_node("Div", [channels, graph.add_constant("two", np.array(2))], name="half").outputs[0]
    axes = graph.add_constant("axes", np.array([0]))
    parts = [graph.add_node("Unsqueeze", [v, axes], name=f"u{i}").outputs[0] for i, v in enumerate((batch, half))]
    rest = graph.add_node("Slice", [shape, *(graph.add_constant(k, np.array([v])) for k, v in (("s", 2), ("e", 4)))], name="hw")
    target = graph.add_node("Concat", [parts[0], graph.add_constant("g", np.array([2])), parts[1], rest.outputs[0]], {"axis": 0}, name="cat")
    shuffled = graph.add_node("Reshape", [x, target.outputs[0]], name="shuffle")
    flat_target = graph.add_node("Concat", [parts[0], graph.add_constant("m1", np.array([-1]))], {"axis": 0}, name="cat2")
    flat = graph.add_node("Reshape", [x, flat_target.outputs[0]], name="flat")
    infer_shapes(graph)
    assert shuffled.outputs[0].type.shape == ("N", 2, 4, 4, 4)
    assert flat.outputs[0].type.shape == ("N", 128)
    assert target.outputs[0].type.shape == (5,)


def test_the_onnx_frontend_graph_gets_every_dim_onnx_leaves_unknown():
    """onnx's own inference names ShuffleNet's shuffled dims ``unk__N``; the rules compute them."""
    frontend = pytest.importorskip("irtool.frontends.onnx")
    graph = frontend.load_onnx(onnx.load_from_string(zoo.onnx_bytes("shufflenet_v2_x1_0", dynamic_batch=True)))

    def unknown_dims():
        return sum(
            1
            for node in graph.nodes
            for value in node.outputs
            for d in ((None,) if value.type.shape is None else value.type.shape)
            if d is None or (isinstance(d, str) and d != "batch")
        )

    assert unknown_dims() > 200
    infer_shapes(graph)
    assert unknown_dims() == 0
    assert graph.outputs[0].type == TensorType(F32, ("batch", 1000))
