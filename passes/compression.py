"""Compression report: what pruning, quantization and Huffman coding did to a model's size.

Compares a pipeline's result with the original graph it came from:

- **fp32**: the original's weights at 4 bytes each;
- **after pruning**: the result's weights, still counted at 4 bytes each (what structured
  pruning removed is gone; zeros from fine-grained sparsity still count);
- **after quantization**: the result's weights as stored (int8 codes, int32 biases, float
  tensors left alone) plus the quantization scales and zero points;
- **after Huffman coding**: as above, with every int8/uint8 weight tensor Huffman coded (its
  own code, as Deep Compression does per layer; a canonical code is stored as one byte of
  symbol and one of code length per distinct value).

*Weights* are the float constants and the integer codes read by DequantizeLinear; shape and
index constants and the scales/zero points are not weights.

The lab's param+ops score (the pruning lab seed) rates a result against ResNet-18 at half
precision::

    score = [1 - (ps + pu)] * (qw / 32) * w / 5.6e6  +  (1 - ps) * (max(qw, qa) / 32) * f / 8.3e8

with ``w`` and ``f`` the original's weight count and multiply-accumulates, ``ps`` the fraction
of weights removed by structured pruning, ``pu`` the fraction zeroed by unstructured pruning,
``qw``/``qa`` the weight and activation bits.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from ..ir.core import Graph, Value
from ..ir.registry import opdef_of
from .cost import graph_cost, human
from .quantize import QUANT_LABEL, quantization_record

__all__ = [
    "CompressionReport",
    "compression_report",
    "huffman_code_lengths",
    "huffman_size",
    "lab_score",
]

REFERENCE_PARAMS = 5.6e6
REFERENCE_OPS = 8.3e8
CODEBOOK_BYTES_PER_SYMBOL = 2


# -- Huffman coding ----------------------------------------------------------------------------
def huffman_code_lengths(counts: np.ndarray) -> np.ndarray:
    """Code length in bits of each symbol of an optimal prefix code for these (positive) counts."""
    counts = np.asarray(counts, dtype=np.int64)
    if len(counts) == 1:
        return np.ones(1, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.int64)
    heap = [(int(c), i, [i]) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    tie = len(counts)
    while len(heap) > 1:
        a, _, left = heapq.heappop(heap)
        b, _, right = heapq.heappop(heap)
        lengths[left + right] += 1
        heapq.heappush(heap, (a + b, tie, left + right))
        tie += 1
    return lengths


def huffman_size(values: np.ndarray) -> tuple[int, int]:
    """Huffman-coded size of ``values``: (payload bits, codebook bytes)."""
    if values.size == 0:
        return 0, 0
    _, counts = np.unique(values, return_counts=True)
    payload = int((counts * huffman_code_lengths(counts)).sum())
    return payload, CODEBOOK_BYTES_PER_SYMBOL * len(counts)


# -- weights -----------------------------------------------------------------------------------
def _is_quant_node(node) -> bool:
    opdef = opdef_of(node)
    return opdef is not None and opdef.label == QUANT_LABEL


def _classify(graph: Graph) -> tuple[list[Value], list[Value], list[Value]]:
    """(float weights, integer weight codes, quantization scales and zero points)."""
    floats, codes, metadata = [], [], []
    for value in graph.constants.values():
        uses = value.uses
        if uses and all(_is_quant_node(node) and index > 0 for node, index in uses):
            metadata.append(value)
        elif value.const.dtype.kind in "iu" and any(_is_quant_node(node) and index == 0 for node, index in uses):
            codes.append(value)
        elif value.const.dtype.kind == "f":
            floats.append(value)
    return floats, codes, metadata


def _elements(values: list[Value]) -> int:
    return sum(int(v.const.size) for v in values)


def _nbytes(values: list[Value]) -> int:
    return sum(int(v.const.nbytes) for v in values)


def _zeros(floats: list[Value], codes: list[Value], graph: Graph) -> int:
    zeros = sum(int(np.count_nonzero(v.const == 0)) for v in floats)
    for value in codes:
        zero_point = 0
        for node, index in value.uses:
            if index == 0 and len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const is not None:
                zp = node.inputs[2].const
                first = zp.reshape(-1)[0]
                zero_point = first if np.all(zp == first) else None
        if zero_point is not None:
            zeros += int(np.count_nonzero(value.const == zero_point))
    return zeros


def _bits(graph: Graph, floats: list[Value], codes: list[Value]) -> tuple[int, int]:
    """Weight and activation bits: from the quantize pass's record, else from the graph itself."""
    record = quantization_record(graph)
    if record:
        return int(record.get("weight_bits", 32)), int(record.get("activation_bits", 32))
    weight_bits = 8 if codes else max((v.const.dtype.itemsize * 8 for v in floats), default=32)
    activations = any(_is_quant_node(n) and n.op == "QuantizeLinear" and not n.inputs[0].is_const for n in graph.nodes)
    return weight_bits, 8 if activations else 32


