"""PyTorch -> IR through ``torch.export``.

The module is traced by ``torch.export`` and each ATen node is lowered by the converter table in
``torch_ops``. A traced graph with an op the table lacks, or an in-place op whose write someone
could observe, is first decomposed with a table that keeps the layers pruning cares about whole
(conv, linear, norms, activations, pooling, resampling, LSTM). What the rest of irtool may rely on:

- every node's ``source`` is the module path users see in ``print(model)`` (``layer4.1.conv1``),
  empty for code in the root module's own ``forward``;
- parameters and buffers become constants named by their ``state_dict`` keys; a constant whose
  layout had to change is named after the key with a suffix (``fc.weight_t``: transposed);
- semantics are eval mode unless ``train=True``;
- an ATen op with no converter becomes an opaque node in domain ``aten`` (a pruning barrier),
  never an error.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import logging
import operator
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.errors import IrtoolError
from ..ir.types import DType, TensorType

try:
    import torch
except ModuleNotFoundError:  # pragma: no cover - torch is an optional extra
    torch = None

BATCH = "batch"
"""The name of the symbolic batch dimension of a graph loaded with ``dynamic_batch``."""

KEPT_WHOLE = (
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "linear", "batch_norm", "layer_norm", "group_norm", "instance_norm",
    "relu6", "hardswish", "hardsigmoid", "silu", "gelu", "mish", "softplus", "elu", "leaky_relu",
    "hardtanh", "prelu",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "max_pool3d", "avg_pool3d", "adaptive_avg_pool3d",
    "upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_nearest_exact2d",
    "softmax", "log_softmax", "matmul", "scaled_dot_product_attention",
    "lstm", "gru", "native_dropout", "embedding", "roll", "pad",
    "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
    "replication_pad1d", "replication_pad2d", "replication_pad3d",
)
"""ATen ops the decomposition leaves alone, so prunable layers stay single nodes."""


def _require_torch() -> None:
    if torch is None:
        raise IrtoolError("PyTorch models need the 'torch' extra: pip install irtool[torch]")


# -- public entry points ---------------------------------------------------------------------
def load_module(
    module,
    example_inputs,
    *,
    dynamic_batch: bool = False,
    train: bool = False,
) -> Graph:
    """Trace ``module`` on ``example_inputs`` (a tensor or a tuple of them) and lower it.

    With ``dynamic_batch`` dim 0 of every input is the symbol ``batch``. The module is traced in
    eval mode unless ``train``; its own mode is restored afterwards.
    """
    _require_torch()
    if not isinstance(module, torch.nn.Module):
        raise IrtoolError(f"expected a torch.nn.Module, got {type(module).__name__}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        raise IrtoolError("example inputs must be tensors")
    dynamic_shapes = None
    if dynamic_batch:
        # A batch of 1 would be specialised to the constant 1; trace with 2 instead.
        inputs = tuple(torch.cat([x, x]) if x.dim() and x.shape[0] == 1 else x for x in inputs)
        batch = torch.export.Dim(BATCH)
        dynamic_shapes = tuple({0: batch} if x.dim() else None for x in inputs)
    modes = {m: m.training for m in module.modules()}
    module.train(train)
    try:
        with _quiet_torch_logs():
            program = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes)
    except Exception as exc:
        raise IrtoolError(
            f"torch.export cannot trace {type(module).__name__}: {_first_line(exc)}"
        ) from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
    return load_exported(program, name=type(module).__name__)


def load_factory(spec: str, input_shapes: Sequence[Sequence[int]] | None) -> Graph:
    """Lower the module built by ``package.module:factory``, fed example inputs of the given
    shapes: random normal floats, or zeros for a shape whose ``dtype`` attribute (``1x16:int64``
    on the command line) is an integer or boolean type, zero being a valid index for any
    embedding.

    Like uvicorn, the current directory is importable, so ``models:build`` finds ``./models.py``.
    """
    _require_torch()
    if not input_shapes:
        raise IrtoolError(f"a PyTorch factory needs --input-shape (model '{spec}')")
    module = build_from_factory(spec)
    generator = torch.Generator().manual_seed(0)

    def example(shape):
        dtype = getattr(torch, getattr(shape, "dtype", "float32"))
        if dtype.is_floating_point:
            return torch.randn(tuple(shape), generator=generator).to(dtype)
        return torch.zeros(tuple(shape), dtype=dtype)

    inputs = tuple(example(shape) for shape in input_shapes)
    graph = load_module(module, inputs)
    graph.name = spec.rpartition(":")[2] or graph.name
    return graph


def build_from_factory(spec: str):
    """Import ``package.module:attr.path``, call it and return the module in eval mode."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise IrtoolError(f"factory '{spec}' is not like package.module:factory")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise IrtoolError(f"cannot import '{module_name}' for factory '{spec}': {_first_line(exc)}") from exc
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise IrtoolError(f"factory '{spec}': '{module_name}' has no attribute '{attr_path}'")
        target = getattr(target, part)
    if not callable(target):
        raise IrtoolError(f"factory '{spec}' is not callable")
    try:
        model = target()
    except Exception as exc:
        raise IrtoolError(f"factory '{spec}' failed: {_first_line(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise IrtoolError(f"factory '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def load_pt2(path: str | os.PathLike) -> Graph:
    """Lower a ``torch.export`` archive; a file that is not one is a one-line error.

    ``torch.export.load`` unpickles some archive members without restriction (pickled weights,
    custom objects, sample inputs that fail the safe loader), so the archive is checked first
    and one that would need any of that is refused: loading a model must not run its code.
    """
    _require_torch()
    path = Path(path)
    if not path.is_file():
        raise IrtoolError(f"model '{path}' does not exist")
    _check_archive(path)
    try:
        with _quiet_torch_logs():
            program = torch.export.load(str(path))
    except Exception as exc:
        raise IrtoolError(f"'{path}' is not a readable torch.export archive: {_first_line(exc)}") from exc
    return load_exported(program, name=path.stem)


def _check_archive(path: Path) -> None:
    """Refuse a .pt2 whose loading would unpickle objects or load compiled code."""
    from torch.export.pt2_archive import constants as pt2

    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.partition("/")[2]: name for name in archive.namelist()}
            if pt2.ARCHIVE_VERSION_PATH not in members or not any(m.startswith(pt2.MODELS_DIR) for m in members):
                raise IrtoolError(f"'{path}' is not a readable torch.export archive: it has no exported program")
            for member, name in members.items():
                if member.startswith((pt2.AOTINDUCTOR_DIR, pt2.EXECUTORCH_DIR, pt2.MTIA_DIR)):
                    raise IrtoolError(f"'{path}' holds compiled code ({member}); irtool does not load it")
                if member.startswith((pt2.WEIGHTS_DIR, pt2.CONSTANTS_DIR)) and member.endswith(".pt"):
                    _refuse_pickle(path, member)
                if member.startswith((pt2.WEIGHTS_DIR, pt2.CONSTANTS_DIR)) and member.endswith("config.json"):
                    for entry in json.loads(archive.read(name)).get("config", {}).values():
                        plain = entry.get("path_name", "").startswith(
                            (pt2.WEIGHT_FILENAME_PREFIX, pt2.TENSOR_CONSTANT_FILENAME_PREFIX)
                        )
                        if entry.get("use_pickle") or not plain:
                            _refuse_pickle(path, member)
                if member.startswith(pt2.SAMPLE_INPUTS_DIR):
                    try:
                        torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                    except Exception:
                        _refuse_pickle(path, member)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise IrtoolError(f"'{path}' is not a readable torch.export archive: {_first_line(exc)}") from exc


