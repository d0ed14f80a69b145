"""Fuzz the ONNX frontend: mutate small valid models and check that ``load_onnx`` either loads
them or raises ``IrtoolError``, never anything else, never hangs, never reads external data from
outside the model's folder and never writes a file.

Mutations work on the protobuf (op types, domains, attribute types and values, tensor dims and
element types, raw data, dangling and duplicated names, graph input/output types, opsets,
external-data locations, offsets and lengths, sparse tensors, subgraphs) and on the serialized
bytes (flips, truncation, insertion, splicing). Each case runs in a worker process with a memory
limit and a time limit, so a huge allocation is a ``MemoryError`` and a hang is detected and the
worker replaced. The test suite runs a few thousand cases (``tests/frontends/test_fuzz_onnx.py``);
this script runs as many as asked and groups what it finds::

    python -m irtool.tools.fuzz_onnx --cases 10000 --seed 1 --findings fuzz-findings/

Each finding is saved as ``<group>.onnx`` (the smallest case of its group) with a ``.txt``
holding the mutations and the traceback; the exit status is 1 when anything was found.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing
import os
import random
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EXTERNAL_FILE = "weights.bin"
SECRET_FILE = "secret.bin"
"""A file beside the case folder: external data must never be read from it."""
LINK_FILE = "link.bin"
"""A symlink in the case folder that points at ``SECRET_FILE``, outside it."""
SECRET = np.arange(64, dtype=np.float32) * 7.0
MEMORY_LIMIT = 3 << 30
"""Address-space limit of a worker: a mutated dim asking for terabytes fails fast."""
MEMORY_BUDGET_MB = 512
"""Loading a seed-sized model (kilobytes) must not raise the worker's peak memory by more."""


# -- choices ----------------------------------------------------------------------------------------
class Chooser(Protocol):
    """Where a mutation's choices come from: ``random.Random`` here, hypothesis in the tests."""

    def integer(self, lo: int, hi: int) -> int: ...

    def choice(self, options: Sequence[Any]) -> Any: ...

    def binary(self, most: int) -> bytes: ...


class RandomChooser:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def binary(self, most: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, most))


