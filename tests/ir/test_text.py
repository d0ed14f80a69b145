"""The textual form: exact round trips, the text itself, parse errors, files and graph comparison."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from irtool.ir.core import Graph
from irtool.ir.errors import IrtoolError
from irtool.ir.text import (
    assert_graphs_equal,
    constant_data,
    graph_differences,
    graphs_equal,
    load_text,
    parse_graph,
    print_graph,
    save_text,
)
from irtool.ir.types import DType, TensorType

F32 = DType.float32


def t(*shape, dtype=F32) -> TensorType:
    return TensorType(dtype, tuple(shape))


def round_trip(graph: Graph) -> Graph:
    """Print, parse, compare structurally, and check the text is a fixed point."""
    text = print_graph(graph)
    parsed = parse_graph(text, constant_data(graph))
    assert_graphs_equal(graph, parsed)
    assert print_graph(parsed) == text
    return parsed


def conv_graph() -> Graph:
    g = Graph("main")
    x = g.add_input("input", t("N", 3, 64, 64))
    w = g.add_constant("conv1.weight", np.arange(64 * 3 * 7 * 7, dtype=np.float32).reshape(64, 3, 7, 7))
    shape = g.add_constant("shape_0", np.array([1, -1], dtype=np.int64))
    conv = g.add_node(
        "Conv",
        [x, w, None],
        {"dilations": [1, 1], "group": 1, "pads": [3, 3, 3, 3], "strides": [2, 2]},
        outputs=["conv_out"],
        output_types=[t("N", 64, 32, 32)],
        name="Conv_0",
        source="conv1",
    )
    relu = g.add_node("Relu", conv.outputs, outputs=["relu_out"], output_types=[t("N", 64, 32, 32)], name="Relu_1")
    flat = g.add_node("Reshape", [relu.outputs[0], shape], outputs=["output"], output_types=[t(1, 65536)], name="r")
    g.outputs = [flat.outputs[0]]
    return g


def test_prints_the_documented_form():
    expected = """\
