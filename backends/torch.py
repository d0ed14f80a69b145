"""IR -> a trainable ``torch.fx.GraphModule``, and trained weights back into the IR.

``to_torch(graph)`` builds an fx graph with one emitter per op (ONNX semantics written with torch
functions). What callers may rely on:

- every IR constant the module reads is registered under its IR name, dots making submodules,
  so ``module.state_dict()`` keys equal the constant names (``layer1.0.conv1.weight``); a name
  that cannot be an attribute path is stored under a mangled path, and
  ``module.constant_names`` maps every state_dict key back to its constant;
- float constants with more than one element are trainable ``nn.Parameter``s, unless the
  frontend marked them ``value.meta["trainable"] = False`` (a pooling matrix); BatchNorm running
  statistics and every other constant are buffers;
- BatchNorm and Dropout follow ``module.train()`` / ``module.eval()`` as torch layers do
  (batch statistics and running-stat updates, random dropping);
- an opaque ATen op from the torch frontend calls the ATen op itself; any other op without an
  emitter is an ``IrtoolError`` naming it.

``update_constants(graph, module_or_state_dict)`` writes tensors back into the IR, checking
shapes first, so a pruned graph can be fine-tuned with an ordinary PyTorch loop.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..ir.core import Graph, Node, Value
from ..ir.errors import IrtoolError
from ..ir.ops.tensor import resized_size
from ..ir.registry import opdef_of
from ..ir.types import DType

Emitter = Callable[["_Builder", Node], Any]
EMITTERS: dict[str, Emitter] = {}


def emits(*ops: str):
    def register(fn):
        for op in ops:
            EMITTERS[op] = fn
        return fn

    return register


# -- public API ------------------------------------------------------------------------------
def to_torch(graph: Graph) -> fx.GraphModule:
    """A GraphModule computing ``graph``; call it with the graph inputs in order.

    It starts in eval mode, computing what the graph computes; ``.train()`` switches BatchNorm
    to batch statistics and turns dropout on.
    """
    return _Builder(graph).build().eval()


def constant_paths(graph: Graph) -> dict[str, str]:
    """IR constant name -> the attribute path it has in ``to_torch``'s module.

    A name that is a dotted path of identifiers keeps it; others (``onnx::Conv_12``, a path that
    collides with a longer one) go under a ``_constants`` container with a sanitized name.
    """
    names = list(graph.constants)
    leaves: set[str] = set()
    prefixes: set[str] = set()
    paths: dict[str, str] = {}
    reserved = set(dir(nn.Module()))
    for name in names:
        parts = name.split(".")
        ok = all(p and (p.isidentifier() or p.isdigit()) and p not in reserved for p in parts)
        heads = {".".join(parts[:i]) for i in range(1, len(parts))}
        if ok and name not in prefixes and not heads & leaves:
            paths[name] = name
            leaves.add(name)
            prefixes |= heads
    tops = {p.split(".")[0] for p in paths.values()}
    container = "_constants"
    while container in tops:
        container = "_" + container
    taken: set[str] = set()
    for name in names:
        if name in paths:
            continue
        safe = re.sub(r"\W", "_", name)
        safe = safe if safe and not safe[0].isdigit() and safe not in reserved else "c_" + safe
        candidate, i = safe, 1
        while candidate in taken:
            candidate, i = f"{safe}_{i}", i + 1
        taken.add(candidate)
        paths[name] = f"{container}.{candidate}"
    return paths


def update_constants(graph: Graph, weights: nn.Module | Mapping[str, Any]) -> int:
    """Write trained tensors back into the graph's constants; returns how many were written.

    ``weights`` is the module ``to_torch`` made or its ``state_dict()``. Every key must name a
    constant of the same shape; nothing changes unless all do.
    """
    if isinstance(weights, nn.Module):
        key_to_name = dict(getattr(weights, "constant_names", {}))
        state = weights.state_dict()
    else:
        key_to_name = {}
        state = weights
    if not key_to_name:
        key_to_name = {path: name for name, path in constant_paths(graph).items()}
    updates: list[tuple[Value, np.ndarray]] = []
    for key, tensor in state.items():
        name = key_to_name.get(key, key)
        value = graph.constants.get(name)
        if value is None:
            raise IrtoolError(f"weight '{key}' matches no constant of graph '{graph.name}'")
        array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
        if tuple(array.shape) != tuple(value.const.shape):
            raise IrtoolError(
                f"weight '{key}' has shape {tuple(array.shape)}, constant '{name}' has {tuple(value.const.shape)}"
            )
        updates.append((value, array.astype(value.const.dtype, copy=True)))
    for value, array in updates:
        value.const = array
    return len(updates)


# -- train-aware layers ----------------------------------------------------------------------
class TrainableBatchNorm(nn.Module):
    """BatchNormalization whose weights come in as arguments: batch statistics in train mode."""

    def __init__(self, epsilon: float, momentum: float):
        super().__init__()
        self.epsilon = epsilon
        self.momentum = momentum

    def forward(self, x, scale, bias, running_mean, running_var):
        return F.batch_norm(x, running_mean, running_var, scale, bias, self.training, self.momentum, self.epsilon)

    def extra_repr(self) -> str:
        return f"eps={self.epsilon}, momentum={self.momentum}"


class TrainableDropout(nn.Module):
    """Dropout that drops only in train mode (ONNX Dropout's ``training_mode`` follows the module)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# -- the builder -----------------------------------------------------------------------------
_PRECEDENCE = {"buffer": 0, "parameter": 1, "state": 2}


class _Builder:
    """Emits one fx graph for an IR graph; emitters call back into it."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.fx = fx.Graph()
        self.root = nn.Module()
        self.env: dict[Value, Any] = {}
        self.paths = constant_paths(graph)
        self.kinds: dict[str, str] = {}
        self._get_attrs: dict[str, fx.Node] = {}
        self._layer_container = "_layers"

    def build(self) -> fx.GraphModule:
        tops = {p.split(".")[0] for p in self.paths.values()}
        while self._layer_container in tops:
            self._layer_container = "_" + self._layer_container
        for value in self.graph.inputs:
            self.env[value] = self.fx.placeholder(_identifier(value.name))
        for node in self.graph.nodes:
            emitter = EMITTERS.get(node.op) if not node.domain else None
            if node.domain == "aten" and "aten_tensor_args" in node.meta:
                emitter = _aten_call
            if emitter is None:
                raise IrtoolError(f"op {node.qualified_op} has no torch equivalent", where=_where(node))
            try:
                result = emitter(self, node)
            except IrtoolError as exc:
                if exc.where:
                    raise
                raise IrtoolError(exc.message, where=_where(node)) from exc
            results = list(result) if isinstance(result, (list, tuple)) else [result]
            for i, value in enumerate(node.outputs):
                if i < len(results) and results[i] is not None:
                    self.env[value] = results[i]
                elif value.uses or value.is_graph_output:
                    raise IrtoolError(f"output {i} ('{value.name}') is not supported", where=_where(node))
        outputs = [self.tensor(v) for v in self.graph.outputs]
        self.fx.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        self._install_constants()
        module = fx.GraphModule(self.root, self.fx, class_name=_identifier(self.graph.name) or "Graph")
        module.constant_names = {path: name for name, path in self.paths.items() if name in self.kinds}
        return module

    def _install_constants(self) -> None:
        for name, kind in self.kinds.items():
            array = self.graph.constants[name].const
            tensor = torch.from_numpy(np.array(array, copy=True))
            *parents, leaf = self.paths[name].split(".")
            owner = self.root
            for part in parents:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            if kind == "parameter":
                owner.register_parameter(leaf, nn.Parameter(tensor))
            else:
                owner.register_buffer(leaf, tensor)

    # -- operands ---------------------------------------------------------------------------
    def tensor(self, value: Value | None, *, kind: str | None = None):
        """The fx node for a value; a constant becomes a parameter or buffer read.

        Float constants with more than one element are trainable unless ``kind`` says otherwise.
        """
        if value is None:
            return None
        if value in self.env:
            return self.env[value]
        if not value.is_const or self.graph.constants.get(value.name) is not value:
            raise IrtoolError(f"value '{value.name}' is used before it is computed")
        if kind is None:
            array = value.const
            trainable = np.issubdtype(array.dtype, np.floating) and array.size > 1
            kind = "parameter" if trainable and value.meta.get("trainable", True) else "buffer"
        previous = self.kinds.get(value.name)
        if previous is None or _PRECEDENCE[kind] > _PRECEDENCE[previous]:
            self.kinds[value.name] = kind
        if value.name not in self._get_attrs:
            self._get_attrs[value.name] = self.fx.get_attr(self.paths[value.name])
        return self._get_attrs[value.name]

    def input(self, node: Node, i: int, *, kind: str | None = None):
        return self.tensor(node.inputs[i] if i < len(node.inputs) else None, kind=kind)

    def array(self, node: Node, i: int) -> np.ndarray | None:
        """The constant at input ``i`` (absent input: None); a computed one is an error."""
        value = node.inputs[i] if i < len(node.inputs) else None
        if value is None:
            return None
        if not value.is_const:
            raise IrtoolError(f"input {i} ('{value.name}') must be a constant for the torch backend")
        return value.const

    def array_or_tensor(self, node: Node, i: int):
        """A python list for a constant input (static shapes), else the fx node (computed shapes)."""
        value = node.inputs[i] if i < len(node.inputs) else None
        if value is None:
            return None
        if value.is_const:
            return value.const.tolist()
        return self.tensor(value)

    def scalar(self, node: Node, i: int):
        """A constant scalar input as a python number, a computed one as a tensor, absent: None."""
        value = node.inputs[i] if i < len(node.inputs) else None
        if value is None:
            return None
        if value.is_const and value.const.size == 1:
            return value.const.reshape(()).item()
        return self.tensor(value)

    def call(self, fn, *args, **kwargs):
        return self.fx.call_function(fn, tuple(args), kwargs)

    def layer(self, node: Node, module: nn.Module, *args):
        """Call a train-mode aware layer, registered as ``_layers.<source>`` (``_layers.layer1_0_bn1``)."""
        owner = getattr(self.root, self._layer_container, None)
        if owner is None:
            owner = nn.Module()
            self.root.add_module(self._layer_container, owner)
        base = _identifier(node.source or node.name) or "layer"
        name, i = base, 1
        while hasattr(owner, name):
            name, i = f"{base}_{i}", i + 1
        owner.add_module(name, module)
        return self.fx.call_module(f"{self._layer_container}.{name}", tuple(args))

    def outputs(self, call, count: int) -> list:
        return [self.call(operator.getitem, call, i) for i in range(count)]


def _identifier(name: str) -> str:
    text = re.sub(r"\W", "_", name)
    return text if not text or not text[0].isdigit() else "_" + text


def _where(node: Node) -> str:
    return f"node '{node.name}'" + (f" ({node.source})" if node.source else "")


def attr(node: Node, key: str, default: Any = None) -> Any:
    """The node's attribute, else the registry's default, else ``default``."""
    if key in node.attrs:
        value = node.attrs[key]
    else:
        opdef = opdef_of(node)
        spec = opdef.attrs.get(key) if opdef is not None else None
        value = default if spec is None or spec.required else spec.default
        if value is None:
            value = default
    return value.decode() if isinstance(value, bytes) else value


def _spatial_rank(node: Node) -> int:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    for v in (node.inputs[0], weight):
        if v is not None and v.type is not None and v.type.shape is not None:
            return len(v.type.shape) - 2
    kernel = node.attrs.get("kernel_shape")
    if kernel:
        return len(kernel)
    raise IrtoolError("the input's rank is unknown")


def _window(node: Node, k: int, *, pad_value: float = 0.0) -> tuple[list[int], list[int], list[int], list[int] | None]:
    """strides, symmetric padding, dilations, and the explicit pad (torch order) when asymmetric."""
    strides = list(attr(node, "strides", None) or [1] * k)
    dilations = list(attr(node, "dilations", None) or [1] * k)
    auto_pad = attr(node, "auto_pad", "NOTSET")
    pads = list(attr(node, "pads", None) or [0] * (2 * k))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        x = node.inputs[0].type
        kernel = attr(node, "kernel_shape", None) or (node.inputs[1].type.shape[2:] if len(node.inputs) > 1 else None)
        if x is None or x.shape is None or not all(isinstance(d, int) for d in x.shape[2:]) or kernel is None:
            raise IrtoolError(f"auto_pad={auto_pad} needs a static input shape")
        pads = [0] * (2 * k)
        for i, (size, kk, s, d) in enumerate(zip(x.shape[2:], kernel, strides, dilations)):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (kk - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            pads[i], pads[i + k] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * k)
    begins, ends = pads[:k], pads[k:]
    if begins == ends:
        return strides, begins, dilations, None
    explicit: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        explicit += [b, e]
    return strides, [0] * k, dilations, explicit


# -- ATen ops the torch frontend kept opaque ------------------------------------------------
def _aten_call(b: _Builder, node: Node):
    """Call the ATen op itself: a barrier for irtool's passes is still plain torch code."""
    name, _, overload = node.op.partition(".")
    try:
        target = getattr(getattr(torch.ops.aten, name), overload or "default")
    except AttributeError:
        raise IrtoolError(f"op aten::{node.op} does not exist in this torch version") from None
    tensor_args = node.meta["aten_tensor_args"]
    inputs = iter(range(len(node.inputs)))
    args, kwargs = [], {}
    for spec in target._schema.arguments:
        pattern = tensor_args.get(spec.name)
        if pattern is True:
            value = b.input(node, next(inputs))
        elif isinstance(pattern, list):
            value = [b.input(node, next(inputs)) if present else None for present in pattern]
        elif spec.name in node.attrs:
            value = node.attrs[spec.name]
            value = bool(value) if str(spec.type) == "bool" else value
        elif spec.has_default_value():
            value = spec.default_value
        else:
            value = None
        if spec.kwarg_only:
            kwargs[spec.name] = value
        else:
            args.append(value)
    call = b.call(target, *args, **kwargs)
    returns = target._schema.returns
    several = len(returns) > 1 or isinstance(returns[0].type, torch.ListType)
    return b.outputs(call, len(node.outputs)) if several else call


# -- layers ----------------------------------------------------------------------------------
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@emits("Conv")
def _conv(b: _Builder, node: Node):
    k = _spatial_rank(node)
    strides, padding, dilations, explicit = _window(node, k)
    x = b.input(node, 0)
    if explicit is not None:
        x = b.call(F.pad, x, explicit)
    return b.call(_CONV[k], x, b.input(node, 1), b.input(node, 2), strides, padding, dilations, attr(node, "group", 1))


@emits("ConvTranspose")
def _conv_transpose(b: _Builder, node: Node):
    k = _spatial_rank(node)
    if attr(node, "output_shape", None):
        raise IrtoolError("ConvTranspose with output_shape is not supported")
    strides, padding, dilations, explicit = _window(node, k)
    if explicit is not None:
        raise IrtoolError("ConvTranspose with asymmetric pads is not supported")
    extra = list(attr(node, "output_padding", None) or [0] * k)
    return b.call(
        _CONV_T[k], b.input(node, 0), b.input(node, 1), b.input(node, 2),
        strides, padding, extra, attr(node, "group", 1), dilations,
    )


@emits("Gemm")
def _gemm(b: _Builder, node: Node):
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    trans_a, trans_b = attr(node, "transA", 0), attr(node, "transB", 0)
    a, w, c = b.input(node, 0), b.input(node, 1), b.input(node, 2)
    if alpha == 1.0 and beta == 1.0 and not trans_a and trans_b:
        return b.call(F.linear, a, w, c)
    return b.call(_gemm_general, a, w, c, alpha, beta, trans_a, trans_b)


def _gemm_general(a, w, c, alpha: float, beta: float, trans_a: int, trans_b: int):
    y = (a.t() if trans_a else a) @ (w.t() if trans_b else w)
    y = y * alpha if alpha != 1.0 else y
    return y if c is None else y + (c * beta if beta != 1.0 else c)


@emits("MatMul")
def _matmul(b: _Builder, node: Node):
    return b.call(torch.matmul, b.input(node, 0), b.input(node, 1))


@emits("Einsum")
def _einsum(b: _Builder, node: Node):
    return b.call(torch.einsum, attr(node, "equation"), *[b.input(node, i) for i in range(len(node.inputs))])


@emits("BatchNormalization")
def _batch_norm(b: _Builder, node: Node):
    layer = TrainableBatchNorm(attr(node, "epsilon", 1e-5), 1.0 - attr(node, "momentum", 0.9))
    args = [b.input(node, 0), b.input(node, 1), b.input(node, 2)]
    args += [b.input(node, 3, kind="state"), b.input(node, 4, kind="state")]
    return b.layer(node, layer, *args)


@emits("LayerNormalization")
def _layer_norm(b: _Builder, node: Node):
    return b.call(_layer_norm_fn, b.input(node, 0), b.input(node, 1), b.input(node, 2),
                  attr(node, "axis", -1), attr(node, "epsilon", 1e-5))


def _layer_norm_fn(x, scale, bias, axis: int, epsilon: float):
    axis = axis + x.dim() if axis < 0 else axis
    shape = tuple(x.shape[axis:])
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return F.layer_norm(x, shape, scale, bias, epsilon)
    y = F.layer_norm(x, shape, None, None, epsilon) * scale
    return y if bias is None else y + bias


@emits("GroupNormalization")
def _group_norm(b: _Builder, node: Node):
    return b.call(_group_norm_fn, b.input(node, 0), b.input(node, 1), b.input(node, 2),
                  attr(node, "num_groups"), attr(node, "epsilon", 1e-5))


def _group_norm_fn(x, scale, bias, groups: int, epsilon: float):
    channels = x.shape[1]
    if scale.numel() == groups and groups != channels:  # opset 18: one value per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    return F.group_norm(x, groups, scale, bias, epsilon)


@emits("InstanceNormalization")
def _instance_norm(b: _Builder, node: Node):
    return b.call(F.instance_norm, b.input(node, 0), None, None, b.input(node, 1), b.input(node, 2),
                  True, 0.0, attr(node, "epsilon", 1e-5))


@emits("Dropout")
def _dropout(b: _Builder, node: Node):
    ratio = b.scalar(node, 1)
    ratio = 0.5 if ratio is None else ratio
    if not isinstance(ratio, float):
        raise IrtoolError("Dropout with a computed ratio is not supported")
    return [b.layer(node, TrainableDropout(ratio), b.input(node, 0)), None]


# -- activations and elementwise math --------------------------------------------------------
_UNARY: dict[str, Callable] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "HardSwish": F.hardswish,
    "Softplus": F.softplus, "Softsign": F.softsign, "Mish": F.mish,
    "Neg": torch.neg, "Abs": torch.abs, "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log,
    "Erf": torch.erf, "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil,
    "Round": torch.round, "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos,
    "Not": torch.logical_not, "Identity": None,
}