# -- the report --------------------------------------------------------------------------------
def lab_score(*, ps: float, pu: float, qw: float, qa: float, w: float, f: float) -> tuple[float, float]:
    """The lab seed's (param score, ops score); their sum is the score."""
    params = (1 - (ps + pu)) * (qw / 32) * w / REFERENCE_PARAMS
    ops = (1 - ps) * (max(qw, qa) / 32) * f / REFERENCE_OPS
    return params, ops


@dataclass
class CompressionReport:
    fp32_bytes: int
    pruned_bytes: int
    quantized_bytes: int
    huffman_bytes: int
    weights_before: int
    weights_after: int
    zeros_after: int
    macs_before: int
    macs_after: int
    weight_bits: int
    activation_bits: int

    @property
    def structured(self) -> float:
        """ps: the fraction of the original weights that structured pruning removed."""
        return max(0.0, 1 - self.weights_after / self.weights_before) if self.weights_before else 0.0

    @property
    def unstructured(self) -> float:
        """pu: the fraction of the original weights that are zeros in the result."""
        return self.zeros_after / self.weights_before if self.weights_before else 0.0

    @property
    def scores(self) -> tuple[float, float]:
        return lab_score(
            ps=self.structured, pu=self.unstructured, qw=self.weight_bits, qa=self.activation_bits,
            w=self.weights_before, f=self.macs_before,
        )  # fmt: skip

    @property
    def score(self) -> float:
        return sum(self.scores)

    def format(self) -> str:
        rows = [
            ("fp32", self.fp32_bytes),
            ("after pruning", self.pruned_bytes),
            ("after quantization", self.quantized_bytes),
            ("after Huffman coding", self.huffman_bytes),
        ]
        base = self.fp32_bytes or 1
        lines = [f"{'model size':<22}{'bytes':>12}{'of fp32':>10}"]
        lines += [f"{label:<22}{human(b, 'B'):>12}{100 * b / base:>9.1f}%" for label, b in rows]
        param, ops = self.scores
        lines += [
            f"weights: {human(self.weights_before)} -> {human(self.weights_after)} "
            f"(ps {self.structured:.3f}, pu {self.unstructured:.3f}); "
            f"MACs: {human(self.macs_before)} -> {human(self.macs_after)}",
            f"bits: weights {self.weight_bits}, activations {self.activation_bits}",
            f"lab score: params {param:.4f} + ops {ops:.4f} = {param + ops:.4f}",
        ]
        return "\n".join(lines)


def compression_report(original: Graph, result: Graph) -> CompressionReport:
    """Sizes and the lab score of ``result`` (any pipeline's output) against ``original``."""
    floats0, codes0, _ = _classify(original)
    floats, codes, metadata = _classify(result)
    weights_before = _elements(floats0) + _elements(codes0)
    weights_after = _elements(floats) + _elements(codes)
    stored = _nbytes(floats) + _nbytes(codes) + _nbytes(metadata)
    huffman = _nbytes(floats) + _nbytes(metadata)
    for value in codes:
        if value.const.dtype.itemsize == 1:
            payload, codebook = huffman_size(value.const)
            huffman += (payload + 7) // 8 + codebook
        else:
            huffman += int(value.const.nbytes)
    weight_bits, activation_bits = _bits(result, floats, codes)
    return CompressionReport(
        fp32_bytes=4 * weights_before,
        pruned_bytes=4 * weights_after,
        quantized_bytes=stored,
        huffman_bytes=huffman,
        weights_before=weights_before,
        weights_after=weights_after,
        zeros_after=_zeros(floats, codes, result),
        macs_before=graph_cost(original).macs,
        macs_after=graph_cost(result).macs,
        weight_bits=weight_bits,
        activation_bits=activation_bits,
    )
