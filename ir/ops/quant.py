"""Quantisation ops in QDQ form: per-tensor, or per-channel along ``axis``."""

from __future__ import annotations

from ..registry import Attr
from ..types import DType, TensorType
from .rules import attr, define, fail, is_int, ishape, itype, like, norm_axis


def _check_scale(node) -> None:
    """A 1-D scale holds one value per slice of ``axis``; a bad prune shows up here."""
    x, scale = ishape(node, 0), ishape(node, 1)
    if x is None or scale is None or len(scale) != 1 or not x:
        return
    axis = norm_axis(node, attr(node, "axis"), len(x))
    if is_int(scale[0]) and is_int(x[axis]) and scale[0] != x[axis]:
        fail(node, f"scale has {scale[0]} values for axis {axis} of size {x[axis]}")


def _quantize_shape(node):
    _check_scale(node)
    zero_point = itype(node, 2)
    return [like(node, ishape(node, 0), dtype=zero_point.dtype if zero_point else DType.uint8)]


def _dequantize_shape(node):
    _check_scale(node)
    return [like(node, ishape(node, 0), dtype=itype(node, 1).dtype)]


def _dynamic_quantize_shape(node):
    return [
        like(node, ishape(node, 0), dtype=DType.uint8),
        TensorType(DType.float32, ()),
        TensorType(DType.uint8, ()),
    ]


define("QuantizeLinear", "x y_scale y_zero_point?", "y", attrs={"axis": Attr("int", 1)}, shape=_quantize_shape, label="quant")
define("DequantizeLinear", "x x_scale x_zero_point?", "y", attrs={"axis": Attr("int", 1)}, shape=_dequantize_shape, label="quant")
define("DynamicQuantizeLinear", "x", "y y_scale y_zero_point", shape=_dynamic_quantize_shape, label="quant")