def _unary(fn):
    def emit(b: _Builder, node: Node):
        x = b.input(node, 0)
        return x if fn is None else b.call(fn, x)

    return emit


for _op, _fn in _UNARY.items():
    EMITTERS[_op] = _unary(_fn)


@emits("Gelu")
def _gelu(b: _Builder, node: Node):
    return b.call(F.gelu, b.input(node, 0), approximate=attr(node, "approximate", "none"))


@emits("HardSigmoid")
def _hardsigmoid(b: _Builder, node: Node):
    alpha, beta = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
    if math.isclose(alpha, 1.0 / 6.0, rel_tol=1e-6) and beta == 0.5:
        return b.call(F.hardsigmoid, b.input(node, 0))
    return b.call(_hardsigmoid_fn, b.input(node, 0), alpha, beta)


def _hardsigmoid_fn(x, alpha: float, beta: float):
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


@emits("LeakyRelu")
def _leaky_relu(b: _Builder, node: Node):
    return b.call(F.leaky_relu, b.input(node, 0), attr(node, "alpha", 0.01))


@emits("Elu")
def _elu(b: _Builder, node: Node):
    return b.call(F.elu, b.input(node, 0), attr(node, "alpha", 1.0))


@emits("Celu")
def _celu(b: _Builder, node: Node):
    return b.call(F.celu, b.input(node, 0), attr(node, "alpha", 1.0))


