"""Shared pieces of the shape and cost rules: reading a node, broadcasting, sliding windows.

A shape rule takes a node and returns one ``TensorType | None`` per output (``None``: unknown).
It may assume every present input has a type (``infer_shapes`` does not call it otherwise); a
type's shape may still be ``None`` (rank unknown) and dims may be symbolic (strings) or ``None``.

Rules read constant inputs with ``value_of``. While ``infer_shapes`` runs, small tensors computed
from shapes (``Shape -> Gather -> Concat -> Reshape``, as exporters emit for dynamic batches) are
known too: the rules of the ops that compute on shapes ``record`` their results. Such a value
may hold symbolic dims (an object array), which only data-movement ops pass on.

A cost rule returns the multiply-accumulates of one execution, or ``None`` when shapes are
unknown; an unknown batch dim counts as 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

from ..errors import IrtoolError
from ..registry import Attr, OpDef, WeightLayout, get_op, register_op
from ..types import Dim, DType, TensorType

MAX_TRACKED_ELEMENTS = 1024
"""Computed values larger than this are not tracked: shape arithmetic works on small vectors."""

_tracked: ContextVar[dict | None] = ContextVar("irtool_tracked_values", default=None)


# -- declaring ops ------------------------------------------------------------------------
def define(
    name: str,
    inputs: str,
    outputs: str = "Y",
    *,
    attrs: dict[str, Attr] | None = None,
    shape=None,
    cost=None,
    label: str = "",
    weight: WeightLayout | None = None,
    int8: str = "",
    lower_bound=None,
    indexes=None,
    doc: str = "",
) -> OpDef:
    """Register an op; ports are written as in the ONNX spec, space separated: ``"X W B?"``."""
    return register_op(
        OpDef(
            name,
            tuple(inputs.split()),
            tuple(outputs.split()),
            dict(attrs or {}),
            shape=shape,
            cost=cost,
            label=label,
            weight=weight,
            int8=int8,
            lower_bound=lower_bound,
            indexes=indexes,
            doc=doc,
        )
    )


# -- reading a node -----------------------------------------------------------------------
def where(node) -> str:
    return f"{node.op} '{node.source or node.name}'"


def fail(node, message: str):
    """Raise the located error every rule uses for inconsistent inputs."""
    raise IrtoolError(f"{where(node)}: {message}")


def attr(node, key: str) -> Any:
    """The node's attribute or the registry default; ONNX byte strings read as ``str``."""
    value = get_op(node.op, node.domain).attr(node, key)
    return value.decode() if isinstance(value, bytes) else value


def input_value(node, i: int):
    return node.inputs[i] if i < len(node.inputs) else None


def itype(node, i: int) -> TensorType | None:
    value = input_value(node, i)
    return None if value is None else value.type


def ishape(node, i: int) -> tuple[Dim, ...] | None:
    t = itype(node, i)
    return None if t is None else t.shape


def value_of(node, i: int) -> np.ndarray | None:
    """Input i's value: a constant, or a small value computed from shapes during inference."""
    value = input_value(node, i)
    if value is None:
        return None
    if value.const is not None:
        return value.const
    tracked = _tracked.get()
    return None if tracked is None else tracked.get(value)


def ints_of(node, i: int) -> list[int] | None:
    """Input i's value as a list of plain ints (axes, pads, sizes), or None if not all known."""
    array = value_of(node, i)
    if array is None or array.dtype == object:
        return None
    return [int(v) for v in array.reshape(-1)]


@contextmanager
def tracking_values() -> Iterator[dict]:
    """While active, rules may ``record`` computed values for later rules to read."""
    token = _tracked.set({})
    try:
        yield _tracked.get()
    finally:
        _tracked.reset(token)


def record(node, compute: Callable[..., Any], *, symbolic: bool = False, shape=None) -> None:
    """Track output 0's value as ``compute(*input values)`` when every present input is known.

    Absent optional inputs arrive as ``None``. Symbolic (object) values are accepted only when
    ``symbolic`` says the op merely moves elements; arithmetic on them would be wrong. Nothing
    is computed for large inputs, or for an output ``shape`` that is large or not static.
    """
    tracked = _tracked.get()
    if tracked is None:
        return
    if shape is not None and not (all(map(is_int, shape)) and math.prod(shape) <= MAX_TRACKED_ELEMENTS):
        return
    values = []
    for i, value in enumerate(node.inputs):
        array = None if value is None else value_of(node, i)
        if value is not None and (array is None or array.size > MAX_TRACKED_ELEMENTS):
            return
        if array is not None and array.dtype == object and not symbolic:
            return
        values.append(array)
    try:
        result = compute(*values)
    except (TypeError, ValueError, IndexError, ArithmeticError):
        return
    remember(node, result)


def remember(node, array) -> None:
    """Track a value of output 0 the rule knows without reading input values (``Shape``)."""
    tracked = _tracked.get()
    array = np.asarray(array)
    if array.dtype.kind == "U":  # a lone symbol taken out of an object array
        array = array.astype(object)
    elif array.dtype == object and all(is_int(d) for d in array.flat):  # no symbol left
        array = array.astype(np.int64)
    if tracked is not None and array.size <= MAX_TRACKED_ELEMENTS:
        tracked[node.outputs[0]] = array


