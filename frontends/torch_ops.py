"""ATen -> IR converters, keyed by the ATen overload name (``"aten.conv2d.default"``).

A converter receives the lowering context (``frontends.torch._Lowering``) and the fx node, and
returns the IR value(s) standing for the node's result. It raises ``Unsupported`` when the
arguments are beyond what it can express; the node then becomes an opaque ``aten`` node.
Weights keep torch's layout wherever the IR op has the same one (conv ``[out, in/g, kh, kw]``,
Gemm with ``transB=1``), so the constants stay equal to the ``state_dict`` tensors.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import numpy as np

from ..ir.core import Value
from ..ir.types import DType
from .torch import SymDim, Unsupported, dtype_of, torch

CONVERTERS: dict[str, Callable] = {}


def converts(*targets: str):
    def register(fn):
        for target in targets:
            CONVERTERS[target] = fn
        return fn

    return register


def _args(ctx, node) -> dict:
    return ctx.arguments(node)


def _rank(ctx, arg) -> int:
    return len(ctx.shape_of(arg))


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _pairs(values, n: int) -> list[int]:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return values * n if len(values) == 1 else values


# -- layers -------------------------------------------------------------------------------
@converts("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default",
          "aten.conv1d.padding", "aten.conv2d.padding", "aten.conv3d.padding")
def _conv(ctx, node):
    a = _args(ctx, node)
    k = _rank(ctx, a["weight"]) - 2
    if _rank(ctx, a["input"]) != k + 2:
        raise Unsupported("convolution of an unbatched input")
    kernel = ctx.static_shape(a["weight"])[2:]
    dilations = _pairs(a["dilation"], k)
    padding = a["padding"]
    if padding == "valid":
        padding = [0] * k
    if padding == "same":
        total = [d * (s - 1) for d, s in zip(dilations, kernel)]
        pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        pads = _pairs(padding, k) * 2
    attrs = {
        "kernel_shape": list(kernel),
        "strides": _pairs(a["stride"], k),
        "pads": pads,
        "dilations": dilations,
        "group": int(a["groups"]),
    }
    return ctx.emit("Conv", [ctx.tensor(a["input"]), ctx.tensor(a["weight"]), ctx.tensor(a["bias"])], attrs)


@converts("aten.convolution.default")
def _convolution(ctx, node):
    a = _args(ctx, node)
    if a["transposed"]:
        return _conv_transpose_from(ctx, a)
    k = _rank(ctx, a["weight"]) - 2
    attrs = {
        "kernel_shape": list(ctx.static_shape(a["weight"])[2:]),
        "strides": _pairs(a["stride"], k),
        "pads": _pairs(a["padding"], k) * 2,
        "dilations": _pairs(a["dilation"], k),
        "group": int(a["groups"]),
    }
    return ctx.emit("Conv", [ctx.tensor(a["input"]), ctx.tensor(a["weight"]), ctx.tensor(a["bias"])], attrs)


@converts("aten.conv_transpose1d.default", "aten.conv_transpose2d.input", "aten.conv_transpose3d.input")
def _conv_transpose(ctx, node):
    return _conv_transpose_from(ctx, _args(ctx, node))


def _conv_transpose_from(ctx, a):
    k = _rank(ctx, a["weight"]) - 2
    attrs = {
        "kernel_shape": list(ctx.static_shape(a["weight"])[2:]),
        "strides": _pairs(a["stride"], k),
        "pads": _pairs(a["padding"], k) * 2,
        "output_padding": _pairs(a["output_padding"], k),
        "dilations": _pairs(a["dilation"], k),
        "group": int(a["groups"]),
    }
    inputs = [ctx.tensor(a["input"]), ctx.tensor(a["weight"]), ctx.tensor(a["bias"])]
    return ctx.emit("ConvTranspose", inputs, attrs)


@converts("aten.linear.default")
def _linear(ctx, node):
    """2-D input: Gemm(transB=1) on torch's [out, in] weight; N-D: MatMul on [in, out] (+ Add)."""
    a = _args(ctx, node)
    x, weight, bias = ctx.tensor(a["input"]), ctx.tensor(a["weight"]), ctx.tensor(a["bias"])
    if _rank(ctx, a["input"]) == 2:
        return ctx.emit("Gemm", [x, weight, bias], {"transB": 1})
    array = ctx.constant_array(a["weight"])
    if array is not None and array.ndim == 2:
        weight_t = ctx.derived_constant(f"{weight.name}_t", lambda: np.ascontiguousarray(array.T))
    else:
        weight_t = ctx.emit("Transpose", [weight], {"perm": [1, 0]})
    y = ctx.emit("MatMul", [x, weight_t])
    return y if bias is None else ctx.emit("Add", [y, bias])


@converts("aten.matmul.default", "aten.bmm.default", "aten.mm.default")
def _matmul(ctx, node):
    return ctx.emit("MatMul", [ctx.tensor(node.args[0]), ctx.tensor(node.args[1])])


@converts("aten.addmm.default")
def _addmm(ctx, node):
    a = _args(ctx, node)
    inputs = [ctx.tensor(a["mat1"]), ctx.tensor(a["mat2"]), ctx.tensor(a["self"])]
    return ctx.emit("Gemm", inputs, {"alpha": float(a["alpha"]), "beta": float(a["beta"])})


# -- normalisation ------------------------------------------------------------------------
def _channels(ctx, arg) -> int:
    channels = ctx.shape_of(arg)[1]
    if not isinstance(channels, int):
        raise Unsupported("symbolic channel count")
    return channels


def _param_or(ctx, arg, fill: float, count: int, role: str, like):
    if arg is not None:
        return ctx.tensor(arg)
    dtype = like.type.dtype.numpy if like.type is not None else np.float32
    return ctx.constant(np.full((count,), fill, dtype=dtype), role)


@converts("aten._native_batch_norm_legit_no_training.default", "aten.batch_norm.default",
          "aten._native_batch_norm_legit_functional.default", "aten.native_batch_norm.default")
def _batch_norm(ctx, node):
    a = _args(ctx, node)
    training = bool(a.get("training", False))
    x = ctx.tensor(a["input"])
    if a["running_mean"] is None:
        raise Unsupported("batch norm without running statistics")
    c = _channels(ctx, a["input"])
    inputs = [
        x,
        _param_or(ctx, a["weight"], 1.0, c, "scale", x),
        _param_or(ctx, a["bias"], 0.0, c, "bias", x),
        ctx.tensor(a["running_mean"]),
        ctx.tensor(a["running_var"]),
    ]
    attrs = {"epsilon": float(a["eps"]), "momentum": 1.0 - float(a["momentum"])}
    if training:
        attrs["training_mode"] = 1
        y, mean, var = ctx.emit("BatchNormalization", inputs, attrs, outputs=3)
    else:
        y = ctx.emit("BatchNormalization", inputs, attrs)
        mean = var = None
    if node.target._opname == "batch_norm":
        return y
    if node.target._opname == "_native_batch_norm_legit_functional":
        return (y, None, None, mean, var)
    return (y, None, None)


@converts("aten.instance_norm.default")
def _instance_norm(ctx, node):
    """Statistics of each sample: InstanceNormalization; tracked running statistics: a BatchNorm."""
    a = _args(ctx, node)
    x = ctx.tensor(a["input"])
    c = _channels(ctx, a["input"])
    scale = _param_or(ctx, a["weight"], 1.0, c, "scale", x)
    bias = _param_or(ctx, a["bias"], 0.0, c, "bias", x)
    if a["use_input_stats"]:
        return ctx.emit("InstanceNormalization", [x, scale, bias], {"epsilon": float(a["eps"])})
    inputs = [x, scale, bias, ctx.tensor(a["running_mean"]), ctx.tensor(a["running_var"])]
    return ctx.emit("BatchNormalization", inputs, {"epsilon": float(a["eps"]), "momentum": 1.0 - float(a["momentum"])})