@emits("Selu")
def _selu(b: _Builder, node: Node):
    alpha, gamma = attr(node, "alpha", 1.6732632423543772), attr(node, "gamma", 1.0507009873554805)
    return b.call(_selu_fn, b.input(node, 0), float(alpha), float(gamma))


def _selu_fn(x, alpha: float, gamma: float):
    return gamma * F.elu(x, alpha)


@emits("ThresholdedRelu")
def _thresholded_relu(b: _Builder, node: Node):
    return b.call(F.threshold, b.input(node, 0), float(attr(node, "alpha", 1.0)), 0.0)


@emits("PRelu")
def _prelu(b: _Builder, node: Node):
    return b.call(_prelu_fn, b.input(node, 0), b.input(node, 1))


def _prelu_fn(x, slope):
    return torch.where(x >= 0, x, x * slope)


@emits("Clip")
def _clip(b: _Builder, node: Node):
    low, high = b.scalar(node, 1), b.scalar(node, 2)
    if low is None and high is None:
        return b.input(node, 0)
    return b.call(torch.clamp, b.input(node, 0), low, high)


_BINARY: dict[str, Callable] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor, "BitShift": None,
}


def _binary(fn):
    def emit(b: _Builder, node: Node):
        return b.call(fn, b.input(node, 0), b.input(node, 1))

    return emit


