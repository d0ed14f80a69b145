"""The TVM backend's per-op table: IR op name -> Relax emitter, with ONNX (opset 18) semantics.

An emitter is ``(bb, node, args) -> relax.Expr | list[relax.Expr | None]``: the block builder,
the IR node, and the Relax expressions of its inputs (``None`` for an absent optional input;
constants are ``relax.const``). Emitters read attributes through the op registry, so declared
defaults apply. Operands that must be known when compiling (axes, pads, shapes, ``k``) are read
with ``constant``; they are constants in every static graph, because the backend evaluates
constant-only nodes while emitting (``fold_constant_node``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from ..ir.core import Node
from ..ir.ops.tensor import resized_size
from ..ir.errors import IrtoolError
from ..ir.registry import opdef_of
from ..ir.types import DType

__all__ = ["EMITTERS", "Emitter", "const", "constant", "fold_constant_node", "shape_of"]

Emitter = Callable[[relax.BlockBuilder, Node, Sequence["relax.Expr | None"]], "relax.Expr | list"]
EMITTERS: dict[str, Emitter] = {}

_FOLD_LIMIT = 1 << 26
"""Constant-only nodes producing more elements than this are compiled, not evaluated."""


def emitter(*ops: str):
    def register(fn: Emitter) -> Emitter:
        for op in ops:
            EMITTERS[op] = fn
        return fn

    return register


# -- helpers -----------------------------------------------------------------------------------
def attr(node: Node, key: str):
    opdef = opdef_of(node)
    return opdef.attr(node, key) if opdef is not None else node.attrs.get(key)


def fail(node: Node, message: str) -> IrtoolError:
    return IrtoolError(f"TVM backend: {node.op} '{node.name}': {message}")


def is_constant(expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst)


def constant(node: Node, expr, what: str) -> np.ndarray:
    """The value of a constant operand, or an error saying it must be one."""
    if not is_constant(expr):
        raise fail(node, f"{what} must be a constant to compile")
    return expr.value.numpy()


def shape_of(expr) -> list[int]:
    shape = expr.ty.shape
    if shape is None or not hasattr(shape, "values"):
        raise IrtoolError("TVM backend: a tensor of unknown shape reached an op that needs its shape")
    return [int(d) for d in shape.values]


def dtype_of(expr) -> str:
    return str(expr.ty.dtype)


def const(array) -> relax.Expr:
    """A Relax constant that keeps the array's dtype (``relax.const`` narrows int64 to int32)."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy()  # not np.ascontiguousarray: it turns a scalar into shape (1,)
    return relax.const(array, dtype=str(array.dtype))


def scalar(value, like) -> relax.Expr:
    return const(np.array(value, dtype=dtype_of(like)))


def fold_constant_node(node: Node, args: Sequence, opset: int) -> list | None:
    """Evaluate a node whose inputs are all constants (``onnx.reference``); None if it cannot be."""
    if node.domain:
        return None
    if any(a is not None and not is_constant(a) for a in args):
        return None
    if not node.inputs and node.op != "Constant":
        return None
    arrays = [a.value.numpy() if a is not None else None for a in args]
    if sum(a.size for a in arrays if a is not None) > _FOLD_LIMIT:
        return None
    from ..passes.const_fold import evaluate_node

    try:
        results = evaluate_node(node, arrays, opset)
    except IrtoolError:
        return None
    if any(r.size > _FOLD_LIMIT or r.dtype == object for r in results):
        return None
    return [const(np.asarray(r)) for r in results]


def _emit(bb, expr):
    return bb.emit(expr)


def _axes(node: Node, expr, rank: int, what: str = "axes") -> list[int] | None:
    if expr is None:
        return None
    return [int(a) % rank for a in np.atleast_1d(constant(node, expr, what))]


