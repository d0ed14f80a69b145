"""The ``quantize`` pass: post-training int8 in QDQ form, fixed-point Qm.n, or int8 weights only.

``mode=int8`` (the default) is static post-training quantization as onnxruntime runs it
fastest: every conv/linear/matmul layer (``OpDef.weight``, ``OpDef.int8``) reads an int8
weight, symmetric per output channel, through a ``DequantizeLinear``, and an int32 bias scaled
by input scale times weight scale; the activations around it get ``QuantizeLinear -> DequantizeLinear`` pairs with
per-tensor scales from calibration (asymmetric uint8 by default, or symmetric int8). Around the
layers, the tensors stay quantized where onnxruntime has an int8 kernel, so it fuses the whole
chain (QLinearConv, QLinearAdd, QLinearGlobalAveragePool, uint8 MaxPool, QGemm):

- *select* ops (max pooling, reshapes, transposes, slices, pads, resizes) output values taken
  from their input, so their output reuses the input's scale;
- *own-range* ops (Add, Mul, average pooling, Concat, activation-by-activation MatMul) get a
  calibrated output scale;
- a ReLU or Clip(0, max) right after a layer is absorbed into the layer's uint8 output
  quantization (zero point 0 clamps at 0; the calibrated top stays within the clip), which is
  what onnxruntime's own quantizer does;
- a linear/matmul output that no int8 op reads (logits) stays float.

On x86 CPUs without VNNI the weights use 7 of their 8 bits (``reduce-range=auto``):
onnxruntime's uint8 x int8 kernels there add pairs of products in int16, which saturates with
full-range weights (a digits CNN lost 4 points of accuracy that way; with 7 bits it loses none).

Because Q/DQ are ordinary IR ops, the result chains with other passes and every backend runs
it: ``fold-bn,prune{sparsity=0.5},quantize{calibration=percentile}``.

``mode=fixed`` and ``mode=weight-int8`` are in ``fixed_point``.
"""

from __future__ import annotations

import json
import platform
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.errors import IrtoolError
from ..ir.registry import opdef_of
from ..ir.types import DType, TensorType
from .base import Pass, PassContext, PassResult
from .calibration import CALIBRATORS, calibration_feeds, choose_range, observe

QUANT_LABEL = "quant"
RECORD_KEY = "irtool.quantization"
"""Metadata key (kept in the ONNX file) recording how the graph was quantized, as JSON."""

INT32_LIMIT = 2**31 - 1


# -- layers with weights -----------------------------------------------------------------------
BIAS_INPUT = 2


@dataclass
class Layer:
    """A compute layer whose weight (input 1) can be stored as int8."""

    node: Node
    axis: int
    """The weight's output-channel axis."""
    bias: bool
    """Input 2 is a 1-D constant bias with one value per output channel."""

    @property
    def weight(self) -> Value:
        return self.node.inputs[1]


def is_activation(value: Value | None) -> bool:
    """A computed float32 tensor (not a constant): what gets quantize/dequantize pairs."""
    return value is not None and not value.is_const and value.type is not None and value.type.dtype is DType.float32


def find_layers(graph: Graph) -> list[Layer]:
    """Every compute layer with a constant float weight and a float activation input."""
    layers = []
    for node in graph.nodes:
        opdef = opdef_of(node)
        layout = opdef.weight if opdef is not None and opdef.int8 in ("layer", "layer-float") else None
        if layout is None or len(node.inputs) < 2 or not is_activation(node.inputs[0]):
            continue
        weight = node.inputs[1]
        if weight is None or weight.const is None or weight.const.dtype != np.float32:
            continue
        axis = layout.axis(node, weight.const)
        if axis is None:
            continue
        channels = weight.const.shape[axis]
        bias = node.inputs[BIAS_INPUT] if len(node.inputs) > BIAS_INPUT else None
        has_bias = bias is not None and bias.const is not None and bias.const.dtype == np.float32
        layers.append(Layer(node, axis, has_bias and bias.const.shape == (channels,)))
    return layers