@converts("aten.layer_norm.default")
def _layer_norm(ctx, node):
    a = _args(ctx, node)
    x = ctx.tensor(a["input"])
    shape = list(a["normalized_shape"])
    if a["weight"] is None:
        dtype = x.type.dtype.numpy if x.type is not None else np.float32
        scale_value = ctx.constant(np.ones(shape, dtype=dtype), "scale")
    else:
        scale_value = ctx.tensor(a["weight"])
    attrs = {"axis": -len(shape), "epsilon": float(a["eps"])}
    return ctx.emit("LayerNormalization", [x, scale_value, ctx.tensor(a["bias"])], attrs)


@converts("aten.group_norm.default")
def _group_norm(ctx, node):
    """GroupNormalization with one scale and bias per channel (ONNX opset 21 semantics)."""
    a = _args(ctx, node)
    x = ctx.tensor(a["input"])
    c = _channels(ctx, a["input"])
    ctx.require_opset(21)  # per-channel scale and bias, as torch has them
    inputs = [x, _param_or(ctx, a["weight"], 1.0, c, "scale", x), _param_or(ctx, a["bias"], 0.0, c, "bias", x)]
    return ctx.emit("GroupNormalization", inputs, {"num_groups": int(a["num_groups"]), "epsilon": float(a["eps"])})


# -- activations --------------------------------------------------------------------------
_UNARY = {
    "aten.relu.default": "Relu",
    "aten.sigmoid.default": "Sigmoid",
    "aten.tanh.default": "Tanh",
    "aten.hardswish.default": "HardSwish",
    "aten.exp.default": "Exp",
    "aten.log.default": "Log",
    "aten.sqrt.default": "Sqrt",
    "aten.neg.default": "Neg",
    "aten.abs.default": "Abs",
    "aten.erf.default": "Erf",
    "aten.reciprocal.default": "Reciprocal",
    "aten.floor.default": "Floor",
    "aten.ceil.default": "Ceil",
    "aten.sin.default": "Sin",
    "aten.cos.default": "Cos",
    "aten.mish.default": "Mish",
    "aten.logical_not.default": "Not",
    "aten.sign.default": "Sign",
    "aten.round.default": "Round",  # both round half to even
}


def _unary(op: str):
    def convert(ctx, node):
        return ctx.emit(op, [ctx.tensor(node.args[0])])

    return convert


for _target, _op in _UNARY.items():
    CONVERTERS[_target] = _unary(_op)


@converts("aten.hardsigmoid.default")
def _hardsigmoid(ctx, node):
    return ctx.emit("HardSigmoid", [ctx.tensor(node.args[0])], {"alpha": 1.0 / 6.0, "beta": 0.5})


@converts("aten.silu.default")
def _silu(ctx, node):
    x = ctx.tensor(node.args[0])
    return ctx.emit("Mul", [x, ctx.emit("Sigmoid", [x])])


@converts("aten.gelu.default")
def _gelu(ctx, node):
    a = _args(ctx, node)
    ctx.require_opset(20)  # Gelu is an ONNX op since opset 20
    return ctx.emit("Gelu", [ctx.tensor(a["self"])], {"approximate": a["approximate"]})


@converts("aten.leaky_relu.default")
def _leaky_relu(ctx, node):
    a = _args(ctx, node)
    return ctx.emit("LeakyRelu", [ctx.tensor(a["self"])], {"alpha": float(a["negative_slope"])})


@converts("aten.elu.default")
def _elu(ctx, node):
    a = _args(ctx, node)
    if float(a["input_scale"]) != 1.0:
        raise Unsupported("elu with an input scale")
    if float(a["scale"]) != 1.0:  # F.selu, and elu scaled the same way
        return ctx.emit("Selu", [ctx.tensor(a["self"])], {"alpha": float(a["alpha"]), "gamma": float(a["scale"])})
    return ctx.emit("Elu", [ctx.tensor(a["self"])], {"alpha": float(a["alpha"])})


@converts("aten.softplus.default")
def _softplus(ctx, node):
    a = _args(ctx, node)
    x = ctx.tensor(a["self"])
    beta, threshold = float(a["beta"]), float(a["threshold"])
    if beta == 1.0 and threshold >= 20.0:  # above 20 log(1 + e^x) is x in float32 anyway
        return ctx.emit("Softplus", [x])
    # torch: x where beta * x > threshold, else log(1 + exp(beta * x)) / beta
    scaled = ctx.emit("Mul", [x, ctx.tensor(beta, like=x)])
    soft = ctx.emit("Div", [ctx.emit("Softplus", [scaled]), ctx.tensor(beta, like=x)])
    linear = ctx.emit("Greater", [scaled, ctx.tensor(threshold, like=x)])
    return ctx.emit("Where", [linear, x, soft])


@converts("aten.prelu.default")
def _prelu(ctx, node):
    a = _args(ctx, node)
    x, slope = ctx.tensor(a["self"]), ctx.tensor(a["weight"])
    rank = _rank(ctx, a["self"])
    array = ctx.constant_array(a["weight"])
    if array is not None and array.size > 1 and rank > 2:
        # torch's per-channel slope is [C]; broadcasting wants [C, 1, ..., 1].
        slope = ctx.emit("Reshape", [slope, ctx.ints([-1] + [1] * (rank - 2))])
    return ctx.emit("PRelu", [x, slope])


@converts("aten.hardtanh.default", "aten.clamp.default", "aten.relu6.default")
def _clip(ctx, node):
    a = _args(ctx, node)
    x = ctx.tensor(a["self"])
    if node.target._opname == "relu6":
        low, high = 0.0, 6.0
    elif node.target._opname == "hardtanh":
        low, high = a["min_val"], a["max_val"]
    else:
        low, high = a["min"], a["max"]
    bounds = [None if b is None else ctx.tensor(float(b), like=x) for b in (low, high)]
    return ctx.emit("Clip", [x, *bounds])


@converts("aten.clamp_min.default")
def _clamp_min(ctx, node):
    x = ctx.tensor(node.args[0])
    return ctx.emit("Clip", [x, ctx.tensor(float(node.args[1]), like=x)])


@converts("aten.clamp_max.default")
def _clamp_max(ctx, node):
    x = ctx.tensor(node.args[0])
    return ctx.emit("Clip", [x, None, ctx.tensor(float(node.args[1]), like=x)])


@converts("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor")
def _pow(ctx, node):
    x = ctx.tensor(node.args[0])
    return ctx.emit("Pow", [x, ctx.tensor(node.args[1], like=x)])


@converts("aten.rsqrt.default")
def _rsqrt(ctx, node):
    return ctx.emit("Reciprocal", [ctx.emit("Sqrt", [ctx.tensor(node.args[0])])])


# -- arithmetic ---------------------------------------------------------------------------
def _operands(ctx, args) -> list:
    """The operands as Values of one element type, torch's promotion of theirs (``x + i``
    with an int64 ``i`` is float): a python number takes that type, a tensor is cast to it."""
    out_dtype = dtype_of(ctx.out_meta().dtype)
    if out_dtype == DType.bool:  # a comparison: the operands' promoted type, not the result's
        metas = [a.meta.get("val") if hasattr(a, "meta") else a for a in args]
        try:
            out_dtype = dtype_of(torch.result_type(*metas))
        except Exception:  # noqa: BLE001 - no promotion to learn from: keep the tensor's type
            out_dtype = next(v.type.dtype for v in map(ctx.lookup, args) if isinstance(v, Value) and v.type)
    values = [ctx.tensor(arg, dtype=out_dtype) for arg in args]
    return [
        ctx.emit("Cast", [v], {"to": out_dtype.onnx}) if v.type is not None and v.type.dtype != out_dtype else v
        for v in values
    ]


