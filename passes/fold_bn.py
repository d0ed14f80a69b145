"""Fold inference-form batch normalisation into the conv or linear layer that feeds it.

``bn(x) = s * x + t`` per channel, with ``s = gamma / sqrt(var + eps)`` and
``t = beta - mean * s``. When ``x`` is a conv/linear output used only by the BN, scaling the
layer's weight along its output channels (``OpDef.weight`` says where they lie) by ``s`` and
setting its bias to ``s * b + t`` computes the same thing without the BN. A BN that follows
anything else is left as it is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.registry import OpDef, opdef_of
from .base import Pass, PassContext, PassResult

BN_LABEL = "bn"
WEIGHT_INPUT = 1
BIAS_INPUT = 2


@dataclass
class _Plan:
    bn: Node
    layer: Node
    weight: np.ndarray
    bias: np.ndarray


def _const_input(node: Node, index: int) -> np.ndarray | None:
    value = node.inputs[index] if index < len(node.inputs) else None
    return None if value is None else value.const


def _bn_affine(bn: Node, opdef: OpDef) -> tuple[np.ndarray, np.ndarray] | None:
    """The BN's per-channel (scale, shift) in float64, or None if it is not in inference form."""
    if "training_mode" in opdef.attrs and int(opdef.attr(bn, "training_mode")):
        return None
    if any(v.uses or v.is_graph_output for v in bn.outputs[1:]):
        return None
    params = [_const_input(bn, i) for i in range(1, 5)]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    if not (gamma.size == beta.size == mean.size == var.size):
        return None
    eps = float(opdef.attr(bn, "epsilon")) if "epsilon" in opdef.attrs else 1e-5
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _plan(bn: Node) -> _Plan | None:
    bn_def = opdef_of(bn)
    if bn_def is None or bn_def.label != BN_LABEL or not bn.inputs or bn.inputs[0] is None:
        return None
    x = bn.inputs[0]
    layer = x.producer
    layer_def = opdef_of(layer) if layer is not None else None
    if layer_def is None or layer_def.weight is None or x.index != 0:
        return None
    if x.is_graph_output or len(x.uses) != 1 or len(layer_def.inputs) <= BIAS_INPUT:
        return None
    weight = _const_input(layer, WEIGHT_INPUT)
    if weight is None or not np.issubdtype(weight.dtype, np.floating):
        return None
    affine = _bn_affine(bn, bn_def)
    if affine is None:
        return None
    scale, shift = affine
    # The weight is scaled in its own precision (float64 would quadruple the memory traffic).
    new_weight = layer_def.weight.scaled(layer, weight, scale.astype(weight.dtype))
    if new_weight is None:
        return None
    has_bias = BIAS_INPUT < len(layer.inputs) and layer.inputs[BIAS_INPUT] is not None
    bias = _const_input(layer, BIAS_INPUT)
    if has_bias and bias is None:
        return None
    bias = np.zeros(scale.size) if bias is None else bias.astype(np.float64)
    if bias.size == 1:
        bias = np.broadcast_to(bias.reshape(()), scale.shape)
    if bias.size != scale.size:
        return None
    new_bias = (bias.reshape(-1) * scale + shift).astype(weight.dtype)
    return _Plan(bn, layer, new_weight.astype(weight.dtype, copy=False), new_bias)


def _set_constant_input(graph: Graph, node: Node, index: int, array: np.ndarray, name_hint: str) -> None:
    """Give ``node`` input ``index`` the value ``array``: in place when only it uses the constant."""
    current = node.inputs[index] if index < len(node.inputs) else None
    if current is not None and current.is_const and len(current.uses) == 1:
        current.const = array
        return
    constant = graph.add_constant(name_hint if current is None else current.name, array)
    while len(node.inputs) <= index:
        node.append_input(None)
    node.replace_input_with(index, constant)


def _bias_name(weight: Value) -> str:
    stem = weight.name[: -len(".weight")] if weight.name.endswith(".weight") else weight.name
    return f"{stem}.bias"


def _apply(graph: Graph, plan: _Plan) -> None:
    bn, layer = plan.bn, plan.layer
    weight_value = layer.inputs[WEIGHT_INPUT]
    _set_constant_input(graph, layer, WEIGHT_INPUT, plan.weight, weight_value.name)
    _set_constant_input(graph, layer, BIAS_INPUT, plan.bias, _bias_name(weight_value))
    x, y = layer.outputs[0], bn.outputs[0]
    keep_name = y.is_graph_output
    y.replace_all_uses_with(x, replace_graph_outputs=True)
    params = [v for v in bn.inputs[1:] if v is not None]
    graph.remove_nodes([bn])
    if keep_name:
        # The graph output keeps its name: callers feed and fetch by name.
        graph.rename_value(x, graph.take_name(y.name))
    for value in dict.fromkeys(params):
        if value.is_const and not value.uses and not value.is_graph_output and value.graph is graph:
            graph.remove_constant(value)


@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Fold BatchNormalization into the conv/linear layer before it (inference form only)."""

    name = "fold-bn"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded: Counter[str] = Counter()
        left = 0
        for node in graph.nodes:
            opdef = opdef_of(node)
            if opdef is None or opdef.label != BN_LABEL:
                continue
            plan = _plan(node)
            if plan is None:
                left += 1
                continue
            _apply(graph, plan)
            folded[plan.layer.op] += 1
        log = []
        if folded:
            into = ", ".join(f"{n} into {op}" for op, n in sorted(folded.items()))
            total = sum(folded.values())
            log.append(f"folded {total} batch norm{'s' if total != 1 else ''} ({into})")
        if left:
            log.append(f"left {left} batch norm{'s' if left != 1 else ''} that follow no foldable conv/linear layer")
        return PassResult(graph, bool(folded), log)
