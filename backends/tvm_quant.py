"""Relax emitters for QuantizeLinear and DequantizeLinear: the IR's QDQ semantics in TVM.

``relax.op.quantize`` / ``relax.op.dequantize`` compute what ONNX specifies (round half to
even, saturate to the integer type, ``(q - zero_point) * scale``), so a quantized graph gives
the same numbers in TVM as in onnxruntime's reference kernels. They are float fake-quant in
TVM: the ops are emitted as written, no integer kernels are formed.

Each emitter takes the block builder, the IR node and the Relax expressions of its inputs
(``None`` for an absent optional input) and returns the emitted result, so the TVM backend's
per-op table can call it with the expressions it already has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import relax

from ..ir.core import Node
from ..ir.errors import IrtoolError
from ..ir.types import DType

__all__ = ["QUANT_EMITTERS", "dequantize_linear", "quantize_linear"]

ONNX_DEFAULT_AXIS = 1


def _axis(node: Node) -> int:
    """The ONNX axis, made non-negative; per-tensor scales ignore it, so a rank below 2 uses 0."""
    axis = int(node.attrs.get("axis", ONNX_DEFAULT_AXIS))
    x = node.inputs[0]
    rank = x.type.rank if x is not None and x.type is not None else None
    if rank is None:
        raise IrtoolError(f"{node.op} '{node.name}': the rank of its input is unknown")
    if rank < 2 and axis == ONNX_DEFAULT_AXIS:
        return 0
    if not -rank <= axis < max(rank, 1):
        raise IrtoolError(f"{node.op} '{node.name}': axis {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


def _zero_point_dtype(node: Node, default: str) -> str:
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    if zero is None or zero.type is None:
        return default
    return zero.type.dtype.name


def _zero_point(zero_point: relax.Expr | None, dtype: str) -> relax.Expr:
    return zero_point if zero_point is not None else relax.const(0, dtype)


def quantize_linear(bb: relax.BlockBuilder, node: Node, inputs: Sequence[relax.Expr | None]) -> relax.Expr:
    """``y = saturate(round_half_even(x / scale) + zero_point)`` in the zero point's type (uint8 by default)."""
    x, scale, zero_point = (list(inputs) + [None, None])[:3]
    dtype = _zero_point_dtype(node, DType.uint8.name)
    if dtype not in ("uint8", "int8"):
        raise IrtoolError(f"QuantizeLinear '{node.name}': {dtype} outputs are not supported by the TVM backend")
    return bb.emit(relax.op.quantize(x, scale, _zero_point(zero_point, dtype), axis=_axis(node), out_dtype=dtype))


def dequantize_linear(bb: relax.BlockBuilder, node: Node, inputs: Sequence[relax.Expr | None]) -> relax.Expr:
    """``y = (x - zero_point) * scale`` as float32; int8, uint8 and int32 (biases) inputs."""
    x, scale, zero_point = (list(inputs) + [None, None])[:3]
    source = node.inputs[0]
    dtype = source.type.dtype.name if source is not None and source.type is not None else DType.uint8.name
    if dtype not in ("uint8", "int8", "int32"):
        raise IrtoolError(f"DequantizeLinear '{node.name}': {dtype} inputs are not supported by the TVM backend")
    return bb.emit(
        relax.op.dequantize(x, scale, _zero_point(zero_point, dtype), axis=_axis(node), out_dtype="float32")
    )


QUANT_EMITTERS: dict[str, Callable[[relax.BlockBuilder, Node, Sequence[relax.Expr | None]], relax.Expr]] = {
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": dequantize_linear,
}
"""Op name -> emitter, to merge into the TVM backend's converter table."""
