"""Tensor ops: reshaping, joining and slicing, indexing, constants, casts, reductions, softmax.

Ops that compute on shapes (Shape, Gather, Concat, Slice, ...) record their values, so a later
Reshape, Expand or Resize can read a target shape that an exporter computes at run time.
"""

from __future__ import annotations

import math

import numpy as np

from ..registry import Attr
from ..types import DType, TensorType
from .rules import (
    as_dims,
    attr,
    broadcast,
    define,
    fail,
    fmt,
    input_value,
    ints_of,
    is_int,
    ishape,
    itype,
    like,
    norm_axis,
    product,
    record,
    remember,
    same_as,
    shape_array,
    value_of,
)

OPEN_END = 2**31 - 1
"""Slice ends at least this large mean "to the end" (exporters write INT32_MAX or INT64_MAX)."""


def _unknown_dims(node, shape_input: int):
    """Output of rank given by a 1-D shape input's length, every dim unknown."""
    n = ishape(node, shape_input)
    return like(node, [None] * n[0] if n and is_int(n[0]) else None)


def _normalized_axes(node, axes, rank: int) -> list[int]:
    axes = [norm_axis(node, a, rank) for a in axes]
    if len(set(axes)) != len(axes):
        fail(node, f"axes {axes} repeat an axis")
    return axes


# -- reshaping ----------------------------------------------------------------------------
def _inferred_dim(node, x, dims):
    """The size a -1 stands for; symbols present on both sides cancel out."""
    if x is None:
        return None
    rest = list(x)
    for d in dims:
        if d == -1 or is_int(d):
            continue
        if d is None or d not in rest:
            return None
        rest.remove(d)
    if not all(map(is_int, rest)):
        return None
    total, part = math.prod(rest), math.prod(d for d in dims if is_int(d) and d != -1)
    if part == 0 or total % part:
        fail(node, f"cannot reshape {fmt(x)} to {fmt(dims)}")
    return total // part


def _reshape_shape(node):
    x, target = ishape(node, 0), value_of(node, 1)
    if target is None:
        return [_unknown_dims(node, 1)]
    dims = as_dims(target)
    if not attr(node, "allowzero"):
        dims = [(x[i] if x is not None and i < len(x) else None) if d == 0 else d for i, d in enumerate(dims)]
    if dims.count(-1) > 1:
        fail(node, f"target shape {fmt(dims)} has more than one -1")
    if -1 in dims:
        dims[dims.index(-1)] = _inferred_dim(node, x, dims)
    elif x is not None and all(map(is_int, [*x, *dims])) and math.prod(x) != math.prod(dims):
        fail(node, f"cannot reshape {fmt(x)} ({math.prod(x)} elements) to {fmt(dims)}")
    record(node, lambda data, _: data.reshape(dims), symbolic=True)
    return [like(node, dims)]


def _flatten_shape(node):
    x = ishape(node, 0)
    if x is None:
        return [like(node, [None, None])]
    axis = attr(node, "axis")
    if not -len(x) <= axis <= len(x):
        fail(node, f"axis {axis} is out of range for rank {len(x)}")
    axis = axis + len(x) if axis < 0 else axis
    return [like(node, (product(x[:axis]), product(x[axis:])))]


def _transpose_shape(node):
    x = ishape(node, 0)
    if x is None:
        return [like(node, None)]
    perm = list(node.attrs.get("perm") or range(len(x) - 1, -1, -1))
    if sorted(perm) != list(range(len(x))):
        fail(node, f"perm {perm} is not a permutation of {len(x)} axes")
    record(node, lambda data: np.transpose(data, perm), symbolic=True)
    return [like(node, [x[p] for p in perm])]


def _squeeze_shape(node):
    x = ishape(node, 0)
    if x is None:
        return [like(node, None)]
    if input_value(node, 1) is not None:
        axes = ints_of(node, 1)
        if axes is None:
            return [like(node, None)]
        axes = _normalized_axes(node, axes, len(x))
        for a in axes:
            if is_int(x[a]) and x[a] != 1:
                fail(node, f"cannot squeeze axis {a} of size {x[a]} in {fmt(x)}")
    elif all(map(is_int, x)):
        axes = [i for i, d in enumerate(x) if d == 1]
    else:
        return [like(node, None)]
    record(node, lambda data, *_: np.squeeze(data, tuple(axes)), symbolic=True)
    return [like(node, [d for i, d in enumerate(x) if i not in axes])]


