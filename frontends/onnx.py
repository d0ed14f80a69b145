"""ONNX -> IR.

``load_onnx`` reads a ModelProto (opset 13 and newer), types every value with ONNX shape
inference and lowers the graph into the IR:

- initializers and ``Constant`` nodes become graph constants: read-only numpy arrays; a file's
  weights are views of the bytes read from it, so they are copied once, never parsed. An
  initializer also listed as a graph input (old exporters' default value) is a constant too,
  and stops being an input: onnxruntime can then fold and prepack it;
- every other node keeps its ONNX op name, domain, name and attributes; a small table of
  converters keyed by op and opset (``UPGRADES``) rewrites the few ops whose form changed up to
  opset 18 into their opset-18 form, the IR's form (see ``ir/registry.py``);
- ops irtool does not know (other domains, or not in the registry) are copied unchanged, so
  they round-trip through ``backends.onnx.to_onnx``; graph attributes stay serialized
  ``GraphProto`` bytes and are never interpreted here;
- a node's ``source`` is the layer name users know: ``layer1.0.conv1`` for a PyTorch export's
  ``/layer1/layer1.0/conv1/Conv``, the node name otherwise;
- ``graph.opset`` is the model's default-domain opset, ``graph.opset_imports`` the other
  domains'; ``graph.meta`` keeps ``ir_version``, ``producer_name``, ``doc_string``,
  ``metadata_props`` (a dict) and the model's local functions (``onnx_functions``).

Attribute values are Python values: ``int``, ``float``, ``str``, ``list`` of those, numpy
arrays for tensors, ``bytes`` for graphs (serialized ``GraphProto``); sparse tensors and type
protos stay protobuf messages.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..ir.core import Graph, Value
from ..ir.errors import IrtoolError
from ..ir.types import DType, TensorType
from .onnx_wire import GRAPH_INITIALIZER, LEN, MODEL_GRAPH, TENSOR_RAW_DATA, fields, length_prefix

__all__ = [
    "IR_OPSET",
    "MIN_OPSET",
    "UPGRADES",
    "load_onnx",
    "source_name",
    "torch_scope",
    "tensor_to_array",
    "tensor_type",
]

MIN_OPSET = 13
"""The oldest default-domain opset the frontend reads."""
IR_OPSET = 18
"""The opset whose op forms the IR uses."""

ONNX_DOMAINS = ("", "ai.onnx")

# Meta keys shared with backends.onnx.
META_OMITTED = "onnx_omitted"
"""Value meta: the ONNX output slot was empty (an optional output nobody asked for)."""
META_ONNX_TYPE = "onnx_type"
"""Value meta: the serialized TypeProto of a value whose type the IR cannot express."""
META_EMPTY_LIST_ATTRS = "onnx_empty_list_attrs"
"""Node meta: ``{attribute: AttributeProto type}`` for empty list attributes (ints, floats...)."""

# Initializers up to this many elements stay in the copy of the model that the checker and shape
# inference see (shape data propagation needs small constants such as Reshape targets); bigger
# ones (weights) are replaced there by typed graph inputs, so no weight bytes are re-serialized.
_INFERENCE_CONST_ELEMENTS = 1024

_RAW_DTYPES = {
    d.onnx: np.dtype(d.name).newbyteorder("<")
    for d in DType
    if d not in (DType.string, DType.bfloat16)
}


# -- entry point -------------------------------------------------------------------------------
def load_onnx(
    path_or_model: str | os.PathLike | onnx.ModelProto,
    *,
    base_dir: str | os.PathLike | None = None,
) -> Graph:
    """Lower an ONNX model (a file or a ModelProto) into a new IR graph.

    External data is read from ``base_dir``, which defaults to the model file's folder; its
    locations must stay inside that folder. Any problem with the input raises ``IrtoolError``
    naming the file. Constants are read-only arrays; a file's weights are views of its bytes.
    """
    if isinstance(path_or_model, onnx.ModelProto):
        where = f"model '{path_or_model.graph.name or 'unnamed'}'"
        folder = Path(base_dir) if base_dir is not None else None
        model, initializers = _detach_initializers(path_or_model)
    else:
        path = Path(path_or_model)
        where = str(path)
        folder = Path(base_dir) if base_dir is not None else path.parent
        model, initializers = _parse(_read_file(path), where)
    if not model.HasField("graph") or not model.opset_import:
        raise IrtoolError("not an ONNX model (no graph or opset_import)", where=where)
    _check_strings(model, initializers, where)
    opset = _default_opset(model, where)
    types = _check_and_infer(model, initializers, where)
    return _Importer(model, initializers, opset, types, folder, where).run()


# -- reading -----------------------------------------------------------------------------------
class _Initializer:
    """An initializer: its TensorProto, and where its raw bytes are when they stayed in the file.

    For big tensors read from a file, ``proto`` has no data: the array is a view of ``buffer``
    (the file's bytes) at ``offset``, so weights are neither parsed into protobuf nor copied.
    """

    __slots__ = ("proto", "buffer", "offset", "length")

    def __init__(
        self, proto: onnx.TensorProto, buffer: bytes | None = None, offset: int = 0, length: int = 0
    ):
        self.proto = proto
        self.buffer = buffer
        self.offset = offset
        self.length = length

    @property
    def name(self) -> str:
        return self.proto.name

    @property
    def helps_inference(self) -> bool:
        """Small in-model tensors (shapes, axes) that shape inference may propagate."""
        return (
            self.buffer is None
            and self.proto.data_location != onnx.TensorProto.EXTERNAL
            and _numel(self.proto) <= _INFERENCE_CONST_ELEMENTS
        )

    def array(self, base_dir) -> np.ndarray:
        if self.buffer is None:
            return tensor_to_array(self.proto, base_dir)
        dtype = _RAW_DTYPES[self.proto.data_type]
        dims = _checked_dims(self.proto)
        expected = _numel(self.proto) * dtype.itemsize
        if self.length != expected:
            raise IrtoolError(
                f"tensor '{self.name}' has {self.length} bytes of raw data, its shape {list(dims)} needs {expected}"
            )
        count = expected // dtype.itemsize
        return np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.offset).reshape(dims)


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise IrtoolError("file does not exist", where=str(path))
    if path.is_dir():
        raise IrtoolError("is a folder, not an ONNX file", where=str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IrtoolError(f"cannot read: {exc.strerror}", where=str(path)) from None
    if not data:
        raise IrtoolError("file is empty, not an ONNX model", where=str(path))
    return data


def _parse(data: bytes, where: str) -> tuple[onnx.ModelProto, list[_Initializer]]:
    try:
        return _parse_keeping_weights(data)
    except DecodeError:
        # A serialized ModelProto starts with its ir_version field (tag 0x08).
        problem = (
            "truncated or corrupt ONNX file (protobuf parse failed)"
            if data[:1] == b"\x08"
            else "not an ONNX model (not a ModelProto protobuf)"
        )
        raise IrtoolError(problem, where=where) from None


_RAW_IN_BUFFER_BYTES = 4096
"""Initializers with less raw data are parsed (copied) as usual; bigger ones stay views of the file."""


def _parse_keeping_weights(data: bytes) -> tuple[onnx.ModelProto, list[_Initializer]]:
    """Parse a serialized ModelProto except its initializers' raw bytes, which stay in ``data``.

    Protobuf's parser would copy every weight into its own memory (and reading a bytes field
    copies again); walking the wire format to the few initializer fields avoids both.
    """
    view = memoryview(data)
    model_fields: list[memoryview | bytes] = []
    initializers: list[_Initializer] = []
    for number, wire, start, end, field_start in fields(view, 0, len(view)):
        if number != MODEL_GRAPH or wire != LEN:
            model_fields.append(view[field_start:end])
            continue
        graph_fields = []
        for number2, wire2, start2, end2, field_start2 in fields(view, start, end):
            if number2 == GRAPH_INITIALIZER and wire2 == LEN:
                initializers.append(_initializer(data, view, start2, end2))
            else:
                graph_fields.append(view[field_start2:end2])
        graph = b"".join(graph_fields)
        model_fields.append(length_prefix(MODEL_GRAPH, len(graph)) + graph)
    return onnx.ModelProto.FromString(b"".join(model_fields)), initializers


def _initializer(data: bytes, view: memoryview, start: int, end: int) -> _Initializer:
    raw = None
    rest = []
    for number, wire, value_start, value_end, field_start in fields(view, start, end):
        if number == TENSOR_RAW_DATA and wire == LEN:
            raw = (value_start, value_end - value_start)
        else:
            rest.append(view[field_start:value_end])
    if raw is None or raw[1] < _RAW_IN_BUFFER_BYTES or sys.byteorder != "little":
        return _Initializer(onnx.TensorProto.FromString(view[start:end]))
    header = onnx.TensorProto.FromString(b"".join(rest))
    if header.data_type not in _RAW_DTYPES:
        return _Initializer(onnx.TensorProto.FromString(view[start:end]))
    return _Initializer(header, data, raw[0], raw[1])


def _detach_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[_Initializer]]:
    """A copy of the model without initializers (cheap: no weights), and the initializers."""
    light = _copy_without(model, "graph")
    light.graph.CopyFrom(_copy_without(model.graph, "initializer"))
    return light, [_Initializer(t) for t in model.graph.initializer]


def _copy_without(message, skipped: str):
    clone = type(message)()
    for field, value in message.ListFields():
        if field.name == skipped:
            continue
        if field.is_repeated:
            getattr(clone, field.name).extend(value)
        elif field.message_type is not None:
            getattr(clone, field.name).CopyFrom(value)
        else:
            setattr(clone, field.name, value)
    return clone


# -- checking ----------------------------------------------------------------------------------
def _bad_string(message, path: str) -> str | None:
    """The path of the first string field that is not valid UTF-8 (protobuf hands those out as
    ``bytes``, and using them fails far from here: TypeError, UnicodeDecodeError), else None."""
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        for i, item in enumerate(values):
            where = f"{path}.{field.name}" + (f"[{i}]" if field.is_repeated else "")
            if field.type == FieldDescriptor.TYPE_STRING and not isinstance(item, str):
                return where
            if field.type == FieldDescriptor.TYPE_MESSAGE and (found := _bad_string(item, where)):
                return found
    return None


def _check_strings(model: onnx.ModelProto, initializers: list[_Initializer], where: str) -> None:
    found = _bad_string(model, "model") or next(
        (f for init in initializers if (f := _bad_string(init.proto, "initializer"))), None
    )
    if found:
        raise IrtoolError(f"{found} is not valid UTF-8 text", where=where)


def _default_opset(model: onnx.ModelProto, where: str) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ONNX_DOMAINS]
    opset = versions[0] if versions else IR_OPSET
    if opset < MIN_OPSET:
        raise IrtoolError(
            f"opset {opset} is older than {MIN_OPSET}; upgrade it with onnx.version_converter",
            where=where,
        )
    return opset


def _check_and_infer(
    model: onnx.ModelProto, initializers: list[_Initializer], where: str
) -> dict[str, onnx.TypeProto]:
    """Run the checker's basic check and shape inference on the model without its weights.

    Returns the type of every value name that has one. Shape inference failing is not an
    error: the types the model itself declares are used instead.
    """
    light = _inference_model(model, initializers)
    try:
        onnx.checker.check_model(light)
    except onnx.checker.ValidationError as exc:
        raise IrtoolError(f"fails the ONNX checker: {_one_line(str(exc))}", where=where) from None
    declared = _declared_types(model.graph)
    for data_prop in (True, False) if _data_prop_is_cheap(light) else (False,):
        try:
            inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=data_prop)
        except Exception:  # noqa: BLE001 - inference is best effort; fall back to declared types
            continue
        return {**declared, **_declared_types(inferred.graph)}
    return declared


_DATA_PROP_MAX_ELEMENTS = 1 << 20


def _data_prop_is_cheap(light: onnx.ModelProto) -> bool:
    """ONNX's data propagation makes one dim per element of a 1-D tensor (a Cast of a 1-D tensor
    of 2**31 elements takes 10+ s). It is for small shape tensors, so it is skipped when a
    declared 1-D tensor, or a value in a small integer constant (a shape), is huge."""
    graph = light.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 1 and dims[0].dim_value > _DATA_PROP_MAX_ELEMENTS:
            return False
    for tensor in graph.initializer:
        if tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            try:
                values = numpy_helper.to_array(tensor)
            except Exception:  # noqa: BLE001 - a malformed tensor is reported when it is imported
                continue
            if values.size and np.abs(values.astype(np.float64)).max() > _DATA_PROP_MAX_ELEMENTS:
                return False
    return True


def _inference_model(model: onnx.ModelProto, initializers: list[_Initializer]) -> onnx.ModelProto:
    """The model with small initializers and, for big ones, typed inputs instead of weights.

    Default-domain ops unknown to ONNX move to a private domain here: they are opaque to
    irtool and must not fail the checker.
    """
    light = onnx.ModelProto()
    light.CopyFrom(model)
    graph = light.graph
    graph.name = graph.name or "main"
    declared = {v.name for v in graph.input}
    for init in initializers:
        if init.helps_inference:
            graph.initializer.append(init.proto)
        elif init.name not in declared:
            proto = init.proto
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, proto.data_type, proto.dims))
    opaque_domain = "irtool.opaque"
    moved = False
    for node in graph.node:
        if node.domain in ONNX_DOMAINS and not onnx.defs.has(node.op_type):
            node.domain = opaque_domain
            moved = True
    if moved:
        light.opset_import.append(onnx.helper.make_opsetid(opaque_domain, 1))
    return light


def _numel(tensor: onnx.TensorProto) -> int:
    return math.prod(tensor.dims)


def _declared_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    types: dict[str, onnx.TypeProto] = {}
    for info in (*graph.value_info, *graph.input, *graph.output):
        if info.HasField("type"):
            types[info.name] = info.type
    return types


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- types and tensors -------------------------------------------------------------------------
def tensor_type(proto: onnx.TypeProto) -> TensorType | None:
    """The IR type of an ONNX tensor type; None for other kinds or element types the IR lacks."""
    if proto.WhichOneof("value") != "tensor_type":
        return None
    tensor = proto.tensor_type
    try:
        dtype = DType(tensor.elem_type)
    except ValueError:
        return None
    if not tensor.HasField("shape"):
        return TensorType(dtype, None)
    dims: list[int | str | None] = []
    for dim in tensor.shape.dim:
        kind = dim.WhichOneof("value")
        if kind == "dim_value":
            dims.append(dim.dim_value)
        elif kind == "dim_param" and not _ANONYMOUS_DIM.fullmatch(dim.dim_param):
            dims.append(dim.dim_param)
        else:  # onnx's shape inference names dims it cannot compute unk__N: they are unknown
            dims.append(None)
    return TensorType(dtype, tuple(dims))


_ANONYMOUS_DIM = re.compile(r"unk__\d+")


def tensor_to_array(tensor: onnx.TensorProto, base_dir: str | os.PathLike | None = None) -> np.ndarray:
    """A read-only numpy array with the tensor's contents.

    Raw data is viewed, not copied. External data is read from ``base_dir`` and must lie inside
    it. Raises ``IrtoolError`` naming the tensor for anything malformed.
    """
    dtype = _RAW_DTYPES.get(tensor.data_type)
    try:
        dims = _checked_dims(tensor)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            if dtype is None:
                raise IrtoolError(f"external data of element type {tensor.data_type} is not supported")
            array = _read_external(tensor, dtype, dims, base_dir)
        elif dtype is not None and tensor.HasField("raw_data") and sys.byteorder == "little":
            raw = tensor.raw_data
            expected = math.prod(dims) * dtype.itemsize
            if len(raw) != expected:
                raise IrtoolError(
                    f"has {len(raw)} bytes of raw data, its shape {list(dims)} needs {expected}"
                )
            array = np.frombuffer(raw, dtype=dtype).reshape(dims)
        else:
            array = numpy_helper.to_array(tensor)
    except IrtoolError as exc:
        raise IrtoolError(f"tensor '{tensor.name}' {exc.message}") from None
    except (ValueError, TypeError, KeyError) as exc:  # numpy_helper: KeyError for an unknown element type
        raise IrtoolError(f"tensor '{tensor.name}' cannot be read: {type(exc).__name__}: {_one_line(str(exc))}") from None
    array.flags.writeable = False
    return array


def _checked_dims(tensor: onnx.TensorProto) -> tuple[int, ...]:
    dims = tuple(tensor.dims)
    if any(d < 0 for d in dims):
        raise IrtoolError(f"tensor '{tensor.name}' has negative dims {list(dims)}")
    return dims


def _read_external(tensor: onnx.TensorProto, dtype: np.dtype, dims: tuple[int, ...], base_dir) -> np.ndarray:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise IrtoolError(f"uses external data '{location}'; pass base_dir to say where it is")
    folder = Path(base_dir).resolve()
    relative = Path(location)
    if not location or relative.is_absolute() or ".." in relative.parts:
        raise IrtoolError(
            f"external data location '{location}' must be a relative path inside the model's folder"
        )
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder):
        raise IrtoolError(f"external data location '{location}' leads outside the model's folder")
    if not path.is_file():
        raise IrtoolError(f"external data file '{location}' does not exist in '{folder}'")
    count = math.prod(dims)
    offset = int(info.get("offset", 0))
    length = int(info.get("length", count * dtype.itemsize))
    if offset < 0 or length < 0:
        raise IrtoolError(f"external data '{location}' has a negative offset {offset} or length {length}")
    if length != count * dtype.itemsize:
        raise IrtoolError(f"external data length {length} does not match its shape {list(dims)}")
    if offset + length > path.stat().st_size:
        raise IrtoolError(f"external data '{location}' is shorter than offset {offset} + length {length}")
    try:
        return np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(dims)
    except OSError as exc:
        raise IrtoolError(f"cannot read external data '{location}': {exc.strerror or exc}") from None


_MAX_DENSE_BYTES = 1 << 31
"""A sparse tensor is made dense; a hostile one must not ask for terabytes."""


def _sparse_to_array(sparse: onnx.SparseTensorProto, base_dir) -> np.ndarray:
    dims = tuple(sparse.dims)
    values = tensor_to_array(sparse.values, base_dir)
    indices = tensor_to_array(sparse.indices, base_dir).astype(np.int64)
    size = math.prod(dims)
    if any(d < 0 for d in dims) or size * values.dtype.itemsize > _MAX_DENSE_BYTES:
        raise IrtoolError(f"sparse tensor '{sparse.values.name}' has dims {list(dims)}: negative, or too big to make dense")
    dense = np.zeros(size, dtype=values.dtype)
    flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), dims)
    dense[flat] = values.reshape(-1)
    dense = dense.reshape(dims)
    dense.flags.writeable = False
    return dense


# -- source names ------------------------------------------------------------------------------
def torch_scope(node_name: str, op_type: str) -> str | None:
    """The module scope of a PyTorch-exported node name (``layer1/layer1.0/conv1``), else None.

    PyTorch's ONNX exporter names a node ``/<scope>/<OpType>[_N]``; ops called directly in the
    root module have no scope.
    """
    head, _, last = node_name.rpartition("/")
    if not head.startswith("/") or len(head) < 2 or not last.startswith(op_type):
        return None
    if last != op_type and not (last[len(op_type)] == "_" and last[len(op_type) + 1 :].isdigit()):
        return None
    return head[1:]


def source_name(node_name: str, op_type: str, scopes: Collection[str] = ()) -> str:
    """The layer name users know a node by: its module's ``named_modules()`` name.

    In PyTorch's node names each scope is one module call, written as the module's qualified
    name from its last non-numeric atom on (``features.1.conv.0.0`` appears as ``conv.0.0``).
    So a scope that extends the one before it by numeric atoms (``conv`` then ``conv.0``) is a
    container's child, and any other scope is a child attribute:
    ``/features/features.1/conv/conv.0/conv.0.0/Conv`` -> ``features.1.conv.0.0``. A module
    called again gets its whole scope suffixed (``layer1/layer1.0/relu_1``); given the model's
    other ``scopes`` (see ``torch_scope``), a suffix whose unsuffixed scope exists is dropped.
    Other node names, and ops called in the root module, are returned unchanged.
    """
    scope = torch_scope(node_name, op_type)
    if scope is None:
        return node_name
    base, _, count = scope.rpartition("_")
    if count.isdigit() and base in scopes:
        scope = base
    atoms: list[str] = []
    previous = None
    for part in scope.split("/"):
        if not part:
            return node_name
        tail = part[len(previous) + 1 :] if previous and part.startswith(previous + ".") else ""
        if tail and all(a.isdigit() for a in tail.split(".")):
            atoms.extend(tail.split("."))
        else:
            atoms.extend(part.split("."))
        previous = part
    return ".".join(atoms)


# -- attributes --------------------------------------------------------------------------------
_A = onnx.AttributeProto


def _attribute_value(attr: onnx.AttributeProto, base_dir) -> Any:
    kind = attr.type
    if attr.ref_attr_name:
        raise IrtoolError(f"attribute '{attr.name}' refers to a function attribute outside a function")
    if kind == _A.FLOAT:
        return attr.f
    if kind == _A.INT:
        return attr.i
    if kind == _A.STRING:
        return attr.s.decode("utf-8", "surrogateescape")
    if kind == _A.TENSOR:
        return tensor_to_array(attr.t, base_dir)
    if kind == _A.GRAPH:
        return attr.g.SerializeToString()
    if kind == _A.FLOATS:
        return list(attr.floats)
    if kind == _A.INTS:
        return list(attr.ints)
    if kind == _A.STRINGS:
        return [s.decode("utf-8", "surrogateescape") for s in attr.strings]
    if kind == _A.TENSORS:
        return [tensor_to_array(t, base_dir) for t in attr.tensors]
    if kind == _A.GRAPHS:
        return [g.SerializeToString() for g in attr.graphs]
    if kind == _A.SPARSE_TENSOR:
        return _copy(attr.sparse_tensor)
    if kind == _A.SPARSE_TENSORS:
        return [_copy(t) for t in attr.sparse_tensors]
    if kind == _A.TYPE_PROTO:
        return _copy(attr.tp)
    if kind == _A.TYPE_PROTOS:
        return [_copy(t) for t in attr.type_protos]
    raise IrtoolError(f"attribute '{attr.name}' has unsupported type {kind}")


def _copy(message):
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


_LIST_KINDS = {_A.FLOATS, _A.INTS, _A.STRINGS, _A.TENSORS, _A.GRAPHS, _A.SPARSE_TENSORS, _A.TYPE_PROTOS}


def _constant_node_value(node: onnx.NodeProto, base_dir) -> np.ndarray:
    """The array a ``Constant`` node produces, whichever of its attributes holds it."""
    if len(node.attribute) != 1:
        raise IrtoolError("Constant needs exactly one value attribute")
    attr = node.attribute[0]
    if attr.name == "value":
        return tensor_to_array(attr.t, base_dir)
    if attr.name == "sparse_value":
        return _sparse_to_array(attr.sparse_tensor, base_dir)
    scalars = {
        "value_float": (np.float32, attr.f),
        "value_int": (np.int64, attr.i),
        "value_floats": (np.float32, list(attr.floats)),
        "value_ints": (np.int64, list(attr.ints)),
    }
    if attr.name in scalars:
        dtype, value = scalars[attr.name]
        array = np.array(value, dtype=dtype)
    elif attr.name == "value_string":
        array = np.array(attr.s.decode("utf-8"), dtype=object)
    elif attr.name == "value_strings":
        array = np.array([s.decode("utf-8") for s in attr.strings], dtype=object)
    else:
        raise IrtoolError(f"Constant has unknown attribute '{attr.name}'")
    array.flags.writeable = False
    return array


# -- opset-18 form -----------------------------------------------------------------------------
class _NodeForm:
    """A node being imported: what the converters may rewrite before it enters the graph."""

    __slots__ = ("op", "inputs", "attrs", "num_outputs", "name")

    def __init__(
        self, op: str, inputs: list[Value | None], attrs: dict[str, Any], num_outputs: int, name: str
    ):
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.num_outputs = num_outputs
        self.name = name


Converter = Callable[[_NodeForm, "_Importer"], None]


def _axes_attribute_to_input(form: _NodeForm, importer: _Importer) -> None:
    """Reduce ops before opset 18 (ReduceSum before 13) carry ``axes`` as an attribute."""
    axes = form.attrs.pop("axes", None)
    if axes is None:
        return
    value = importer.constant(f"{form.name}_axes", np.array(axes, dtype=np.int64))
    form.inputs = [form.inputs[0], value]


def _split_num_outputs(form: _NodeForm, importer: _Importer) -> None:
    """Split before opset 18 splits evenly by the output count when no sizes are given."""
    if len(form.inputs) < 2 or form.inputs[1] is None:
        form.inputs = form.inputs[:1]
        form.attrs["num_outputs"] = form.num_outputs


_REDUCE_OPS = (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
    "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare",
)  # fmt: skip

UPGRADES: dict[str, dict[int, Converter]] = {
    **{op: {MIN_OPSET: _axes_attribute_to_input} for op in _REDUCE_OPS},
    "Split": {MIN_OPSET: _split_num_outputs},
}
"""Default-domain op -> {first opset of an older form: converter to the opset-18 form}.