# -- seed models ---------------------------------------------------------------------------------------
def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def _model(nodes, inputs, outputs, initializers, opset: int = 17, **kwargs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "seed", inputs, outputs, initializers, **kwargs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_net() -> onnx.ModelProto:
    """Conv-BN-ReLU twice, pooling and a Gemm; conv2's weight is big enough (4.6 kB) that the
    frontend reads it straight from the file's bytes."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = [
        _init("w1", rng.standard_normal((8, 3, 3, 3)).astype(f32)),
        _init("b1", rng.standard_normal(8).astype(f32)),
        _init("w2", rng.standard_normal((16, 8, 3, 3)).astype(f32)),
        _init("scale", rng.random(16).astype(f32) + 0.5),
        _init("bias", rng.standard_normal(16).astype(f32)),
        _init("mean", rng.standard_normal(16).astype(f32)),
        _init("var", rng.random(16).astype(f32) + 0.5),
        _init("fc", rng.standard_normal((10, 16)).astype(f32)),
        _init("fc_b", rng.standard_normal(10).astype(f32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu/Relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="/layer1/conv2/Conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c2", "scale", "bias", "mean", "var"], ["n2"], name="bn", epsilon=1e-5),
        helper.make_node("Relu", ["n2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    return _model(nodes, [x], [y], inits)


def shape_net() -> onnx.ModelProto:
    """Opset-13 forms the frontend upgrades (ReduceMean axes, Split without sizes), Constant
    nodes of every kind, Reshape/Slice/Concat/Transpose with constant operands."""
    f32 = np.float32
    inits = [
        _init("shape", np.array([1, 4, 2, 2], dtype=np.int64)),
        _init("starts", np.array([0], dtype=np.int64)),
        _init("ends", np.array([2], dtype=np.int64)),
        _init("axes", np.array([1], dtype=np.int64)),
        _init("h", np.full((1, 16), 0.5, dtype=np.float16)),
    ]
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones((1, 16), f32), "k")),
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("Constant", [], ["ints"], value_ints=[1, 16]),
        helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "k"], ["a"]),
        helper.make_node("Add", ["a", "hf"], ["a2"]),
        helper.make_node("Mul", ["a2", "two"], ["m"]),
        helper.make_node("Reshape", ["m", "ints"], ["m2"]),
        helper.make_node("Reshape", ["m2", "shape"], ["r"]),
        helper.make_node("Split", ["r"], ["s1", "s2"], axis=1),
        helper.make_node("Concat", ["s2", "s1"], ["cat"], axis=1),
        helper.make_node("Transpose", ["cat"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Slice", ["t", "starts", "ends", "axes"], ["sl"]),
        helper.make_node("ReduceMean", ["sl"], ["y"], axes=[2, 3], keepdims=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 1])
    return _model(nodes, [x], [y], inits, opset=13)


def control_net() -> onnx.ModelProto:
    """An If with two subgraphs, an op of another domain, a sparse initializer, a string
    constant, metadata and a local function."""
    f32 = np.float32
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t_out"])], "then", [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2, 3])]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e_out"])], "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2, 3])]
    )
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0, 2.0], dtype=f32), "sp"),
        numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "sp_idx"),
        [2, 3],
    )
    nodes = [
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "cond")),
        helper.make_node("If", ["cond"], ["i"], then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Add", ["i", "sp"], ["a"]),
        helper.make_node("Constant", [], ["label"], value=numpy_helper.from_array(np.array(["a", "b"], dtype=object), "label")),
        helper.make_node("Double", ["a"], ["y"], domain="local.fn"),
        helper.make_node("CustomThing", ["a"], ["z"], domain="com.example", alpha=1.5, names=["p", "q"]),
    ]
    function = helper.make_function(
        "local.fn", "Double", ["v"], ["w"], [helper.make_node("Add", ["v", "v"], ["w"])], [helper.make_opsetid("", 17)]
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]), helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])]
    graph = helper.make_graph(nodes, "seed", [x], outputs, sparse_initializer=[sparse])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local.fn", 1), helper.make_opsetid("com.example", 1)],
        functions=[function],
    )
    model.ir_version = 8
    helper.set_model_props(model, {"author": "fuzz", "irtool.pruned_channels": "{}"})
    onnx.checker.check_model(model)
    return model


def external_net() -> onnx.ModelProto:
    """A MatMul whose weight is external data in ``weights.bin`` beside the model."""
    weight = np.arange(64, dtype=np.float32).reshape(8, 8) / 64
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[8, 8], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", EXTERNAL_FILE), ("offset", "64"), ("length", str(weight.nbytes))):
        tensor.external_data.add(key=key, value=value)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    model = helper.make_model(helper.make_graph(nodes, "seed", [x], [y], [tensor]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def external_bytes() -> bytes:
    """The content of ``weights.bin``: 64 bytes of padding, then external_net's weight."""
    return bytes(64) + (np.arange(64, dtype=np.float32) / 64).tobytes()


SEEDS: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv": conv_net,
    "shapes": shape_net,
    "control": control_net,
    "external": external_net,
}


# -- mutations ---------------------------------------------------------------------------------------
OP_TYPES = (
    "Conv", "Gemm", "MatMul", "Relu", "Add", "Reshape", "Split", "Concat", "Slice", "Transpose", "ReduceMean",
    "Constant", "If", "Loop", "Scan", "LSTM", "GRU", "BatchNormalization", "Resize", "Pad", "Gather", "Cast",
    "QuantizeLinear", "DequantizeLinear", "ConvTranspose", "Einsum", "TopK", "NonZero", "Shape", "Expand",
    "Unknown", "", "conv", "Conv ", "\u00e9", "Flatten", "Squeeze", "Unsqueeze", "Softmax", "LayerNormalization",
)  # fmt: skip
DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "local.fn", "irtool.opaque", "x" * 200)
HUGE = (2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1)
INTS = (-(2**63), -(2**31), -7, -1, 0, 1, 2, 3, 7, 255, *HUGE)
FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-45, 3.4e38, math.inf, -math.inf, math.nan)
LOCATIONS = (
    "", ".", "..", "../" + SECRET_FILE, "/etc/passwd", "/dev/zero", "a/../../" + SECRET_FILE, LINK_FILE,
    EXTERNAL_FILE, "model.onnx", "missing.bin", "sub/dir/x.bin", "weights.bin/", "C:\\x", "\\\\server\\x",
)  # fmt: skip