for _op, _fn in _BINARY.items():
    if _fn is not None:
        EMITTERS[_op] = _binary(_fn)


@emits("Div")
def _div(b: _Builder, node: Node):
    x = node.inputs[0]
    if x.type is not None and not x.type.dtype.is_float:
        return b.call(torch.div, b.input(node, 0), b.input(node, 1), rounding_mode="trunc")
    return b.call(torch.div, b.input(node, 0), b.input(node, 1))


@emits("Mod")
def _mod(b: _Builder, node: Node):
    fn = torch.fmod if attr(node, "fmod", 0) else torch.remainder
    return b.call(fn, b.input(node, 0), b.input(node, 1))


def _variadic(fn):
    def emit(b: _Builder, node: Node):
        operands = [b.input(node, i) for i in range(len(node.inputs))]
        result = operands[0]
        for other in operands[1:]:
            result = b.call(fn, result, other)
        return result

    return emit


EMITTERS["Max"] = _variadic(torch.maximum)
EMITTERS["Min"] = _variadic(torch.minimum)
EMITTERS["Sum"] = _variadic(torch.add)


@emits("Mean")
def _mean(b: _Builder, node: Node):
    return b.call(torch.div, _variadic(torch.add)(b, node), float(len(node.inputs)))


@emits("Where")
def _where_op(b: _Builder, node: Node):
    return b.call(torch.where, b.input(node, 0), b.input(node, 1), b.input(node, 2))


# -- pooling and resampling ------------------------------------------------------------------
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@emits("MaxPool")
def _max_pool(b: _Builder, node: Node):
    k = _spatial_rank(node)
    kernel = list(attr(node, "kernel_shape"))
    strides, padding, dilations, explicit = _window(node, k)
    x = b.input(node, 0)
    if explicit is not None or any(2 * p > kk for p, kk in zip(padding, kernel)):
        pad = explicit or [p for p in reversed(padding) for _ in range(2)]
        x = b.call(F.pad, x, pad, "constant", float("-inf"))
        padding = [0] * k
    ceil = bool(attr(node, "ceil_mode", 0))
    return [b.call(_MAX_POOL[k], x, kernel, strides, padding, dilations, ceil), None]