def _broadcast_shape(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return list(np.broadcast_shapes(tuple(a), tuple(b)))


# -- elementwise -------------------------------------------------------------------------------
_UNARY = {
    "Abs": R.abs,
    "Ceil": R.ceil,
    "Cos": R.cos,
    "Erf": R.erf,
    "Exp": R.exp,
    "Floor": R.floor,
    "Log": R.log,
    "Neg": R.negative,
    "Not": R.logical_not,
    "Relu": R.nn.relu,
    "Sigmoid": R.sigmoid,
    "Sign": R.sign,
    "Sin": R.sin,
    "Sqrt": R.sqrt,
    "Tanh": R.tanh,
}
for _op, _fn in _UNARY.items():
    EMITTERS[_op] = lambda bb, node, args, fn=_fn: _emit(bb, fn(args[0]))

_BINARY = {
    "Add": R.add,
    "Sub": R.subtract,
    "Mul": R.multiply,
    "And": R.logical_and,
    "Or": R.logical_or,
    "Xor": R.logical_xor,
    "Equal": R.equal,
    "Greater": R.greater,
    "GreaterOrEqual": R.greater_equal,
    "Less": R.less,
    "LessOrEqual": R.less_equal,
}
for _op, _fn in _BINARY.items():
    EMITTERS[_op] = lambda bb, node, args, fn=_fn: _emit(bb, fn(args[0], args[1]))


@emitter("Div")
def _div(bb, node, args):
    a, b = args
    if dtype_of(a).startswith(("int", "uint")):
        return _emit(bb, R.astype(R.trunc(R.divide(R.astype(a, "float64"), R.astype(b, "float64"))), dtype_of(a)))
    return _emit(bb, R.divide(a, b))


@emitter("Pow")
def _pow(bb, node, args):
    base, exponent = args
    if dtype_of(exponent) != dtype_of(base):
        exponent = _emit(bb, R.astype(exponent, dtype_of(base)))
    return _emit(bb, R.power(base, exponent))


@emitter("Mod")
def _mod(bb, node, args):
    a, b = args
    return _emit(bb, R.mod(a, b) if attr(node, "fmod") else R.floor_mod(a, b))


@emitter("Max", "Min", "Sum", "Mean")
def _variadic(bb, node, args):
    combine = {"Max": R.maximum, "Min": R.minimum, "Sum": R.add, "Mean": R.add}[node.op]
    result = args[0]
    for arg in args[1:]:
        result = _emit(bb, combine(result, arg))
    if node.op == "Mean" and len(args) > 1:
        result = _emit(bb, R.divide(result, scalar(len(args), result)))
    return result if len(args) > 1 else _emit(bb, R.add(result, scalar(0, result)))


@emitter("Identity")
def _identity(bb, node, args):
    return args[0]


@emitter("Dropout")
def _dropout(bb, node, args):
    x = args[0]
    mask = _emit(bb, R.ones(shape_of(x), "bool")) if len(node.outputs) > 1 else None
    return [x, mask]


@emitter("Reciprocal")
def _reciprocal(bb, node, args):
    return _emit(bb, R.divide(scalar(1, args[0]), args[0]))


@emitter("Round")
def _round(bb, node, args):
    return _emit(bb, R.round(args[0]))


@emitter("Cast")
def _cast(bb, node, args):
    return _emit(bb, R.astype(args[0], DType.from_onnx(int(attr(node, "to"))).name))


@emitter("CastLike")
def _cast_like(bb, node, args):
    return _emit(bb, R.astype(args[0], dtype_of(args[1])))


@emitter("Clip")
def _clip(bb, node, args):
    x, low, high = (list(args) + [None, None])[:3]
    if low is not None:
        x = _emit(bb, R.maximum(x, low))
    if high is not None:
        x = _emit(bb, R.minimum(x, high))
    return x


@emitter("Where")
def _where(bb, node, args):
    return _emit(bb, R.where(*args))


def _activation(bb, name: str, x, alpha: float | None = None, beta: float | None = None):
    """The ONNX activations recurrent ops and the elementwise table share."""
    x = bb.normalize(x)
    zero = scalar(0, x)
    if name == "Sigmoid":
        return R.sigmoid(x)
    if name == "Tanh":
        return R.tanh(x)
    if name == "Relu":
        return R.nn.relu(x)
    if name == "LeakyRelu":
        return R.where(R.less(x, zero), R.multiply(x, scalar(0.01 if alpha is None else alpha, x)), x)
    if name == "HardSigmoid":
        a, b = (0.2 if alpha is None else alpha), (0.5 if beta is None else beta)
        return R.clip(R.add(R.multiply(x, scalar(a, x)), scalar(b, x)), 0.0, 1.0)
    if name == "Elu":
        a = 1.0 if alpha is None else alpha
        return R.where(R.greater(x, zero), x, R.multiply(scalar(a, x), R.subtract(R.exp(x), scalar(1, x))))
    if name == "Softsign":
        return R.divide(x, R.add(scalar(1, x), R.abs(x)))
    if name == "Softplus":
        return R.log(R.add(R.exp(x), scalar(1, x)))
    if name == "Affine":
        return R.add(R.multiply(x, scalar(alpha, x)), scalar(beta, x))
    if name == "ScaledTanh":
        return R.multiply(scalar(alpha, x), R.tanh(R.multiply(x, scalar(beta, x))))
    if name == "ThresholdedRelu":
        return R.where(R.greater(x, scalar(1.0 if alpha is None else alpha, x)), x, zero)
    raise IrtoolError(f"TVM backend: activation '{name}' is not supported")


@emitter("LeakyRelu", "HardSigmoid", "Elu", "Softsign", "Softplus", "ThresholdedRelu")
def _parametric(bb, node, args):
    opdef = opdef_of(node)
    alpha = attr(node, "alpha") if opdef is not None and "alpha" in opdef.attrs else None
    beta = attr(node, "beta") if opdef is not None and "beta" in opdef.attrs else None
    return _emit(bb, _activation(bb, node.op, args[0], alpha, beta))


@emitter("HardSwish")
def _hard_swish(bb, node, args):
    x = args[0]
    gate = R.clip(R.add(R.divide(x, scalar(6, x)), scalar(0.5, x)), 0.0, 1.0)
    return _emit(bb, R.multiply(x, gate))


@emitter("Selu")
def _selu(bb, node, args):
    x = args[0]
    alpha, gamma = attr(node, "alpha"), attr(node, "gamma")
    negative = R.multiply(scalar(alpha, x), R.subtract(R.exp(x), scalar(1, x)))
    return _emit(bb, R.multiply(scalar(gamma, x), R.where(R.greater(x, scalar(0, x)), x, negative)))


@emitter("Celu")
def _celu(bb, node, args):
    x = args[0]
    alpha = attr(node, "alpha")
    negative = R.multiply(scalar(alpha, x), R.subtract(R.exp(R.divide(x, scalar(alpha, x))), scalar(1, x)))
    return _emit(bb, R.add(R.nn.relu(x), R.minimum(scalar(0, x), negative)))


@emitter("Mish")
def _mish(bb, node, args):
    x = args[0]
    return _emit(bb, R.multiply(x, R.tanh(R.log(R.add(R.exp(x), scalar(1, x))))))


@emitter("Gelu")
def _gelu(bb, node, args):
    return _emit(bb, R.nn.gelu_tanh(args[0]) if attr(node, "approximate") == "tanh" else R.nn.gelu(args[0]))


@emitter("PRelu")
def _prelu(bb, node, args):
    x, slope = args
    return _emit(bb, R.where(R.less(x, scalar(0, x)), R.multiply(x, slope), x))


# -- shapes and indexing -----------------------------------------------------------------------
@emitter("Shape")
def _shape(bb, node, args):
    dims = shape_of(args[0])
    start, end = attr(node, "start") or 0, attr(node, "end")
    return const(np.array(dims[start:end], dtype=np.int64))


@emitter("Size")
def _size(bb, node, args):
    return const(np.array(math.prod(shape_of(args[0])), dtype=np.int64))


@emitter("Reshape")
def _reshape(bb, node, args):
    x, target = args
    dims = [int(d) for d in constant(node, target, "shape")]
    source = shape_of(x)
    if not attr(node, "allowzero"):
        dims = [source[i] if d == 0 else d for i, d in enumerate(dims)]
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = math.prod(source) // max(known, 1)
    return _emit(bb, R.reshape(x, dims))


@emitter("Flatten")
def _flatten(bb, node, args):
    shape = shape_of(args[0])
    axis = attr(node, "axis") % (len(shape) + 1) if shape else 0
    return _emit(bb, R.reshape(args[0], [math.prod(shape[:axis]), math.prod(shape[axis:])]))


@emitter("Squeeze")
def _squeeze(bb, node, args):
    shape = shape_of(args[0])
    axes = _axes(node, args[1] if len(args) > 1 else None, len(shape))
    keep = [d for i, d in enumerate(shape) if not (d == 1 and (axes is None or i in axes))]
    return _emit(bb, R.reshape(args[0], keep))


@emitter("Unsqueeze")
def _unsqueeze(bb, node, args):
    shape = shape_of(args[0])
    rank = len(shape) + len(np.atleast_1d(constant(node, args[1], "axes")))
    axes = sorted(_axes(node, args[1], rank))
    out = list(shape)
    for axis in axes:
        out.insert(axis, 1)
    return _emit(bb, R.reshape(args[0], out))


@emitter("Transpose")
def _transpose(bb, node, args):
    perm = attr(node, "perm")
    return _emit(bb, R.permute_dims(args[0], None if perm is None else [int(p) for p in perm]))


@emitter("Concat")
def _concat(bb, node, args):
    parts = [a for a in args if a is not None and math.prod(shape_of(a)) > 0]
    rank = len(shape_of(parts[0]))
    return _emit(bb, R.concat(parts, axis=attr(node, "axis") % rank))


@emitter("Split")
def _split(bb, node, args):
    x = args[0]
    shape = shape_of(x)
    axis = attr(node, "axis") % len(shape)
    if len(args) > 1 and args[1] is not None:
        sizes = [int(s) for s in constant(node, args[1], "split")]
    else:
        parts = attr(node, "num_outputs") or len(node.outputs)
        step = -(-shape[axis] // parts)
        sizes = [min(step, shape[axis] - i * step) for i in range(parts)]
    points = list(np.cumsum(sizes)[:-1])
    pieces = _emit(bb, R.split(x, [int(p) for p in points], axis=axis))
    return [_emit(bb, relax.TupleGetItem(pieces, i)) for i in range(len(sizes))]


@emitter("Slice")
def _slice(bb, node, args):
    x = args[0]
    shape = shape_of(x)
    starts = constant(node, args[1], "starts")
    ends = constant(node, args[2], "ends")
    axes = _axes(node, args[3] if len(args) > 3 else None, len(shape)) or list(range(len(starts)))
    steps = constant(node, args[4], "steps") if len(args) > 4 and args[4] is not None else np.ones(len(starts), int)
    result = x
    for axis, start, end, step in zip(axes, starts, ends, steps):
        big = np.iinfo(np.int64).max
        start, end, step = (max(min(int(v), big // 2), -big // 2) for v in (start, end, step))
        begin, stop, stride = slice(start, end, step).indices(shape[axis])
        if stride > 0:
            stop = max(stop, begin)
            result = _emit(bb, R.strided_slice(result, [axis], [begin], [stop], [stride]))
        else:
            index = np.arange(begin, stop, stride, dtype=np.int64)
            result = _emit(bb, R.take(result, const(index), axis=axis, mode="clip"))
    return result


def _normalised_indices(bb, indices, dim: int):
    if is_constant(indices):
        array = indices.value.numpy().astype(np.int64)
        return const(np.where(array < 0, array + dim, array))
    wrapped = R.add(indices, scalar(dim, indices))
    return _emit(bb, R.where(R.less(indices, scalar(0, indices)), wrapped, indices))


@emitter("Gather")
def _gather(bb, node, args):
    x, indices = args
    shape = shape_of(x)
    axis = attr(node, "axis") % len(shape)
    return _emit(bb, R.take(x, _normalised_indices(bb, indices, shape[axis]), axis=axis, mode="clip"))


@emitter("GatherElements")
def _gather_elements(bb, node, args):
    x, indices = args
    shape = shape_of(x)
    axis = attr(node, "axis") % len(shape)
    return _emit(bb, R.gather_elements(x, _normalised_indices(bb, indices, shape[axis]), axis=axis))


@emitter("ScatterElements")
def _scatter_elements(bb, node, args):
    x, indices, updates = args
    axis = attr(node, "axis") % len(shape_of(x))
    reduction = {"none": "update"}.get(attr(node, "reduction"), attr(node, "reduction"))
    indices = _normalised_indices(bb, indices, shape_of(x)[axis])
    return _emit(bb, R.scatter_elements(x, indices, updates, axis=axis, reduction=reduction))


@emitter("ScatterND")
def _scatter_nd(bb, node, args):
    reduction = {"none": "update"}.get(attr(node, "reduction"), attr(node, "reduction"))
    return _emit(bb, R.scatter_nd(args[0], args[1], args[2], reduction=reduction))


@emitter("Expand")
def _expand(bb, node, args):
    x, target = args
    dims = _broadcast_shape(shape_of(x), [int(d) for d in constant(node, target, "shape")])
    return _emit(bb, R.broadcast_to(x, dims))


@emitter("Tile")
def _tile(bb, node, args):
    return _emit(bb, R.tile(args[0], [int(r) for r in constant(node, args[1], "repeats")]))


@emitter("Pad")
def _pad(bb, node, args):
    x = args[0]
    rank = len(shape_of(x))
    pads = [int(p) for p in constant(node, args[1], "pads")]
    axes = _axes(node, args[3] if len(args) > 3 else None, rank) or list(range(rank))
    width = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        width[2 * axis], width[2 * axis + 1] = pads[i], pads[i + len(axes)]
    if any(w < 0 for w in width):
        raise fail(node, "negative pads (cropping) are not supported")
    value = constant(node, args[2], "constant_value").item() if len(args) > 2 and args[2] is not None else 0.0
    if attr(node, "mode") == "wrap":
        return _wrap_pad(bb, node, x, width)
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(attr(node, "mode"))
    if mode is None:
        raise fail(node, f"pad mode '{attr(node, 'mode')}' is not supported")
    return _emit(bb, R.nn.pad(x, width, pad_mode=mode, pad_value=float(value)))


def _wrap_pad(bb, node, x, width):
    """Pad mode ``wrap`` (torch's circular): each padded axis gets its own far end before it
    and its near end after it."""
    shape = shape_of(x)
    for axis in range(len(shape)):
        before, after = width[2 * axis], width[2 * axis + 1]
        if not before and not after:
            continue
        size = shape[axis]
        if before > size or after > size:
            raise fail(node, f"wrap padding of {max(before, after)} is wider than axis {axis} ({size})")
        parts = []
        if before:
            parts.append(_emit(bb, R.strided_slice(x, [axis], [size - before], [size])))
        parts.append(x)
        if after:
            parts.append(_emit(bb, R.strided_slice(x, [axis], [0], [after])))
        x = _emit(bb, R.concat(parts, axis=axis))
        shape = shape_of(x)
    return x


@emitter("DepthToSpace")
def _depth_to_space(bb, node, args):
    x = args[0]
    n, c, h, w = shape_of(x)
    b = attr(node, "blocksize")
    if attr(node, "mode") == "DCR":
        y = R.permute_dims(R.reshape(x, [n, b, b, c // (b * b), h, w]), [0, 3, 4, 1, 5, 2])
    else:
        y = R.permute_dims(R.reshape(x, [n, c // (b * b), b, b, h, w]), [0, 1, 4, 2, 5, 3])
    return _emit(bb, R.reshape(y, [n, c // (b * b), h * b, w * b]))


@emitter("SpaceToDepth")
def _space_to_depth(bb, node, args):
    x = args[0]
    n, c, h, w = shape_of(x)
    b = attr(node, "blocksize")
    y = R.permute_dims(R.reshape(x, [n, c, h // b, b, w // b, b]), [0, 3, 5, 1, 2, 4])
    return _emit(bb, R.reshape(y, [n, c * b * b, h // b, w // b]))


@emitter("Trilu")
def _trilu(bb, node, args):
    k = int(constant(node, args[1], "k")) if len(args) > 1 and args[1] is not None else 0
    return _emit(bb, R.triu(args[0], k) if attr(node, "upper") else R.tril(args[0], k))


@emitter("CumSum")
def _cumsum(bb, node, args):
    x = args[0]
    axis = int(constant(node, args[1], "axis")) % len(shape_of(x))
    if attr(node, "reverse"):
        x = _emit(bb, R.flip(x, axis))
    y = _emit(bb, R.cumsum(x, axis=axis, exclusive=bool(attr(node, "exclusive"))))
    return _emit(bb, R.flip(y, axis)) if attr(node, "reverse") else y


@emitter("Einsum")
def _einsum(bb, node, args):
    return _emit(bb, R.einsum(list(args), attr(node, "equation")))


@emitter("TopK")
def _topk(bb, node, args):
    x = args[0]
    axis = attr(node, "axis") % len(shape_of(x))
    k = int(np.asarray(constant(node, args[1], "k")).reshape(-1)[0])
    both = _emit(bb, R.topk(x, k, axis=axis, ret_type="both", largest=bool(attr(node, "largest")), dtype="int64"))
    return [_emit(bb, relax.TupleGetItem(both, 0)), _emit(bb, relax.TupleGetItem(both, 1))]


@emitter("ArgMax", "ArgMin")
def _arg_extreme(bb, node, args):
    x = args[0]
    shape = shape_of(x)
    axis, keep = attr(node, "axis") % len(shape), bool(attr(node, "keepdims"))
    find = R.argmax if node.op == "ArgMax" else R.argmin
    if attr(node, "select_last_index"):
        index = _emit(bb, find(R.flip(x, axis), axis=axis, keepdims=keep))
        index = _emit(bb, R.subtract(scalar(shape[axis] - 1, index), index))
    else:
        index = _emit(bb, find(x, axis=axis, keepdims=keep))
    return _emit(bb, R.astype(index, "int64"))


@emitter("Hardmax")
def _hardmax(bb, node, args):
    x = args[0]
    shape = shape_of(x)
    axis = attr(node, "axis") % len(shape)
    index = _emit(bb, R.argmax(x, axis=axis))
    hot = _emit(bb, R.one_hot(index, 1, 0, shape[axis], axis=axis))
    return _emit(bb, R.astype(hot, dtype_of(x)))


# -- reductions --------------------------------------------------------------------------------
@emitter(
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)  # fmt: skip
def _reduce(bb, node, args):
    x = args[0]
    rank = len(shape_of(x))
    axes = _axes(node, args[1] if len(args) > 1 else None, rank)
    if not axes:
        if attr(node, "noop_with_empty_axes"):
            return x
        axes = list(range(rank))
    keep = bool(attr(node, "keepdims"))
    op = node.op
    if op == "ReduceLogSumExp":
        peak = _emit(bb, R.max(x, axes, keepdims=True))
        total = R.sum(R.exp(R.subtract(x, peak)), axes, keepdims=True)
        y = _emit(bb, R.add(R.log(total), peak))
        return y if keep else _emit(bb, R.squeeze(y, axes))
    source = {"ReduceL1": R.abs, "ReduceL2": R.square, "ReduceSumSquare": R.square}.get(op, lambda v: v)(x)
    reduce = {
        "ReduceMean": R.mean,
        "ReduceMax": R.max,
        "ReduceMin": R.min,
        "ReduceProd": R.prod,
    }.get(op, R.sum)
    y = reduce(source, axes, keepdims=keep)
    if op == "ReduceL2":
        y = R.sqrt(y)
    elif op == "ReduceLogSum":
        y = R.log(y)
    return _emit(bb, y)


@emitter("Softmax", "LogSoftmax")
def _softmax(bb, node, args):
    axis = attr(node, "axis")
    fn = R.nn.softmax if node.op == "Softmax" else R.nn.log_softmax
    return _emit(bb, fn(args[0], axis=axis))


# -- linear layers -----------------------------------------------------------------------------
@emitter("MatMul")
def _matmul(bb, node, args):
    return _emit(bb, R.matmul(args[0], args[1]))


@emitter("Gemm")
def _gemm(bb, node, args):
    a, b, c = (list(args) + [None])[:3]
    alpha, beta = float(attr(node, "alpha")), float(attr(node, "beta"))
    if attr(node, "transA"):
        a = _emit(bb, R.permute_dims(a, [1, 0]))
    if is_constant(b):
        weights = b.value.numpy()
        weights = weights.T if attr(node, "transB") else weights
        if alpha != 1.0:
            weights, alpha = weights * np.asarray(alpha, weights.dtype), 1.0
        b = const(np.asarray(weights))
    elif attr(node, "transB"):
        b = _emit(bb, R.permute_dims(b, [1, 0]))
    y = _emit(bb, R.matmul(a, b))
    if alpha != 1.0:
        y = _emit(bb, R.multiply(y, scalar(alpha, y)))
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = _emit(bb, R.multiply(c, scalar(beta, c)))
        y = _emit(bb, R.add(y, c))
    return y


# -- convolutions and pools --------------------------------------------------------------------
def _window(node: Node, spatial: Sequence[int], kernel: Sequence[int], *, transposed: bool = False):
    """(strides, dilations, pads as [begin..., end...]) with ``auto_pad`` resolved."""
    k = len(spatial)
    strides = list(node.attrs.get("strides") or [1] * k)
    dilations = list(node.attrs.get("dilations") or [1] * k)
    pads = list(node.attrs.get("pads") or [0] * (2 * k))
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER") and not transposed:
        pads = [0] * (2 * k)
        for i in range(k):
            out = -(-spatial[i] // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i], 0)
            small, large = total // 2, total - total // 2
            pads[i], pads[i + k] = (small, large) if auto == "SAME_UPPER" else (large, small)
    elif auto == "VALID":
        pads = [0] * (2 * k)
    return strides, dilations, pads


_CONV = {1: (R.nn.conv1d, "NCW", "OIW"), 2: (R.nn.conv2d, "NCHW", "OIHW"), 3: (R.nn.conv3d, "NCDHW", "OIDHW")}


@emitter("Conv")
def _conv(bb, node, args):
    x, w, bias = (list(args) + [None])[:3]
    n, c, *spatial = shape_of(x)
    kernel = shape_of(w)[2:]
    if len(spatial) not in _CONV:
        raise fail(node, f"{len(spatial)}-D convolution is not supported")
    conv, layout, kernel_layout = _CONV[len(spatial)]
    strides, dilations, pads = _window(node, spatial, kernel)
    y = _emit(
        bb,
        conv(x, w, strides=strides, padding=pads, dilation=dilations, groups=attr(node, "group"),
             data_layout=layout, kernel_layout=kernel_layout),
    )  # fmt: skip
    return _add_channel_bias(bb, y, bias)


def _add_channel_bias(bb, y, bias):
    if bias is None:
        return y
    rank = len(shape_of(y))
    if is_constant(bias):
        bias = const(bias.value.numpy().reshape([1, -1] + [1] * (rank - 2)))
    else:
        bias = _emit(bb, R.reshape(bias, [1, -1] + [1] * (rank - 2)))
    return _emit(bb, R.add(y, bias))


@emitter("ConvTranspose")
def _conv_transpose(bb, node, args):
    x, w, bias = (list(args) + [None])[:3]
    n, c, *spatial = shape_of(x)
    kernel = shape_of(w)[2:]
    k = len(spatial)
    if k not in (1, 2):
        raise fail(node, f"{k}-D transposed convolution is not supported")
    strides, dilations, pads = _window(node, spatial, kernel, transposed=True)
    extra = list(node.attrs.get("output_padding") or [0] * k)
    target = node.attrs.get("output_shape")
    auto = node.attrs.get("auto_pad", "NOTSET")
    if target or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(target)[-k:] if target else [d * s for d, s in zip(spatial, strides)]
        for i in range(k):
            total = strides[i] * (spatial[i] - 1) + extra[i] + ((kernel[i] - 1) * dilations[i] + 1) - target[i]
            small, large = total // 2, total - total // 2
            pads[i], pads[i + k] = (small, large) if auto != "SAME_UPPER" else (large, small)
    conv = R.nn.conv1d_transpose if k == 1 else R.nn.conv2d_transpose
    layout, kernel_layout = ("NCW", "IOW") if k == 1 else ("NCHW", "IOHW")
    y = _emit(
        bb,
        conv(x, w, strides=strides, padding=pads, output_padding=extra, dilation=dilations,
             groups=attr(node, "group"), data_layout=layout, kernel_layout=kernel_layout),
    )  # fmt: skip
    return _add_channel_bias(bb, y, bias)


_POOL = {
    ("MaxPool", 1): R.nn.max_pool1d, ("MaxPool", 2): R.nn.max_pool2d, ("MaxPool", 3): R.nn.max_pool3d,
    ("AveragePool", 1): R.nn.avg_pool1d, ("AveragePool", 2): R.nn.avg_pool2d, ("AveragePool", 3): R.nn.avg_pool3d,
}  # fmt: skip
_LAYOUTS = {1: "NCW", 2: "NCHW", 3: "NCDHW"}


@emitter("MaxPool", "AveragePool")
def _pool(bb, node, args):
    if node.op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].uses:
        raise fail(node, "the Indices output of MaxPool is not supported")
    x = args[0]
    n, c, *spatial = shape_of(x)
    kernel = list(attr(node, "kernel_shape"))
    pool = _POOL.get((node.op, len(spatial)))
    if pool is None:
        raise fail(node, f"{len(spatial)}-D pooling is not supported")
    strides, dilations, pads = _window(node, spatial, kernel)
    options = dict(pool_size=kernel, strides=strides, padding=pads, dilation=dilations,
                   ceil_mode=bool(attr(node, "ceil_mode")), layout=_LAYOUTS[len(spatial)])  # fmt: skip
    if node.op == "AveragePool":
        options["count_include_pad"] = bool(attr(node, "count_include_pad"))
    return [_emit(bb, pool(x, **options)), None]


@emitter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(bb, node, args):
    x = args[0]
    axes = list(range(2, len(shape_of(x))))
    reduce = R.mean if node.op == "GlobalAveragePool" else R.max
    return _emit(bb, reduce(x, axes, keepdims=True))


@emitter("GlobalLpPool")
def _global_lp_pool(bb, node, args):
    x = args[0]
    p = float(attr(node, "p"))
    axes = list(range(2, len(shape_of(x))))
    total = R.sum(R.power(R.abs(x), scalar(p, x)), axes, keepdims=True)
    return _emit(bb, R.power(total, scalar(1 / p, x)))


@emitter("LpPool")
def _lp_pool(bb, node, args):
    x = args[0]
    n, c, *spatial = shape_of(x)
    if len(spatial) != 2:
        raise fail(node, "only 2-D LpPool is supported")
    kernel = list(attr(node, "kernel_shape"))
    p = float(attr(node, "p"))
    strides, dilations, pads = _window(node, spatial, kernel)
    powered = _emit(bb, R.power(R.abs(x), scalar(p, x)))
    mean = R.nn.avg_pool2d(powered, kernel, strides, pads, dilations, ceil_mode=bool(attr(node, "ceil_mode")),
                           count_include_pad=True)  # fmt: skip
    total = R.multiply(mean, scalar(math.prod(kernel), x))
    return _emit(bb, R.power(total, scalar(1 / p, x)))


# -- normalisation -----------------------------------------------------------------------------
def _per_channel(bb, value, rank: int, axis: int = 1):
    """A ``[C]`` parameter shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[axis] = -1
    if is_constant(value):
        return const(value.value.numpy().reshape(shape))
    return _emit(bb, R.reshape(value, shape))


@emitter("BatchNormalization")
def _batch_norm(bb, node, args):
    x, gamma, beta, mean, var = args[:5]
    if attr(node, "training_mode"):
        raise fail(node, "training-mode batch normalisation is not supported (export the model in eval mode)")
    rank = len(shape_of(x))
    eps = float(attr(node, "epsilon"))
    if all(is_constant(v) for v in (gamma, beta, mean, var)):
        g, b, m, v = (a.value.numpy().astype(np.float64) for a in (gamma, beta, mean, var))
        scale = g / np.sqrt(v + eps)
        shift = b - m * scale
        dtype = dtype_of(x)
        scale_c = const(scale.astype(dtype).reshape([1, -1] + [1] * (rank - 2)))
        shift_c = const(shift.astype(dtype).reshape([1, -1] + [1] * (rank - 2)))
        return [_emit(bb, R.add(R.multiply(x, scale_c), shift_c)), None, None]
    g, b, m, v = (_per_channel(bb, a, rank) for a in (gamma, beta, mean, var))
    inv = R.divide(g, R.sqrt(R.add(v, scalar(eps, v))))
    return [_emit(bb, R.add(R.multiply(R.subtract(x, m), inv), b)), None, None]


@emitter("InstanceNormalization")
def _instance_norm(bb, node, args):
    x, gamma, beta = args
    rank = len(shape_of(x))
    eps = float(attr(node, "epsilon"))
    return _emit(bb, R.nn.instance_norm(x, gamma, beta, channel_axis=1, axes=list(range(2, rank)), epsilon=eps))


@emitter("GroupNormalization")
def _group_norm(bb, node, args):
    x, gamma, beta = args
    shape = shape_of(x)
    groups = int(attr(node, "num_groups"))
    channels = shape[1]
    eps = float(attr(node, "epsilon"))

    def per_channel(v):
        # Opset 18 gives one scale and bias per group; Relax wants one per channel.
        if shape_of(v)[0] == channels:
            return v
        if is_constant(v):
            return const(np.repeat(v.value.numpy(), channels // groups))
        return _emit(bb, R.repeat(v, channels // groups, axis=0))

    y = R.nn.group_norm(x, per_channel(gamma), per_channel(beta), num_groups=groups, channel_axis=1,
                        axes=list(range(2, len(shape))), epsilon=eps)  # fmt: skip
    return _emit(bb, y)


@emitter("LayerNormalization")
def _layer_norm(bb, node, args):
    x, scale, bias = (list(args) + [None])[:3]
    shape = shape_of(x)
    axis = attr(node, "axis") % len(shape)
    axes = list(range(axis, len(shape)))
    eps = float(attr(node, "epsilon"))
    normalised = shape[axis:]

    def full(v, fill):
        if v is None:
            return const(np.full(normalised, fill, dtype=dtype_of(x)))
        if shape_of(v) == normalised:
            return v
        if is_constant(v):
            return const(np.asarray(np.broadcast_to(v.value.numpy(), normalised)))
        return _emit(bb, R.broadcast_to(v, normalised))

    y = _emit(bb, R.nn.layer_norm(x, full(scale, 1), full(bias, 0), axes=axes, epsilon=eps))
    extras: list = [None, None]
    if len(node.outputs) > 1 and any(o.uses or o.is_graph_output for o in node.outputs[1:]):
        mean = _emit(bb, R.mean(x, axes, keepdims=True))
        var = _emit(bb, R.mean(R.square(R.subtract(x, mean)), axes, keepdims=True))
        extras = [mean, _emit(bb, R.rsqrt(R.add(var, scalar(eps, var))))]
    return [y, *extras]


@emitter("LRN")
def _lrn(bb, node, args):
    x = args[0]
    size = int(attr(node, "size"))
    alpha, beta, bias = float(attr(node, "alpha")), float(attr(node, "beta")), float(attr(node, "bias"))
    shape = shape_of(x)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    width = [0] * (2 * len(shape))
    width[2], width[3] = before, after
    padded = _emit(bb, R.nn.pad(R.square(x), width))
    total = None
    for offset in range(size):
        part = _emit(bb, R.strided_slice(padded, [1], [offset], [offset + shape[1]]))
        total = part if total is None else _emit(bb, R.add(total, part))
    denominator = R.power(R.add(scalar(bias, x), R.multiply(total, scalar(alpha / size, x))), scalar(beta, x))
    return _emit(bb, R.divide(x, denominator))


# -- resize ------------------------------------------------------------------------------------
_RESIZE_METHOD = {"nearest": "nearest_neighbor", "linear": "linear", "cubic": "cubic"}
_COORDINATES = {
    "half_pixel": "half_pixel",
    "pytorch_half_pixel": "pytorch_half_pixel",
    "align_corners": "align_corners",
    "asymmetric": "asymmetric",
    "tf_half_pixel_for_nn": "tf_half_pixel_for_nn",
}


@emitter("Resize")
def _resize(bb, node, args):
    x = args[0]
    shape = shape_of(x)
    if len(shape) != 4:
        raise fail(node, f"only 4-D (NCHW) inputs are supported, got rank {len(shape)}")
    if attr(node, "antialias") or attr(node, "axes") or attr(node, "keep_aspect_ratio_policy") != "stretch":
        raise fail(node, "antialias, axes and keep_aspect_ratio_policy are not supported")
    sizes_in = args[3] if len(args) > 3 else None
    scales_in = args[2] if len(args) > 2 else None
    if sizes_in is not None and math.prod(shape_of(sizes_in)) > 0:
        out = [int(s) for s in constant(node, sizes_in, "sizes")]
    elif scales_in is not None and math.prod(shape_of(scales_in)) > 0:
        scales = constant(node, scales_in, "scales")
        out = [resized_size(d, s) for d, s in zip(shape, scales)]
    else:
        raise fail(node, "neither scales nor sizes is given")
    if out[:2] != shape[:2]:
        raise fail(node, "resizing the batch or channel axis is not supported")
    method = _RESIZE_METHOD[attr(node, "mode")]
    coordinates = _COORDINATES.get(attr(node, "coordinate_transformation_mode"))
    if coordinates is None:
        raise fail(node, f"coordinate_transformation_mode '{attr(node, 'coordinate_transformation_mode')}' is not supported")
    y = R.image.resize2d(
        x, out[2:], layout="NCHW", method=method, coordinate_transformation_mode=coordinates,
        rounding_method=attr(node, "nearest_mode") if method == "nearest_neighbor" else "",
        cubic_alpha=float(attr(node, "cubic_coeff_a")), cubic_exclude=int(attr(node, "exclude_outside")),
        extrapolation_value=float(attr(node, "extrapolation_value")),
    )  # fmt: skip
    return _emit(bb, y)


# -- recurrent layers, unrolled over the static time axis --------------------------------------
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


@emitter("LSTM", "GRU", "RNN")
def _recurrent(bb, node, args):
    """One matmul for the input projection of all steps, then the cell unrolled step by step."""
    x, w, r, b, lengths, h0 = (list(args) + [None] * 6)[:6]
    c0 = args[6] if node.op == "LSTM" and len(args) > 6 else None
    peep = args[7] if node.op == "LSTM" and len(args) > 7 else None
    if lengths is not None:
        seq = shape_of(x)[1 if attr(node, "layout") else 0]
        if not (is_constant(lengths) and np.all(lengths.value.numpy() == seq)):
            raise fail(node, "sequence_lens shorter than the sequence are not supported")
    if attr(node, "layout"):  # batch-major: the cell below runs time-major
        x, h0, c0 = (None if t is None else _emit(bb, R.permute_dims(t, [1, 0, 2])) for t in (x, h0, c0))
    steps, batch, _ = shape_of(x)
    directions = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[attr(node, "direction")]
    hidden = int(attr(node, "hidden_size"))
    gates = _GATES[node.op]
    names = list(attr(node, "activations") or []) or _DEFAULT_ACTIVATIONS[node.op] * len(directions)
    alphas = list(attr(node, "activation_alpha") or [])
    betas = list(attr(node, "activation_beta") or [])
    per_dir = len(_DEFAULT_ACTIVATIONS[node.op])
    clip = attr(node, "clip")

    ys, hs, cs = [], [], []
    for d, reverse in enumerate(directions):
        acts = []
        for i in range(per_dir):
            k = d * per_dir + i
            alpha = alphas[k] if k < len(alphas) else None
            beta = betas[k] if k < len(betas) else None
            acts.append(lambda v, n=names[k], a=alpha, bt=beta: _activation(bb, n, v, a, bt))
        take = lambda t, d=d: _direction(bb, t, d)  # noqa: E731
        w_d, r_d = _transposed(bb, take(w)), _transposed(bb, take(r))
        flat = _emit(bb, R.reshape(x, [steps * batch, shape_of(x)[2]]))
        projected = R.matmul(flat, w_d)
        if b is not None and is_constant(b):
            b_d = b.value.numpy()[d]
            projected = R.add(projected, const(b_d[: gates * hidden]))
            rb = const(b_d[gates * hidden :])
        elif b is not None:
            b_d = take(b)
            wb = _emit(bb, R.strided_slice(b_d, [0], [0], [gates * hidden]))
            rb = _emit(bb, R.strided_slice(b_d, [0], [gates * hidden], [2 * gates * hidden]))
            projected = R.add(projected, wb)
        else:
            rb = None
        projected = _emit(bb, R.reshape(projected, [steps, batch, gates * hidden]))
        h = take(h0) if h0 is not None else const(np.zeros((batch, hidden), dtype_of(x)))
        c = take(c0) if c0 is not None else const(np.zeros((batch, hidden), dtype_of(x)))
        p = take(peep) if peep is not None else None
        outputs = [None] * steps
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            xt = _emit(bb, R.squeeze(R.strided_slice(projected, [0], [t], [t + 1]), [0]))
            if node.op == "LSTM":
                h, c = _lstm_step(bb, node, xt, h, c, r_d, rb, p, acts, hidden, clip)
            elif node.op == "GRU":
                h = _gru_step(bb, node, xt, h, r_d, rb, acts, hidden, clip)
            else:
                pre = _emit(bb, R.add(xt, R.matmul(h, r_d)) if rb is None else R.add(R.add(xt, R.matmul(h, r_d)), rb))
                h = _emit(bb, acts[0](_clipped(pre, clip)))
            outputs[t] = h
        ys.append(_emit(bb, _stack(outputs, 0)))
        hs.append(h)
        cs.append(c)
    y = _emit(bb, _stack(ys, 1))
    if attr(node, "layout"):
        y = _emit(bb, R.permute_dims(y, [2, 0, 1, 3]))
    y_h = _emit(bb, _stack(hs, 0))
    y_c = _emit(bb, _stack(cs, 0))
    if attr(node, "layout"):
        y_h = _emit(bb, R.permute_dims(y_h, [1, 0, 2]))
        y_c = _emit(bb, R.permute_dims(y_c, [1, 0, 2]))
    return [y, y_h, y_c][: len(node.outputs)]


def _direction(bb, tensor, d: int):
    """``tensor[d]``: one direction's weights (sliced in numpy when constant, as they usually are)."""
    if is_constant(tensor):
        return const(tensor.value.numpy()[d])
    return _emit(bb, R.squeeze(R.strided_slice(tensor, [0], [d], [d + 1]), [0]))


def _transposed(bb, matrix):
    if is_constant(matrix):
        return const(matrix.value.numpy().T)
    return _emit(bb, R.permute_dims(matrix, [1, 0]))


def _stack(items, axis: int):
    # R.stack would do, but Relax's layout conversion pass fails on it.
    return R.concat([R.expand_dims(item, axis) for item in items], axis=axis)


def _clipped(v, clip):
    return v if clip is None else R.clip(v, -float(clip), float(clip))


def _gate(bb, v, index: int, hidden: int, axis: int = 1):
    """Gate ``index`` of a ``[..., gates * hidden]`` tensor (numpy for constant weights)."""
    lo, hi = index * hidden, (index + 1) * hidden
    if is_constant(v):
        return const(np.take(v.value.numpy(), np.arange(lo, hi), axis=axis))
    return _emit(bb, R.strided_slice(v, [axis], [lo], [hi]))


def _lstm_step(bb, node, xt, h, c, r_d, rb, p, acts, hidden, clip):
    pre = R.add(xt, R.matmul(h, r_d))
    pre = _emit(bb, R.add(pre, rb) if rb is not None else pre)
    gi, go, gf, gc = (_gate(bb, pre, i, hidden) for i in range(4))
    if p is not None:
        pi, po, pf = (_gate(bb, p, i, hidden, axis=0) for i in range(3))
        gi, gf = _emit(bb, R.add(gi, R.multiply(pi, c))), _emit(bb, R.add(gf, R.multiply(pf, c)))
    i = _emit(bb, acts[0](_clipped(gi, clip)))
    if attr(node, "input_forget"):  # coupled gates: forget what is input
        f = _emit(bb, R.subtract(scalar(1, i), i))
    else:
        f = _emit(bb, acts[0](_clipped(gf, clip)))
    cand = _emit(bb, acts[1](_clipped(gc, clip)))
    c = _emit(bb, R.add(R.multiply(f, c), R.multiply(i, cand)))
    if p is not None:
        go = _emit(bb, R.add(go, R.multiply(po, c)))
    o = _emit(bb, acts[0](_clipped(go, clip)))
    h = _emit(bb, R.multiply(o, acts[2](c)))
    return h, c


def _gru_step(bb, node, xt, h, r_d, rb, acts, hidden, clip):
    xz, xr, xh = (_gate(bb, xt, i, hidden) for i in range(3))
    rz_w, rr_w, rh_w = (_gate(bb, r_d, i, hidden) for i in range(3))
    rbz, rbr, rbh = (_gate(bb, rb, i, hidden, axis=0) for i in range(3)) if rb is not None else (None, None, None)

    def plus(v, bias):
        return v if bias is None else R.add(v, bias)

    z = _emit(bb, acts[0](_clipped(R.add(xz, plus(R.matmul(h, rz_w), rbz)), clip)))
    r = _emit(bb, acts[0](_clipped(R.add(xr, plus(R.matmul(h, rr_w), rbr)), clip)))
    if attr(node, "linear_before_reset"):
        recur = R.multiply(r, plus(R.matmul(h, rh_w), rbh))
    else:
        recur = plus(R.matmul(R.multiply(r, h), rh_w), rbh)
    cand = _emit(bb, acts[1](_clipped(R.add(xh, recur), clip)))
    return _emit(bb, R.add(R.multiply(R.subtract(scalar(1, z), z), cand), R.multiply(z, h)))


# -- quantization ------------------------------------------------------------------------------
def _register_quant() -> None:
    from .tvm_quant import QUANT_EMITTERS

    EMITTERS.update(QUANT_EMITTERS)


@emitter("DynamicQuantizeLinear")
def _dynamic_quantize(bb, node, args):
    """uint8 with scale and zero point from the tensor's range, as ONNX defines it."""
    x = args[0]
    zero = scalar(0, x)
    low = R.minimum(R.min(x), zero)
    high = R.maximum(R.max(x), zero)
    scale = _emit(bb, R.divide(R.subtract(high, low), scalar(255, x)))
    point = _emit(bb, R.clip(R.round(R.subtract(zero, R.divide(low, scale))), 0, 255))
    y = _emit(bb, R.astype(R.clip(R.add(R.round(R.divide(x, scale)), point), 0, 255), "uint8"))
    return [y, scale, _emit(bb, R.astype(point, "uint8"))]


_register_quant()