def _binary(op: str, *, scaled: bool = False, reverse: bool = False):
    def convert(ctx, node):
        left, right = _operands(ctx, node.args[:2])
        alpha = node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1) if scaled else 1
        if alpha != 1:
            right = ctx.emit("Mul", [right, ctx.tensor(alpha, like=right)])
        if reverse:
            left, right = right, left
        return ctx.emit(op, [left, right])

    return convert


for _name, _op in (("add", "Add"), ("sub", "Sub")):
    CONVERTERS[f"aten.{_name}.Tensor"] = _binary(_op, scaled=True)
    CONVERTERS[f"aten.{_name}.Scalar"] = _binary(_op, scaled=True)
CONVERTERS["aten.rsub.Scalar"] = _binary("Sub", scaled=True, reverse=True)
CONVERTERS["aten.rsub.Tensor"] = _binary("Sub", scaled=True, reverse=True)
for _name, _op in (("mul", "Mul"), ("maximum", "Max"), ("minimum", "Min"), ("eq", "Equal"),
                   ("lt", "Less"), ("gt", "Greater"), ("le", "LessOrEqual"), ("ge", "GreaterOrEqual"),
                   ("logical_and", "And"), ("logical_or", "Or")):
    for _overload in ("Tensor", "Scalar", "default"):
        CONVERTERS[f"aten.{_name}.{_overload}"] = _binary(_op)


@converts("aten.div.Tensor", "aten.div.Scalar", "aten.div.Tensor_mode")
def _div(ctx, node):
    mode = node.kwargs.get("rounding_mode")
    left, right = _operands(ctx, node.args[:2])
    if mode is None and not (left.type and left.type.dtype.is_float):
        raise Unsupported("true division of integers")
    if mode == "floor" and left.type and left.type.dtype.is_float:
        return ctx.emit("Floor", [ctx.emit("Div", [left, right])])
    if mode == "floor" and not _nonnegative_ints(ctx, node):
        raise Unsupported("floor division of possibly negative integers")
    if mode == "trunc" and left.type and left.type.dtype.is_float:
        return _truncate(ctx, ctx.emit("Div", [left, right]))
    return ctx.emit("Div", [left, right])  # integer Div truncates, as rounding_mode="trunc" does


def _truncate(ctx, x):
    """Rounding toward zero: sign(x) * floor(|x|) (ONNX has no Trunc)."""
    return ctx.emit("Mul", [ctx.emit("Sign", [x]), ctx.emit("Floor", [ctx.emit("Abs", [x])])])


def _nonnegative_ints(ctx, node) -> bool:
    arrays = [ctx.constant_array(a) for a in node.args[:2]]
    return all(a is not None and (np.asarray(a) >= 0).all() for a in arrays)


@converts("aten.where.self")
def _where(ctx, node):
    cond = ctx.tensor(node.args[0])
    x, y = _operands(ctx, node.args[1:3])
    return ctx.emit("Where", [cond, x, y])


# -- pooling and resampling ---------------------------------------------------------------
def _indices_used(node) -> bool:
    """Whether the second result (a pool's argmax indices) is read by anything."""
    return any(u.target is operator.getitem and u.args[1] == 1 and u.users for u in node.users)


@converts("aten.max_pool2d.default", "aten.max_pool1d.default", "aten.max_pool3d.default",
          "aten.max_pool2d_with_indices.default", "aten.max_pool3d_with_indices.default")
def _max_pool(ctx, node):
    a = _args(ctx, node)
    if _indices_used(node):
        raise Unsupported("max pooling whose indices are used")
    k = _rank(ctx, a["self"]) - 2
    kernel = _pairs(a["kernel_size"], k)
    attrs = {
        "kernel_shape": kernel,
        "strides": _pairs(a["stride"], k) if a["stride"] else kernel,
        "pads": _pairs(a["padding"], k) * 2,
        "dilations": _pairs(a["dilation"], k),
        "ceil_mode": int(bool(a["ceil_mode"])),
    }
    y = ctx.emit("MaxPool", [ctx.tensor(a["self"])], attrs)
    return (y, None) if node.target._opname.endswith("with_indices") else y


@converts("aten.avg_pool2d.default", "aten.avg_pool1d.default", "aten.avg_pool3d.default")
def _avg_pool(ctx, node):
    a = _args(ctx, node)
    if a.get("divisor_override") is not None:
        raise Unsupported("avg_pool with divisor_override")
    k = _rank(ctx, a["self"]) - 2
    kernel = _pairs(a["kernel_size"], k)
    attrs = {
        "kernel_shape": kernel,
        "strides": _pairs(a["stride"], k) if a["stride"] else kernel,
        "pads": _pairs(a["padding"], k) * 2,
        "ceil_mode": int(bool(a["ceil_mode"])),
        "count_include_pad": int(bool(a["count_include_pad"])),
    }
    return ctx.emit("AveragePool", [ctx.tensor(a["self"])], attrs)


@converts("aten.adaptive_avg_pool2d.default", "aten.adaptive_avg_pool1d.default",
          "aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool3d.default", "aten._adaptive_avg_pool3d.default")