@emits("AveragePool")
def _avg_pool(b: _Builder, node: Node):
    k = _spatial_rank(node)
    kernel = list(attr(node, "kernel_shape"))
    strides, padding, dilations, explicit = _window(node, k)
    if any(d != 1 for d in dilations):
        raise IrtoolError("AveragePool with dilations is not supported")
    include_pad = bool(attr(node, "count_include_pad", 0))
    x = b.input(node, 0)
    if explicit is not None or any(2 * p > kk for p, kk in zip(padding, kernel)):
        if not include_pad and any(explicit or padding):
            raise IrtoolError("AveragePool with asymmetric pads excluded from the count is not supported")
        x = b.call(F.pad, x, explicit or [p for p in reversed(padding) for _ in range(2)])
        padding = [0] * k
    ceil = bool(attr(node, "ceil_mode", 0))
    return b.call(_AVG_POOL[k], x, kernel, strides, padding, ceil, include_pad)


@emits("GlobalAveragePool")
def _global_avg_pool(b: _Builder, node: Node):
    return b.call(_global_pool, b.input(node, 0), "mean")


@emits("GlobalMaxPool")
def _global_max_pool(b: _Builder, node: Node):
    return b.call(_global_pool, b.input(node, 0), "amax")


def _global_pool(x, how: str):
    dims = tuple(range(2, x.dim()))
    return x.mean(dim=dims, keepdim=True) if how == "mean" else x.amax(dim=dims, keepdim=True)


@emits("Resize")
def _resize(b: _Builder, node: Node):
    mode = attr(node, "mode", "nearest")
    transform = attr(node, "coordinate_transformation_mode", "half_pixel")
    if attr(node, "axes", None):
        raise IrtoolError("Resize with axes is not supported")
    nearest_mode = attr(node, "nearest_mode", "round_prefer_floor")
    if mode == "nearest" and (transform, nearest_mode) == ("half_pixel", "round_prefer_ceil"):
        mode, corners = "nearest-exact", None  # torch's nearest-exact
    elif mode == "nearest":
        if transform != "asymmetric" or nearest_mode != "floor":
            raise IrtoolError(f"nearest Resize with {transform} coordinates is not supported")
        corners = None
    elif mode == "cubic" and (float(attr(node, "cubic_coeff_a", -0.75)) != -0.75 or attr(node, "exclude_outside", 0)):
        raise IrtoolError("cubic Resize other than torch's bicubic (a=-0.75, outside pixels included) is not supported")
    elif mode in ("linear", "cubic"):
        if transform not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise IrtoolError(f"{mode} Resize with {transform} coordinates is not supported")
        corners = transform == "align_corners"
    else:
        raise IrtoolError(f"Resize mode {mode} is not supported")
    scales = b.array(node, 2)
    sizes = b.array_or_tensor(node, 3)
    scales = None if scales is None or scales.size == 0 else [float(s) for s in scales]
    x = node.inputs[0].type
    if scales is not None and x is not None and x.is_static and scales[:2] == [1.0, 1.0]:
        # onnxruntime floors in x scale in float32, torch in double, which can be one less
        # (5 x 1.8). Nearest picks are then taken as onnxruntime computes them; other modes
        # would need torch to resample to a size its scale does not give.
        wanted = [resized_size(d, f) for d, f in zip(x.shape, scales)]
        if wanted != [int(math.floor(d * f)) for d, f in zip(x.shape, scales)]:
            if not mode.startswith("nearest"):
                raise IrtoolError(f"{mode} Resize by {scales[2:]} gives a size torch does not compute")
            picks = [_nearest_picks(d, n, f, mode) for d, n, f in zip(x.shape[2:], wanted[2:], scales[2:])]
            return b.call(_pick_fn, b.input(node, 0), picks)
    return b.call(_resize_fn, b.input(node, 0), scales, sizes, mode, corners)


def _nearest_picks(size: int, out: int, scale: float, mode: str) -> list[int]:
    """The input index onnxruntime reads for each output index, in its float32 arithmetic."""
    x = np.arange(out, dtype=np.float32)
    scale = np.float32(scale)
    if mode == "nearest-exact":  # half_pixel, round_prefer_ceil
        index = np.floor((x + np.float32(0.5)) / scale - np.float32(0.5) + np.float32(0.5))
    else:  # asymmetric, floor
        index = np.floor(x / scale)
    return np.clip(index, 0, size - 1).astype(np.int64).tolist()


def _pick_fn(x, picks):
    for axis, index in enumerate(picks, start=2):
        x = x.index_select(axis, torch.tensor(index, device=x.device))
    return x


def _resize_fn(x, scales, sizes, mode: str, align_corners):
    spatial = x.dim() - 2
    if mode not in ("nearest", "nearest-exact"):
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial] if mode == "linear" else "bicubic"
    if scales is not None:
        if scales[0] != 1.0 or scales[1] != 1.0:
            raise ValueError("Resize scales batch or channels")
        return F.interpolate(x, scale_factor=scales[2:], mode=mode, align_corners=align_corners,
                             recompute_scale_factor=False)
    sizes = sizes.tolist() if isinstance(sizes, torch.Tensor) else list(sizes)
    return F.interpolate(x, size=sizes[2:], mode=mode, align_corners=align_corners)


# -- shapes ----------------------------------------------------------------------------------
@emits("Reshape")
def _reshape(b: _Builder, node: Node):
    return b.call(_reshape_fn, b.input(node, 0), b.array_or_tensor(node, 1), attr(node, "allowzero", 0))


def _reshape_fn(x, shape, allowzero: int = 0):
    shape = shape.tolist() if isinstance(shape, torch.Tensor) else list(shape)
    if not allowzero:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@emits("Flatten")
def _flatten(b: _Builder, node: Node):
    return b.call(_flatten_fn, b.input(node, 0), attr(node, "axis", 1))


def _flatten_fn(x, axis: int):
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


@emits("Transpose")
def _transpose(b: _Builder, node: Node):
    perm = attr(node, "perm", None)
    if perm is None:
        return b.call(_reverse_dims, b.input(node, 0))
    return b.call(torch.permute, b.input(node, 0), list(perm))


def _reverse_dims(x):
    return x.permute(*reversed(range(x.dim())))