# -- quantization parameters -------------------------------------------------------------------
@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one quantized tensor; per channel along ``axis`` when 1-D."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None


def activation_params(lo: float, hi: float, *, signed: bool) -> QParams:
    """Per-tensor params covering ``[lo, hi]``: symmetric int8 or asymmetric uint8 (0 exact)."""
    if signed:
        top = max(abs(lo), abs(hi))
        scale = top / 127.0 if top > 0 else 1.0
        return QParams(np.array(scale, np.float32), np.array(0, np.int8))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = int(np.clip(np.round(-lo / scale), 0, 255))
    return QParams(np.array(scale, np.float32), np.array(zero, np.uint8))


def symmetric_weight(w: np.ndarray, axis: int | None, *, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of ``w`` in ``[-(2**(bits-1)-1), 2**(bits-1)-1]`` and their scales.

    Per channel along ``axis`` (scales 1-D), or per tensor when ``axis`` is None (scale 0-d).
    An all-zero channel gets scale 1.
    """
    top = 2 ** (bits - 1) - 1
    reduce = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    absmax = np.abs(w).max(axis=reduce) if w.size else np.zeros(w.shape[axis] if axis is not None else ())
    scale = np.where(absmax > 0, absmax / top, 1.0).astype(np.float32)
    return _codes(w, scale, axis, top), scale


def _codes(w: np.ndarray, scale: np.ndarray, axis: int | None, top: int) -> np.ndarray:
    shape = [1] * w.ndim
    if axis is not None and scale.ndim:
        shape[axis] = -1
    return np.clip(np.round(w / scale.reshape(shape)), -top, top).astype(np.int8)


def _fit_bias(bias: np.ndarray, input_scale: float, w_scale: np.ndarray) -> np.ndarray:
    """Weight scales, raised where ``bias / (input_scale * weight_scale)`` would overflow int32."""
    needed = np.abs(bias.astype(np.float64)) / (float(input_scale) * INT32_LIMIT)
    raised = np.maximum(np.broadcast_to(w_scale, bias.shape), needed)
    if not np.any(raised > w_scale):
        return w_scale
    return (raised if w_scale.ndim else raised.max()).astype(np.float32)


# -- building Q/DQ in the graph ----------------------------------------------------------------
def _keep_output_name(graph: Graph, old: Value, new: Value) -> None:
    """``new`` replaces graph output ``old`` under ``old``'s name: callers fetch outputs by name."""
    name = old.name
    for i in range(1000):
        try:
            graph.rename_value(old, f"{name}.float{i or ''}")
            break
        except IrtoolError:
            continue
    graph.rename_value(new, name)


def insert_qdq(graph: Graph, value: Value, params: QParams, *, clip: tuple[float, float] | None = None) -> Value:
    """Route every use of ``value`` (a graph output too) through Quantize -> Dequantize.

    With ``clip`` a Clip to that range comes first (fixed-point widths under 8 bits). The new
    nodes go at the end; ``graph.sort()`` puts them in place. Returns the dequantized value.
    """
    uses = list(value.uses)
    is_output = value.is_graph_output
    stem = value.name
    scale = graph.add_constant(f"{stem}_scale", params.scale)
    zero = graph.add_constant(f"{stem}_zero_point", params.zero_point)
    source = value
    if clip is not None:
        bounds = [graph.add_constant(f"{stem}_clip_{k}", np.array(b, np.float32)) for k, b in zip(("min", "max"), clip)]
        source = graph.add_node(
            "Clip", [value, *bounds], name=f"{stem}_clip", outputs=[f"{stem}_clipped"], output_types=[value.type]
        ).outputs[0]
    code_type = TensorType(DType.from_numpy(params.zero_point.dtype), value.type.shape if value.type else None)
    attrs = {"axis": params.axis} if params.axis is not None else {}
    q = graph.add_node(
        "QuantizeLinear", [source, scale, zero], attrs, name=f"{stem}_quantize", outputs=[f"{stem}_quantized"],
        output_types=[code_type],
    ).outputs[0]  # fmt: skip
    dq = graph.add_node(
        "DequantizeLinear", [q, scale, zero], attrs, name=f"{stem}_dequantize", outputs=[f"{stem}_dequantized"],
        output_types=[value.type],
    ).outputs[0]  # fmt: skip
    for node, index in uses:
        node.replace_input_with(index, dq)
    if is_output:
        graph.outputs = [dq if v is value else v for v in graph.outputs]
        _keep_output_name(graph, value, dq)
    return dq


def dequantized_constant(graph: Graph, stem: str, codes: np.ndarray, params: QParams) -> Value:
    """An integer constant read through DequantizeLinear: the float tensor a layer consumes."""
    data = graph.add_constant(f"{stem}_quantized", codes)
    scale = graph.add_constant(f"{stem}_scale", params.scale)
    zero = graph.add_constant(f"{stem}_zero_point", params.zero_point)
    attrs = {"axis": params.axis} if params.axis is not None else {}
    node = graph.add_node(
        "DequantizeLinear", [data, scale, zero], attrs, name=f"{stem}_dequantize", outputs=[f"{stem}_dequantized"],
        output_types=[TensorType(DType.float32, codes.shape)],
    )  # fmt: skip
    return node.outputs[0]


def replace_constant_input(graph: Graph, node: Node, index: int, value: Value) -> None:
    """Point ``node`` input ``index`` at ``value``; drop the old constant when nothing reads it."""
    old = node.inputs[index]
    node.replace_input_with(index, value)
    if old is not None and old.is_const and not old.uses and not old.is_graph_output and old.graph is graph:
        graph.remove_constant(old)


def quantize_layer_weight(
    graph: Graph, layer: Layer, *, per_channel: bool, input_scale: float | None, bits: int = 8
) -> None:
    """Store the layer's weight as int8 codes of ``bits`` bits (and, given the input scale, its bias as int32).

    The bias scale is ``input_scale * weight_scale``, so integer kernels add it to the int32
    accumulator directly.
    """
    node, w = layer.node, layer.weight.const
    axis = layer.axis if per_channel else None
    top = 2 ** (bits - 1) - 1
    _, scale = symmetric_weight(w, axis, bits=bits)
    if layer.bias and input_scale is not None:
        bias = node.inputs[BIAS_INPUT].const
        scale = _fit_bias(bias, input_scale, scale)
        bias_scale = (np.float32(input_scale) * np.broadcast_to(scale, bias.shape)).astype(np.float32)
        b_codes = np.clip(np.round(bias / bias_scale), -INT32_LIMIT, INT32_LIMIT).astype(np.int32)
        params = QParams(bias_scale, np.zeros(b_codes.shape, np.int32), 0)
        b_value = dequantized_constant(graph, node.inputs[BIAS_INPUT].name, b_codes, params)
        replace_constant_input(graph, node, BIAS_INPUT, b_value)
    params = QParams(scale, np.zeros(scale.shape, np.int8), axis)
    codes = _codes(w, scale, axis, top)
    replace_constant_input(graph, node, 1, dequantized_constant(graph, layer.weight.name, codes, params))


def record_quantization(graph: Graph, **info) -> None:
    """Keep how the graph was quantized in its metadata (it travels in the ONNX file)."""
    props = dict(graph.meta.get("metadata_props") or {})
    props[RECORD_KEY] = json.dumps(info, sort_keys=True)
    graph.meta["metadata_props"] = props


def quantization_record(graph: Graph) -> dict:
    """What ``record_quantization`` stored, or ``{}``."""
    text = (graph.meta.get("metadata_props") or {}).get(RECORD_KEY)
    try:
        return json.loads(text) if text else {}
    except ValueError:
        raise IrtoolError(f"the quantization record '{RECORD_KEY}' is not valid JSON") from None


def is_quantized(graph: Graph) -> bool:
    return any((opdef_of(n) is not None and opdef_of(n).label == QUANT_LABEL) for n in graph.nodes)


# -- int8: where the Q/DQ pairs go ----------------------------------------------------------------
SELECT, OWN_RANGE, CLAMP = "select", "own-range", "clamp"
"""The ``OpDef.int8`` forms (``ir.registry.INT8_FORMS``) that decide where Q/DQ pairs go."""


def _int8_form(node: Node) -> str | None:
    opdef = opdef_of(node)
    if opdef is None or node.domain:
        return None
    return opdef.int8 or None


def _lower_bound(node: Node) -> float | None:
    opdef = opdef_of(node)
    return opdef.lower_bound(node) if opdef is not None and opdef.lower_bound is not None else None


def _two_activation_matmul(node: Node) -> bool:
    """A matmul of two computed tensors (attention scores): int8 on both sides, no weight."""
    opdef = opdef_of(node)
    return (
        opdef is not None
        and opdef.label == "matmul"
        and len(opdef.inputs) == 2
        and len(node.inputs) == 2
        and all(is_activation(v) for v in node.inputs)
    )


class _Int8Plan:
    """Which tensors get Q/DQ, where each one's range comes from, and which clamps are absorbed.

    Built by visiting the nodes in order until nothing changes: a select op learns that its
    input is quantized only once some later consumer of that input has asked for it.
    """

    def __init__(self, graph: Graph, *, unsigned: bool):
        self.unsigned = unsigned
        self.layers = find_layers(graph)
        self.observe: dict[Value, Value] = {}
        """Quantized tensor -> the tensor whose calibrated range it uses (itself, or an absorbed clamp's output)."""
        self.same_as: dict[Value, Value] = {}
        """Quantized tensor -> the tensor whose params it reuses (outputs of select ops)."""
        self.absorbed: dict[Node, Value] = {}
        """Relu/Clip node -> the layer output it is absorbed into."""
        self._layer_nodes = {layer.node for layer in self.layers}
        for _ in range(len(graph) + 1):
            size = (len(self.observe), len(self.same_as))
            for node in graph.nodes:
                self._visit(node)
            if (len(self.observe), len(self.same_as)) == size:
                break

    def planned(self, value: Value) -> bool:
        return value in self.observe or value in self.same_as

    def _own_range(self, value: Value) -> None:
        if not self.planned(value):
            self.observe[value] = value

    def _absorbing_clamp(self, value: Value) -> Node | None:
        """The Relu/Clip(0, max) that is ``value``'s only use, when uint8 quantization can absorb it."""
        if not self.unsigned or value.is_graph_output or len(value.uses) != 1:
            return None
        node, index = value.uses[0]
        if index != 0 or _int8_form(node) != CLAMP or _lower_bound(node) != 0.0:
            return None
        out = node.outputs[0]
        return node if is_activation(out) and not out.is_graph_output else None

    def _reads_int8(self, node: Node) -> bool:
        return node in self._layer_nodes or _int8_form(node) in (OWN_RANGE, SELECT) or _two_activation_matmul(node)

    def _quantize_output(self, value: Value) -> None:
        clamp = self._absorbing_clamp(value)
        if clamp is None:
            self._own_range(value)
        elif clamp not in self.absorbed:
            self.absorbed[clamp] = value
            self.observe[clamp.outputs[0]] = clamp.outputs[0]

    def _visit(self, node: Node) -> None:
        if node in self.absorbed:
            return
        form = _int8_form(node)
        if node in self._layer_nodes:
            self._own_range(node.inputs[0])
            out = node.outputs[0]
            float_output = opdef_of(node).int8 == "layer-float"  # QGemm and MatMulIntegerToFloat can return float
            if not float_output or self._absorbing_clamp(out) or any(self._reads_int8(u) for u in out.users):
                self._quantize_output(out)
        elif form == OWN_RANGE or _two_activation_matmul(node):
            data = [v for v in node.inputs if v is not None and not (v.is_const and v.const.dtype.kind in "iu")]
            if data and all(is_activation(v) for v in data) and len(node.outputs) == 1:
                for value in data:
                    self._own_range(value)
                self._quantize_output(node.outputs[0])
        elif form in (SELECT, CLAMP):
            source = node.inputs[0] if node.inputs else None
            if source is not None and self.planned(source):
                for out in node.outputs:
                    if is_activation(out) and not self.planned(out):
                        self.same_as[out] = source


# -- int8: calibrate and rewrite ---------------------------------------------------------------
@dataclass(frozen=True)
class Int8Options:
    calibration: str = "minmax"
    percentile: float = 99.99
    unsigned: bool = True
    per_channel: bool = True
    samples: int = 32
    seed: int = 0
    weight_bits: int = 8


def int16_saturating_cpu() -> bool:
    """Whether this is an x86 CPU without VNNI.

    There onnxruntime's uint8 x int8 kernels multiply with VPMADDUBSW, which adds pairs of
    products in int16 and saturates when both weights of a pair are near 127 and the
    activations near 255: outputs drift far from the QDQ semantics. 7-bit weights
    (onnxruntime's ``reduce_range``) keep every pair within int16.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i386", "i686"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return re.search(r"\b(avx512_vnni|avx_vnni|amx_int8)\b", flags) is None


def _resolve_params(
    plan: _Int8Plan, ranges: Mapping[Value, tuple[float, float]], unsigned: bool
) -> dict[Value, QParams]:
    params = {v: activation_params(*ranges[source], signed=not unsigned) for v, source in plan.observe.items()}

    def resolve(value: Value) -> QParams:
        if value not in params:
            params[value] = resolve(plan.same_as[value])
        return params[value]

    for value in plan.same_as:
        resolve(value)
    return params


def quantize_int8(graph: Graph, ctx: PassContext, options: Int8Options) -> list[str]:
    """Static int8 QDQ quantization of ``graph`` in place; returns the log lines."""
    plan = _Int8Plan(graph, unsigned=options.unsigned)
    if not plan.observe:
        return []
    data = ctx.data if ctx.data is not None else ([ctx.inputs] if ctx.inputs is not None else None)
    feeds, origin = calibration_feeds(graph, data, samples=options.samples, seed=options.seed, logger=ctx.logger)
    targets = list(dict.fromkeys(plan.observe.values()))
    stats = observe(graph, [v.name for v in targets], feeds, histogram=options.calibration != "minmax")
    symmetric = not options.unsigned
    ranges = {
        v: choose_range(stats[v.name], options.calibration, symmetric=symmetric, percentile=options.percentile)
        for v in targets
    }
    params = _resolve_params(plan, ranges, options.unsigned)

    for layer in plan.layers:
        input_scale = float(params[layer.node.inputs[0]].scale)
        quantize_layer_weight(
            graph, layer, per_channel=options.per_channel, input_scale=input_scale, bits=options.weight_bits
        )
    for clamp, value in plan.absorbed.items():
        out = clamp.outputs[0]
        params[value] = params.pop(out)
        out.replace_all_uses_with(value)
        graph.remove_nodes([clamp])
    for value in [v for v in graph.values() if v in params]:
        insert_qdq(graph, value, params[value])
    graph.sort()

    kinds = Counter(opdef_of(layer.node).label for layer in plan.layers)
    layers = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "no"
    signedness = "uint8 asymmetric" if options.unsigned else "int8 symmetric"
    weights = "per-channel" if options.per_channel else "per-tensor"
    if options.weight_bits < 8:
        weights += f", {options.weight_bits}-bit range against int16 saturation"
    log = [
        f"int8 weights ({weights}) for {layers} layer{'s' if len(plan.layers) != 1 else ''}",
        f"{len(params)} activations quantized ({signedness}, {options.calibration} calibration over {origin})",
    ]
    if plan.absorbed:
        log.append(f"{len(plan.absorbed)} relu/clip absorbed into quantized outputs")
    return log


# -- the pass ----------------------------------------------------------------------------------
Mode = Literal["int8", "fixed", "weight-int8"]
MAX_FIXED_BITS = 8


@dataclass(frozen=True)
class Quantize(Pass):
    """Quantize: static int8 QDQ with calibration, fixed-point Qm.n, or int8 weights only."""

    name = "quantize"
    preserves_function = False
    mode: Mode = field(default="int8", metadata={"help": "int8 (calibrated QDQ), fixed (Qm.n) or weight-int8"})
    bits: int = field(default=8, metadata={"help": "bit width: 8 for int8 modes, 2..8 for fixed"})
    frac_bits: int = field(default=4, metadata={"help": "fixed mode: fractional bits n of Qm.n"})
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = field(
        default="minmax", metadata={"help": "how activation ranges are chosen"}
    )
    percentile: float = field(default=99.99, metadata={"help": "percent of values the percentile range keeps"})
    activations: Literal["uint8", "int8"] = field(
        default="uint8", metadata={"help": "uint8 asymmetric (fastest in onnxruntime) or int8 symmetric"}
    )
    per_channel: bool = field(default=True, metadata={"help": "one weight scale per output channel"})
    reduce_range: Literal["auto", "on", "off"] = field(
        default="auto", metadata={"help": "7-bit int8 weights; auto: on x86 CPUs without VNNI (int16 saturation)"}
    )
    samples: int = field(default=32, metadata={"help": "calibration samples (rows) to use at most"})
    seed: int = field(default=0, metadata={"help": "seed of the random-input fallback"})

    def __post_init__(self) -> None:
        if self.mode in ("int8", "weight-int8") and self.bits != 8:
            raise IrtoolError(
                f"mode={self.mode} supports bits=8 only, not bits={self.bits}; use mode=fixed for 2..8 bits"
            )
        if self.mode == "fixed" and not 2 <= self.bits <= MAX_FIXED_BITS:
            raise IrtoolError(f"mode=fixed supports bits from 2 to {MAX_FIXED_BITS}, not bits={self.bits}")
        if self.mode == "fixed" and not 0 <= self.frac_bits <= 24:
            raise IrtoolError(f"frac-bits must be between 0 and 24, not {self.frac_bits}")
        if not 0 < self.percentile <= 100:
            raise IrtoolError(f"percentile must be in (0, 100], not {self.percentile}")
        if self.samples < 1:
            raise IrtoolError(f"samples must be at least 1, not {self.samples}")
        if self.calibration not in CALIBRATORS:
            raise IrtoolError(f"unknown calibration '{self.calibration}'")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if is_quantized(graph):
            return PassResult(graph, False, ["the graph already has quantize/dequantize ops; left as it is"])
        if self.mode == "int8":
            reduce = self.reduce_range == "on" or (self.reduce_range == "auto" and int16_saturating_cpu())
            options = Int8Options(
                self.calibration, self.percentile, self.activations == "uint8", self.per_channel, self.samples,
                self.seed, weight_bits=7 if reduce else 8,
            )  # fmt: skip
            log = quantize_int8(graph, ctx, options)
            info = {"mode": "int8", "weight_bits": 8, "activation_bits": 8, "activations": self.activations}
            info |= {"calibration": self.calibration, "per_channel": self.per_channel, "reduce_range": reduce}
        else:
            from .fixed_point import quantize_fixed_point, quantize_weights_int8

            if self.mode == "fixed":
                log = quantize_fixed_point(graph, bits=self.bits, frac_bits=self.frac_bits)
                info = {"mode": "fixed", "weight_bits": self.bits, "activation_bits": self.bits}
                info["frac_bits"] = self.frac_bits
            else:
                log = quantize_weights_int8(graph, per_channel=self.per_channel)
                info = {"mode": "weight-int8", "weight_bits": 8, "activation_bits": 32, "per_channel": self.per_channel}
        if not log:
            return PassResult(graph, False, ["no conv/linear/matmul layer to quantize"])
        record_quantization(graph, **info)
        return PassResult(graph, True, log)