def _refuse_pickle(path: Path, member: str):
    raise IrtoolError(
        f"'{path}' holds pickled objects ({member}); irtool reads only plain tensors from .pt2 archives"
    )


def load_exported(program, *, name: str = "main") -> Graph:
    """Lower an ``ExportedProgram`` (already traced) into a new graph.

    A traced graph that is already in the form the converters want (every op has one, no
    mutation anyone could observe) is lowered as it is; any other is decomposed first, which
    gives the same IR, only slower.
    """
    _require_torch()
    from .torch_ops import CONVERTERS

    if not _lowerable_as_is(program, CONVERTERS):
        try:
            with _quiet_torch_logs():
                program = program.run_decompositions(decomposition_table(program))
        except Exception as exc:
            raise IrtoolError(f"cannot decompose the exported program '{name}': {_first_line(exc)}") from exc
    graph = _Lowering(program, name).run()
    _drop_unused(graph)
    _fill_types(graph)
    return graph


def decomposition_table(program=None) -> dict:
    """``torch.export``'s default table minus the ops in ``KEPT_WHOLE`` (a fresh copy).

    Given the program about to be decomposed, also keeps its dropout layers (``_keep_dropout``).
    """
    if program is not None:
        _keep_dropout(program)
    return dict(_decomposition_table())