@emits("Concat")
def _concat(b: _Builder, node: Node):
    return b.call(torch.cat, [b.input(node, i) for i in range(len(node.inputs))], attr(node, "axis"))


@emits("Split")
def _split(b: _Builder, node: Node):
    sizes = b.array(node, 1)
    axis = attr(node, "axis", 0)
    count = len(node.outputs)
    call = b.call(_split_fn, b.input(node, 0), None if sizes is None else sizes.tolist(), axis, count)
    return b.outputs(call, count)


def _split_fn(x, sizes, axis: int, count: int):
    if sizes is None:
        chunk = -(-x.shape[axis] // count)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(count)]
    return torch.split(x, sizes, axis)


@emits("Slice")
def _slice(b: _Builder, node: Node):
    starts, ends, axes, steps = (b.array_or_tensor(node, i) for i in range(1, 5))
    return b.call(_slice_fn, b.input(node, 0), starts, ends, axes, steps)


def _as_list(values) -> list | None:
    return values.tolist() if isinstance(values, torch.Tensor) else values


def _slice_fn(x, starts, ends, axes=None, steps=None):
    starts, ends, axes, steps = map(_as_list, (starts, ends, axes, steps))
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + x.dim() if axis < 0 else axis
        size = x.shape[axis]
        if step > 0:
            start = max(0, min(size, start + size if start < 0 else start))
            end = max(0, min(size, end + size if end < 0 else end))
            index[axis] = slice(start, end, step)
        else:  # walk backwards: slice the flipped tensor forwards
            start = max(-1, min(size - 1, start + size if start < 0 else start))
            end = max(-1, min(size - 1, end + size if end < 0 else end))
            flips.append(axis)
            index[axis] = slice(size - 1 - start, size - 1 - end, -step)
    if flips:
        x = torch.flip(x, flips)
    return x[tuple(index)]


@emits("Gather")
def _gather(b: _Builder, node: Node):
    return b.call(_gather_fn, b.input(node, 0), b.input(node, 1), attr(node, "axis", 0))


def _gather_fn(x, indices, axis: int):
    axis = axis + x.dim() if axis < 0 else axis
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    picked = torch.index_select(x, axis, indices.reshape(-1))
    return picked.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1:]))


@emits("GatherElements")
def _gather_elements(b: _Builder, node: Node):
    return b.call(torch.gather, b.input(node, 0), attr(node, "axis", 0), b.input(node, 1))


@emits("Unsqueeze")
def _unsqueeze(b: _Builder, node: Node):
    return b.call(_unsqueeze_fn, b.input(node, 0), b.array(node, 1).tolist())


def _unsqueeze_fn(x, axes):
    rank = x.dim() + len(axes)
    for axis in sorted(a + rank if a < 0 else a for a in axes):
        x = x.unsqueeze(axis)
    return x


@emits("Squeeze")
def _squeeze(b: _Builder, node: Node):
    axes = b.array(node, 1)
    return b.call(_squeeze_fn, b.input(node, 0), None if axes is None else axes.tolist())


def _squeeze_fn(x, axes):
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(a + x.dim() if a < 0 else a for a in axes))


@emits("Expand")
def _expand(b: _Builder, node: Node):
    return b.call(_expand_fn, b.input(node, 0), b.array_or_tensor(node, 1))


def _expand_fn(x, shape):
    shape = shape.tolist() if isinstance(shape, torch.Tensor) else list(shape)
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))


@emits("Tile")
def _tile(b: _Builder, node: Node):
    return b.call(_tile_fn, b.input(node, 0), b.array_or_tensor(node, 1))


def _tile_fn(x, repeats):
    repeats = repeats.tolist() if isinstance(repeats, torch.Tensor) else list(repeats)
    return x.repeat(repeats)


@emits("Shape")
def _shape(b: _Builder, node: Node):
    return b.call(_shape_fn, b.input(node, 0), attr(node, "start", 0), attr(node, "end", None))


def _shape_fn(x, start: int, end):
    return torch.tensor(x.shape[start:end], dtype=torch.int64)


@emits("Size")
def _size(b: _Builder, node: Node):
    return b.call(_size_fn, b.input(node, 0))


def _size_fn(x):
    return torch.tensor(x.numel(), dtype=torch.int64)


@emits("ConstantOfShape")
def _constant_of_shape(b: _Builder, node: Node):
    value = attr(node, "value", None)
    value = np.zeros(1, np.float32) if value is None else np.asarray(value)
    dtype = _TORCH_DTYPES[DType.from_numpy(value.dtype)]
    return b.call(_constant_of_shape_fn, b.array_or_tensor(node, 0), value.reshape(-1)[0].item(), dtype)


def _constant_of_shape_fn(shape, fill, dtype):
    shape = shape.tolist() if isinstance(shape, torch.Tensor) else list(shape)
    return torch.full(shape, fill, dtype=dtype)


@emits("Constant")
def _constant(b: _Builder, node: Node):
    value = attr(node, "value", None)
    if value is None:
        raise IrtoolError("Constant without a tensor value is not supported")
    return b.call(torch.tensor, np.asarray(value).tolist(), dtype=_TORCH_DTYPES[DType.from_numpy(np.asarray(value).dtype)])


@emits("Range")
def _range(b: _Builder, node: Node):
    return b.call(_range_fn, b.input(node, 0), b.input(node, 1), b.input(node, 2))