def shape_array(dims: Sequence[Dim]) -> np.ndarray:
    """A shape as a value: int64 when every dim is known, else an object array keeping symbols."""
    if all(is_int(d) for d in dims):
        return np.array(dims, dtype=np.int64)
    return np.array(list(dims), dtype=object)


def as_dims(array: np.ndarray) -> list[Dim]:
    """A shape-vector value as dims: ints, symbols or None."""
    return [d if isinstance(d, str) or d is None else int(d) for d in array.reshape(-1).tolist()]


# -- dims ---------------------------------------------------------------------------------
def is_int(d) -> bool:
    return isinstance(d, (int, np.integer)) and not isinstance(d, bool)


def fmt(shape: Sequence[Dim] | None) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape) or "scalar"


def product(dims: Iterable[Dim]) -> Dim:
    """Product of dims; a lone symbol among 1s survives (``N x 1 x 1 -> N``), else unknown."""
    dims = [d for d in dims if d != 1]
    if all(is_int(d) for d in dims):
        return math.prod(dims)
    return dims[0] if len(dims) == 1 else None


def norm_axis(node, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        fail(node, f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def broadcast(node, shapes: Sequence[Sequence[Dim]]) -> tuple[Dim, ...]:
    """Numpy-style multidirectional broadcasting; a symbol meets 1 or an equal symbol."""
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for k in range(rank):
        dims = [s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0]
        sizes = {int(d) for d in dims if is_int(d) and d != 1}
        if len(sizes) > 1:
            fail(node, "cannot broadcast shapes " + " and ".join(fmt(s) for s in shapes))
        if sizes:
            out.append(sizes.pop())
            continue
        others = {d for d in dims if not is_int(d)}
        out.append(1 if not others else others.pop() if len(others) == 1 else None)
    return tuple(out)


def broadcasts_to(small: Sequence[Dim], big: Sequence[Dim]) -> bool:
    """Whether ``small`` broadcasts one-way to ``big`` (a bias to its layer's output), as far
    as known dims tell."""
    if len(small) > len(big):
        return False
    aligned = zip(small, big[len(big) - len(small) :])
    return all(d == 1 or d == b or not is_int(d) or not is_int(b) for d, b in aligned)


def like(node, shape, i: int = 0, dtype: DType | None = None) -> TensorType:
    """A type with input i's element type (or ``dtype``) and the given shape."""
    return TensorType(dtype or itype(node, i).dtype, None if shape is None else tuple(shape))


def same_as(i: int = 0):
    """Shape rule: every output has input i's type."""
    return lambda node: [itype(node, i)] * len(node.outputs)


# -- sliding windows (conv, pools) --------------------------------------------------------
def window_attrs() -> dict[str, Attr]:
    return {
        "auto_pad": Attr("string", "NOTSET"),
        "dilations": Attr("ints", None),
        "kernel_shape": Attr("ints", None),
        "pads": Attr("ints", None),
        "strides": Attr("ints", None),
    }


def window_output(node, spatial: Sequence[Dim], kernel: Sequence[int], *, ceil_mode: bool = False):
    """Output spatial dims of a conv or pool from its strides, dilations, pads and auto_pad."""
    k = len(spatial)
    strides = node.attrs.get("strides") or [1] * k
    dilations = node.attrs.get("dilations") or [1] * k
    pads = node.attrs.get("pads") or [0] * (2 * k)
    auto_pad = attr(node, "auto_pad")
    if len(kernel) != k or len(strides) != k or len(dilations) != k or len(pads) != 2 * k:
        fail(node, f"kernel {list(kernel)}, strides, dilations or pads do not fit {k} spatial dims")
    out: list[Dim] = []
    for i, size in enumerate(spatial):
        if not is_int(size):
            out.append(None)
            continue
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-size // strides[i]))
            continue
        extent = (kernel[i] - 1) * dilations[i] + 1
        padded = size if auto_pad == "VALID" else size + pads[i] + pads[i + k]
        if padded < extent:
            fail(node, f"window {extent} is larger than the padded input {padded} on spatial dim {i}")
        steps = (padded - extent) / strides[i]
        n = (math.ceil(steps) if ceil_mode else math.floor(steps)) + 1
        if ceil_mode and (n - 1) * strides[i] >= size + (0 if auto_pad == "VALID" else pads[i]):
            n -= 1  # the last window would start in the end padding
        out.append(n)
    return out


# -- costs --------------------------------------------------------------------------------
def count(shape: Sequence[Dim] | None, batch_axis: int = 0) -> int | None:
    """Elements of a shape, an unknown batch dim counting as 1; None if another dim is unknown."""
    if shape is None:
        return None
    total = 1
    for axis, d in enumerate(shape):
        if is_int(d):
            total *= int(d)
        elif axis != batch_axis:
            return None
    return total