def _unsqueeze_shape(node):
    x, axes = ishape(node, 0), ints_of(node, 1)
    if x is None or axes is None:
        return [like(node, None)]
    axes = _normalized_axes(node, axes, len(x) + len(axes))
    rest = iter(x)
    record(node, lambda data, _: np.expand_dims(data, tuple(axes)), symbolic=True)
    return [like(node, [1 if i in axes else next(rest) for i in range(len(x) + len(axes))])]


def _depth_to_space(node, inverse: bool):
    x, b = ishape(node, 0), attr(node, "blocksize")
    if x is None:
        return [like(node, None)]
    n, c, h, w = x
    if inverse:
        return [like(node, (n, c * b * b if is_int(c) else None, *[d // b if is_int(d) else None for d in (h, w)]))]
    if is_int(c) and c % (b * b):
        fail(node, f"{c} channels do not split into {b}x{b} blocks")
    return [like(node, (n, c // (b * b) if is_int(c) else None, *[d * b if is_int(d) else None for d in (h, w)]))]


define("Reshape", "data shape", "reshaped", attrs={"allowzero": Attr("int", 0)}, shape=_reshape_shape, label="reshape", int8="select")
define("Flatten", "input", "output", attrs={"axis": Attr("int", 1)}, shape=_flatten_shape, label="reshape", int8="select")
define("Squeeze", "data axes?", "squeezed", shape=_squeeze_shape, label="reshape", int8="select")
define("Unsqueeze", "data axes", "expanded", shape=_unsqueeze_shape, label="reshape", int8="select")
define("Transpose", "data", "transposed", attrs={"perm": Attr("ints", None)}, shape=_transpose_shape, label="transpose", int8="select")
define(
    "DepthToSpace",
    "input",
    "output",
    attrs={"blocksize": Attr("int"), "mode": Attr("string", "DCR")},
    shape=lambda node: _depth_to_space(node, inverse=False),
    label="reshape",
    int8="select",
)
define(
    "SpaceToDepth",
    "input",
    "output",
    attrs={"blocksize": Attr("int")},
    shape=lambda node: _depth_to_space(node, inverse=True),
    label="reshape",
    int8="select",
)


# -- joining and slicing ------------------------------------------------------------------
def _concat_shape(node):
    shapes = [v.type.shape for v in node.inputs if v is not None]
    if any(s is None for s in shapes):
        return [like(node, None)]
    if len({len(s) for s in shapes}) != 1:
        fail(node, "inputs " + ", ".join(map(fmt, shapes)) + " differ in rank")
    axis = norm_axis(node, attr(node, "axis"), len(shapes[0]))
    out = []
    for k, dims in enumerate(zip(*shapes)):
        if k == axis:
            out.append(sum(dims) if all(map(is_int, dims)) else None)
            continue
        sizes = {int(d) for d in dims if is_int(d)}
        if len(sizes) > 1:
            fail(node, "inputs " + ", ".join(map(fmt, shapes)) + f" differ outside the concat axis {axis}")
        out.append(sizes.pop() if sizes else dims[0] if len(set(dims)) == 1 else None)
    record(node, lambda *xs: np.concatenate(xs, axis), symbolic=True)
    return [like(node, out)]


def _split_shape(node):
    x, n = ishape(node, 0), len(node.outputs)
    if x is None:
        return [like(node, None)] * n
    axis = norm_axis(node, attr(node, "axis"), len(x))
    d = x[axis]
    if input_value(node, 1) is not None:
        sizes = ints_of(node, 1) or [None] * n
    elif is_int(d):
        parts = attr(node, "num_outputs") or n
        chunk = -(-d // parts)
        sizes = [chunk] * (parts - 1) + [d - chunk * (parts - 1)]
    else:
        sizes = [None] * n
    if len(sizes) != n:
        fail(node, f"{len(sizes)} parts for {n} outputs")
    if is_int(d) and all(map(is_int, sizes)) and (sum(sizes) != d or min(sizes) < 0):
        fail(node, f"parts {sizes} do not split axis {axis} of size {d}")
    return [like(node, (*x[:axis], s, *x[axis + 1 :])) for s in sizes]


def _slice_shape(node):
    x = ishape(node, 0)
    if x is None:
        return [like(node, None)]
    starts, ends = ints_of(node, 1), ints_of(node, 2)
    count = ishape(node, 1)[0] if ishape(node, 1) else None
    axes = ints_of(node, 3) if input_value(node, 3) is not None else list(range(count)) if is_int(count) else None
    steps = ints_of(node, 4) if input_value(node, 4) is not None else [1] * len(axes or ())
    if axes is None:
        return [like(node, [None] * len(x))]
    axes = _normalized_axes(node, axes, len(x))
    if starts is None or ends is None or steps is None:
        return [like(node, [None if i in axes else d for i, d in enumerate(x)])]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        fail(node, "starts, ends, axes and steps differ in length")
    out = list(x)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            fail(node, f"step 0 on axis {axis}")
        d = x[axis]
        if is_int(d):
            out[axis] = len(range(*slice(start, end, step).indices(d)))
        elif not (start == 0 and step == 1 and end >= OPEN_END):
            out[axis] = None

    def compute(data, *_):
        index = [slice(None)] * data.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps):
            index[axis] = slice(start, end, step)
        return data[tuple(index)]

    record(node, compute, symbolic=True)
    return [like(node, out)]


def _gather_shape(node):
    x, indices = ishape(node, 0), ishape(node, 1)
    if x is None or indices is None:
        return [like(node, None)]
    axis = norm_axis(node, attr(node, "axis"), len(x))
    record(node, lambda data, i: np.take(data, i, axis=axis), symbolic=True)
    return [like(node, (*x[:axis], *indices, *x[axis + 1 :]))]


def _tile_shape(node):
    x, repeats = ishape(node, 0), ints_of(node, 1)
    if x is None or repeats is None:
        return [like(node, None if x is None else [None] * len(x))]
    if len(repeats) != len(x):
        fail(node, f"{len(repeats)} repeats for an input of rank {len(x)}")
    return [like(node, [d * r if is_int(d) else d if r == 1 else None for d, r in zip(x, repeats)])]


def _expand_shape(node):
    x, target = ishape(node, 0), value_of(node, 1)
    if x is None:
        return [like(node, None)]
    dims = as_dims(target) if target is not None else _unknown_dims(node, 1).shape
    if dims is None:
        return [like(node, None)]
    out = broadcast(node, [x, dims])
    record(node, lambda data, _: np.broadcast_to(data, out).copy(), shape=out)
    return [like(node, out)]


def _pad_shape(node):
    x, pads = ishape(node, 0), ints_of(node, 1)
    if x is None:
        return [like(node, None)]
    axes = ints_of(node, 3) if input_value(node, 3) is not None else list(range(len(x)))
    if pads is None or axes is None:
        return [like(node, [None] * len(x))]
    axes = _normalized_axes(node, axes, len(x))
    if len(pads) != 2 * len(axes):
        fail(node, f"{len(pads)} pads for {len(axes)} axes")
    out = list(x)
    for j, axis in enumerate(axes):
        begin, end = pads[j], pads[j + len(axes)]
        out[axis] = x[axis] + begin + end if is_int(x[axis]) else x[axis] if begin == end == 0 else None
    return [like(node, out)]


def resized_size(size: int, scale: float) -> int:
    """Resize's output size along an axis scaled by ``scale``, in float32 as onnxruntime
    computes it: 5 x float32(1.8) is 9 there, 8.99999... in double."""
    return int(math.floor(np.float32(size) * np.float32(scale)))


def _resize_shape(node):
    x = ishape(node, 0)
    if x is None:
        return [like(node, None)]
    axes = _normalized_axes(node, node.attrs.get("axes") or range(len(x)), len(x))
    scales, sizes = value_of(node, 2), value_of(node, 3)
    out = list(x)
    if sizes is not None and sizes.size:
        sizes = as_dims(sizes)
        policy = attr(node, "keep_aspect_ratio_policy")
        if policy == "stretch":
            for axis, size in zip(axes, sizes):
                out[axis] = size
        elif all(is_int(x[a]) and is_int(s) for a, s in zip(axes, sizes)):
            pick = min if policy == "not_larger" else max
            scale = pick(s / x[a] for a, s in zip(axes, sizes))
            for axis in axes:
                out[axis] = int(scale * x[axis] + 0.5)
        else:
            out = [None if i in axes else d for i, d in enumerate(x)]
    elif scales is not None and scales.size:
        for axis, scale in zip(axes, scales.reshape(-1).tolist()):
            out[axis] = resized_size(x[axis], scale) if is_int(x[axis]) else x[axis] if scale == 1 else None
    else:
        out = [None if i in axes else d for i, d in enumerate(x)]
    return [like(node, out)]


define("Concat", "inputs*", "concat_result", attrs={"axis": Attr("int")}, shape=_concat_shape, label="concat", int8="own-range")
define(
    "Split",
    "input split?",
    "outputs*",
    attrs={"axis": Attr("int", 0), "num_outputs": Attr("int", None)},
    shape=_split_shape,
    label="split",
    int8="select",
)
define("Slice", "data starts ends axes? steps?", "output", shape=_slice_shape, label="split", int8="select")


def _gather_indexes(node):
    """Gather's indices (input 1) address the data's entries along its axis."""
    x = ishape(node, 0)
    if x is None:
        return None
    size = x[norm_axis(node, attr(node, "axis"), len(x))]
    return (1, int(size)) if isinstance(size, (int, np.integer)) and size > 0 else None


define(
    "Gather",
    "data indices",
    "output",
    attrs={"axis": Attr("int", 0)},
    shape=_gather_shape,
    label="gather",
    indexes=_gather_indexes,
)
define(
    "GatherElements",
    "data indices",
    "output",
    attrs={"axis": Attr("int", 0)},
    shape=lambda node: [like(node, ishape(node, 1))],
    label="gather",
)
define(
    "ScatterElements",
    "data indices updates",
    "output",
    attrs={"axis": Attr("int", 0), "reduction": Attr("string", "none")},
    shape=same_as(0),
    label="gather",
)
define("ScatterND", "data indices updates", "output", attrs={"reduction": Attr("string", "none")}, shape=same_as(0), label="gather")
define("Tile", "input repeats", "output", shape=_tile_shape, label="expand")
define("Expand", "input shape", "output", shape=_expand_shape, label="expand")
define("Pad", "data pads constant_value? axes?", "output", attrs={"mode": Attr("string", "constant")}, shape=_pad_shape, label="pad", int8="select")
define(
    "Resize",
    "X roi? scales? sizes?",
    attrs={
        "antialias": Attr("int", 0),
        "axes": Attr("ints", None),
        "coordinate_transformation_mode": Attr("string", "half_pixel"),
        "cubic_coeff_a": Attr("float", -0.75),
        "exclude_outside": Attr("int", 0),
        "extrapolation_value": Attr("float", 0.0),
        "keep_aspect_ratio_policy": Attr("string", "stretch"),
        "mode": Attr("string", "nearest"),
        "nearest_mode": Attr("string", "round_prefer_floor"),
    },
    shape=_resize_shape,
    label="resize",
    int8="select",
)


# -- shapes, constants and casts ----------------------------------------------------------
def _shape_shape(node):
    x = ishape(node, 0)
    if x is None:
        return [TensorType(DType.int64, (None,))]
    dims = x[attr(node, "start") : node.attrs.get("end")]
    remember(node, shape_array(dims))
    return [TensorType(DType.int64, (len(dims),))]


def _size_shape(node):
    x = ishape(node, 0)
    if x is not None and all(map(is_int, x)):
        remember(node, np.array(math.prod(x), dtype=np.int64))
    return [TensorType(DType.int64, ())]


def _constant_array(node) -> np.ndarray:
    for key, dtype in (
        ("value", None),
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
        ("value_string", object),
        ("value_strings", object),
    ):
        if key in node.attrs:
            return np.asarray(node.attrs[key], dtype=dtype)
    fail(node, "has none of the value attributes a Constant needs (sparse_value is not supported)")


def _constant_shape(node):
    array = _constant_array(node)
    remember(node, array)
    return [TensorType.of(array)]


def _constant_of_shape(node):
    fill = np.asarray(node.attrs.get("value", np.zeros(1, np.float32))).reshape(-1)
    dtype = DType.from_numpy(fill.dtype)
    target = value_of(node, 0)
    if target is None:
        return [TensorType(dtype, _unknown_dims(node, 0).shape)]
    dims = as_dims(target)
    record(node, lambda s: np.full(s, fill[0], fill.dtype), shape=dims)
    return [TensorType(dtype, tuple(dims))]


def _range_shape(node):
    start, limit, delta = (value_of(node, i) for i in range(3))
    if start is None or limit is None or delta is None:
        return [like(node, (None,))]
    if delta.item() == 0:
        fail(node, "delta is 0")
    length = max(math.ceil((limit.item() - start.item()) / delta.item()), 0)
    record(node, np.arange, shape=(length,))
    return [like(node, (length,))]


def _cast_shape(node):
    to = attr(node, "to")
    dtype = to if isinstance(to, DType) else DType.from_onnx(to)
    record(node, lambda x: x.astype(dtype.numpy))
    return [like(node, ishape(node, 0), dtype=dtype)]


def _identity_shape(node):
    record(node, lambda x: x, symbolic=True)
    return [itype(node, 0)]


def _nonzero_shape(node):
    x = ishape(node, 0)
    return [TensorType(DType.int64, (None if x is None else len(x), None))]


define("Shape", "data", "shape", attrs={"start": Attr("int", 0), "end": Attr("int", None)}, shape=_shape_shape, label="shape")
define("Size", "data", "size", shape=_size_shape, label="shape")
define("NonZero", "X", shape=_nonzero_shape, label="shape")
define("Range", "start limit delta", "output", shape=_range_shape, label="shape")
define(
    "Constant",
    "",
    "output",
    attrs={
        k: Attr(kind, None)
        for k, kind in (
            ("value", "tensor"),
            ("sparse_value", "tensor"),
            ("value_float", "float"),
            ("value_floats", "floats"),
            ("value_int", "int"),
            ("value_ints", "ints"),
            ("value_string", "string"),
            ("value_strings", "strings"),
        )
    },
    shape=_constant_shape,
    label="const",
)
define(
    "ConstantOfShape",
    "input",
    "output",
    attrs={"value": Attr("tensor", None)},
    shape=_constant_of_shape,
    label="const",
)
define("Cast", "input", "output", attrs={"to": Attr("int")}, shape=_cast_shape, label="cast")
define(
    "CastLike",
    "input target_type",
    "output",
    shape=lambda node: [like(node, ishape(node, 0), dtype=itype(node, 1).dtype)],
    label="cast",
)
define("Identity", "input", "output", shape=_identity_shape, label="identity")


# -- reductions, softmax, sorting ---------------------------------------------------------
REDUCTIONS = {
    "ReduceMean": np.mean,
    "ReduceSum": np.sum,
    "ReduceMax": np.max,
    "ReduceMin": np.min,
    "ReduceProd": np.prod,
    "ReduceL1": None,
    "ReduceL2": None,
    "ReduceLogSum": None,
    "ReduceLogSumExp": None,
    "ReduceSumSquare": None,
}


def _reduced(node, x, axes, keep: bool):
    axes = _normalized_axes(node, axes, len(x))
    return [1 if i in axes else d for i, d in enumerate(x) if keep or i not in axes], axes


def _reduction(fn):
    def rule(node):
        x, keep = ishape(node, 0), bool(attr(node, "keepdims"))
        if x is None:
            return [like(node, None)]
        axes = ints_of(node, 1) if input_value(node, 1) is not None else []
        if axes is None:
            return [like(node, [None] * len(x) if keep else None)]
        if not axes and attr(node, "noop_with_empty_axes"):
            record(node, lambda data, *_: data)
            return [itype(node, 0)]
        out, axes = _reduced(node, x, axes or range(len(x)), keep)
        if fn is not None:
            record(node, lambda data, *_: fn(data, axis=tuple(axes), keepdims=keep).astype(data.dtype))
        return [like(node, out)]

    return rule


def _arg_reduction(node):
    x = ishape(node, 0)
    out = None if x is None else _reduced(node, x, [attr(node, "axis")], bool(attr(node, "keepdims")))[0]
    return [like(node, out, dtype=DType.int64)]


def _topk_shape(node):
    x, k = ishape(node, 0), ints_of(node, 1)
    if x is None:
        return [like(node, None), like(node, None, dtype=DType.int64)]
    out = list(x)
    out[norm_axis(node, attr(node, "axis"), len(x))] = k[0] if k else None
    return [like(node, out), like(node, out, dtype=DType.int64)]


_REDUCE_ATTRS = {"keepdims": Attr("int", 1), "noop_with_empty_axes": Attr("int", 0)}
for _name, _fn in REDUCTIONS.items():
    define(_name, "data axes?", "reduced", attrs=_REDUCE_ATTRS, shape=_reduction(_fn), label="reduce")
for _name in ("ArgMax", "ArgMin"):
    define(
        _name,
        "data",
        "reduced",
        attrs={"axis": Attr("int", 0), "keepdims": Attr("int", 1), "select_last_index": Attr("int", 0)},
        shape=_arg_reduction,
        label="reduce",
    )
for _name in ("Softmax", "LogSoftmax", "Hardmax"):
    define(_name, "input", "output", attrs={"axis": Attr("int", -1)}, shape=same_as(0), label="softmax")
define(
    "TopK",
    "X K",
    "Values Indices",
    attrs={"axis": Attr("int", -1), "largest": Attr("int", 1), "sorted": Attr("int", 1)},
    shape=_topk_shape,
    label="sort",
)
define(
    "CumSum",
    "x axis",
    "y",
    attrs={"exclusive": Attr("int", 0), "reverse": Attr("int", 0)},
    shape=same_as(0),
    label="math",
)
define("Trilu", "input k?", "output", attrs={"upper": Attr("int", 1)}, shape=same_as(0), label="math")