def _range_fn(start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@emits("Pad")
def _pad(b: _Builder, node: Node):
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    mode = modes.get(attr(node, "mode", "constant"))
    if mode is None:
        raise IrtoolError(f"Pad mode {attr(node, 'mode')} is not supported")
    pads = b.array(node, 1).tolist()
    axes = b.array(node, 3)
    fill = b.scalar(node, 2)
    return b.call(_pad_fn, b.input(node, 0), pads, None if axes is None else axes.tolist(), mode, fill or 0.0)


def _pad_fn(x, pads, axes, mode: str, fill):
    rank = x.dim()
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    begins, ends = pads[: len(axes)], pads[len(axes):]
    per_axis = {a: (bb, ee) for a, bb, ee in zip(axes, begins, ends)}
    last = max((a for a, p in per_axis.items() if p != (0, 0)), default=None)
    if last is None:
        return x
    first = min(a for a, p in per_axis.items() if p != (0, 0))
    torch_pads: list[int] = []
    for axis in range(rank - 1, first - 1, -1):
        torch_pads += list(per_axis.get(axis, (0, 0)))
    if mode == "constant":
        return F.pad(x, torch_pads, "constant", fill)
    return F.pad(x, torch_pads, mode)


_TORCH_DTYPES = {
    DType.float32: torch.float32, DType.float64: torch.float64, DType.float16: torch.float16,
    DType.bfloat16: torch.bfloat16, DType.int64: torch.int64, DType.int32: torch.int32,
    DType.int16: torch.int16, DType.int8: torch.int8, DType.uint8: torch.uint8, DType.bool: torch.bool,
}


@emits("Cast")
def _cast(b: _Builder, node: Node):
    target = DType.from_onnx(attr(node, "to"))
    if target not in _TORCH_DTYPES:
        raise IrtoolError(f"Cast to {target.name} is not supported")
    return b.call(_cast_fn, b.input(node, 0), _TORCH_DTYPES[target])


def _cast_fn(x, dtype):
    return x.to(dtype)


@emits("CastLike")
def _cast_like(b: _Builder, node: Node):
    return b.call(_cast_like_fn, b.input(node, 0), b.input(node, 1))


def _cast_like_fn(x, like):
    return x.to(like.dtype)


# -- reductions and softmax ------------------------------------------------------------------
_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "amax", "ReduceMin": "amin", "ReduceProd": "prod"}


def _reduce(how: str):
    def emit(b: _Builder, node: Node):
        axes = b.array(node, 1)
        if axes is None and "axes" in node.attrs:  # the pre-opset-18 attribute form
            axes = np.asarray(node.attrs["axes"])
        axes = None if axes is None or axes.size == 0 else axes.tolist()
        keep = bool(attr(node, "keepdims", 1))
        if axes is None and attr(node, "noop_with_empty_axes", 0):
            return b.input(node, 0)
        return b.call(_reduce_fn, b.input(node, 0), how, axes, keep)

    return emit


def _reduce_fn(x, how: str, axes, keep: bool):
    dims = tuple(range(x.dim())) if axes is None else tuple(axes)
    if how in _NORM_REDUCE:
        return _NORM_REDUCE[how](x, dims, keep)
    if how == "prod":
        for d in sorted((a + x.dim() if a < 0 else a for a in dims), reverse=True):
            x = x.prod(dim=d, keepdim=keep)
        return x
    return getattr(torch, how)(x, dim=dims, keepdim=keep)


for _op, _how in _REDUCE.items():
    EMITTERS[_op] = _reduce(_how)


_NORM_REDUCE = {
    "ReduceL1": lambda x, dims, keep: x.abs().sum(dim=dims, keepdim=keep),
    "ReduceL2": lambda x, dims, keep: torch.linalg.vector_norm(x, 2, dim=dims, keepdim=keep),
    "ReduceSumSquare": lambda x, dims, keep: (x * x).sum(dim=dims, keepdim=keep),
    "ReduceLogSum": lambda x, dims, keep: x.sum(dim=dims, keepdim=keep).log(),
    "ReduceLogSumExp": lambda x, dims, keep: torch.logsumexp(x, dim=dims, keepdim=keep),
}
"""Reductions with no one-word torch function, by what they compute (``_reduce_fn`` runs them)."""


for _op in _NORM_REDUCE:
    EMITTERS[_op] = _reduce(_op)


@emits("CumSum")
def _cumsum(b: _Builder, node: Node):
    axis = b.array(node, 1)
    return b.call(_cumsum_fn, b.input(node, 0), int(axis.reshape(-1)[0]), bool(attr(node, "exclusive", 0)),
                  bool(attr(node, "reverse", 0)))


def _cumsum_fn(x, axis: int, exclusive: bool, reverse: bool):
    if reverse:
        x = x.flip(axis)
    y = x.cumsum(axis)
    if exclusive:
        y = y - x
    return y.flip(axis) if reverse else y


@emits("TopK")
def _topk(b: _Builder, node: Node):
    k = int(b.array(node, 1).reshape(-1)[0])
    call = b.call(torch.topk, b.input(node, 0), k, attr(node, "axis", -1), bool(attr(node, "largest", 1)),
                  bool(attr(node, "sorted", 1)))
    return b.outputs(call, 2)


@emits("Trilu")
def _trilu(b: _Builder, node: Node):
    k = b.scalar(node, 1)
    fn = torch.triu if attr(node, "upper", 1) else torch.tril
    return b.call(fn, b.input(node, 0), int(k or 0))


@emits("ArgMax", "ArgMin")
def _arg_reduce(b: _Builder, node: Node):
    if attr(node, "select_last_index", 0):
        raise IrtoolError(f"{node.op} with select_last_index is not supported")
    fn = torch.argmax if node.op == "ArgMax" else torch.argmin
    return b.call(fn, b.input(node, 0), attr(node, "axis", 0), bool(attr(node, "keepdims", 1)))


@emits("Softmax")
def _softmax(b: _Builder, node: Node):
    return b.call(torch.softmax, b.input(node, 0), attr(node, "axis", -1))


@emits("LogSoftmax")
def _log_softmax(b: _Builder, node: Node):
    return b.call(torch.log_softmax, b.input(node, 0), attr(node, "axis", -1))


# -- quantization ----------------------------------------------------------------------------
@emits("QuantizeLinear")
def _quantize(b: _Builder, node: Node):
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    dtype = _TORCH_DTYPES[zero.type.dtype] if zero is not None and zero.type is not None else torch.uint8
    return b.call(_quantize_fn, b.input(node, 0), b.input(node, 1), b.input(node, 2), attr(node, "axis", 1), dtype)


def _per_axis(param, x, axis: int):
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


def _quantize_fn(x, scale, zero_point, axis: int, dtype):
    info = torch.iinfo(dtype)
    zero = 0 if zero_point is None else _per_axis(zero_point, x, axis).to(torch.float32)
    q = torch.round(x / _per_axis(scale, x, axis)) + zero
    return torch.clamp(q, info.min, info.max).to(dtype)


