"""IR -> ONNX, and onnxruntime sessions for a graph.

``to_onnx`` emits a ModelProto that passes ``onnx.checker`` (full check) for graphs whose ops
ONNX knows: nodes in graph order with their names, constants as initializers, typed values as
value_info, the model's doc string, metadata and local functions from ``graph.meta``. Ops keep
their ONNX names; when emitting an opset older than 18 a small table keyed by op converts the
IR's opset-18 forms back (``DOWNGRADES``). Unknown ops are written exactly as they came in.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import numpy_helper

from .. import __version__
from ..frontends.onnx import (
    IR_OPSET,
    META_EMPTY_LIST_ATTRS,
    META_OMITTED,
    META_ONNX_TYPE,
    MIN_OPSET,
)
from ..frontends.onnx_wire import GRAPH_INITIALIZER, MODEL_GRAPH, TENSOR_RAW_DATA, length_prefix
from ..ir.core import Graph, Node, Value
from ..ir.errors import IrtoolError
from ..ir.registry import lookup
from ..ir.types import DType
from .files import atomic_write

__all__ = [
    "DOWNGRADES",
    "EXTERNAL_DATA_THRESHOLD",
    "array_to_tensor",
    "make_attribute",
    "make_session",
    "onnx_bytes",
    "run_onnxruntime",
    "save_onnx",
    "to_onnx",
]

EXTERNAL_DATA_THRESHOLD = 1_800_000_000
"""Constants bigger than this in total (bytes) are saved as external data: protobuf stops at 2 GB."""
_EXTERNAL_MIN_BYTES = 1024
"""Smaller tensors stay inside the model file even when saving with external data."""
_EXTERNAL_ALIGNMENT = 64

_RAW_CODES = {np.dtype(d.name): d.onnx for d in DType if d not in (DType.string, DType.bfloat16)}
_A = onnx.AttributeProto


# -- entry points ------------------------------------------------------------------------------
def to_onnx(graph: Graph, *, opset: int | None = None) -> onnx.ModelProto:
    """The graph as an ONNX model at ``opset`` (default: the graph's, at least 13)."""
    return _Emitter(graph, _target_opset(graph, opset)).parts().model()


def onnx_bytes(graph: Graph, *, opset: int | None = None) -> bytes:
    """``to_onnx(graph).SerializeToString()``, byte for byte, with weights copied only once."""
    parts = _Emitter(graph, _target_opset(graph, opset)).parts()
    if parts.nbytes() > EXTERNAL_DATA_THRESHOLD:
        raise IrtoolError("model is too big for one protobuf (2 GB); save it with external data")
    return b"".join(parts.chunks(_inline_tensor))


def save_onnx(
    graph: Graph,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    opset: int | None = None,
) -> Path:
    """Write the graph as an ONNX file, atomically; returns the path.

    With ``external_data`` (automatic when the constants exceed ``EXTERNAL_DATA_THRESHOLD``)
    tensors of 1 KiB and more go to one file beside the model, ``<name>.data``.
    """
    path = Path(path)
    parts = _Emitter(graph, _target_opset(graph, opset)).parts()
    if external_data is None:
        external_data = parts.nbytes() > EXTERNAL_DATA_THRESHOLD
    if not external_data:
        return atomic_write(path, lambda tmp: _write_chunks(tmp, parts.chunks(_inline_tensor)))
    location = f"{path.name}.data"

    def write_model(model_tmp: Path) -> None:
        # Both files are complete before either is renamed into place, so an interrupted save
        # leaves the previous pair (or nothing), never a new data file without its model.
        def write_data(data_tmp: Path) -> None:
            with open(data_tmp, "wb") as stream:
                headers = list(parts.chunks(_ExternalTensors(stream, location)))
            _write_chunks(model_tmp, headers)

        atomic_write(path.with_name(location), write_data)

    return atomic_write(path, write_model)


def make_session(
    graph_or_model: Graph | onnx.ModelProto | str | os.PathLike | bytes,
    *,
    threads: int | None = None,
    optimization: str = "all",
):
    """An onnxruntime CPU session for a graph, a ModelProto, a file or serialized bytes.

    ``threads`` pins the intra-op thread count (and runs ops sequentially, with one inter-op
    thread); the workers then stop spinning when a run ends, so sessions side by side (the
    benchmarks interleave them) do not keep each other's cores busy. ``optimization`` is onnxruntime's graph optimization level: ``all``,
    ``extended``, ``basic`` or ``disable``.
    """
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimization not in levels:
        raise IrtoolError(f"optimization '{optimization}' is not one of {', '.join(levels)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3
    if threads is not None:
        if threads < 1:
            raise IrtoolError(f"threads must be at least 1, not {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.force_spinning_stop", "1")

    def session(source):
        try:
            return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise IrtoolError(f"onnxruntime cannot load the model: {_one_line(str(exc))}") from None

    if isinstance(graph_or_model, Graph):
        if _constant_bytes(graph_or_model) <= EXTERNAL_DATA_THRESHOLD:
            return session(onnx_bytes(graph_or_model))
        with tempfile.TemporaryDirectory(prefix="irtool-") as folder:
            return session(str(save_onnx(graph_or_model, Path(folder) / "model.onnx", external_data=True)))
    if isinstance(graph_or_model, onnx.ModelProto):
        try:
            return session(graph_or_model.SerializeToString())
        except ValueError as exc:  # protobuf refuses messages over 2 GB
            raise IrtoolError(
                f"model is too big to serialize ({exc}); pass a file with external data"
            ) from None
    if isinstance(graph_or_model, (str, os.PathLike)):
        return session(str(graph_or_model))
    if isinstance(graph_or_model, bytes):
        return session(graph_or_model)
    raise IrtoolError(f"cannot run a {type(graph_or_model).__name__} with onnxruntime")


def run_onnxruntime(
    graph_or_model: Graph | onnx.ModelProto | str | os.PathLike | bytes,
    inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    *,
    threads: int | None = None,
) -> list[np.ndarray]:
    """Run the model once in onnxruntime; inputs by position or by name, outputs in order."""
    session = make_session(graph_or_model, threads=threads)
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        extra = [n for n in inputs if n not in names]
        if missing or extra:
            raise IrtoolError(f"model inputs are {names}; missing {missing}, unknown {extra}")
        feeds = dict(inputs)
    else:
        if len(inputs) != len(names):
            raise IrtoolError(f"model takes {len(names)} inputs {names}, got {len(inputs)}")
        feeds = dict(zip(names, inputs))
    try:
        return session.run(None, {k: np.asarray(v) for k, v in feeds.items()})
    except Exception as exc:  # noqa: BLE001
        raise IrtoolError(f"onnxruntime failed to run the model: {_one_line(str(exc))}") from None


# -- helpers -----------------------------------------------------------------------------------
def _target_opset(graph: Graph, opset: int | None) -> int:
    target = opset if opset is not None else max(graph.opset, MIN_OPSET)
    if target < MIN_OPSET:
        raise IrtoolError(f"cannot emit opset {target}: irtool writes opset {MIN_OPSET} and newer")
    return target


def _constant_bytes(graph: Graph) -> int:
    return sum(v.const.nbytes for v in graph.constants.values() if v.const is not None)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _write_chunks(path: Path, chunks) -> None:
    with open(path, "wb") as stream:
        for chunk in chunks:
            stream.write(chunk)


# -- tensors -----------------------------------------------------------------------------------
def _raw_code(array: np.ndarray) -> int | None:
    """The ONNX element type when the array can be stored as raw little-endian bytes."""
    if array.dtype.byteorder == ">" or sys.byteorder != "little":
        return None
    return _RAW_CODES.get(array.dtype)


def _byte_view(array: np.ndarray) -> memoryview:
    flat = np.ascontiguousarray(array).reshape(-1)
    return memoryview(flat).cast("B") if flat.size else memoryview(b"")


def array_to_tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    """A TensorProto holding ``array``: raw little-endian bytes (numpy_helper for other dtypes)."""
    tensor = onnx.TensorProto()
    _fill_tensor(tensor, name, array)
    return tensor


def _fill_tensor(tensor: onnx.TensorProto, name: str, array: np.ndarray) -> None:
    code = _raw_code(array)
    if code is None:
        tensor.CopyFrom(numpy_helper.from_array(array, name))
        return
    tensor.dims.extend(array.shape)
    tensor.data_type = code
    if name:
        tensor.name = name
    tensor.raw_data = np.ascontiguousarray(array).tobytes()


def _inline_tensor(name: str, array: np.ndarray) -> list:
    """The serialized TensorProto as chunks; the weights are a view, not a copy."""
    code = _raw_code(array)
    if code is None:
        return [numpy_helper.from_array(array, name).SerializeToString()]
    header = onnx.TensorProto(dims=array.shape, data_type=code, name=name).SerializeToString()
    return [header, length_prefix(TENSOR_RAW_DATA, array.nbytes), _byte_view(array)]


class _ExternalTensors:
    """Writes big tensors to an open data file; returns their TensorProtos pointing there."""

    def __init__(self, stream: BinaryIO, location: str):
        self.stream = stream
        self.location = location
        self.offset = 0

    def __call__(self, name: str, array: np.ndarray) -> list:
        code = _raw_code(array)
        if code is None or array.nbytes < _EXTERNAL_MIN_BYTES:
            return _inline_tensor(name, array)
        padding = -self.offset % _EXTERNAL_ALIGNMENT
        self.stream.write(b"\0" * padding)
        self.offset += padding
        self.stream.write(_byte_view(array))
        tensor = onnx.TensorProto(dims=array.shape, data_type=code, name=name)
        for key, value in (("location", self.location), ("offset", self.offset), ("length", array.nbytes)):
            tensor.external_data.add(key=key, value=str(value))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        self.offset += array.nbytes
        return [tensor.SerializeToString()]


class _ModelParts:
    """An emitted model split around its initializers, in protobuf field order.

    ``model()`` assembles a ModelProto; ``chunks()`` yields its serialization piece by piece
    (the same bytes), with each weight written straight from its array.
    """

    def __init__(self, head, graph_head, initializers, graph_tail, tail):
        self.head: onnx.ModelProto = head  # ModelProto fields before graph (1-6)
        self.graph_head: onnx.GraphProto = graph_head  # node, name
        self.initializers: list[tuple[str, np.ndarray]] = initializers
        self.graph_tail: onnx.GraphProto = graph_tail  # doc_string, input, output, value_info
        self.tail: onnx.ModelProto = tail  # opset_import, metadata_props, functions

    def nbytes(self) -> int:
        return sum(array.nbytes for _, array in self.initializers)

    def model(self) -> onnx.ModelProto:
        model = onnx.ModelProto()
        model.MergeFrom(self.head)
        model.graph.MergeFrom(self.graph_head)
        for name, array in self.initializers:
            _fill_tensor(model.graph.initializer.add(), name, array)
        model.graph.MergeFrom(self.graph_tail)
        model.MergeFrom(self.tail)
        return model

    def model_without_weights(self, max_elements: int = 1024) -> onnx.ModelProto:
        """The model with big initializers replaced by typed inputs (for shape inference)."""
        model = onnx.ModelProto()
        model.MergeFrom(self.head)
        model.graph.MergeFrom(self.graph_head)
        model.graph.MergeFrom(self.graph_tail)
        for name, array in self.initializers:
            if array.size <= max_elements:
                _fill_tensor(model.graph.initializer.add(), name, array)
            elif _raw_code(array) is not None:
                info = onnx.helper.make_tensor_value_info(name, _raw_code(array), array.shape)
                model.graph.input.append(info)
        model.MergeFrom(self.tail)
        return model

    def chunks(self, tensor: Callable[[str, np.ndarray], list]):
        graph = [self.graph_head.SerializeToString()]
        for name, array in self.initializers:
            pieces = tensor(name, array)
            graph += [length_prefix(GRAPH_INITIALIZER, sum(len(p) for p in pieces)), *pieces]
        graph.append(self.graph_tail.SerializeToString())
        yield self.head.SerializeToString()
        yield length_prefix(MODEL_GRAPH, sum(len(p) for p in graph))
        yield from graph
        yield self.tail.SerializeToString()


# -- attributes --------------------------------------------------------------------------------
_KIND_CODES = {
    "int": _A.INT, "float": _A.FLOAT, "string": _A.STRING, "tensor": _A.TENSOR, "graph": _A.GRAPH,
    "ints": _A.INTS, "floats": _A.FLOATS, "strings": _A.STRINGS,
}  # fmt: skip


def _scalar_kind(value: Any) -> int | None:
    if isinstance(value, (bool, int, np.integer, np.bool_)):
        return _A.INT
    if isinstance(value, (float, np.floating)):
        return _A.FLOAT
    if isinstance(value, str):
        return _A.STRING
    if isinstance(value, (bytes, onnx.GraphProto)):
        return _A.GRAPH
    if isinstance(value, (np.ndarray, onnx.TensorProto)):
        return _A.TENSOR
    if isinstance(value, onnx.SparseTensorProto):
        return _A.SPARSE_TENSOR
    if isinstance(value, onnx.TypeProto):
        return _A.TYPE_PROTO
    return None


_LIST_OF = {
    _A.INT: _A.INTS, _A.FLOAT: _A.FLOATS, _A.STRING: _A.STRINGS, _A.TENSOR: _A.TENSORS,
    _A.GRAPH: _A.GRAPHS, _A.SPARSE_TENSOR: _A.SPARSE_TENSORS, _A.TYPE_PROTO: _A.TYPE_PROTOS,
}  # fmt: skip


def _attribute_kind(value: Any, declared: int | None, empty_hint: int | None) -> int:
    if declared is not None:
        return declared
    if isinstance(value, (list, tuple)):
        if not value:
            return empty_hint if empty_hint is not None else _A.INTS
        kinds = {_scalar_kind(v) for v in value}
        if kinds == {_A.INT, _A.FLOAT}:
            return _A.FLOATS
        if len(kinds) == 1 and None not in kinds:
            return _LIST_OF[kinds.pop()]
        raise IrtoolError(f"list attribute mixes element types: {value!r}")
    kind = _scalar_kind(value)
    if kind is None:
        raise IrtoolError(f"attribute value {value!r} has no ONNX attribute type")
    return kind


def _graph_proto(value: Any) -> onnx.GraphProto:
    return value if isinstance(value, onnx.GraphProto) else onnx.GraphProto.FromString(value)


def _tensor_proto(value: Any) -> onnx.TensorProto:
    return value if isinstance(value, onnx.TensorProto) else array_to_tensor("", np.asarray(value))


def make_attribute(
    name: str, value: Any, *, declared: int | None = None, empty_hint: int | None = None
) -> onnx.AttributeProto:
    """An AttributeProto from an IR attribute value (see ``frontends.onnx`` for the mapping)."""
    kind = _attribute_kind(value, declared, empty_hint)
    attr = onnx.AttributeProto(name=name, type=kind)
    if kind == _A.INT:
        attr.i = int(value)
    elif kind == _A.FLOAT:
        attr.f = float(value)
    elif kind == _A.STRING:
        attr.s = str(value).encode("utf-8", "surrogateescape")
    elif kind == _A.TENSOR:
        attr.t.CopyFrom(_tensor_proto(value))
    elif kind == _A.GRAPH:
        attr.g.CopyFrom(_graph_proto(value))
    elif kind == _A.SPARSE_TENSOR:
        attr.sparse_tensor.CopyFrom(value)
    elif kind == _A.TYPE_PROTO:
        attr.tp.CopyFrom(value)
    elif kind == _A.INTS:
        attr.ints.extend(int(v) for v in np.asarray(value).reshape(-1).tolist())
    elif kind == _A.FLOATS:
        attr.floats.extend(float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1).tolist())
    elif kind == _A.STRINGS:
        attr.strings.extend(str(v).encode("utf-8", "surrogateescape") for v in value)
    elif kind == _A.TENSORS:
        attr.tensors.extend(_tensor_proto(v) for v in value)
    elif kind == _A.GRAPHS:
        attr.graphs.extend(_graph_proto(v) for v in value)
    elif kind == _A.SPARSE_TENSORS:
        attr.sparse_tensors.extend(value)
    elif kind == _A.TYPE_PROTOS:
        attr.type_protos.extend(value)
    return attr


def _infer_output_types(parts: _ModelParts) -> None:
    """Type the graph outputs the IR left untyped, with ONNX shape inference on the weightless model.

    Graph outputs must be typed in ONNX; outputs inference cannot type stay as they are.
    """
    light = parts.model_without_weights()
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - best effort: the checker reports what stays untyped
        return
    known = {info.name: info.type for info in (*inferred.graph.value_info, *inferred.graph.output)}
    for info in parts.graph_tail.output:
        if not info.HasField("type") and info.name in known and known[info.name].WhichOneof("value"):
            info.type.CopyFrom(known[info.name])


# -- older opsets ------------------------------------------------------------------------------
class _NodeForm:
    """A node on its way out: what the downgrade converters may rewrite."""

    __slots__ = ("node", "op", "inputs", "attrs", "opset")

    def __init__(self, node: Node, opset: int):
        self.node = node
        self.op = node.op
        self.inputs: list[Value | None] = list(node.inputs)
        self.attrs: dict[str, Any] = dict(node.attrs)
        self.opset = opset

    def fail(self, problem: str) -> IrtoolError:
        where = f"node '{self.node.name}' ({self.op})"
        return IrtoolError(f"{problem}; cannot emit opset {self.opset}", where=where)

    def has_input(self, index: int) -> bool:
        return index < len(self.inputs) and self.inputs[index] is not None

    def constant_input(self, index: int, role: str) -> np.ndarray:
        """Input ``index``'s constant value, flattened, or a located error naming its ``role``."""
        value = self.inputs[index] if index < len(self.inputs) else None
        if value is None or value.const is None:
            raise self.fail(f"its {role} input is not a constant")
        return value.const.reshape(-1)

    def rank(self) -> int | None:
        source = self.inputs[0] if self.inputs else None
        return source.type.rank if source is not None and source.type is not None else None


Downgrade = Callable[[_NodeForm, "_Emitter"], None]


def _axes_input_to_attribute(form: _NodeForm, emitter: _Emitter) -> None:
    """Reduce ops before opset 18 take ``axes`` as an attribute."""
    if form.has_input(1):
        axes = [int(a) for a in form.constant_input(1, "axes")]
        if axes:
            form.attrs["axes"] = axes
    form.inputs = form.inputs[:1]
    if form.attrs.pop("noop_with_empty_axes", 0) and "axes" not in form.attrs:
        raise form.fail("noop_with_empty_axes=1 with no axes")


def _split_sizes_input(form: _NodeForm, emitter: _Emitter) -> None:
    """Split before opset 18 has no ``num_outputs``: it splits evenly by the output count."""
    count = form.attrs.pop("num_outputs", None)
    if count is None or form.has_input(1):
        return
    source = form.inputs[0]
    shape = source.type.shape if source is not None and source.type is not None else None
    axis = int(form.attrs.get("axis", 0))
    size = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
    if isinstance(size, int) and size % count:  # opset 18 makes the last chunk smaller
        chunk = math.ceil(size / count)
        sizes = np.array([chunk] * (count - 1) + [size - chunk * (count - 1)], dtype=np.int64)
        form.inputs = [source, emitter.new_constant(f"{form.node.name}_split", sizes)]


def _pad_axes_into_pads(form: _NodeForm, emitter: _Emitter) -> None:
    """Pad before opset 18 has no ``axes`` input: pads name every axis."""
    if not form.has_input(3):
        return
    axes, pads = form.constant_input(3, "axes"), form.constant_input(1, "pads")
    rank = form.rank()
    if rank is None:
        raise form.fail("its input rank is unknown, so its pads cannot name every axis")
    full = np.zeros(2 * rank, dtype=np.int64)
    for i, axis in enumerate(int(a) % rank for a in axes):
        full[axis], full[axis + rank] = pads[i], pads[i + len(axes)]
    form.inputs = [form.inputs[0], emitter.new_constant(f"{form.node.name}_pads", full), *form.inputs[2:3]]


def _resize_drop_new_attributes(form: _NodeForm, emitter: _Emitter) -> None:
    """Resize before opset 18 has no antialias, axes or keep_aspect_ratio_policy."""
    for key, default in (("antialias", 0), ("keep_aspect_ratio_policy", "stretch")):
        if form.attrs.pop(key, default) != default:
            raise form.fail(f"{key} is not {default!r}")
    axes = form.attrs.pop("axes", None)
    rank = form.rank()
    if axes is not None and (rank is None or [int(a) % rank for a in axes] != list(range(rank))):
        raise form.fail("its axes do not list every dimension in order")


_REDUCE_OPS = (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
    "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare",
)  # fmt: skip

DOWNGRADES: dict[str, tuple[int, Downgrade]] = {
    **{op: (IR_OPSET, _axes_input_to_attribute) for op in _REDUCE_OPS},
    "Split": (IR_OPSET, _split_sizes_input),
    "Pad": (IR_OPSET, _pad_axes_into_pads),
    "Resize": (IR_OPSET, _resize_drop_new_attributes),
}
"""Default-domain op -> (opset where the IR's form begins, converter to the form before it)."""


# -- the emitter -------------------------------------------------------------------------------
class _Emitter:
    """Turns one graph into ``_ModelParts`` without changing the graph."""

    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self.names = {v.name for v in graph.values()} | {n.name for n in graph.nodes}
        self.extra_constants: list[tuple[str, np.ndarray]] = []

    def new_constant(self, hint: str, array: np.ndarray) -> Value:
        """A constant that exists only in the emitted model (made by a downgrade)."""
        name, k = hint, 0
        while name in self.names:
            k += 1
            name = f"{hint}_{k}"
        self.names.add(name)
        value = Value(name)
        value.const = array
        self.extra_constants.append((name, array))
        return value

    def parts(self) -> _ModelParts:
        graph, meta = self.graph, self.graph.meta
        graph_head = onnx.GraphProto(name=graph.name or "main")
        # A graph output that is a constant must be produced by a node.
        output_constants = [v for v in dict.fromkeys(graph.outputs) if v.const is not None]
        for value in output_constants:
            graph_head.node.append(self._constant_node(value))
        for node in graph.nodes:
            graph_head.node.append(self._node(node))
        skip = {v.name for v in output_constants}
        initializers = [(name, v.const) for name, v in graph.constants.items() if name not in skip]
        initializers += self.extra_constants

        graph_tail = onnx.GraphProto(doc_string=meta.get("graph_doc_string", ""))
        graph_tail.input.extend(self._value_info(v) for v in graph.inputs)
        graph_tail.output.extend(self._value_info(v) for v in graph.outputs)
        outputs = set(graph.outputs)
        for node in graph.nodes:
            for value in node.outputs:
                typed = value.type is not None or META_ONNX_TYPE in value.meta
                if typed and value not in outputs and not self._omitted(value):
                    graph_tail.value_info.append(self._value_info(value))

        tail = onnx.ModelProto()
        domains = {"": self.opset, **graph.opset_imports}
        for node in graph.nodes:
            domains.setdefault(node.domain, 1)
        tail.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in domains.items())
        for key, value in (meta.get("metadata_props") or {}).items():
            tail.metadata_props.add(key=key, value=str(value))
        for function in meta.get("onnx_functions", ()):
            tail.functions.append(onnx.FunctionProto.FromString(function))

        head = onnx.ModelProto(producer_name="irtool", producer_version=__version__)
        needed = onnx.helper.find_min_ir_version_for(tail.opset_import, ignore_unknown=True)
        head.ir_version = max(int(meta.get("ir_version", 0)), needed)
        if meta.get("domain"):
            head.domain = meta["domain"]
        if meta.get("model_version"):
            head.model_version = int(meta["model_version"])
        if meta.get("doc_string"):
            head.doc_string = meta["doc_string"]
        parts = _ModelParts(head, graph_head, initializers, graph_tail, tail)
        if any(not info.HasField("type") for info in graph_tail.output):
            _infer_output_types(parts)
        return parts

    def _constant_node(self, value: Value) -> onnx.NodeProto:
        name, k = f"{value.name}_constant", 0
        while name in self.names:
            k += 1
            name = f"{value.name}_constant_{k}"
        self.names.add(name)
        tensor = array_to_tensor("", value.const)
        return onnx.helper.make_node("Constant", [], [value.name], name=name, value=tensor)

    @staticmethod
    def _omitted(value: Value) -> bool:
        return bool(value.meta.get(META_OMITTED)) and not value.uses and not value.is_graph_output

    def _node(self, node: Node) -> onnx.NodeProto:
        form = _NodeForm(node, self.opset)
        if not node.domain and node.op in DOWNGRADES:
            since, downgrade = DOWNGRADES[node.op]
            if self.opset < since:
                downgrade(form, self)
        inputs = [v.name if v is not None else "" for v in form.inputs]
        while inputs and not inputs[-1]:
            inputs.pop()
        outputs = ["" if self._omitted(v) else v.name for v in node.outputs]
        proto = onnx.NodeProto(
            op_type=form.op, domain=node.domain, name=node.name, input=inputs, output=outputs
        )
        opdef = lookup(node.op, node.domain)
        hints = node.meta.get(META_EMPTY_LIST_ATTRS, {})
        for key, value in form.attrs.items():
            spec = opdef.attrs.get(key) if opdef is not None else None
            declared = _KIND_CODES.get(spec.kind) if spec is not None else None
            try:
                attribute = make_attribute(key, value, declared=declared, empty_hint=hints.get(key))
            except (IrtoolError, TypeError, ValueError) as exc:
                where = f"node '{node.name}' ({node.op})"
                raise IrtoolError(f"attribute '{key}': {exc}", where=where) from None
            proto.attribute.append(attribute)
        if node.meta.get("doc_string"):
            proto.doc_string = node.meta["doc_string"]
        for key, value in (node.meta.get("metadata_props") or {}).items():
            proto.metadata_props.add(key=key, value=str(value))
        return proto

    @staticmethod
    def _value_info(value: Value) -> onnx.ValueInfoProto:
        info = onnx.ValueInfoProto(name=value.name)
        if value.type is None:
            if META_ONNX_TYPE in value.meta:
                info.type.CopyFrom(onnx.TypeProto.FromString(value.meta[META_ONNX_TYPE]))
            return info
        tensor = info.type.tensor_type
        tensor.elem_type = value.type.dtype.onnx
        if value.type.shape is not None:
            tensor.shape.SetInParent()
            for dim in value.type.shape:
                proto = tensor.shape.dim.add()
                if isinstance(dim, (int, np.integer)):
                    proto.dim_value = int(dim)
                elif isinstance(dim, str):
                    proto.dim_param = dim
        return info