@functools.cache
def _decomposition_table() -> dict:
    table = torch.export.default_decompositions()
    return {op: fn for op, fn in table.items() if getattr(op, "_opname", None) not in KEPT_WHOLE}


def converter_key(target) -> str:
    """The converter table key of an fx call target; an in-place op maps to its functional twin."""
    schema = getattr(target, "_schema", None)
    if schema is not None and schema.is_mutable and target._opname.endswith("_"):
        return f"{target.namespace}.{target._opname[:-1]}.{target._overloadname}"
    return str(target)


def _lowerable_as_is(program, converters) -> bool:
    """True when every op has a converter and every in-place op may be read as a functional one."""
    if any(spec.kind.name != "USER_OUTPUT" for spec in program.graph_signature.output_specs):
        return False
    nodes = list(program.graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    for node in nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_function":
            return False
        if node.target is operator.getitem or _is_scalar(node.meta.get("val")):
            continue
        key = converter_key(node.target)
        if key not in converters:
            return False
        if key != str(node.target) and not _overwrites_private_tensor(node, order):
            return False
    return True


def _is_scalar(val) -> bool:
    return isinstance(val, (bool, int, float, torch.SymInt, torch.SymFloat, torch.SymBool))


def _overwrites_private_tensor(node, order) -> bool:
    """Whether an in-place op writes a freshly computed tensor that nothing reads afterwards.

    Then it computes exactly what its functional twin computes. The written tensor is followed
    back through earlier in-place results and views to the op that created its storage; a view
    counts only when it and its base have no other user (else another alias could see the write).
    """
    aliases = []
    current = node.args[0]
    while True:
        if getattr(current, "op", None) != "call_function":
            return False  # a graph input, parameter or buffer
        aliases.append(current)
        creator = current.args[0] if current.target is operator.getitem else current
        schema = getattr(creator.target, "_schema", None)
        if schema is None:
            return False
        if creator is current and schema.is_mutable:
            current = current.args[0]  # an earlier in-place op on the same tensor
            continue
        if any(r.alias_info is not None for r in schema.returns):
            if creator is not current or len(current.users) != 1 or len(creator.args[0].users) != 1:
                return False
            current = creator.args[0]  # a view with no sibling: the write lands in its base
            continue
        break
    return all(order[user] <= order[node] for alias in aliases for user in alias.users)


def _keep_dropout(program) -> None:
    """Make each ``aten.dropout`` a ``native_dropout``, which decomposition keeps.

    ``aten.dropout`` always decomposes (to nothing in eval mode), which would lose the layer that
    fine-tuning through the torch backend needs.
    """
    aten = torch.ops.aten
    graph = program.graph_module.graph
    changed = False
    for node in list(graph.nodes):
        if node.target is not aten.dropout.default:
            continue
        with graph.inserting_after(node):
            native = graph.call_function(aten.native_dropout.default, node.args, node.kwargs)
        native.meta = dict(node.meta)
        value = node.meta.get("val")
        if value is not None:
            native.meta["val"] = (value, torch.empty_like(value, dtype=torch.bool))
        with graph.inserting_after(native):
            first = graph.call_function(operator.getitem, (native, 0))
        first.meta = dict(node.meta)
        node.replace_all_uses_with(first)
        graph.erase_node(node)
        changed = True
    if changed:
        program.graph_module.recompile()


def _drop_unused(graph: Graph) -> None:
    """Remove what only fed buffer updates (``num_batches_tracked + 1`` in train mode)."""
    for node in reversed(graph.nodes):
        if not any(v.uses or v.is_graph_output for v in node.outputs):
            graph.remove_nodes([node])
    for value in list(graph.constants.values()):
        if not value.uses and not value.is_graph_output:
            graph.remove_constant(value)


def _fill_types(graph: Graph) -> None:
    """Give the intermediate values of multi-node lowerings their types."""
    try:
        from ..ir.shapes import infer_shapes
    except ImportError:  # pragma: no cover - shape inference not available
        return
    infer_shapes(graph, overwrite=False)


@contextlib.contextmanager
def _quiet_torch_logs():
    """Silence torch's own reports (logged tracebacks, graph dumps on stderr) while it works.

    When it fails we raise one line; the CLI's output must not drown it.
    """
    names = ["torch"] + [n for n in logging.root.manager.loggerDict if n.startswith("torch.")]
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line or type(exc).__name__


# -- types and symbolic dims ----------------------------------------------------------------
_DTYPES = {
    "float32": DType.float32, "float64": DType.float64, "float16": DType.float16,
    "bfloat16": DType.bfloat16, "int64": DType.int64, "int32": DType.int32, "int16": DType.int16,
    "int8": DType.int8, "uint8": DType.uint8, "bool": DType.bool,
}


def dtype_of(torch_dtype) -> DType:
    name = str(torch_dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise IrtoolError(f"tensor element type {torch_dtype} has no IR equivalent")
    return _DTYPES[name]


def to_numpy(tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy().copy()


class SymDim:
    """A symbolic integer from the trace (a batch size, or arithmetic on one)."""

    __slots__ = ("expr",)

    def __init__(self, expr):
        self.expr = expr

    def __repr__(self) -> str:
        return f"SymDim({self.expr})"


class _AsFunctional:
    """An in-place fx node seen as its functional twin: same arguments, the twin's target."""

    def __init__(self, node, key: str):
        namespace, name, overload = key.split(".")
        self._node = node
        self.target = getattr(getattr(getattr(torch.ops, namespace), name), overload)

    def __getattr__(self, attribute):
        return getattr(self._node, attribute)


class Unsupported(Exception):
    """A converter met arguments it cannot express; the node becomes opaque instead."""


# -- the lowering ---------------------------------------------------------------------------
class _Lowering:
    """Walks the decomposed ATen graph once, building the IR graph; converters call back into it."""

    def __init__(self, program, name: str):
        from .torch_ops import CONVERTERS

        self.converters = CONVERTERS
        self.program = program
        self.graph = Graph(name)
        self.env: dict[Any, Any] = {}
        self.symbol_names: dict[Any, str] = {}
        self.symbol_sources: dict[Any, tuple[Value, int]] = {}
        self._dim_values: dict[Any, Value] = {}
        self._derived: dict[str, Value] = {}
        self.fx_node = None
        self.source = ""
        self._created: list[Value] = []

    # -- driver ----------------------------------------------------------------------------
    def run(self) -> Graph:
        signature = self.program.graph_signature
        self._constant_targets = {
            **signature.inputs_to_parameters,
            **signature.inputs_to_buffers,
            **getattr(signature, "inputs_to_lifted_tensor_constants", {}),
        }
        user_inputs = set(signature.user_inputs)
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                if node.name in user_inputs:
                    self._add_input(node)
                elif node.name not in self._constant_targets:
                    raise IrtoolError(f"unsupported exported-program input '{node.name}'")
            elif node.op == "call_function":
                self._lower_call(node)
            elif node.op == "output":
                self._set_outputs(node, set(signature.user_outputs))
            elif node.op == "get_attr":
                self.env[node] = None
        return self.graph

    def _add_input(self, node) -> None:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise IrtoolError(f"model input '{node.name}' is not a tensor ({type(val).__name__})")
        for axis, dim in enumerate(val.shape):
            if isinstance(dim, torch.SymInt):
                expr = dim.node.expr
                if expr.is_Symbol and expr not in self.symbol_names:
                    self.symbol_names[expr] = BATCH if axis == 0 else str(expr)
        value = self.graph.add_input(node.name, self.tensor_type(val))
        for axis, dim in enumerate(val.shape):
            if isinstance(dim, torch.SymInt) and dim.node.expr.is_Symbol:
                self.symbol_sources.setdefault(dim.node.expr, (value, axis))
        self.env[node] = value

    def _constant(self, node) -> Value:
        target = self._constant_targets[node.name]
        tensor = self.program.state_dict.get(target)
        if tensor is None:
            tensor = self.program.constants[target]
        return self.graph.add_constant(target, to_numpy(tensor))

    def _set_outputs(self, node, user_outputs: set[str]) -> None:
        results = [a for a in node.args[0] if getattr(a, "name", None) in user_outputs]
        self.fx_node, self.source = node, ""
        for result in results:
            value = self.env.get(result)
            if isinstance(value, (list, tuple)) or not isinstance(value, Value):
                raise IrtoolError(f"model output '{result.name}' is not a tensor")
            if value.is_graph_input or value.is_const or value.is_graph_output:
                value = self.emit("Identity", [value])
            self.graph.outputs.append(value)

    def _lower_call(self, node) -> None:
        val = node.meta.get("val")
        if node.target is operator.getitem:
            self.env[node] = self.lookup(node.args[0])[node.args[1]]
            return
        if isinstance(val, (int, float, bool)) and not isinstance(val, torch.Tensor):
            self.env[node] = val
            return
        if isinstance(val, torch.SymInt):
            self.env[node] = SymDim(val.node.expr)
            return
        self.fx_node = node
        self.source = _module_path(node)
        self._created = []
        key = converter_key(node.target)
        converter = self.converters.get(key)
        result = None
        if converter is not None:
            try:
                result = converter(self, node if key == str(node.target) else _AsFunctional(node, key))
            except Unsupported as why:
                result = self._opaque(node, str(why))
            except IrtoolError:
                raise
            except Exception as exc:
                raise IrtoolError(
                    f"cannot lower {key} (node '{node.name}'): {_first_line(exc)}",
                    where=self.source or None,
                ) from exc
        else:
            result = self._opaque(node, "no converter")
        self._type_results(result, val)
        self.env[node] = result

    def _type_results(self, result, val) -> None:
        created = set(map(id, self._created))
        pairs = zip(result, val) if isinstance(result, (list, tuple)) and isinstance(val, (list, tuple)) else [(result, val)]
        for value, meta in pairs:
            if isinstance(value, Value) and id(value) in created and isinstance(meta, torch.Tensor):
                value.type = self.tensor_type(meta)

    def _opaque(self, node, reason: str):
        """An ATen op irtool does not model: kept as a barrier node in domain ``aten``."""
        target = node.target
        schema = getattr(target, "_schema", None)
        inputs: list[Value] = []
        attrs: dict[str, Any] = {}
        # Which arguments were tensors, so the torch backend can call the op again.
        tensor_args: dict[str, Any] = {}
        arguments = self.arguments(node) if schema is not None else dict(enumerate(node.args))
        for key, arg in arguments.items():
            is_list = isinstance(arg, (list, tuple))
            tensors = [self.lookup(a) for a in (arg if is_list else [arg])]
            if any(isinstance(t, Value) for t in tensors):
                inputs.extend(t for t in tensors if isinstance(t, Value))
                tensor_args[str(key)] = [isinstance(t, Value) for t in tensors] if is_list else True
            elif _is_attribute(arg):
                attrs[str(key)] = int(arg) if isinstance(arg, bool) else (list(arg) if isinstance(arg, tuple) else arg)
        val = node.meta.get("val")
        count = len(val) if isinstance(val, (list, tuple)) else 1
        if schema is not None:
            op = target._opname + ("" if target._overloadname == "default" else "." + target._overloadname)
            domain = target.namespace
        else:
            op, domain = getattr(target, "__name__", str(target)), "torch"
        self.graph.opset_imports.setdefault(domain, 1)
        result = self.emit(op, inputs, attrs, outputs=count, domain=domain)
        outputs = result if isinstance(result, list) else [result]
        outputs[0].producer.meta["unsupported"] = reason
        outputs[0].producer.meta["aten_tensor_args"] = tensor_args
        return outputs if isinstance(val, (list, tuple)) else outputs[0]

    # -- services for converters -------------------------------------------------------------
    def lookup(self, arg):
        """The IR object for an fx argument: a Value, SymDim, python value, or list of those."""
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.lookup(a) for a in arg)
        if hasattr(arg, "op") and hasattr(arg, "meta"):  # an fx node
            if arg not in self.env and arg.op == "placeholder":
                self.env[arg] = self._constant(arg)
            return self.env[arg]
        return arg

    def arguments(self, node) -> dict[str, Any]:
        """The node's arguments by schema name, defaults filled in."""
        schema = node.target._schema
        bound: dict[str, Any] = {}
        for i, spec in enumerate(schema.arguments):
            if i < len(node.args) and not spec.kwarg_only:
                bound[spec.name] = node.args[i]
            elif spec.name in node.kwargs:
                bound[spec.name] = node.kwargs[spec.name]
            elif spec.has_default_value():
                bound[spec.name] = spec.default_value
            else:
                bound[spec.name] = None
        return bound

    def tensor(self, arg, *, like: Value | None = None, dtype: DType | None = None) -> Value | None:
        """The Value for a tensor argument; a python number becomes a scalar constant."""
        if arg is None:
            return None
        found = self.lookup(arg)
        if isinstance(found, Value):
            return found
        if isinstance(found, SymDim):
            raise Unsupported("a symbolic size used as a tensor")
        if isinstance(found, (bool, int, float)):
            if dtype is None:
                dtype = like.type.dtype if like is not None and like.type is not None else DType.float32
            return self.constant(np.array(found, dtype=dtype.numpy), "scalar")
        raise Unsupported(f"argument {found!r} is not a tensor")

    def constant_array(self, arg) -> np.ndarray | None:
        """The array behind a constant argument (a parameter, buffer or literal), else None."""
        found = self.lookup(arg)
        return found.const if isinstance(found, Value) and found.is_const else None

    def constant(self, array, role: str) -> Value:
        """A new constant named after the node and its role (``view.shape``).

        The dot keeps these names apart from the initializers onnxruntime's graph optimisers
        add, which they name ``<node>_shape``, ``squeeze_axes``, ... unique among node names
        only: a constant of ours called ``squeeze_axes`` made onnxruntime refuse the model.
        """
        return self.graph.add_constant(f"{self.fx_node.name}.{role}", np.asarray(array))

    def derived_constant(self, name: str, make) -> Value:
        """A parameter in the layout an IR op wants (``fc.weight_t``), made once per name.

        A layer called twice reads one constant, so its weights stay tied.
        """
        if name not in self._derived:
            self._derived[name] = self.graph.add_constant(name, np.asarray(make()))
        return self._derived[name]

    def require_opset(self, opset: int) -> None:
        """Record that the graph uses an op first defined in ONNX ``opset``."""
        self.graph.opset = max(self.graph.opset, opset)

    def fixed_constant(self, array, role: str) -> Value:
        """A constant the model computes with but never learns (a pooling matrix, a mask)."""
        value = self.constant(array, role)
        value.meta["trainable"] = False
        return value

    def ints(self, values: Sequence[int], role: str = "ints") -> Value:
        """A 1-D int64 constant (axes, sizes, shapes)."""
        return self.constant(np.asarray(values, dtype=np.int64), role)

    def emit(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        outputs: int = 1,
        domain: str = "",
    ):
        """Add a node with this ATen node's source; one output returns a Value, more a list."""
        hint = self.source or self.fx_node.name
        names = [hint] if outputs == 1 else [f"{hint}_{i}" for i in range(outputs)]
        node: Node = self.graph.add_node(
            op, list(inputs), attrs, outputs=names, name=hint, source=self.source, domain=domain
        )
        self._created.extend(node.outputs)
        return list(node.outputs) if outputs != 1 else node.outputs[0]

    # -- shapes -------------------------------------------------------------------------------
    def out_meta(self, node=None):
        return (node or self.fx_node).meta.get("val")

    def shape_of(self, arg) -> tuple:
        """The traced shape of a tensor argument: ints, SymDim for symbolic dims."""
        val = arg.meta.get("val") if hasattr(arg, "meta") else None
        if not isinstance(val, torch.Tensor):
            found = self.lookup(arg)
            if isinstance(found, Value) and found.type is not None and found.type.shape is not None:
                return tuple(found.type.shape)
            raise Unsupported("shape unknown")
        return tuple(_dim(d) for d in val.shape)

    def static_shape(self, arg) -> tuple[int, ...]:
        shape = self.shape_of(arg)
        if not all(isinstance(d, int) for d in shape):
            raise Unsupported("needs a static shape")
        return shape

    def dim_value(self, dim) -> Value:
        """A 1-element int64 tensor holding ``dim`` at run time (for symbolic dims)."""
        if isinstance(dim, int):
            return self.ints([dim], "dim")
        expr = dim.expr
        if expr in self._dim_values:
            return self._dim_values[expr]
        if expr.is_Integer:
            return self.ints([int(expr)], "dim")
        if expr.is_Symbol:
            if expr not in self.symbol_sources:
                raise Unsupported(f"symbol {expr} does not come from an input shape")
            source, axis = self.symbol_sources[expr]
            value = self.emit("Shape", [source], {"start": axis, "end": axis + 1})
        elif expr.is_Add or expr.is_Mul:
            op = "Add" if expr.is_Add else "Mul"
            terms = [self.dim_value(SymDim(t)) for t in expr.args]
            value = terms[0]
            for term in terms[1:]:
                value = self.emit(op, [value, term])
        else:
            raise Unsupported(f"symbolic size {expr}")
        self._dim_values[expr] = value
        return value

    def shape_value(self, dims: Sequence) -> Value:
        """An int64 shape tensor; a constant when every dim is known."""
        if all(isinstance(d, int) for d in dims):
            return self.ints(list(dims), "shape")
        pieces: list[Value] = []
        run: list[int] = []
        for d in dims:
            if isinstance(d, int):
                run.append(d)
                continue
            if run:
                pieces.append(self.ints(run, "shape"))
                run = []
            pieces.append(self.dim_value(d))
        if run:
            pieces.append(self.ints(run, "shape"))
        return self.emit("Concat", pieces, {"axis": 0})

    def tensor_type(self, val) -> TensorType:
        return TensorType(dtype_of(val.dtype), tuple(self._dim_name(d) for d in val.shape))

    def _dim_name(self, dim):
        if isinstance(dim, int):
            return dim
        expr = dim.node.expr
        if expr.is_Integer:
            return int(expr)
        names = {s: self.symbol_names.get(s, str(s)) for s in expr.free_symbols}
        if expr.is_Symbol:
            return names[expr]
        import sympy

        return str(expr.subs({s: sympy.Symbol(n) for s, n in names.items()}))


def _dim(d):
    if isinstance(d, int):
        return d
    expr = d.node.expr
    return int(expr) if expr.is_Integer else SymDim(expr)


def _is_attribute(arg) -> bool:
    if isinstance(arg, (bool, int, float, str)):
        return True
    return isinstance(arg, (list, tuple)) and bool(arg) and all(isinstance(a, (int, float)) for a in arg)


def _module_path(node) -> str:
    """The qualified name of the innermost module that ran this node ("" for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    for key, entry in reversed(list(stack.items())):
        path = entry[0] if isinstance(entry, tuple) else entry
        if not isinstance(path, str) or path.startswith("_empty_nn_module_stack"):
            continue
        if path.startswith("L__self__"):  # older torch: a mangled key, not the dotted path
            path = path.removeprefix("L__self__").lstrip("_").replace("_", ".")
        return path
    return ""
