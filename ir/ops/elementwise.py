"""Elementwise ops: activations, unary math, and broadcasting binary and variadic ops.

None of them has a cost: published MAC counts leave out activations, residual adds and scaling.
The numpy functions beside some ops compute small shape arithmetic during inference.
``Gelu`` is opset 20's op, registered so that models using it keep it whole.
"""

from __future__ import annotations

import functools

import numpy as np

from ..registry import Attr
from ..types import DType
from .rules import broadcast, broadcasts_to, define, fail, fmt, itype, like, record, same_as

ACTIVATIONS: dict[str, dict[str, Attr]] = {
    "Relu": {},
    "Sigmoid": {},
    "Tanh": {},
    "Softplus": {},
    "Softsign": {},
    "Mish": {},
    "HardSwish": {},
    "HardSigmoid": {"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)},
    "LeakyRelu": {"alpha": Attr("float", 0.01)},
    "Elu": {"alpha": Attr("float", 1.0)},
    "Celu": {"alpha": Attr("float", 1.0)},
    "ThresholdedRelu": {"alpha": Attr("float", 1.0)},
    "Selu": {"alpha": Attr("float", 1.6732632423543772), "gamma": Attr("float", 1.0507009873554805)},
    "Gelu": {"approximate": Attr("string", "none")},
}

UNARY_MATH = {
    "Neg": np.negative,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Exp": np.exp,
    "Log": np.log,
    "Erf": None,
    "Reciprocal": np.reciprocal,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.round,
    "Sign": np.sign,
    "Sin": np.sin,
    "Cos": np.cos,
    "Not": np.logical_not,
}


LONG_PORT_NAMES = {"Cos", "Erf", "Exp", "Log", "Sign", "Sin", "Softsign", "Tanh"}
"""Unary ops whose ONNX ports are ``input``/``output`` rather than ``X``/``Y``."""


def _unary_ports(name: str) -> tuple[str, str]:
    return ("input", "output") if name in LONG_PORT_NAMES else ("X", "Y")


def _divide(a, b):
    if np.issubdtype(a.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)  # C-style, as onnxruntime does
    return a / b


def _fold(fn):
    """A variadic op's value function from its binary one."""
    return lambda *arrays: functools.reduce(fn, arrays)


ARITHMETIC = {  # op -> (input ports, output port, value function)
    "Add": ("A B", "C", np.add),
    "Sub": ("A B", "C", np.subtract),
    "Mul": ("A B", "C", np.multiply),
    "Div": ("A B", "C", _divide),
    "Pow": ("X Y", "Z", np.power),
    "Max": ("data_0*", "max", _fold(np.maximum)),
    "Min": ("data_0*", "min", _fold(np.minimum)),
    "Sum": ("data_0*", "sum", _fold(np.add)),
    "Mean": ("data_0*", "mean", lambda *arrays: _fold(np.add)(*arrays) / len(arrays)),
}


def _equal_dims(a, b):
    """``Equal`` on shape values that may hold symbols; a symbol is a size of at least 1."""

    def one(x, y):
        if x is None or y is None:
            raise ValueError("unknown dim")
        if not isinstance(x, str) and not isinstance(y, str):
            return x == y
        if x == y:
            return True
        number = y if isinstance(x, str) else x
        if isinstance(number, str) or number >= 1:
            raise ValueError("undecided")  # two symbols, or a symbol and a size it may be
        return False

    if a.dtype != object and b.dtype != object:
        return np.equal(a, b)
    return np.vectorize(one, otypes=[bool])(a, b)


COMPARISONS = {
    "Equal": _equal_dims,
    "Less": np.less,
    "Greater": np.greater,
    "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
}


def broadcasting(fn=None, *, dtype: DType | None = None, dtype_from: int = 0, symbolic: bool = False):
    """Shape rule: all inputs broadcast together; the element type is input ``dtype_from``'s.

    ``fn`` computes small values; ``symbolic`` says it handles values holding symbols."""

    def rule(node):
        shapes = [v.type.shape for v in node.inputs if v is not None]
        shape = None if any(s is None for s in shapes) else broadcast(node, shapes)
        if fn is not None:
            record(node, fn, symbolic=symbolic)
        return [like(node, shape, dtype_from, dtype)]

    return rule


def _unary(fn):
    def rule(node):
        if fn is not None:
            record(node, fn)
        return [itype(node, 0)]

    return rule


def _prelu_shape(node):
    x, slope = itype(node, 0).shape, itype(node, 1).shape
    if x is not None and slope is not None and not broadcasts_to(slope, x):
        fail(node, f"slope of shape {fmt(slope)} does not broadcast to the input {fmt(x)}")
    return [itype(node, 0)]


def _clip_lower_bound(node):
    low = node.inputs[1] if len(node.inputs) > 1 else None
    if low is None:
        return -np.inf
    return float(low.const.reshape(-1)[0]) if low.const is not None and low.const.size == 1 else None


CLAMPS = {"Relu": lambda node: 0.0}
"""Activations that only bound their input from below, with the bound."""

for _name, _attrs in ACTIVATIONS.items():
    _bound = CLAMPS.get(_name)
    define(
        _name,
        *_unary_ports(_name),
        attrs=_attrs,
        shape=same_as(0),
        label="act",
        int8="clamp" if _bound else "",
        lower_bound=_bound,
    )
define("PRelu", "X slope", shape=_prelu_shape, label="act")
define("Clip", "input min? max?", "output", shape=same_as(0), label="act", int8="clamp", lower_bound=_clip_lower_bound)

for _name, _fn in UNARY_MATH.items():
    define(_name, *_unary_ports(_name), shape=_unary(_fn), label="math")

INT8_ARITHMETIC = ("Add", "Mul")
"""Arithmetic with int8 kernels in onnxruntime (QLinearAdd, QLinearMul)."""

for _name, (_ins, _out, _fn) in ARITHMETIC.items():
    define(_name, _ins, _out, shape=broadcasting(_fn), label="math", int8="own-range" if _name in INT8_ARITHMETIC else "")
define("Mod", "A B", "C", attrs={"fmod": Attr("int", 0)}, shape=broadcasting(), label="math")

for _name, _fn in COMPARISONS.items():
    _symbolic = _fn is _equal_dims
    define(_name, "A B", "C", shape=broadcasting(_fn, dtype=DType.bool, symbolic=_symbolic), label="logic")
define(
    "Where",
    "condition X Y",
    "output",
    shape=broadcasting(np.where, dtype_from=1, symbolic=True),
    label="logic",
)