The converter of the newest form not newer than the model's opset runs; ops with no entry
(and models at opset 18 or later) are copied as they are. Squeeze, Unsqueeze, Pad, Resize and
Clip already take their operands as inputs from opset 13 on.
"""


def _upgrade(form: _NodeForm, opset: int, importer: _Importer) -> None:
    forms = UPGRADES.get(form.op)
    if not forms or opset >= IR_OPSET:
        return
    since = max((v for v in forms if v <= opset), default=None)
    if since is not None:
        forms[since](form, importer)


# -- the importer ------------------------------------------------------------------------------
class _Importer:
    """Builds one IR graph from one ModelProto."""

    def __init__(
        self,
        model: onnx.ModelProto,
        initializers: list[_Initializer],
        opset: int,
        types: dict[str, onnx.TypeProto],
        base_dir,
        where: str,
    ):
        self.model = model
        self.initializers = initializers
        self.opset = opset
        self.types = types
        self.base_dir = base_dir
        self.where = where
        self.graph = Graph(model.graph.name or "main", opset=opset)
        self.values: dict[str, Value] = {}
        # Names for values the converters create must not clash with the model's own.
        self.reserved = _value_names(model.graph) | {i.name for i in initializers}
        self.taken: set[str] = set()
        self.node_names: set[str] = set()
        self.scopes = {torch_scope(n.name, n.op_type) for n in model.graph.node} - {None}

    def run(self) -> Graph:
        graph, src = self.graph, self.model.graph
        self._copy_model_info()
        for init in self.initializers:
            self._add_constant(init.name, lambda i=init: i.array(self.base_dir))
        for sparse in src.sparse_initializer:
            self._add_constant(sparse.values.name, lambda s=sparse: _sparse_to_array(s, self.base_dir))
        for info in src.input:
            if info.name in self.values:  # an initializer listed as an input: a constant here
                continue
            declared = info.type if info.HasField("type") else None
            self.values[info.name] = self._typed(graph.add_input(info.name), declared)
            self.taken.add(info.name)
        for node in src.node:
            try:
                self._add_node(node)
            except IrtoolError as exc:
                label = f"node '{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node"
                raise IrtoolError(exc.message, where=f"{self.where}: {label}") from None
        for info in src.output:
            value = self.values.get(info.name)
            if value is None:
                raise IrtoolError(f"graph output '{info.name}' is never produced", where=self.where)
            graph.outputs.append(value)
            if info.HasField("type") and value.type is None:
                self._typed(value, info.type)
        return graph

    def _copy_model_info(self) -> None:
        model, graph = self.model, self.graph
        graph.opset_imports = {
            o.domain: o.version for o in model.opset_import if o.domain not in ONNX_DOMAINS
        }
        meta = graph.meta
        meta["ir_version"] = model.ir_version
        for key in ("producer_name", "producer_version", "domain", "doc_string"):
            if getattr(model, key):
                meta[key] = getattr(model, key)
        if model.model_version:
            meta["model_version"] = model.model_version
        if model.graph.doc_string:
            meta["graph_doc_string"] = model.graph.doc_string
        if model.metadata_props:
            meta["metadata_props"] = {p.key: p.value for p in model.metadata_props}
        if model.functions:
            meta["onnx_functions"] = [f.SerializeToString() for f in model.functions]

    def _add_constant(self, name: str, read: Callable[[], np.ndarray]) -> Value:
        try:
            array = read()
            value = self.graph.add_constant(name, array)
        except IrtoolError as exc:
            raise IrtoolError(exc.message, where=self.where) from None
        self.values[name] = value
        self.taken.add(name)
        return value

    def constant(self, hint: str, array: np.ndarray) -> Value:
        """A new constant with a name that clashes with nothing in the model (for converters)."""
        array.flags.writeable = False
        return self._add_constant(self._unique(hint), lambda: array)

    def _unique(self, hint: str) -> str:
        name, k = hint, 0
        while name in self.reserved or name in self.taken:
            k += 1
            name = f"{hint}_{k}"
        self.taken.add(name)
        return name

    def _unique_node(self, hint: str) -> str:
        name, k = hint, 0
        while name in self.node_names:
            k += 1
            name = f"{hint}_{k}"
        self.node_names.add(name)
        return name

    def _typed(self, value: Value, proto: onnx.TypeProto | None) -> Value:
        if proto is None:
            return value
        value.type = tensor_type(proto)
        if value.type is None:
            value.meta[META_ONNX_TYPE] = proto.SerializeToString()
        return value

    def _input(self, name: str) -> Value | None:
        if not name:
            return None
        value = self.values.get(name)
        if value is None:
            raise IrtoolError(f"input '{name}' is not defined before this node")
        return value

    def _add_node(self, node: onnx.NodeProto) -> None:
        domain = "" if node.domain in ONNX_DOMAINS else node.domain
        if not domain and node.op_type == "Constant" and len(node.output) == 1:
            self._add_constant(node.output[0], lambda: _constant_node_value(node, self.base_dir))
            return
        attrs: dict[str, Any] = {}
        empty_lists: dict[str, int] = {}
        for attr in node.attribute:
            attrs[attr.name] = _attribute_value(attr, self.base_dir)
            if attr.type in _LIST_KINDS and not attrs[attr.name]:
                empty_lists[attr.name] = attr.type
        name = self._unique_node(node.name or node.op_type)
        form = _NodeForm(node.op_type, [self._input(n) for n in node.input], attrs, len(node.output), name)
        if not domain:
            _upgrade(form, self.opset, self)
        out_names = [out or self._unique(f"{name}_unused_{i}") for i, out in enumerate(node.output)]
        for out in node.output:
            if out and out in self.values:
                raise IrtoolError(f"output '{out}' is defined twice")
        created = self.graph.add_node(
            form.op,
            form.inputs,
            form.attrs,
            outputs=out_names,
            name=name,
            source=source_name(node.name, node.op_type, self.scopes) if node.name else name,
            domain=domain,
        )
        if empty_lists:
            created.meta[META_EMPTY_LIST_ATTRS] = empty_lists
        if node.doc_string:
            created.meta["doc_string"] = node.doc_string
        if node.metadata_props:
            created.meta["metadata_props"] = {p.key: p.value for p in node.metadata_props}
        for out, value in zip(node.output, created.outputs):
            if out:
                self.values[out] = self._typed(value, self.types.get(out))
            else:
                value.meta[META_OMITTED] = True


def _value_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for group in (graph.input, graph.output, graph.value_info):
        names.update(v.name for v in group)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return names