def _adaptive_avg_pool(ctx, node):
    """1x1 output: GlobalAveragePool; an output size dividing the input: a plain AveragePool."""
    a = _args(ctx, node)
    x = ctx.tensor(a["self"])
    spatial = ctx.shape_of(a["self"])[2:]
    out = _pairs(a["output_size"], len(spatial))
    if all(o == 1 for o in out):
        return ctx.emit("GlobalAveragePool", [x])
    if not all(isinstance(s, int) for s in spatial):
        raise Unsupported("adaptive pooling of a symbolic size")
    if all(s % o == 0 for s, o in zip(spatial, out)):
        kernel = [s // o for s, o in zip(spatial, out)]
        return ctx.emit("AveragePool", [x], {"kernel_shape": kernel, "strides": kernel})
    if len(spatial) != 2:
        raise Unsupported("adaptive pooling to a size that does not divide the input")
    # Exact in general: each output row (column) averages a window of input rows (columns),
    # so the pooling is P_h @ x @ P_w^T with constant averaging matrices.
    (h, w), (oh, ow) = spatial, out
    y = x
    if w != ow:
        y = ctx.emit("MatMul", [y, ctx.fixed_constant(_pool_matrix(w, ow).T, "pool_cols")])
    if h != oh:
        y = ctx.emit("MatMul", [ctx.fixed_constant(_pool_matrix(h, oh), "pool_rows"), y])
    return y


def _pool_matrix(size: int, out: int) -> np.ndarray:
    """[out, size]: row i averages torch's adaptive window [floor(i*size/out), ceil((i+1)*size/out))."""
    matrix = np.zeros((out, size), dtype=np.float32)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return np.ascontiguousarray(matrix)


@converts("aten.upsample_nearest2d.vec", "aten.upsample_nearest2d.default",
          "aten.upsample_bilinear2d.vec", "aten.upsample_bilinear2d.default",
          "aten.upsample_nearest1d.vec", "aten.upsample_linear1d.vec",
          "aten.upsample_bicubic2d.vec", "aten.upsample_bicubic2d.default",
          "aten._upsample_nearest_exact2d.vec", "aten._upsample_nearest_exact2d.default")
def _upsample(ctx, node):
    a = _args(ctx, node)
    x = ctx.tensor(a["input"] if "input" in a else a["self"])
    in_shape, out_shape = ctx.shape_of(node.args[0])[2:], ctx.shape_of(node)[2:]
    if not all(isinstance(d, int) for d in (*in_shape, *out_shape)):
        raise Unsupported("resampling of symbolic sizes")
    scales = np.array([1.0, 1.0] + [o / i for o, i in zip(out_shape, in_shape)], dtype=np.float32)
    if "nearest" in node.target._opname:
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        if "nearest_exact" in node.target._opname:
            # torch: source = floor((dst + 0.5) * in / out), which is half_pixel rounded half up
            attrs.update(coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")
        if _given_scales(a) is not None and any(
            abs(s - 1.0 / r) > 1e-6 * abs(s) for s, r in zip(scales[2:], _reciprocal_scales(a, in_shape, out_shape))
        ):
            raise Unsupported("nearest resampling with a non-integral scale")
    else:
        corners = bool(a.get("align_corners"))
        attrs = {"mode": "cubic" if "bicubic" in node.target._opname else "linear",
                 "coordinate_transformation_mode": "align_corners" if corners else "pytorch_half_pixel"}
        if attrs["mode"] == "cubic":
            attrs["cubic_coeff_a"] = -0.75  # torch's bicubic kernel
        if not corners and _given_scales(a) is not None and any(
            abs(1.0 / s - r) > 1e-6 for s, r in zip(scales[2:], _reciprocal_scales(a, in_shape, out_shape))
        ):
            raise Unsupported("linear resampling whose scale factor does not match its output size")
    exact = all(
        int(np.float32(i) * s) == o == int(i * float(s))  # float32 (onnxruntime) and double (torch)
        for i, o, s in zip(in_shape, out_shape, scales[2:])
    )
    if not exact:  # out/in as a float32 scale does not give the traced size back: ask for the size
        sizes = np.array([*ctx.shape_of(node)[:2], *out_shape], dtype=np.int64)
        if all(isinstance(d, int) for d in sizes.tolist()):
            return ctx.emit("Resize", [x, None, None, ctx.constant(sizes, "sizes")], attrs)
    return ctx.emit("Resize", [x, None, ctx.constant(scales, "scales")], attrs)


def _given_scales(a):
    scales = a.get("scale_factors")
    if scales is None:
        scales = [a[k] for k in ("scales_h", "scales_w") if a.get(k) is not None] or None
    return scales


def _reciprocal_scales(a, in_shape, out_shape) -> list[float]:
    """The input/output step torch itself uses: 1/scale_factor when given, else in/out."""
    scales = _given_scales(a)
    if scales is None:
        return [i / o for i, o in zip(in_shape, out_shape)]
    return [1.0 / float(s) for s in scales]


# -- shape manipulation -------------------------------------------------------------------
@converts("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default",
          "aten.flatten.using_ints", "aten.unflatten.int", "aten.view_copy.default")
def _reshape(ctx, node):
    """Reshape to the traced output shape; the batch symbol becomes 0 (copy) or -1 (infer)."""
    source = ctx.shape_of(node.args[0])
    target = ctx.shape_of(node)
    dims: list = []
    for i, d in enumerate(target):
        if isinstance(d, int):
            dims.append(d)
        elif i < len(source) and isinstance(source[i], SymDim) and source[i].expr == d.expr:
            dims.append(0)
        else:
            dims.append(d)
    symbolic = [d for d in dims if isinstance(d, SymDim)]
    x = ctx.tensor(node.args[0])
    if 0 in dims and any(isinstance(d, int) and d == 0 for d in target):
        raise Unsupported("reshape to a zero-sized dim")
    if len(symbolic) == 1 and -1 not in dims:
        dims = [-1 if isinstance(d, SymDim) else d for d in dims]
    if any(isinstance(d, SymDim) for d in dims):
        return ctx.emit("Reshape", [x, ctx.shape_value(dims)])
    return ctx.emit("Reshape", [x, ctx.ints(dims, "shape")])


@converts("aten.permute.default")
def _permute(ctx, node):
    rank = _rank(ctx, node.args[0])
    perm = [_axis(int(p), rank) for p in node.args[1]]
    return ctx.emit("Transpose", [ctx.tensor(node.args[0])], {"perm": perm})


@converts("aten.transpose.int")
def _transpose(ctx, node):
    rank = _rank(ctx, node.args[0])
    i, j = _axis(int(node.args[1]), rank), _axis(int(node.args[2]), rank)
    perm = list(range(rank))
    perm[i], perm[j] = perm[j], perm[i]
    if i == j:
        return ctx.tensor(node.args[0])
    return ctx.emit("Transpose", [ctx.tensor(node.args[0])], {"perm": perm})


@converts("aten.t.default")
def _t(ctx, node):
    if _rank(ctx, node.args[0]) < 2:
        return ctx.tensor(node.args[0])
    return ctx.emit("Transpose", [ctx.tensor(node.args[0])], {"perm": [1, 0]})


@converts("aten.cat.default", "aten.concat.default")
def _cat(ctx, node):
    a = _args(ctx, node)
    tensors = [t for t in a["tensors"] if ctx.shape_of(t) != (0,)]
    rank = _rank(ctx, tensors[0])
    if len(tensors) == 1:
        return ctx.tensor(tensors[0])
    return ctx.emit("Concat", [ctx.tensor(t) for t in tensors], {"axis": _axis(int(a["dim"]), rank)})


@converts("aten.split_with_sizes.default", "aten.split.Tensor", "aten.split_with_sizes_copy.default",
          "aten.unsafe_split.Tensor", "aten.chunk.default", "aten.tensor_split.sections")
def _split(ctx, node):
    rank = _rank(ctx, node.args[0])
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
    axis = _axis(int(dim), rank)
    sizes = [v.shape[axis] for v in ctx.out_meta()]
    if not all(isinstance(s, int) for s in sizes):
        raise Unsupported("split of a symbolic dim")
    x = ctx.tensor(node.args[0])
    if len(sizes) == 1:
        return [x]
    return ctx.emit("Split", [x, ctx.ints(sizes, "sizes")], {"axis": axis}, outputs=len(sizes))


@converts("aten.unbind.int")
def _unbind(ctx, node):
    rank = _rank(ctx, node.args[0])
    axis = _axis(int(node.args[1]) if len(node.args) > 1 else 0, rank)
    count = ctx.shape_of(node.args[0])[axis]
    if not isinstance(count, int):
        raise Unsupported("unbind of a symbolic dim")
    x = ctx.tensor(node.args[0])
    parts = ctx.emit("Split", [x, ctx.ints([1] * count)], {"axis": axis}, outputs=count) if count > 1 else [x]
    axes = ctx.ints([axis])
    return [ctx.emit("Squeeze", [p, axes]) for p in parts]


@converts("aten.slice.Tensor")
def _slice(ctx, node):
    a = _args(ctx, node)
    shape = ctx.shape_of(a["self"])
    axis = _axis(int(a["dim"]), len(shape))
    start = 0 if a["start"] is None else a["start"]
    end = 2**63 - 1 if a["end"] is None else a["end"]
    step = int(a["step"])
    if isinstance(start, int) and start == 0 and step == 1 and isinstance(end, int) and (
        end >= 2**62 or (isinstance(shape[axis], int) and end >= shape[axis])
    ):
        return ctx.tensor(a["self"])
    if not isinstance(start, int) or not isinstance(end, int):
        raise Unsupported("slice with symbolic bounds")
    inputs = [
        ctx.tensor(a["self"]),
        ctx.ints([start], "starts"),
        ctx.ints([min(end, 2**63 - 1)], "ends"),
        ctx.ints([axis], "axes"),
        ctx.ints([step], "steps"),
    ]
    return ctx.emit("Slice", inputs)


@converts("aten.select.int")
def _select(ctx, node):
    a = _args(ctx, node)
    shape = ctx.shape_of(a["self"])
    axis = _axis(int(a["dim"]), len(shape))
    index = int(a["index"])
    if index < 0 and isinstance(shape[axis], int):
        index += shape[axis]
    index_value = ctx.constant(np.array(index, dtype=np.int64), "index")
    return ctx.emit("Gather", [ctx.tensor(a["self"]), index_value], {"axis": axis})


@converts("aten.index_select.default")
def _index_select(ctx, node):
    a = _args(ctx, node)
    axis = _axis(int(a["dim"]), _rank(ctx, a["self"]))
    return ctx.emit("Gather", [ctx.tensor(a["self"]), ctx.tensor(a["index"])], {"axis": axis})


@converts("aten.embedding.default")
def _embedding(ctx, node):
    a = _args(ctx, node)
    return ctx.emit("Gather", [ctx.tensor(a["weight"]), ctx.tensor(a["indices"])], {"axis": 0})


@converts("aten.unsqueeze.default")
def _unsqueeze(ctx, node):
    axis = _axis(int(node.args[1]), _rank(ctx, node.args[0]) + 1)
    return ctx.emit("Unsqueeze", [ctx.tensor(node.args[0]), ctx.ints([axis], "axes")])


@converts("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _squeeze(ctx, node):
    shape = ctx.shape_of(node.args[0])
    if len(node.args) > 1:
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        axes = [_axis(int(d), len(shape)) for d in dims]
    else:
        axes = list(range(len(shape)))
    axes = [ax for ax in axes if shape[ax] == 1]
    if not axes:
        return ctx.tensor(node.args[0])
    return ctx.emit("Squeeze", [ctx.tensor(node.args[0]), ctx.ints(axes, "axes")])


@converts("aten.expand.default", "aten.expand_copy.default")
def _expand(ctx, node):
    """Expand to the traced shape; dims the input already has broadcast from 1."""
    source = ctx.shape_of(node.args[0])
    target = ctx.shape_of(node)
    offset = len(target) - len(source)
    dims = []
    for i, d in enumerate(target):
        s = source[i - offset] if i >= offset else None
        same = s is not None and (s == d if isinstance(d, int) else isinstance(s, SymDim) and s.expr == d.expr)
        dims.append(1 if same else d)
    if all(d == 1 for d in dims[offset:]) and offset == 0:
        return ctx.tensor(node.args[0])
    return ctx.emit("Expand", [ctx.tensor(node.args[0]), ctx.shape_value(dims)])


@converts("aten.clone.default", "aten.alias.default", "aten.contiguous.default", "aten.detach.default",
          "aten.lift_fresh_copy.default", "aten.lift_fresh.default")
def _identity(ctx, node):
    return ctx.tensor(node.args[0])


@converts("aten.feature_dropout.default", "aten.alpha_dropout.default")
def _eval_only_dropout(ctx, node):
    if node.args[2]:
        raise Unsupported("channel or alpha dropout in training")
    return ctx.tensor(node.args[0])


@converts("aten.native_dropout.default", "aten.dropout.default")
def _dropout(ctx, node):
    """Kept as a node even in eval mode (where it is the identity): the torch backend trains it."""
    a = _args(ctx, node)
    x = ctx.tensor(a["input"])
    dtype = x.type.dtype.numpy if x.type is not None else np.float32
    inputs = [x, ctx.constant(np.array(a["p"], dtype=dtype), "ratio")]
    if a["train"]:
        inputs.append(ctx.constant(np.array(True), "training"))
    y = ctx.emit("Dropout", inputs)
    return y if node.target._opname == "dropout" else (y, None)


@converts("aten._to_copy.default", "aten.to.dtype", "aten.type_as.default")
def _to_copy(ctx, node):
    x = ctx.tensor(node.args[0])
    target = dtype_of(ctx.out_meta().dtype)
    if x.type is not None and x.type.dtype == target:
        return x
    return ctx.emit("Cast", [x], {"to": target.onnx})


# -- reductions and softmax ---------------------------------------------------------------
_REDUCTIONS = {"mean": "ReduceMean", "sum": "ReduceSum", "amax": "ReduceMax", "amin": "ReduceMin"}


@converts("aten.mean.dim", "aten.sum.dim_IntList", "aten.amax.default", "aten.amin.default",
          "aten.mean.default", "aten.sum.default")
def _reduce(ctx, node):
    a = _args(ctx, node)
    rank = _rank(ctx, a["self"])
    dims = a.get("dim")
    axes = list(range(rank)) if not dims else [_axis(int(d), rank) for d in dims]
    if a.get("dtype") is not None:
        raise Unsupported("reduction with a dtype")
    op = _REDUCTIONS[node.target._opname]
    keep = int(bool(a.get("keepdim", False)))
    return ctx.emit(op, [ctx.tensor(a["self"]), ctx.ints(axes, "axes")], {"keepdims": keep})


@converts("aten.softmax.int", "aten._softmax.default", "aten.log_softmax.int", "aten._log_softmax.default")
def _softmax(ctx, node):
    a = _args(ctx, node)
    if a.get("dtype") is not None or a.get("half_to_float"):
        raise Unsupported("softmax with a dtype")
    op = "LogSoftmax" if "log" in node.target._opname else "Softmax"
    return ctx.emit(op, [ctx.tensor(a["self"])], {"axis": _axis(int(a["dim"]), _rank(ctx, a["self"]))})


@converts("aten.scaled_dot_product_attention.default")
def _attention(ctx, node):
    """softmax(q @ k^T * scale + mask) @ v, as the MatMul/Softmax nodes pruning understands."""
    a = _args(ctx, node)
    if float(a["dropout_p"]) != 0.0 or a.get("enable_gqa"):
        raise Unsupported("attention with dropout or grouped heads")
    q, k, v = ctx.tensor(a["query"]), ctx.tensor(a["key"]), ctx.tensor(a["value"])
    q_shape, k_shape = ctx.shape_of(a["query"]), ctx.shape_of(a["key"])
    rank = len(q_shape)
    head_dim = q_shape[-1]
    if not isinstance(head_dim, int):
        raise Unsupported("symbolic head size")
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(head_dim)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scores = ctx.emit("MatMul", [q, ctx.emit("Transpose", [k], {"perm": perm})])
    scores = ctx.emit("Mul", [scores, ctx.tensor(float(scale), like=q)])
    mask = a["attn_mask"]
    if a["is_causal"]:
        lq, lk = q_shape[-2], k_shape[-2]
        if not (isinstance(lq, int) and isinstance(lk, int)):
            raise Unsupported("causal attention over a symbolic length")
        dtype = q.type.dtype.numpy if q.type is not None else np.float32
        causal = np.where(np.tril(np.ones((lq, lk), dtype=bool)), 0.0, -np.inf).astype(dtype)
        scores = ctx.emit("Add", [scores, ctx.fixed_constant(causal, "causal_mask")])
    if mask is not None:
        mask_value = ctx.tensor(mask)
        if mask_value.type is not None and mask_value.type.dtype == DType.bool:
            # True keeps a position, False masks it out
            scores = ctx.emit("Where", [mask_value, scores, ctx.tensor(float("-inf"), like=q)])
        else:
            scores = ctx.emit("Add", [scores, mask_value])
    weights = ctx.emit("Softmax", [scores], {"axis": rank - 1})
    return ctx.emit("MatMul", [weights, v])


# -- creation -----------------------------------------------------------------------------
@converts("aten.full.default", "aten.zeros.default", "aten.ones.default", "aten.scalar_tensor.default",
          "aten.new_zeros.default", "aten.new_ones.default", "aten.new_full.default",
          "aten.zeros_like.default", "aten.ones_like.default", "aten.full_like.default")
def _full(ctx, node):
    meta = ctx.out_meta()
    name = node.target._opname
    if "zeros" in name:
        fill = 0
    elif "ones" in name:
        fill = 1
    elif name == "scalar_tensor":
        fill = node.args[0]
    else:
        fill = _args(ctx, node)["fill_value"]
    dtype = dtype_of(meta.dtype).numpy
    shape = ctx.shape_of(node)
    if all(isinstance(d, int) for d in shape):
        return ctx.constant(np.full(shape, fill, dtype=dtype), "fill")
    value = np.array([fill], dtype=dtype)
    return ctx.emit("ConstantOfShape", [ctx.shape_value(shape)], {"value": value})


@converts("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(ctx, node):
    meta = ctx.out_meta()
    args = [a for a in node.args]
    if not all(isinstance(x, (int, float)) for x in args):
        raise Unsupported("arange with symbolic bounds")
    return ctx.constant(np.arange(*args).astype(dtype_of(meta.dtype).numpy), "range")


# -- padding ------------------------------------------------------------------------------
@converts("aten.constant_pad_nd.default", "aten.pad.default")
def _pad(ctx, node):
    a = _args(ctx, node)
    mode = a.get("mode", "constant") if node.target._opname == "pad" else "constant"
    if mode not in _PAD_MODES:
        raise Unsupported(f"pad mode {mode}")
    pads = _onnx_pads(a["pad"], _rank(ctx, a["self"]))
    x = ctx.tensor(a["self"])
    if mode != "constant":
        return _pad_mode(ctx, x, pads, mode)
    fill = float(a.get("value") or 0.0)
    return ctx.emit("Pad", [x, ctx.ints(pads, "pads"), ctx.tensor(fill, like=x)], {"mode": "constant"})


def _onnx_pads(pad, rank: int) -> list[int]:
    """torch lists (begin, end) pairs from the last dim backwards; ONNX all begins, then all ends."""
    pad = list(pad)
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    return begins + ends


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
"""torch's pad modes and ONNX's names for them."""


def _pad_mode(ctx, x, pads: list[int], mode: str):
    if mode == "circular":
        ctx.require_opset(19)  # Pad's "wrap" mode is opset 19
    return ctx.emit("Pad", [x, ctx.ints(pads, "pads")], {"mode": _PAD_MODES[mode]})


@converts("aten.reflection_pad1d.default", "aten.reflection_pad2d.default", "aten.reflection_pad3d.default",
          "aten.replication_pad1d.default", "aten.replication_pad2d.default", "aten.replication_pad3d.default")
def _mode_pad(ctx, node):
    a = _args(ctx, node)
    mode = "reflect" if node.target._opname.startswith("reflection") else "replicate"
    return _pad_mode(ctx, ctx.tensor(a["self"]), _onnx_pads(a["padding"], _rank(ctx, a["self"])), mode)


# -- recurrent layers ---------------------------------------------------------------------
_TORCH_TO_ONNX_GATES = [0, 3, 1, 2]
"""Torch packs LSTM gates i, f, g, o; ONNX packs i, o, f, c (c is torch's g)."""


@converts("aten.lstm.input")
def _lstm(ctx, node):
    """One ONNX LSTM per layer, between Transposes for batch-first input.

    Weights are re-laid out as ONNX wants them (gates reordered, directions stacked) under names
    after the ONNX ports: ``<module>.W_l0``, ``.R_l0``, ``.B_l0``.
    """
    a = _args(ctx, node)
    states = [_zero_state(ctx, h) for h in a["hx"]]
    return _recurrent(ctx, a, "LSTM", _onnx_gates, states, {})


def _recurrent(ctx, a, op: str, onnx_gates, states: list, attrs: dict) -> tuple:
    """The layers of a torch LSTM or GRU as ONNX ``op`` nodes, one per layer: (output, final
    states). ``onnx_gates`` reorders a torch gate block into ONNX's order; ``states`` are the
    initial states (None: zeros), sliced per layer."""
    layers, bidirectional = int(a["num_layers"]), bool(a["bidirectional"])
    if a["train"] and float(a["dropout"]) > 0:
        raise Unsupported(f"{op} with inter-layer dropout in training")
    params = [ctx.constant_array(p) for p in a["params"]]
    if any(p is None for p in params):
        raise Unsupported(f"{op} weights that are not parameters")
    per_direction = 4 if a["has_biases"] else 2
    directions = 2 if bidirectional else 1
    if len(params) != layers * directions * per_direction:
        raise Unsupported(f"{op} with projections or an unexpected parameter list")
    hidden = params[1].shape[1]
    gate_rows = params[0].shape[0]
    x = ctx.tensor(a["input"])
    if a["batch_first"]:
        x = ctx.emit("Transpose", [x], {"perm": [1, 0, 2]})
    prefix = ctx.source or op.lower()
    finals: list[list] = [[] for _ in states]
    for layer in range(layers):
        chunk = params[layer * directions * per_direction:(layer + 1) * directions * per_direction]
        w, r, b = [], [], []
        for d in range(directions):
            p = chunk[d * per_direction:(d + 1) * per_direction]
            w.append(onnx_gates(p[0]))
            r.append(onnx_gates(p[1]))
            biases = p[2:] if a["has_biases"] else [np.zeros(gate_rows, p[0].dtype)] * 2
            b.append(np.concatenate([onnx_gates(biases[0]), onnx_gates(biases[1])]))
        inputs = [
            x,
            ctx.derived_constant(f"{prefix}.W_l{layer}", lambda: np.stack(w)),
            ctx.derived_constant(f"{prefix}.R_l{layer}", lambda: np.stack(r)),
            ctx.derived_constant(f"{prefix}.B_l{layer}", lambda: np.stack(b)),
            None,
        ]
        inputs += [None if state is None else _layer_state(ctx, state, layer, directions) for state in states]
        direction = "bidirectional" if bidirectional else "forward"
        y, *last = ctx.emit(op, inputs, {"hidden_size": hidden, "direction": direction, **attrs}, outputs=1 + len(states))
        for kept, value in zip(finals, last):
            kept.append(value)
        # Y is [seq, directions, batch, hidden]; the next layer wants [seq, batch, directions*hidden].
        if directions == 1:
            x = ctx.emit("Squeeze", [y, ctx.ints([1])])
        else:
            x = ctx.emit("Reshape", [ctx.emit("Transpose", [y], {"perm": [0, 2, 1, 3]}), ctx.ints([0, 0, -1])])
    output = ctx.emit("Transpose", [x], {"perm": [1, 0, 2]}) if a["batch_first"] else x
    return (output, *(kept[0] if layers == 1 else ctx.emit("Concat", kept, {"axis": 0}) for kept in finals))


def _onnx_gates(array: np.ndarray) -> np.ndarray:
    blocks = np.split(array, 4, axis=0)
    return np.concatenate([blocks[i] for i in _TORCH_TO_ONNX_GATES], axis=0)


def _zero_state(ctx, arg):
    """None for an all-zero initial state (ONNX's default), else the state's Value."""
    producer = getattr(arg, "target", None)
    if producer is not None and getattr(producer, "_opname", "") in ("zeros", "full", "new_zeros"):
        fill = 0 if producer._opname != "full" else ctx.arguments(arg)["fill_value"]
        if fill == 0:
            return None
    return ctx.tensor(arg)


def _layer_state(ctx, state, layer: int, directions: int):
    start = layer * directions
    inputs = [state, ctx.ints([start]), ctx.ints([start + directions]), ctx.ints([0]), ctx.ints([1])]
    return ctx.emit("Slice", inputs)


@converts("aten.gru.input")
def _gru(ctx, node):
    """One ONNX GRU per layer (``linear_before_reset=1``: torch applies the reset gate after
    the recurrent matmul), between Transposes for batch-first input.

    Weights are re-laid out as ONNX wants them (gates z, r, n instead of torch's r, z, n;
    directions stacked) under names after the ONNX ports: ``<module>.W_l0``, ``.R_l0``, ``.B_l0``.
    """
    a = _args(ctx, node)
    states = [_zero_state(ctx, a["hx"])]
    return _recurrent(ctx, a, "GRU", _onnx_gru_gates, states, {"linear_before_reset": 1})


def _onnx_gru_gates(array: np.ndarray) -> np.ndarray:
    """torch packs GRU gates r, z, n; ONNX packs z, r, h."""
    r, z, n = np.split(array, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


# -- indexing, reordering and scans ----------------------------------------------------------
_INT64_MIN = -(2**63)


@converts("aten.flip.default")
def _flip(ctx, node):
    rank = _rank(ctx, node.args[0])
    axes = sorted({_axis(int(d), rank) for d in node.args[1]})
    x = ctx.tensor(node.args[0])
    if not axes:
        return x
    n = len(axes)
    inputs = [x, ctx.ints([-1] * n, "starts"), ctx.ints([_INT64_MIN] * n, "ends"), ctx.ints(axes, "axes"),
              ctx.ints([-1] * n, "steps")]
    return ctx.emit("Slice", inputs)


@converts("aten.roll.default")
def _roll(ctx, node):
    """Each rolled axis is two slices concatenated the other way round."""
    a = _args(ctx, node)
    shape = ctx.shape_of(a["self"])
    shifts, dims = list(a["shifts"]), list(a["dims"])
    x = ctx.tensor(a["self"])
    if not dims:  # roll of the flattened tensor
        if not all(isinstance(d, int) for d in shape) or len(shifts) != 1:
            raise Unsupported("roll of a symbolic flattened tensor")
        flat = ctx.emit("Reshape", [x, ctx.ints([-1], "shape")])
        rolled = _roll_axis(ctx, flat, int(shifts[0]), 0, math.prod(shape))
        return ctx.emit("Reshape", [rolled, ctx.ints(list(shape), "shape")])
    for shift, dim in zip(shifts, dims):
        axis = _axis(int(dim), len(shape))
        if not isinstance(shape[axis], int) or not isinstance(shift, int):
            raise Unsupported("roll along a symbolic axis")
        x = _roll_axis(ctx, x, shift, axis, shape[axis])
    return x


def _roll_axis(ctx, x, shift: int, axis: int, size: int):
    shift %= size
    if shift == 0:
        return x
    def piece(start: int, end: int):
        return ctx.emit("Slice", [x, ctx.ints([start], "starts"), ctx.ints([end], "ends"), ctx.ints([axis], "axes")])

    return ctx.emit("Concat", [piece(size - shift, size), piece(0, size - shift)], {"axis": axis})


@converts("aten.cumsum.default")
def _cumsum(ctx, node):
    a = _args(ctx, node)
    x = ctx.tensor(a["self"])
    if a.get("dtype") is not None and dtype_of(a["dtype"]) != (x.type.dtype if x.type else None):
        x = ctx.emit("Cast", [x], {"to": dtype_of(a["dtype"]).onnx})
    axis = _axis(int(a["dim"]), _rank(ctx, a["self"]))
    return ctx.emit("CumSum", [x, ctx.constant(np.array(axis, dtype=np.int64), "axis")])


@converts("aten.index.Tensor")
def _index(ctx, node):
    """``x[:, idx]``: one integer index tensor, every other position a full slice, is a Gather."""
    a = _args(ctx, node)
    indices = list(a["indices"])
    given = [k for k, t in enumerate(indices) if t is not None]
    if len(given) != 1:
        raise Unsupported("indexing with several index tensors")
    index = ctx.tensor(indices[given[0]])
    if index.type is None or index.type.dtype not in (DType.int64, DType.int32):
        raise Unsupported("indexing with a mask")
    return ctx.emit("Gather", [ctx.tensor(a["self"]), index], {"axis": given[0]})


@converts("aten.gather.default")
def _gather(ctx, node):
    a = _args(ctx, node)
    axis = _axis(int(a["dim"]), _rank(ctx, a["self"]))
    return ctx.emit("GatherElements", [ctx.tensor(a["self"]), ctx.tensor(a["index"])], {"axis": axis})


@converts("aten.topk.default")
def _topk(ctx, node):
    a = _args(ctx, node)
    if not isinstance(a["k"], int):
        raise Unsupported("topk of a symbolic count")
    axis = _axis(int(a["dim"]), _rank(ctx, a["self"]))
    attrs = {"axis": axis, "largest": int(bool(a["largest"])), "sorted": int(bool(a["sorted"]))}
    values, indices = ctx.emit("TopK", [ctx.tensor(a["self"]), ctx.ints([a["k"]], "k")], attrs, outputs=2)
    return (values, indices)


@converts("aten.repeat.default")
def _repeat(ctx, node):
    a = _args(ctx, node)
    repeats = list(a["repeats"])
    if not all(isinstance(r, int) for r in repeats):
        raise Unsupported("repeat with symbolic counts")
    x = ctx.tensor(a["self"])
    extra = len(repeats) - _rank(ctx, a["self"])
    if extra:  # torch prepends size-1 axes when given more repeats than axes
        x = ctx.emit("Unsqueeze", [x, ctx.ints(list(range(extra)), "axes")])
    if all(r == 1 for r in repeats):
        return x
    return ctx.emit("Tile", [x, ctx.ints(repeats, "repeats")])


# -- more reductions ---------------------------------------------------------------------
def _reduce_axes(ctx, arg, dims) -> list[int]:
    rank = _rank(ctx, arg)
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return list(range(rank))
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    return sorted(_axis(int(d), rank) for d in dims)


@converts("aten.linalg_vector_norm.default")
def _vector_norm(ctx, node):
    a = _args(ctx, node)
    if a.get("dtype") is not None:
        raise Unsupported("vector norm with a dtype")
    x = ctx.tensor(a["self"])
    axes = ctx.ints(_reduce_axes(ctx, a["self"], a["dim"]), "axes")
    keep = {"keepdims": int(bool(a["keepdim"]))}
    order = float(a["ord"])
    if order == 2.0:
        return ctx.emit("ReduceL2", [x, axes], keep)
    if order == 1.0:
        return ctx.emit("ReduceL1", [x, axes], keep)
    if order == math.inf:
        return ctx.emit("ReduceMax", [ctx.emit("Abs", [x]), axes], keep)
    if order == -math.inf:
        return ctx.emit("ReduceMin", [ctx.emit("Abs", [x]), axes], keep)
    if order <= 0:
        raise Unsupported(f"vector norm of order {order}")
    powered = ctx.emit("Pow", [ctx.emit("Abs", [x]), ctx.tensor(order, like=x)])
    return ctx.emit("Pow", [ctx.emit("ReduceSum", [powered, axes], keep), ctx.tensor(1.0 / order, like=x)])


@converts("aten.var.correction", "aten.var_mean.correction", "aten.std.correction", "aten.std_mean.correction")
def _variance(ctx, node):
    """mean((x - mean(x))^2) * n / (n - correction), and its square root for std."""
    a = _args(ctx, node)
    shape = ctx.shape_of(a["self"])
    axes = _reduce_axes(ctx, a["self"], a["dim"])
    if not all(isinstance(shape[k], int) for k in axes):
        raise Unsupported("variance over a symbolic axis")
    count = math.prod(shape[k] for k in axes)
    correction = 1.0 if a.get("correction") is None else float(a["correction"])
    if count - correction <= 0:
        raise Unsupported("variance of too few values")
    x = ctx.tensor(a["self"])
    axes_value = ctx.ints(axes, "axes")
    mean = ctx.emit("ReduceMean", [x, axes_value], {"keepdims": 1})
    centred = ctx.emit("Sub", [x, mean])
    squares = ctx.emit("ReduceSumSquare", [centred, axes_value], {"keepdims": int(bool(a["keepdim"]))})
    result = ctx.emit("Div", [squares, ctx.tensor(count - correction, like=x)])
    name = node.target._opname
    if name.startswith("std"):
        result = ctx.emit("Sqrt", [result])
    if name.endswith("_mean"):
        if not a["keepdim"]:
            mean = ctx.emit("Squeeze", [mean, axes_value])
        return (result, mean)
    return result


@converts("aten.max.dim", "aten.min.dim")
def _extreme_dim(ctx, node):
    a = _args(ctx, node)
    axis = _axis(int(a["dim"]), _rank(ctx, a["self"]))
    x = ctx.tensor(a["self"])
    keep = int(bool(a["keepdim"]))
    reduce, find = ("ReduceMax", "ArgMax") if node.target._opname == "max" else ("ReduceMin", "ArgMin")
    values = ctx.emit(reduce, [x, ctx.ints([axis], "axes")], {"keepdims": keep})
    return (values, ctx.emit(find, [x], {"axis": axis, "keepdims": keep}))


@converts("aten.argmax.default", "aten.argmin.default")
def _arg_extreme(ctx, node):
    a = _args(ctx, node)
    x = ctx.tensor(a["self"])
    op = "ArgMax" if node.target._opname == "argmax" else "ArgMin"
    keep = int(bool(a["keepdim"]))
    if a["dim"] is None:  # over the flattened tensor
        shape = ctx.shape_of(a["self"])
        flat = ctx.emit("Reshape", [x, ctx.ints([-1], "shape")])
        index = ctx.emit(op, [flat], {"axis": 0, "keepdims": 0})
        if keep:
            index = ctx.emit("Reshape", [index, ctx.ints([1] * len(shape), "shape")])
        return index
    return ctx.emit(op, [x], {"axis": _axis(int(a["dim"]), _rank(ctx, a["self"])), "keepdims": keep})


@converts("aten.prod.dim_int", "aten.prod.default")
def _prod(ctx, node):
    a = _args(ctx, node)
    if a.get("dtype") is not None:
        raise Unsupported("prod with a dtype")
    axes = _reduce_axes(ctx, a["self"], a.get("dim"))
    keep = int(bool(a.get("keepdim", False)))
    return ctx.emit("ReduceProd", [ctx.tensor(a["self"]), ctx.ints(axes, "axes")], {"keepdims": keep})


@converts("aten.any.dim", "aten.any.dims", "aten.any.default", "aten.all.dim", "aten.all.dims", "aten.all.default")
def _any_all(ctx, node):
    """any: the largest of the values as 0/1; all: the smallest."""
    a = _args(ctx, node)
    x = ctx.tensor(a["self"])
    axes = _reduce_axes(ctx, a["self"], a.get("dim"))
    as_int = ctx.emit("Cast", [ctx.emit("Cast", [x], {"to": DType.bool.onnx})], {"to": DType.int32.onnx})
    op = "ReduceMax" if node.target._opname == "any" else "ReduceMin"
    reduced = ctx.emit(op, [as_int, ctx.ints(axes, "axes")], {"keepdims": int(bool(a.get("keepdim", False)))})
    return ctx.emit("Cast", [reduced], {"to": DType.bool.onnx})


@converts("aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool1d.default")
def _adaptive_max_pool(ctx, node):
    """1x1 output: GlobalMaxPool; an output size dividing the input: a plain MaxPool."""
    a = _args(ctx, node)
    x = ctx.tensor(a["self"])
    spatial = ctx.shape_of(a["self"])[2:]
    out = _pairs(a["output_size"], len(spatial))
    if _indices_used(node):
        raise Unsupported("adaptive max pooling whose indices are used")
    if all(o == 1 for o in out):
        return (ctx.emit("GlobalMaxPool", [x]), None)
    if not all(isinstance(s, int) for s in spatial) or not all(s % o == 0 for s, o in zip(spatial, out)):
        raise Unsupported("adaptive max pooling to a size that does not divide the input")
    kernel = [s // o for s, o in zip(spatial, out)]
    return (ctx.emit("MaxPool", [x], {"kernel_shape": kernel, "strides": kernel}), None)


# -- more element-wise ops ---------------------------------------------------------------
@converts("aten.trunc.default")
def _trunc(ctx, node):
    return _truncate(ctx, ctx.tensor(node.args[0]))


@converts("aten.exp2.default")
def _exp2(ctx, node):
    x = ctx.tensor(node.args[0])
    return ctx.emit("Pow", [ctx.tensor(2.0, like=x), x])


@converts("aten.log1p.default")
def _log1p(ctx, node):
    x = ctx.tensor(node.args[0])
    return ctx.emit("Log", [ctx.emit("Add", [x, ctx.tensor(1.0, like=x)])])


@converts("aten.expm1.default")
def _expm1(ctx, node):
    x = ctx.tensor(node.args[0])
    return ctx.emit("Sub", [ctx.emit("Exp", [x]), ctx.tensor(1.0, like=x)])


@converts("aten.ne.Tensor", "aten.ne.Scalar")
def _not_equal(ctx, node):
    left, right = _operands(ctx, node.args[:2])
    return ctx.emit("Not", [ctx.emit("Equal", [left, right])])


def _boolean(op: str):
    def convert(ctx, node):
        values = [ctx.lookup(arg) for arg in node.args[: 1 if op == "Not" else 2]]
        if not all(isinstance(v, Value) and v.type is not None and v.type.dtype == DType.bool for v in values):
            raise Unsupported(f"bitwise {op.lower()} of integers")
        return ctx.emit(op, values)

    return convert


CONVERTERS["aten.bitwise_not.default"] = _boolean("Not")
for _name, _op in (("bitwise_and", "And"), ("bitwise_or", "Or"), ("bitwise_xor", "Xor"), ("logical_xor", "Xor")):
    CONVERTERS[f"aten.{_name}.Tensor"] = _boolean(_op)
    CONVERTERS[f"aten.{_name}.default"] = _boolean(_op)


@converts("aten.fmod.Scalar", "aten.fmod.Tensor", "aten.remainder.Scalar", "aten.remainder.Tensor")
def _modulo(ctx, node):
    """fmod keeps the dividend's sign (Mod fmod=1); remainder the divisor's."""
    left, right = _operands(ctx, node.args[:2])
    is_float = left.type is not None and left.type.dtype.is_float
    if node.target._opname == "fmod":
        return ctx.emit("Mod", [left, right], {"fmod": 1})
    if not is_float:
        return ctx.emit("Mod", [left, right], {"fmod": 0})
    # ONNX Mod with fmod=0 is for integers: x - floor(x / y) * y
    quotient = ctx.emit("Floor", [ctx.emit("Div", [left, right])])
    return ctx.emit("Sub", [left, ctx.emit("Mul", [quotient, right])])


@converts("aten.clamp.Tensor")
def _clamp_tensor(ctx, node):
    a = _args(ctx, node)
    y = ctx.tensor(a["self"])
    if a.get("min") is not None:
        y = ctx.emit("Max", [y, ctx.tensor(a["min"], like=y)])
    if a.get("max") is not None:
        y = ctx.emit("Min", [y, ctx.tensor(a["max"], like=y)])
    return y
