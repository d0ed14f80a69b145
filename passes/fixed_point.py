"""Fixed-point Qm.n fake quantization, and int8 weights alone (``quantize{mode=fixed|weight-int8}``).

Fixed point with ``bits`` bits of which ``frac_bits`` are fractional represents
``k / 2**frac_bits`` for integers ``k`` in ``[-2**(bits-1), 2**(bits-1) - 1]`` (MASE's
``integer_quantizer``: 8 bits with 4 fractional bits covers [-8, 7.9375] in steps of 1/16).
In the IR it is QDQ with scale ``2**-frac_bits`` and zero point 0: weights and biases become
int8 constants read through DequantizeLinear, and every layer's input goes through
Quantize -> Dequantize (behind a Clip to the narrower range when ``bits < 8``). Rounding is
half to even, as QuantizeLinear and ``torch.round`` do.

Weight-only int8 stores each layer's weight as per-channel symmetric int8 with a
DequantizeLinear, for size; activations and biases stay float.
"""

from __future__ import annotations

import numpy as np

from ..ir.core import Graph
from ..ir.registry import opdef_of
from .quantize import (
    BIAS_INPUT,
    QParams,
    dequantized_constant,
    find_layers,
    insert_qdq,
    quantize_layer_weight,
    replace_constant_input,
)

__all__ = ["fixed_point", "fixed_point_codes", "quantize_fixed_point", "quantize_weights_int8"]


def _limits(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def fixed_point_codes(x: np.ndarray, bits: int, frac_bits: int) -> np.ndarray:
    """The integers ``k`` of ``x ~ k / 2**frac_bits``, saturated to ``bits`` bits (int8 for bits <= 8)."""
    low, high = _limits(bits)
    return np.clip(np.round(np.asarray(x, np.float64) * 2.0**frac_bits), low, high).astype(np.int8)


def fixed_point(x: np.ndarray, bits: int, frac_bits: int) -> np.ndarray:
    """``x`` rounded to Q(bits - frac_bits).frac_bits and back to float32: the reference semantics."""
    return (fixed_point_codes(x, bits, frac_bits).astype(np.float32) / np.float32(2.0**frac_bits)).astype(np.float32)


def _step_params(frac_bits: int) -> QParams:
    return QParams(np.array(2.0**-frac_bits, np.float32), np.array(0, np.int8))


def quantize_fixed_point(graph: Graph, *, bits: int, frac_bits: int) -> list[str]:
    """Qm.n weights, biases and layer inputs for every conv/linear/matmul layer; returns log lines."""
    layers = find_layers(graph)
    if not layers:
        return []
    params = _step_params(frac_bits)
    inputs = list(dict.fromkeys(layer.node.inputs[0] for layer in layers))
    for layer in layers:
        node = layer.node
        for index in (1, BIAS_INPUT):
            value = node.inputs[index] if index < len(node.inputs) else None
            if value is None or value.const is None or value.const.dtype != np.float32:
                continue
            codes = fixed_point_codes(value.const, bits, frac_bits)
            replace_constant_input(graph, node, index, dequantized_constant(graph, value.name, codes, params))
    low, high = _limits(bits)
    clip = (low * 2.0**-frac_bits, high * 2.0**-frac_bits) if bits < 8 else None
    for value in inputs:
        insert_qdq(graph, value, params, clip=clip)
    graph.sort()
    step = 2.0**-frac_bits
    form = f"Q{bits - frac_bits}.{frac_bits} ({bits} bits, step {step:g}, range [{low * step:g}, {high * step:g}])"
    return [f"fixed point {form}: weights of {_count(layers, 'layer')}, {_count(inputs, 'layer input')}"]


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def quantize_weights_int8(graph: Graph, *, per_channel: bool = True) -> list[str]:
    """Every layer's weight as symmetric int8 + DequantizeLinear; returns log lines."""
    layers = find_layers(graph)
    if not layers:
        return []
    before = sum(layer.weight.const.nbytes for layer in layers)
    for layer in layers:
        quantize_layer_weight(graph, layer, per_channel=per_channel, input_scale=None)
    graph.sort()
    kinds = sorted({opdef_of(layer.node).label for layer in layers})
    return [
        f"int8 weights ({'per-channel' if per_channel else 'per-tensor'}) for {len(layers)} "
        f"{'/'.join(kinds)} layer{'s' if len(layers) != 1 else ''} "
        f"({before / 1e6:.2f} MB of float weights -> {before / 4e6:.2f} MB)"
    ]