def _pick_node(model: onnx.ModelProto, chooser: Chooser):
    nodes = list(model.graph.node)
    return chooser.choice(nodes) if nodes else None


def _names(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    names = [v.name for v in (*graph.input, *graph.output, *graph.value_info)] + [t.name for t in graph.initializer]
    names += [n for node in graph.node for n in (*node.input, *node.output)]
    return names or ["x"]


def _tensors(model: onnx.ModelProto) -> list[TensorProto]:
    tensors = list(model.graph.initializer)
    tensors += [s.values for s in model.graph.sparse_initializer] + [s.indices for s in model.graph.sparse_initializer]
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append(attr.t)
            tensors.extend(attr.tensors)
    return tensors


def m_op_type(model, chooser) -> str:
    node = _pick_node(model, chooser)
    if node is None:
        return "op_type: no node"
    node.op_type = chooser.choice(OP_TYPES)
    return f"op_type {node.name or '?'} -> {node.op_type!r}"


def m_domain(model, chooser) -> str:
    node = _pick_node(model, chooser)
    if node is None:
        return "domain: no node"
    node.domain = chooser.choice(DOMAINS)
    return f"domain {node.name or node.op_type} -> {node.domain[:20]!r}"


def m_attribute_type(model, chooser) -> str:
    attrs = [a for n in model.graph.node for a in n.attribute]
    if not attrs:
        return "attribute type: none"
    attr = chooser.choice(attrs)
    attr.type = chooser.choice([t for _, t in onnx.AttributeProto.AttributeType.items()])
    return f"attribute {attr.name} type -> {attr.type}"


def m_attribute_value(model, chooser) -> str:
    node = _pick_node(model, chooser)
    if node is None:
        return "attribute value: no node"
    kind = chooser.integer(0, 6)
    name = chooser.choice(["axis", "pads", "strides", "kernel_shape", "group", "perm", "to", "epsilon", "value", "axes", "num_outputs", "then_branch", "x"])
    attr = next((a for a in node.attribute if a.name == name), None) or node.attribute.add(name=name)
    if kind == 0:
        attr.type, attr.i = onnx.AttributeProto.INT, chooser.choice(INTS)
    elif kind == 1:
        attr.type = onnx.AttributeProto.INTS
        del attr.ints[:]
        attr.ints.extend(chooser.choice(INTS) for _ in range(chooser.integer(0, 6)))
    elif kind == 2:
        attr.type, attr.f = onnx.AttributeProto.FLOAT, chooser.choice(FLOATS)
    elif kind == 3:
        attr.type, attr.s = onnx.AttributeProto.STRING, chooser.binary(8)
    elif kind == 4:
        attr.type = onnx.AttributeProto.TENSOR
        attr.t.CopyFrom(TensorProto(name="", data_type=chooser.integer(0, 30), dims=[chooser.choice(INTS)], raw_data=chooser.binary(16)))
    elif kind == 5:
        attr.type = onnx.AttributeProto.GRAPH
        attr.g.CopyFrom(onnx.GraphProto(name="g", node=[helper.make_node(chooser.choice(OP_TYPES), ["x"], ["x"])]))
    else:
        attr.ref_attr_name = "outer"
    return f"attribute {node.name or node.op_type}.{name} kind {kind}"


def m_perturb_attribute(model, chooser) -> str:
    """Change an attribute's value but not its type: models that still pass the checker."""
    attrs = [a for n in model.graph.node for a in n.attribute if a.type in (1, 2, 6, 7)]
    if not attrs:
        return "perturb attribute: none"
    attr = chooser.choice(attrs)
    A = onnx.AttributeProto
    if attr.type == A.INT:
        attr.i = chooser.choice(INTS)
    elif attr.type == A.FLOAT:
        attr.f = chooser.choice(FLOATS)
    elif attr.type == A.INTS:
        if attr.ints and chooser.integer(0, 2):
            attr.ints[chooser.integer(0, len(attr.ints) - 1)] = chooser.choice(INTS)
        else:
            attr.ints.append(chooser.choice(INTS))
    elif attr.floats:
        attr.floats[chooser.integer(0, len(attr.floats) - 1)] = chooser.choice(FLOATS)
    return f"perturbed attribute {attr.name}"


def m_remove_attribute(model, chooser) -> str:
    node = _pick_node(model, chooser)
    if node is None or not node.attribute:
        return "remove attribute: none"
    index = chooser.integer(0, len(node.attribute) - 1)
    name = node.attribute[index].name
    if chooser.integer(0, 1):
        del node.attribute[index]
        return f"removed attribute {name}"
    node.attribute.add().CopyFrom(node.attribute[index])
    return f"duplicated attribute {name}"


def m_dims(model, chooser) -> str:
    tensors = _tensors(model)
    if not tensors:
        return "dims: no tensor"
    tensor = chooser.choice(tensors)
    del tensor.dims[:]
    tensor.dims.extend(chooser.choice((*INTS, 0, 1, 2, 4, 8)) for _ in range(chooser.integer(0, 5)))
    return f"dims {tensor.name} -> {list(tensor.dims)}"


def m_dtype(model, chooser) -> str:
    tensors = _tensors(model)
    if not tensors:
        return "dtype: no tensor"
    tensor = chooser.choice(tensors)
    tensor.data_type = chooser.integer(0, 31)
    return f"dtype {tensor.name} -> {tensor.data_type}"


def m_raw_data(model, chooser) -> str:
    tensors = _tensors(model)
    if not tensors:
        return "raw data: no tensor"
    tensor = chooser.choice(tensors)
    kind = chooser.integer(0, 4)
    if kind == 0:
        tensor.raw_data = tensor.raw_data[: chooser.integer(0, max(len(tensor.raw_data) - 1, 0))]
    elif kind == 1:
        tensor.raw_data = tensor.raw_data + chooser.binary(9)
    elif kind == 2:
        tensor.ClearField("raw_data")
        tensor.float_data.extend([1.0] * chooser.integer(0, 3))
    elif kind == 3:
        tensor.int64_data.extend(chooser.choice(INTS) for _ in range(chooser.integer(0, 3)))
    else:
        tensor.string_data.extend([chooser.binary(4)])
    return f"raw data {tensor.name} kind {kind}"


def m_dangling(model, chooser) -> str:
    node = _pick_node(model, chooser)
    if node is None:
        return "dangling: no node"
    name = chooser.choice(["", "nowhere", *_names(model)])
    if node.input and chooser.integer(0, 2):
        index = chooser.integer(0, len(node.input) - 1)
        node.input[index] = name
        return f"input {index} of {node.name or node.op_type} -> {name!r}"
    if chooser.integer(0, 1) and node.output:
        node.output[chooser.integer(0, len(node.output) - 1)] = name
        return f"output of {node.name or node.op_type} -> {name!r}"
    node.input.append(name)
    return f"extra input {name!r} on {node.name or node.op_type}"


def m_nodes(model, chooser) -> str:
    nodes = model.graph.node
    if not nodes:
        return "nodes: none"
    kind = chooser.integer(0, 3)
    i = chooser.integer(0, len(nodes) - 1)
    if kind == 0:
        del nodes[i]
        return f"removed node {i}"
    if kind == 1:
        nodes.add().CopyFrom(nodes[i])
        return f"duplicated node {i}"
    if kind == 2:
        j = chooser.integer(0, len(nodes) - 1)
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(nodes[i])
        b.CopyFrom(nodes[j])
        nodes[i].CopyFrom(b)
        nodes[j].CopyFrom(a)
        return f"swapped nodes {i} and {j}"
    nodes[i].name = chooser.choice(["", "/", "//Conv", "/a/Conv_x", "/a//b/Relu", "/layer1/layer1.0/Conv_1", "x" * 300])
    return f"renamed node {i} -> {nodes[i].name[:20]!r}"


def m_value_type(model, chooser) -> str:
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    if not values:
        return "value type: none"
    value = chooser.choice(values)
    kind = chooser.integer(0, 4)
    tensor = value.type.tensor_type
    if kind == 0:
        tensor.elem_type = chooser.integer(0, 31)
    elif kind == 1:
        tensor.shape.ClearField("dim")
        for _ in range(chooser.integer(0, 5)):
            dim = tensor.shape.dim.add()
            if chooser.integer(0, 3):
                dim.dim_value = chooser.choice(INTS)
            else:
                dim.dim_param = chooser.choice(["N", "", "batch", "?"])
    elif kind == 2:
        value.ClearField("type")
    elif kind == 3:
        value.type.sequence_type.elem_type.tensor_type.elem_type = TensorProto.FLOAT
    else:
        value.name = chooser.choice(["", "nowhere", *_names(model)])
    return f"value {value.name} type kind {kind}"


def m_graph_io(model, chooser) -> str:
    graph = model.graph
    kind = chooser.integer(0, 3)
    if kind == 0 and graph.output:
        del graph.output[chooser.integer(0, len(graph.output) - 1)]
        return "removed a graph output"
    if kind == 1:
        graph.output.add().CopyFrom(helper.make_tensor_value_info(chooser.choice(["nowhere", *_names(model)]), TensorProto.FLOAT, None))
        return "added a graph output"
    if kind == 2 and graph.input:
        del graph.input[chooser.integer(0, len(graph.input) - 1)]
        return "removed a graph input"
    graph.input.add().CopyFrom(helper.make_tensor_value_info(chooser.choice(_names(model)), chooser.integer(0, 16), [2]))
    return "added a graph input"


def m_opset(model, chooser) -> str:
    kind = chooser.integer(0, 3)
    if kind == 0:
        model.ClearField("opset_import")
        return "no opset_import"
    if kind == 1 and model.opset_import:
        entry = chooser.choice(list(model.opset_import))
        entry.version = chooser.choice((-1, 0, 1, 7, 12, 13, 17, 18, 21, 23, 99, 2**40))
        return f"opset {entry.domain!r} -> {entry.version}"
    if kind == 2:
        model.opset_import.add(domain=chooser.choice(DOMAINS), version=chooser.choice((1, 13, 17)))
        return "added an opset"
    model.ir_version = chooser.choice((-1, 0, 1, 3, 7, 8, 10, 11, 99))
    return f"ir_version -> {model.ir_version}"


def m_external(model, chooser) -> str:
    tensors = _tensors(model)
    if not tensors:
        return "external: no tensor"
    tensor = chooser.choice(tensors)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    entries = {"location": chooser.choice(LOCATIONS)}
    if chooser.integer(0, 1):
        entries["offset"] = chooser.choice(["0", "64", "-8", "1e3", "x", str(2**62), "4096"])
    if chooser.integer(0, 1):
        entries["length"] = chooser.choice(["0", "4", "256", "-4", "x", str(2**62)])
    if chooser.integer(0, 3) == 0:
        entries["checksum"] = "00"
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return f"external {tensor.name}: {entries}"


def m_sparse(model, chooser) -> str:
    graph = model.graph
    if not graph.sparse_initializer:
        sparse = graph.sparse_initializer.add()
        sparse.values.CopyFrom(numpy_helper.from_array(np.ones(2, dtype=np.float32), "sp_new"))
        sparse.indices.CopyFrom(numpy_helper.from_array(np.array([0, 1], dtype=np.int64), "sp_new_idx"))
        sparse.dims.extend([2, 2])
    sparse = chooser.choice(list(graph.sparse_initializer))
    kind = chooser.integer(0, 2)
    if kind == 0:
        del sparse.dims[:]
        sparse.dims.extend(chooser.choice((*INTS, 0, 2)) for _ in range(chooser.integer(0, 3)))
    elif kind == 1:
        sparse.indices.CopyFrom(numpy_helper.from_array(np.array([chooser.choice(INTS) for _ in range(2)], dtype=np.int64), sparse.indices.name))
    else:
        sparse.indices.CopyFrom(numpy_helper.from_array(np.zeros((2, chooser.integer(1, 4)), dtype=np.int64), sparse.indices.name))
    return f"sparse {sparse.values.name} kind {kind}"


def m_subgraph(model, chooser) -> str:
    graphs = [a for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    if not graphs:
        return "subgraph: none"
    attr = chooser.choice(graphs)
    inner = onnx.ModelProto()
    inner.graph.CopyFrom(attr.g)
    chooser.choice(PROTO_MUTATIONS[:-1])(inner, chooser)
    attr.g.CopyFrom(inner.graph)
    return f"mutated subgraph {attr.name}"


def m_metadata(model, chooser) -> str:
    kind = chooser.integer(0, 2)
    if kind == 0:
        model.metadata_props.add(key=chooser.choice(["irtool.pruned_channels", "irtool.quantization", "k"]), value=chooser.choice(["{", "[]", "{\"w\": {\"9\": [1e9]}}", "null"]))
    elif kind == 1 and model.functions:
        model.functions[0].node.add().CopyFrom(helper.make_node(chooser.choice(OP_TYPES), ["v"], ["v"]))
    else:
        model.graph.name = chooser.choice(["", "x" * 1000, "a/b", "\u00e9"])
    return f"metadata kind {kind}"


PROTO_MUTATIONS: tuple[Callable[[onnx.ModelProto, Chooser], str], ...] = (
    m_op_type, m_domain, m_attribute_type, m_attribute_value, m_perturb_attribute, m_remove_attribute, m_dims, m_dtype,
    m_raw_data, m_dangling, m_nodes, m_value_type, m_graph_io, m_opset, m_external, m_sparse, m_metadata,
    m_subgraph,
)  # fmt: skip


def mutate_bytes(data: bytes, chooser: Chooser) -> tuple[bytes, str]:
    if not data:
        return data, "bytes: empty"
    kind = chooser.integer(0, 3)
    buffer = bytearray(data)
    if kind == 0:
        for _ in range(chooser.integer(1, 8)):
            buffer[chooser.integer(0, len(buffer) - 1)] = chooser.integer(0, 255)
        return bytes(buffer), "flipped bytes"
    if kind == 1:
        cut = chooser.integer(0, len(buffer) - 1)
        return bytes(buffer[:cut]), f"truncated at {cut}"
    if kind == 2:
        at = chooser.integer(0, len(buffer))
        return bytes(buffer[:at]) + chooser.binary(16) + bytes(buffer[at:]), f"inserted at {at}"
    start = chooser.integer(0, len(buffer) - 1)
    end = chooser.integer(start, min(len(buffer), start + 64))
    at = chooser.integer(0, len(buffer))
    return bytes(buffer[:at]) + bytes(buffer[start:end]) + bytes(buffer[at:]), f"spliced {start}:{end} at {at}"


@dataclass
class Case:
    """One mutated model: its bytes and how it was made."""

    data: bytes
    steps: list[str] = field(default_factory=list)


def make_case(chooser: Chooser, seeds: dict[str, bytes] | None = None) -> Case:
    """A seed model with 1-3 protobuf mutations and, sometimes, a byte-level one."""
    seeds = seeds or seed_bytes()
    name = chooser.choice(sorted(seeds))
    model = onnx.ModelProto.FromString(seeds[name])
    steps = [f"seed {name}"]
    for _ in range(chooser.integer(1, 3)):
        steps.append(chooser.choice(PROTO_MUTATIONS)(model, chooser))
    data = model.SerializeToString()
    if chooser.integer(0, 3) == 0:
        data, step = mutate_bytes(data, chooser)
        steps.append(step)
    return Case(data, steps)


_SEED_BYTES: dict[str, bytes] = {}


def seed_bytes() -> dict[str, bytes]:
    if not _SEED_BYTES:
        _SEED_BYTES.update({name: build().SerializeToString() for name, build in SEEDS.items()})
    return _SEED_BYTES


# -- checking one case ----------------------------------------------------------------------------------
def prepare_folder(root: Path) -> Path:
    """``root/case`` with the external data file and a symlink out of it; ``root/secret.bin``."""
    case = root / "case"
    case.mkdir(parents=True, exist_ok=True)
    (root / SECRET_FILE).write_bytes(SECRET.tobytes())
    (case / EXTERNAL_FILE).write_bytes(external_bytes())
    link = case / LINK_FILE
    if not link.is_symlink():
        link.symlink_to(Path("..") / SECRET_FILE)
    return case


LOADED, REFUSED, FINDING = "loaded", "refused", "finding"


@dataclass(frozen=True)
class Outcome:
    """How the frontend took a case: ``loaded``, ``refused`` (``detail`` is the ``IrtoolError``
    message) or a ``finding`` (``detail`` is the traceback or what went wrong)."""

    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != FINDING


def check_case(data: bytes, folder: Path) -> Outcome:
    """Load ``data`` as ``folder/model.onnx`` and say how the frontend took it."""
    from ..frontends.onnx import load_onnx
    from ..ir.errors import IrtoolError

    path = folder / "model.onnx"
    path.write_bytes(data)
    before = sorted(os.listdir(folder))
    peak = _peak_mb()
    refusal = ""
    try:
        graph = load_onnx(path)
    except IrtoolError as exc:
        graph, refusal = None, str(exc)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - any other exception type is the finding
        return Outcome(FINDING, traceback.format_exc())
    grown = _peak_mb() - peak
    if grown > MEMORY_BUDGET_MB:
        return Outcome(FINDING, f"memory: loading a {len(data)}-byte model raised peak memory by {grown} MB")
    after = sorted(os.listdir(folder))
    if after != before:
        return Outcome(FINDING, f"load_onnx wrote files: {sorted(set(after) - set(before))}")
    if graph is not None:
        for value in graph.constants.values():
            array = value.const
            if array is not None and array.dtype == np.float32 and array.size >= 4 and np.array_equal(array.reshape(-1)[:4], SECRET[:4]):
                return Outcome(FINDING, f"constant '{value.name}' was read from outside the model's folder")
    return Outcome(LOADED) if graph is not None else Outcome(REFUSED, refusal)


def _peak_mb() -> int:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on every platform
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


# -- the worker ----------------------------------------------------------------------------------------
def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):  # pragma: no cover - not on every platform
        pass


def _serve(connection, root: str) -> None:
    _limit_memory()
    folder = prepare_folder(Path(root))
    from ..frontends import onnx as _frontend  # noqa: F401 - import before the first case is timed

    connection.send("ready")
    while True:
        try:
            data = connection.recv()
        except EOFError:  # the parent is gone
            return
        if data is None:
            return
        connection.send(check_case(data, folder))


class Worker:
    """A process that checks cases one at a time; a case that takes longer than ``timeout``
    seconds is reported as a hang and the process replaced."""

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout
        self.root = tempfile.mkdtemp(prefix="irtool-fuzz-")
        self.context = multiprocessing.get_context("spawn")
        self.process = None
        self.connection = None
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_serve, args=(child, self.root), daemon=True)
        process.start()
        child.close()
        try:
            ready = parent.poll(120) and parent.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            process.kill()
            process.join()
            raise RuntimeError(f"the fuzz worker did not start (exit code {process.exitcode})")
        self.process, self.connection = process, parent

    def check(self, data: bytes) -> Outcome:
        if self.process is None or not self.process.is_alive():
            self._start()
        self.connection.send(data)
        if not self.connection.poll(self.timeout):
            outcome = Outcome(FINDING, f"hang: load_onnx took longer than {self.timeout:g} s")
        else:
            try:
                outcome = self.connection.recv()
            except EOFError:
                outcome = Outcome(FINDING, f"the worker died (exit code {self.process.exitcode})")
        if outcome.ok or outcome.detail.startswith("Traceback"):
            return outcome
        # A hang, a crash or a memory blow-up: the next case gets a fresh worker (and peak memory).
        self._stop(kill=True)
        self.restarts += 1
        return outcome

    def _stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process = None

    def close(self) -> None:
        self._stop()
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the campaign ----------------------------------------------------------------------------------------
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def finding_key(outcome: str) -> str:
    """A short group key: the exception type and the innermost irtool frame it came through."""
    lines = [line.strip() for line in outcome.strip().splitlines()]
    if not lines or not lines[0].startswith("Traceback"):
        return outcome.split(":")[0][:80]
    raised = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception)\b", line)]
    kind = (raised[-1] if raised else lines[-1]).split(":")[0]
    frames = [line for line in lines if line.startswith(f'File "{PACKAGE_ROOT}') and "site-packages" not in line]
    if not frames:
        return kind
    path, line, function = (part.strip() for part in frames[-1].split(",")[:3])
    return f"{kind} at {path[len(PACKAGE_ROOT) + 7:-1]}:{line.removeprefix('line ')} {function.removeprefix('in ')}"