@emits("DequantizeLinear")
def _dequantize(b: _Builder, node: Node):
    return b.call(_dequantize_fn, b.input(node, 0), b.input(node, 1), b.input(node, 2), attr(node, "axis", 1))


def _dequantize_fn(q, scale, zero_point, axis: int):
    zero = 0 if zero_point is None else _per_axis(zero_point, q, axis).to(torch.float32)
    return (q.to(torch.float32) - zero) * _per_axis(scale, q, axis)


# -- recurrent layers ------------------------------------------------------------------------
_ONNX_TO_TORCH_GATES = [0, 2, 3, 1]
"""ONNX packs LSTM gates i, o, f, c; torch packs i, f, g (= c), o."""


def _recurrent_direction(node: Node, activations: list[str]) -> str:
    """The direction of an RNN node torch's recurrent layers can run (forward or bidirectional,
    default activations, no clip, no sequence lengths), or an error naming what they cannot."""
    if node.inputs[4:5] and node.inputs[4] is not None:
        raise IrtoolError(f"{node.op} with sequence_lens is not supported")
    given = attr(node, "activations", None)
    if given and [a.decode() if isinstance(a, bytes) else a for a in given] not in (activations, activations * 2):
        raise IrtoolError(f"{node.op} activations {given} are not supported")
    if attr(node, "clip", None) is not None:
        raise IrtoolError(f"{node.op} with clip is not supported")
    direction = attr(node, "direction", "forward")
    if direction == "reverse":
        raise IrtoolError(f"{node.op} direction 'reverse' is not supported")
    return direction


@emits("LSTM")
def _lstm(b: _Builder, node: Node):
    if len(node.inputs) > 7 and node.inputs[7] is not None:
        raise IrtoolError("LSTM with peepholes is not supported")
    if attr(node, "input_forget", 0):
        raise IrtoolError("LSTM with input_forget is not supported")
    direction = _recurrent_direction(node, ["Sigmoid", "Tanh", "Tanh"])
    inputs = [b.input(node, i) if i < len(node.inputs) else None for i in range(7)]
    call = b.call(
        _lstm_fn, inputs[0], inputs[1], inputs[2], inputs[3], inputs[5], inputs[6],
        attr(node, "hidden_size"), direction == "bidirectional", attr(node, "layout", 0),
    )
    return b.outputs(call, 3)[: len(node.outputs)]


@emits("GRU")
def _gru(b: _Builder, node: Node):
    if not attr(node, "linear_before_reset", 0):
        raise IrtoolError("GRU with linear_before_reset=0 is not supported (torch's GRU resets after the matmul)")
    direction = _recurrent_direction(node, ["Sigmoid", "Tanh"])
    inputs = [b.input(node, i) if i < len(node.inputs) else None for i in range(6)]
    call = b.call(
        _gru_fn, inputs[0], inputs[1], inputs[2], inputs[3], inputs[5],
        attr(node, "hidden_size"), direction == "bidirectional", attr(node, "layout", 0),
    )
    return b.outputs(call, 2)[: len(node.outputs)]


def _torch_gru_gates(w):
    """ONNX packs GRU gates z, r, h; torch packs r, z, n."""
    hidden = w.shape[0] // 3
    return w.reshape(3, hidden, *w.shape[1:])[[1, 0, 2]].reshape(w.shape)


def _torch_params(w, r, bias, torch_gates, directions: int) -> list:
    """ONNX's stacked W, R and B of a recurrent layer as torch's flat per-direction list."""
    params = []
    rows = w.shape[1]
    for d in range(directions):
        params += [torch_gates(w[d]), torch_gates(r[d])]
        if bias is not None:
            params += [torch_gates(bias[d, :rows]), torch_gates(bias[d, rows:])]
    return params


def _gru_fn(x, w, r, bias, h0, hidden: int, bidirectional: bool, layout: int):
    directions = 2 if bidirectional else 1
    batch = x.shape[0] if layout else x.shape[1]
    params = _torch_params(w, r, bias, _torch_gru_gates, directions)
    if layout and h0 is not None:
        h0 = h0.transpose(0, 1)
    h0 = x.new_zeros((directions, batch, hidden)) if h0 is None else h0
    out, h_n = torch.gru(x, h0, params, bias is not None, 1, 0.0, False, bidirectional, bool(layout))
    if layout:  # Y is [batch, seq, directions, hidden]; the state is batch-major too
        return out.reshape(out.shape[0], out.shape[1], directions, hidden), h_n.transpose(0, 1)
    return out.reshape(out.shape[0], out.shape[1], directions, hidden).permute(0, 2, 1, 3), h_n


def _torch_gates(w):
    hidden = w.shape[0] // 4
    return w.reshape(4, hidden, *w.shape[1:])[_ONNX_TO_TORCH_GATES].reshape(w.shape)


def _lstm_fn(x, w, r, bias, h0, c0, hidden: int, bidirectional: bool, layout: int):
    directions = 2 if bidirectional else 1
    batch = x.shape[0] if layout else x.shape[1]
    params = _torch_params(w, r, bias, _torch_gates, directions)
    state_shape = (directions, batch, hidden)
    if layout:
        h0 = None if h0 is None else h0.transpose(0, 1)
        c0 = None if c0 is None else c0.transpose(0, 1)
    h0 = x.new_zeros(state_shape) if h0 is None else h0
    c0 = x.new_zeros(state_shape) if c0 is None else c0
    out, h_n, c_n = torch.lstm(x, (h0, c0), params, bias is not None, 1, 0.0, False, bidirectional, bool(layout))
    if layout:  # Y is [batch, seq, directions, hidden]; states are batch-major too
        y = out.reshape(out.shape[0], out.shape[1], directions, hidden)
        return y, h_n.transpose(0, 1), c_n.transpose(0, 1)
    y = out.reshape(out.shape[0], out.shape[1], directions, hidden).permute(0, 2, 1, 3)
    return y, h_n, c_n