graph @main(%input: tensor<Nx3x64x64xfloat32>) -> (%output) opset 18 {
  const %conv1.weight : tensor<64x3x7x7xfloat32>
  const %shape_0 = dense<[1, -1]> : tensor<2xint64>
  %conv_out = Conv(%input, %conv1.weight, <none>) {dilations = [1, 1], group = 1, pads = [3, 3, 3, 3], strides = [2, 2]} : tensor<Nx64x32x32xfloat32>  loc("conv1") name("Conv_0")
  %relu_out = Relu(%conv_out) : tensor<Nx64x32x32xfloat32>  name("Relu_1")
  %output = Reshape(%relu_out, %shape_0) : tensor<1x65536xfloat32>  name("r")
}
"""
    g = conv_graph()
    assert print_graph(g) == expected
    parsed = round_trip(g)
    assert parsed.value("output").producer.inputs[0].producer.name == "Relu_1"
    assert parsed.constants["conv1.weight"].const is g.constants["conv1.weight"].const
    assert list(constant_data(g)) == ["conv1.weight"]


def test_use_def_chains_of_parsed_graph():
    parsed = round_trip(conv_graph())
    conv_out = parsed.value("conv_out")
    relu = parsed.find_nodes(op="Relu")[0]
    assert conv_out.uses == ((relu, 0),)
    assert relu.outputs[0].producer is relu and relu.graph is parsed
    assert [v.name for v in parsed.values()] == ["input", "conv1.weight", "shape_0", "conv_out", "relu_out", "output"]


@pytest.mark.parametrize(
    "name",
    ["layer1.0/conv:0", "with space", 'quote"back\\slash', "0", "ünïcödé", "new\nline", "x" * 300, "const", "-"],
)
def test_odd_names_round_trip(name):
    g = Graph(name)
    x = g.add_input(name, t(2))
    c = g.add_constant(name + "#c", np.ones(20, np.float32))
    node = g.add_node("Add", [x, c], outputs=[name + "/out"], name=name + ":node", source=name + ".src", domain=name)
    g.add_node(name, node.outputs, outputs=[name + "/out2"], name=name + ":node2", domain="")
    g.outputs = [node.outputs[0], x]
    parsed = round_trip(g)
    assert parsed.nodes[0].domain == name and parsed.nodes[1].op == name


def test_simple_names_stay_bare_and_others_are_quoted():
    g = Graph("main")
    x = g.add_input("layer1.0.conv1", t(1))
    y = g.add_node("Relu", [x], outputs=["layer1.0/conv:0"], name="n")
    g.outputs = list(y.outputs)
    text = print_graph(g)
    assert '%layer1.0.conv1: tensor<1xfloat32>' in text
    assert '%"layer1.0/conv:0" = Relu(%layer1.0.conv1)' in text


@pytest.mark.parametrize(
    "type_, text",
    [
        (TensorType(F32, ("N", 3, None, 7)), "tensor<Nx3x?x7xfloat32>"),
        (TensorType(F32, None), "tensor<*xfloat32>"),
        (TensorType(DType.int64, ()), "tensor<int64>"),
        (TensorType(DType.bool, (0, 5)), "tensor<0x5xbool>"),
        (TensorType(F32, ("max_len", "batch size", "s0*2", "X", "1N")), 'tensor<"max_len"x"batch size"x"s0*2"xXx"1N"xfloat32>'),
        (TensorType(DType.bfloat16, ("float32", 1)), "tensor<float32x1xbfloat16>"),
        (None, "?"),
    ],
)
def test_types_print_and_parse(type_, text):
    g = Graph("main")
    x = g.add_input("x", type_)
    y = g.add_node("Identity", [x], outputs=["y"], output_types=[type_], name="n")
    g.outputs = list(y.outputs)
    printed = print_graph(g)
    assert (f"%x: {text}" if type_ is not None else "(%x)") in printed
    parsed = round_trip(g)
    assert parsed.value("y").type == type_


ATTRS = {
    "int": 7,
    "negative": -3,
    "big": 2**62,
    "float": 0.1,
    "tiny": 1e-300,
    "neg_zero": -0.0,
    "inf": float("inf"),
    "minus_inf": float("-inf"),
    "nan": float("nan"),
    "f32": float(np.float32(0.1)),
    "string": 'tab\tquote"newline\nbackslash\\ünï',
    "empty_string": "",
    "ints": [1, -2, 3],
    "floats": [0.5, 1e-5, 3.0],
    "strings": ["a", "b,c"],
    "empty": [],
    "nested": [[1, 2], [3]],
    "flag": True,
    "nothing": None,
    "tensor": np.array([[1.5, -2.25]], dtype=np.float32),
    "big_tensor": np.arange(100, dtype=np.int32).reshape(10, 10),
    "scalar_tensor": np.array(3, dtype=np.int64),
    "graph_body": bytes(range(256)),
    "1 odd key": 1,
}


def test_attribute_kinds_round_trip():
    g = Graph("main")
    x = g.add_input("x", t(1))
    g.add_node("Loop", [x], ATTRS, outputs=["y"], name="loop")
    g.outputs = [g.value("y")]
    parsed = round_trip(g)
    attrs = parsed.nodes[0].attrs
    assert attrs["float"] == 0.1 and type(attrs["float"]) is float
    assert attrs["int"] == 7 and type(attrs["int"]) is int
    assert attrs["flag"] is True and attrs["nothing"] is None
    assert np.isnan(attrs["nan"]) and str(attrs["neg_zero"]) == "-0.0"
    assert attrs["graph_body"] == bytes(range(256))
    assert attrs["tensor"].dtype == np.float32 and attrs["tensor"].tolist() == [[1.5, -2.25]]
    assert attrs["big_tensor"].shape == (10, 10) and int(attrs["big_tensor"].sum()) == 4950
    assert attrs["scalar_tensor"].shape == () and int(attrs["scalar_tensor"]) == 3
    text = print_graph(g)
    assert "graph_body = onnx_graph<\"" in text and "\"nan\" = nan, neg_zero = -0.0" in text and '"1 odd key" = 1' in text


def test_undecodable_strings_and_protobuf_attributes_round_trip(tmp_path):
    onnx = pytest.importorskip("onnx")
    undecodable = b"caf\xe9".decode("utf-8", "surrogateescape")
    type_proto = onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [2, "N"])
    g = Graph("main")
    x = g.add_input(undecodable, t(1))
    g.add_node("Optional", [x], {"type": type_proto, "label": undecodable}, outputs=["y"], name="opt")
    g.outputs = [g.value("y")]
    text = print_graph(g)
    assert '%"caf\\udce9"' in text and 'type = proto<"onnx.TypeProto", "' in text
    parsed = round_trip(g)
    assert parsed.nodes[0].attrs["type"] == type_proto
    assert parsed.inputs[0].name == undecodable
    save_text(g, tmp_path / "g.ir")
    assert_graphs_equal(g, load_text(tmp_path / "g.ir"))


def test_tuple_and_numpy_scalar_attributes_compare_equal_after_round_trip():
    g = Graph("main")
    x = g.add_input("x", t(1))
    g.add_node("Pad", [x], {"pads": (1, 2), "value": np.float32(0.1), "axis": np.int64(1)}, outputs=["y"], name="p")
    g.outputs = [g.value("y")]
    parsed = round_trip(g)
    assert parsed.nodes[0].attrs["pads"] == [1, 2]


@pytest.mark.parametrize(
    "array",
    [
        np.array([1.0, -0.0, np.inf, -np.inf, 3.4028235e38, 1e-45], dtype=np.float32),
        np.array([0.1, 1 / 3], dtype=np.float64),
        np.array([0.1, 65504, 6e-8], dtype=np.float16),
        np.array([0.1, 3.0, -1e30], dtype=ml_dtypes.bfloat16),
        np.array([-(2**63), 2**63 - 1], dtype=np.int64),
        np.array([2**64 - 1], dtype=np.uint64),
        np.array([-128, 127], dtype=np.int8),
        np.array([[True, False]], dtype=bool),
        np.array(["a", 'b"\n'], dtype=object),
        np.array(2.5, dtype=np.float32),
        np.zeros((0, 3), dtype=np.int64),
        np.arange(16, dtype=np.int32).reshape(2, 2, 4),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_inline_constants_are_exact(array):
    g = Graph("main")
    c = g.add_constant("c", array)
    g.outputs = [c]
    text = print_graph(g)
    assert "const %c = dense<" in text
    parsed = parse_graph(text)  # no data beside the text needed
    assert_graphs_equal(g, parsed)
    got = parsed.constants["c"].const
    assert got.dtype == array.dtype and got.shape == array.shape
    if array.dtype != object:
        assert got.tobytes() == array.tobytes()


def test_constants_above_the_inline_limit_are_referenced_by_name():
    g = Graph("main")
    g.add_constant("small", np.arange(16, dtype=np.float32))
    g.add_constant("large", np.arange(17, dtype=np.float32))
    text = print_graph(g)
    assert "const %small = dense<[0.0, 1.0," in text
    assert "const %large : tensor<17xfloat32>\n" in text
    assert set(constant_data(g)) == {"large"}


def test_floats_print_short_in_their_own_precision():
    g = Graph("main")
    g.add_constant("f32", np.array([1.1957553625106812, 0.1, 3.4028235e38, -0.0], dtype=np.float32))
    g.add_constant("f16", np.array([0.1, 65504], dtype=np.float16))
    g.add_constant("f64", np.array([0.1, 1 / 3]))
    text = print_graph(g)
    assert "const %f32 = dense<[1.1957554, 0.1, 3.4028235e+38, -0.0]> : tensor<4xfloat32>" in text
    assert "const %f16 = dense<[0.1, 6.55e+04]> : tensor<2xfloat16>" in text
    assert "const %f64 = dense<[0.1, 0.3333333333333333]> : tensor<2xfloat64>" in text
    round_trip(g)


def test_constants_with_nan_keep_their_bits_beside_the_text():
    nan_bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x3F800000], dtype=np.uint32)
    g = Graph("main")
    g.add_constant("nans", nan_bits.view(np.float32))
    assert "const %nans : tensor<4xfloat32>" in print_graph(g)
    parsed = round_trip(g)
    assert parsed.constants["nans"].const.view(np.uint32).tolist() == nan_bits.tolist()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([(np.uint32, np.float32), (np.uint16, np.float16), (np.uint16, ml_dtypes.bfloat16)]),
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=16),
)
def test_any_float_bits_round_trip_exactly(types, bits):
    int_type, float_type = types
    array = (np.array(bits, dtype=np.uint64) % (np.iinfo(int_type).max + 1)).astype(int_type).view(float_type)
    g = Graph("main")
    g.add_constant("c", array)
    parsed = round_trip(g)
    assert parsed.constants["c"].const.tobytes() == array.tobytes()


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20))
def test_any_name_round_trips(name):
    g = Graph("main")
    x = g.add_input(name, TensorType(F32, (name, 2)))
    y = g.add_node(name, [x], {name: name}, outputs=[name + "!"], name=name, source=name, domain=name)
    g.outputs = list(y.outputs)
    round_trip(g)


def test_multiple_outputs_optional_inputs_and_zero_output_nodes():
    g = Graph("main")
    x = g.add_input("x", t(4, 6))
    split = g.add_node(
        "Split", [x, None], {"axis": 1}, outputs=["a", "b"], output_types=[t(4, 3), None], name="split"
    )
    g.add_node("Print", [split.outputs[1]], outputs=[], name="sink")
    g.outputs = [split.outputs[0], x]
    text = print_graph(g)
    assert "%a, %b = Split(%x, <none>) {axis = 1} : tensor<4x3xfloat32>, ?  name(\"split\")" in text
    assert '  Print(%b)  name("sink")' in text
    parsed = round_trip(g)
    assert parsed.outputs[1] is parsed.inputs[0]


def test_domains_opset_imports_and_untyped_values():
    g = Graph("torch_jit", opset=17)
    g.opset_imports = {"com.microsoft": 1, "ai.onnx.ml": 3}
    x = g.add_input("x")
    y = g.add_node("FusedConv", [x], {"activation": "Relu"}, outputs=["y"], domain="com.microsoft", name="fc")
    g.outputs = list(y.outputs)
    text = print_graph(g)
    assert text.startswith("graph @torch_jit(%x) -> (%y) opset 17 imports(com.microsoft = 1, ai.onnx.ml = 3) {\n")
    assert '%y = com.microsoft::FusedConv(%x) {activation = "Relu"}  name("fc")' in text
    round_trip(g)


def test_names_that_core_would_rename_are_kept():
    """A node named like a value (as ONNX files often have) keeps both names through the text."""
    g = Graph("main")
    x = g.add_input("x", t(1))
    node = g.add_node("Relu", [x], outputs=["y"], name="n")
    node.name = "y"  # a frontend copying ONNX names may do this
    g.outputs = list(node.outputs)
    parsed = round_trip(g)
    assert parsed.nodes[0].name == "y" and parsed.nodes[0].outputs[0].name == "y"


def test_comments_and_free_layout_parse():
    text = """
    // RUN: irtool opt -p dce %s | filecheck %s
    graph @main(%x: tensor<2xfloat32>)
        -> (%y) opset 18 {   // trailing comment
      const %k = dense<[1.0, 2.0]> : tensor<2xfloat32>
      %y = Add(%x, %k)
    }
    """
    g = parse_graph(text)
    node = g.nodes[0]
    assert node.op == "Add" and node.name == "add" and node.outputs[0].type is None
    assert g.constants["k"].const.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "text, where, message",
    [
        ("graph @m() -> () opset 18 {\n  %y = Relu(%x)\n}", "<text>:2:13", "value %x is used before it is defined"),
        ("graph @m(%x) -> (%x) opset 18 {\n  %x = Relu(%x)\n}", "<text>:2:3", "value %x is defined twice (first at <text>:1:10)"),
        ("graph @m(%x) -> (%y) opset 18 {\n  %y = Relu(%x) : tensor<2xfloat32\n}", "<text>:2:19", "expected a type"),
        ("graph @m(%x) -> (%y) opset 18 {\n  %y = Relu(%x :\n}", "<text>:2:16", "expected ',' or ')', found ':'"),
        ("graph @m(%x) -> (%y) opset 18 {\n  %y = Relu(%x) {a = }\n}", "<text>:2:22", "expected an attribute value, found '}'"),
        ("graph @m(%x) -> (%y) opset 18 {\n  %y = Relu(%x)\n", "<text>:3:1", "found end of text"),
        ("graph @m() -> (%w) opset 18 {\n  const %w : tensor<20xfloat32>\n}", "<text>:2:9", "constant %w has no data"),
        ("graph @m() -> (%w) opset 18 {\n  const %w = dense<[1, 2]> : tensor<3xint64>\n}", "<text>:2:20", "dense literal does not fit tensor<3xint64>"),
        ("graph @m(%x: tensor<2xfloat33>) -> () opset 18 {\n}", "<text>:1:14", "unknown element type 'float33'"),
        ("graph @m(%x) -> () opset 18 {\n  %y = Relu(%x) $\n}", "<text>:2:17", "found '$'"),
        ("graph @m(%x) -> () opset 18 {\n  %a, %b = Split(%x) : ?\n}", "<text>:2:24", "2 outputs but 1 types"),
        ("graph @m(%x) -> () opset 18.5 {\n}", "<text>:1:26", "expected an integer"),
        ("graph @m(%x) -> () opset 18 {\n}\n}", "<text>:3:1", "expected end of text"),
        ("graph @m(%x) -> (%x, %q) opset 18 {\n}", "<text>:1:22", "graph output %q is not defined"),
        ("graph @m(%x) -> () opset 18 {\n  %y = Relu(%x) {a = 1, a = 2}\n}", "<text>:2:25", "attribute 'a' is given twice"),
    ],
)
def test_parse_errors_say_where_and_what_was_expected(text, where, message):
    with pytest.raises(IrtoolError) as info:
        parse_graph(text)
    assert info.value.where == where
    assert message in info.value.message


def test_wrong_constant_data_is_refused():
    text = "graph @m() -> (%w) opset 18 {\n  const %w : tensor<20xfloat32>\n}"
    with pytest.raises(IrtoolError, match=r"constant %w: data is float64\[20\] but the text declares tensor<20xfloat32>"):
        parse_graph(text, {"w": np.zeros(20)})
    with pytest.raises(IrtoolError, match=r"data is float32\[4, 5\]"):
        parse_graph(text, {"w": np.zeros((4, 5), np.float32)})


def test_unprintable_attribute_names_its_node():
    g = Graph("main")
    x = g.add_input("x", t(1))
    g.add_node("Relu", [x], {"bad": object()}, name="relu7")
    with pytest.raises(IrtoolError, match="node 'relu7': attribute value .* has no text form"):
        print_graph(g)


def test_save_and_load_text(tmp_path):
    g = conv_graph()
    g.add_constant("layer1.0/conv:0 weight", np.linspace(0, 1, 40, dtype=np.float32))
    g.add_constant("allow_pickle", np.arange(30, dtype=ml_dtypes.bfloat16))
    g.add_constant("labels", np.array([f"class{i}" for i in range(20)], dtype=object))
    path = tmp_path / "model.ir"
    assert save_text(g, path) == path
    assert path.read_text(encoding="utf-8") == print_graph(g)
    with np.load(str(path) + ".npz") as npz:
        assert sorted(npz.files) == sorted(["conv1.weight", "layer1.0/conv:0 weight", "allow_pickle", "labels"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ir", "model.ir.npz"]  # no temp files left
    loaded = load_text(path)
    assert_graphs_equal(g, loaded)
    assert loaded.constants["allow_pickle"].const.dtype == ml_dtypes.bfloat16
    assert loaded.constants["labels"].const[19] == "class19"


def test_a_failed_save_leaves_the_old_files(tmp_path):
    path = tmp_path / "model.ir"
    save_text(conv_graph(), path)
    before = path.read_bytes(), (tmp_path / "model.ir.npz").read_bytes()
    broken = conv_graph()
    broken.nodes[0].attrs["bad"] = object()
    with pytest.raises(IrtoolError, match="has no text form"):
        save_text(broken, path)
    assert (path.read_bytes(), (tmp_path / "model.ir.npz").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ir", "model.ir.npz"]


def test_load_text_errors_name_the_file(tmp_path):
    with pytest.raises(IrtoolError, match="does not exist"):
        load_text(tmp_path / "missing.ir")
    path = tmp_path / "bad.ir"
    path.write_text("graph @m() -> () opset 18 {\n  %y = Relu(%nope)\n}\n")
    with pytest.raises(IrtoolError) as info:
        load_text(path)
    assert str(info.value).startswith(f"{path}:2:13: value %nope is used before it is defined")
    g = conv_graph()
    save_text(g, path)
    (tmp_path / "bad.ir.npz").unlink()
    with pytest.raises(IrtoolError, match="constant %conv1.weight has no data"):
        load_text(path)


def test_graph_comparison_finds_each_kind_of_difference():
    a, b = conv_graph(), conv_graph()
    assert graphs_equal(a, b) and graph_differences(a, b) == []

    b.nodes[0].attrs["pads"] = [0, 0, 0, 0]
    assert graph_differences(a, b) == ["node 0 'Conv_0': attribute 'pads' [3, 3, 3, 3] vs [0, 0, 0, 0]"]

    b = conv_graph()
    weight = b.constants["conv1.weight"].const
    weight.view(np.uint32)[5] ^= 1  # one bit of one weight
    assert graph_differences(a, b) == ["constant %conv1.weight: data differ (float32[64, 3, 7, 7] vs float32[64, 3, 7, 7])"]

    b = conv_graph()
    b.nodes[1].outputs[0].type = t("N", 64, 32, 31)
    b.nodes[2].source = "flatten"
    b.nodes[0].attrs["group"] = 1.0
    diffs = graph_differences(a, b)
    assert len(diffs) == 3
    assert "node 0 'Conv_0': attribute 'group' 1 vs 1.0" in diffs
    assert "node 2 'r': source '' vs 'flatten'" in diffs
    with pytest.raises(AssertionError, match="output %relu_out type tensor<Nx64x32x32xfloat32> vs tensor<Nx64x32x31xfloat32>"):
        assert_graphs_equal(a, b)

    b = conv_graph()
    b.nodes[2].replace_input_with(0, b.value("conv_out"))
    assert graph_differences(a, b) == ["node 2 'r': inputs ['relu_out', 'shape_0'] vs ['conv_out', 'shape_0']"]


# -- a ResNet-50-sized graph, built with the core API ------------------------------------
def resnet50_like(batch: int | str = "N", size: int = 224) -> Graph:
    """ResNet-50's structure: 53 convs with BN, ReLUs, 16 residual adds, pool and a classifier."""
    g = Graph("resnet50")
    rng = np.random.default_rng(0)
    x = g.add_input("input", t(batch, 3, size, size))
    counter = iter(range(10_000))

    def conv_bn(value, cin, cout, k, stride, prefix, hw, relu=True):
        w = g.add_constant(f"{prefix}.weight", np.zeros((cout, cin, k, k), np.float32))
        hw = (hw + stride - 1) // stride
        out_t = t(batch, cout, hw, hw)
        conv = g.add_node(
            "Conv", [value, w, None],
            {"dilations": [1, 1], "group": 1, "kernel_shape": [k, k], "pads": [k // 2] * 4, "strides": [stride] * 2},
            outputs=[f"/{prefix}/Conv_output_0"], output_types=[out_t], name=f"/{prefix}/Conv", source=prefix,
        )
        bn_params = [g.add_constant(f"{prefix}.bn.{p}", rng.random(cout, dtype=np.float32)) for p in ("scale", "bias", "mean", "var")]
        y = g.add_node(
            "BatchNormalization", [conv.outputs[0], *bn_params], {"epsilon": 1e-5, "momentum": 0.9},
            outputs=[f"/{prefix}/bn/out_{next(counter)}"], output_types=[out_t], name=f"/{prefix}/bn/BatchNormalization", source=f"{prefix}.bn",
        ).outputs[0]
        if relu:
            y = g.add_node("Relu", [y], outputs=[f"/{prefix}/Relu_output_0"], output_types=[out_t], name=f"/{prefix}/Relu").outputs[0]
        return y, hw

    y, hw = conv_bn(x, 3, 64, 7, 2, "conv1", size)
    hw //= 2
    y = g.add_node("MaxPool", [y], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
                   outputs=["/maxpool/MaxPool_output_0"], output_types=[t(batch, 64, hw, hw)], name="/maxpool/MaxPool").outputs[0]
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            stride = 2 if block == 0 and stage > 1 else 1
            a, h1 = conv_bn(y, cin, width, 1, 1, f"{prefix}.conv1", hw)
            b, h2 = conv_bn(a, width, width, 3, stride, f"{prefix}.conv2", h1)
            c, _ = conv_bn(b, width, width * 4, 1, 1, f"{prefix}.conv3", h2, relu=False)
            shortcut = y
            if block == 0:
                shortcut, _ = conv_bn(y, cin, width * 4, 1, stride, f"{prefix}.downsample", hw, relu=False)
            out_t = t(batch, width * 4, h2, h2)
            s = g.add_node("Add", [c, shortcut], outputs=[f"/{prefix}/Add_output_0"], output_types=[out_t], name=f"/{prefix}/Add").outputs[0]
            y = g.add_node("Relu", [s], outputs=[f"/{prefix}/Relu_2_output_0"], output_types=[out_t], name=f"/{prefix}/Relu_2").outputs[0]
            cin, hw = width * 4, h2
    y = g.add_node("GlobalAveragePool", [y], outputs=["/avgpool/out"], output_types=[t(batch, 2048, 1, 1)], name="/avgpool").outputs[0]
    y = g.add_node("Flatten", [y], {"axis": 1}, outputs=["/flatten/out"], output_types=[t(batch, 2048)], name="/flatten").outputs[0]
    fc_w = g.add_constant("fc.weight", np.zeros((1000, 2048), np.float32))
    fc_b = g.add_constant("fc.bias", np.zeros(1000, np.float32))
    y = g.add_node("Gemm", [y, fc_w, fc_b], {"alpha": 1.0, "beta": 1.0, "transB": 1},
                   outputs=["output"], output_types=[t(batch, 1000)], name="/fc/Gemm", source="fc").outputs[0]
    g.outputs = [y]
    return g


def _best_cpu_time(fn, repeats=5) -> float:
    """CPU seconds of the fastest run: other processes on a busy machine do not count."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def test_resnet50_prints_and_parses_fast():
    g = resnet50_like()
    assert len(g) == 175 and len(g.constants) == 53 * 5 + 2
    data = constant_data(g)
    text = print_graph(g)
    assert_graphs_equal(g, parse_graph(text, data))
    print_s = _best_cpu_time(lambda: print_graph(g))
    parse_s = _best_cpu_time(lambda: parse_graph(text, data))
    assert print_s < 0.1, f"printing ResNet-50 took {print_s:.3f} s"
    assert parse_s < 0.1, f"parsing ResNet-50 took {parse_s:.3f} s"


# -- real models -------------------------------------------------------------------------
def zoo_onnx(model: str) -> Path:
    """The zoo model exported to ONNX once per test run (exporting dominates these tests' time).

    Kept in a folder named by the process, so every copy of this module that pytest imports
    finds the same files.
    """
    from tests.zoo import export_onnx

    folder = Path(tempfile.gettempdir()) / f"irtool-zoo-{os.getpid()}"
    path = folder / f"{model}.onnx"
    if not path.exists():
        if not folder.exists():
            folder.mkdir()
            atexit.register(shutil.rmtree, folder, True)
        export_onnx(model, folder / f"{model}.onnx.partial").rename(path)
    return path


def zoo_names() -> list[str]:
    try:
        from tests.zoo import ZOO
    except ImportError:  # the zoo needs torch
        return []
    return sorted(ZOO)


@pytest.mark.parametrize("model", zoo_names())
def test_zoo_models_round_trip_through_files(model, tmp_path):
    frontend = pytest.importorskip("irtool.frontends.onnx", reason="needs the ONNX frontend")
    graph = frontend.load_onnx(zoo_onnx(model))
    text = print_graph(graph)
    save_text(graph, tmp_path / f"{model}.ir")
    loaded = load_text(tmp_path / f"{model}.ir")
    assert_graphs_equal(graph, loaded)
    assert print_graph(loaded) == text
    assert len(loaded) == len(graph) > 0
    assert text.count("\n") == 2 + len(graph) + len(graph.constants)