@dataclass
class Campaign:
    cases: int = 0
    seconds: float = 0.0
    loaded: int = 0
    refused: int = 0
    findings: dict[str, tuple[Case, str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def record(self, case: Case, outcome: Outcome) -> None:
        self.cases += 1
        if outcome.status == LOADED:
            self.loaded += 1
            return
        if outcome.status == REFUSED:
            self.refused += 1
            return
        key = finding_key(outcome.detail)
        self.counts[key] = self.counts.get(key, 0) + 1
        known = self.findings.get(key)
        if known is None or (len(case.steps), len(case.data)) < (len(known[0].steps), len(known[0].data)):
            self.findings[key] = (case, outcome.detail)


def run_campaign(cases: int, *, seed: int = 0, timeout: float = 10.0, progress: bool = True) -> Campaign:
    from tqdm import tqdm

    rng = random.Random(seed)
    chooser = RandomChooser(rng)
    seeds = seed_bytes()
    campaign = Campaign()
    started = time.perf_counter()
    with Worker(timeout) as worker:
        for _ in tqdm(range(cases), desc="fuzz onnx", disable=not progress, file=sys.stderr, dynamic_ncols=True):
            case = make_case(chooser, seeds)
            campaign.record(case, worker.check(case.data))
    campaign.seconds = time.perf_counter() - started
    return campaign


def save_findings(campaign: Campaign, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, (case, outcome) in campaign.findings.items():
        stem = hashlib.sha1(key.encode()).hexdigest()[:10]
        (folder / f"{stem}.onnx").write_bytes(case.data)
        text = [f"group: {key}", f"count: {campaign.counts[key]}", "mutations:", *(f"  {s}" for s in case.steps), "", outcome]
        (folder / f"{stem}.txt").write_text("\n".join(text))
        written.append(folder / f"{stem}.onnx")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irtool.tools.fuzz_onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="mutated models to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a case may take before it counts as a hang")
    parser.add_argument("--findings", type=Path, help="folder to save one reproducer per finding group")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    campaign = run_campaign(args.cases, seed=args.seed, timeout=args.timeout, progress=not args.quiet)
    print(f"{campaign.cases} cases in {campaign.seconds:.1f} s ({campaign.cases / max(campaign.seconds, 1e-9):.0f}/s): "
          f"{campaign.loaded} loaded, {campaign.refused} refused with IrtoolError, "
          f"{sum(campaign.counts.values())} findings in {len(campaign.findings)} groups")  # fmt: skip
    for key, count in sorted(campaign.counts.items(), key=lambda kv: -kv[1]):
        case, _ = campaign.findings[key]
        print(f"  {count:6d}  {key}   e.g. {'; '.join(case.steps)}")
    if args.findings and campaign.findings:
        save_findings(campaign, args.findings)
        print(f"reproducers in {args.findings}")
    return 1 if campaign.findings else 0


if __name__ == "__main__":
    sys.exit(main())
