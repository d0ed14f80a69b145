"""Constant folding: evaluate nodes whose inputs are all constants and keep only the result.

Evaluation uses ONNX's reference evaluator on a one-node model, so the folded value is what the
ONNX specification says the op computes. ``Shape`` and ``Size`` of a value whose type is fully
static fold as well, even when the value itself is not constant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.errors import IrtoolError
from ..ir.registry import opdef_of
from ..ir.types import DType
from .base import Pass, PassContext, PassResult

REFERENCE_OPSET = 18
"""IR ops follow opset-18 semantics (see ir/registry.py); fold under at least that opset."""

_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)
"""Ops whose result differs between runs; folding would freeze one sample.
This belongs in the op registry as an ``OpDef`` flag (``deterministic``); until then it lives here."""


def _shape_of(node: Node, value: Value) -> np.ndarray | None:
    if value.type is None or not value.type.is_static:
        return None
    dims = list(value.type.shape)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    return np.array(dims[start : None if end is None else int(end)], dtype=np.int64)


def _size_of(node: Node, value: Value) -> np.ndarray | None:
    if value.type is None or not value.type.is_static:
        return None
    return np.array(value.type.numel(), dtype=np.int64)


_FROM_TYPE: dict[str, Callable[[Node, Value], np.ndarray | None]] = {"Shape": _shape_of, "Size": _size_of}
"""Ops whose result depends only on the input's type. A registry flag (``type_only``) would say this."""

_ATTR_TYPES = {
    "int": "INT",
    "float": "FLOAT",
    "string": "STRING",
    "ints": "INTS",
    "floats": "FLOATS",
    "strings": "STRINGS",
    "tensor": "TENSOR",
}
_ATTR_PYTHON_TYPES = (int, float, str, list, tuple, np.ndarray, np.integer, np.floating)


def _onnx_attribute(node: Node, key: str, value):
    """An ``AttributeProto`` for one IR attribute, typed by the op's declaration when there is one."""
    from onnx import AttributeProto, helper, numpy_helper

    opdef = opdef_of(node)
    spec = opdef.attrs.get(key) if opdef is not None else None
    kind = spec.kind if spec is not None else None
    if kind == "graph" or isinstance(value, (bytes, bytearray)) or not isinstance(value, _ATTR_PYTHON_TYPES):
        raise IrtoolError(f"{node.op} '{node.name}' has a subgraph attribute '{key}'; not folded")
    if isinstance(value, np.ndarray):
        value = numpy_helper.from_array(value)
    elif kind == "float":
        value = float(value)
    elif kind == "floats":
        value = [float(v) for v in value]
    elif kind == "ints":
        value = [int(v) for v in value]
    elif kind == "int":
        value = int(value)
    attr_type = getattr(AttributeProto, _ATTR_TYPES[kind]) if kind in _ATTR_TYPES else None
    return helper.make_attribute(key, value, attr_type=attr_type)


def evaluate_node(node: Node, arrays: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Run one node on constant inputs with ``onnx.reference``; raises ``IrtoolError`` if it cannot."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    in_names = [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)]
    out_names = [f"out{i}" for i in range(len(node.outputs))]
    proto = helper.make_node(node.op, in_names, out_names)
    proto.attribute.extend(_onnx_attribute(node, k, v) for k, v in node.attrs.items())
    inputs = [
        helper.make_tensor_value_info(name, DType.from_numpy(a.dtype).onnx, a.shape)
        for name, a in zip(in_names, arrays)
        if a is not None
    ]
    outputs = [helper.make_empty_tensor_value_info(name) for name in out_names]
    model = helper.make_model(
        helper.make_graph([proto], "fold", inputs, outputs),
        opset_imports=[helper.make_opsetid("", max(opset, REFERENCE_OPSET))],
    )
    feeds = {name: a for name, a in zip(in_names, arrays) if a is not None}
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # the reference evaluator raises many kinds; all mean "cannot fold"
        raise IrtoolError(f"cannot evaluate {node.op}: {type(exc).__name__}: {exc}", where=node.name) from exc
    return [np.asarray(r) for r in results]


def evaluate_graph(graph: Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The graph's outputs for ``feeds`` (input name -> array), node by node with ``onnx.reference``.

    Slow but independent of every backend: tests and debugging use it as the ground truth.
    """
    env: dict[Value, np.ndarray] = {v: v.const for v in graph.constants.values()}
    for value in graph.inputs:
        if value.name not in feeds:
            raise IrtoolError(f"no data for graph input '{value.name}'")
        env[value] = np.asarray(feeds[value.name])
    for node in graph.nodes:
        results = evaluate_node(node, [None if v is None else env[v] for v in node.inputs], graph.opset)
        env.update(zip(node.outputs, results))
    return [env[v] for v in graph.outputs]


@dataclass(frozen=True)
class ConstantFold(Pass):
    """Replace nodes whose inputs are all constants (and Shape/Size of static types) by their values."""

    name = "const-fold"
    max_elements: int = field(
        default=1_000_000,
        metadata={"help": "largest result (elements) to fold when it is bigger than the node's inputs together"},
    )

    def _foldable(self, node: Node) -> bool:
        if node.domain not in ("", "ai.onnx") or node.op in _RANDOM_OPS or not node.outputs:
            return False
        return all(v is None or v.is_const for v in node.inputs)

    def _too_large(self, node: Node, sizes: list[int]) -> bool:
        budget = max(self.max_elements, sum(int(v.const.size) for v in node.inputs if v is not None and v.is_const))
        return any(size > budget for size in sizes)

    def _fold_values(self, node: Node, opset: int) -> list[np.ndarray] | None:
        from_type = _FROM_TYPE.get(node.op) if node.domain == "" else None
        if from_type is not None and node.inputs and node.inputs[0] is not None and not node.inputs[0].is_const:
            result = from_type(node, node.inputs[0])
            return None if result is None else [result]
        if not self._foldable(node):
            return None
        known = [v.type.numel() for v in node.outputs if v.type is not None and v.type.is_static]
        if self._too_large(node, known):
            return None
        try:
            results = evaluate_node(node, [None if v is None else v.const for v in node.inputs], opset)
        except IrtoolError:
            return None
        if len(results) != len(node.outputs) or self._too_large(node, [r.size for r in results]):
            return None
        return results

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded: list[Node] = []
        inputs_of_folded: dict[Value, None] = {}
        for node in graph.nodes:
            if any(v.is_graph_output for v in node.outputs):
                continue
            results = self._fold_values(node, graph.opset)
            if results is None:
                continue
            for value, array in zip(node.outputs, results):
                declared = value.type.dtype.numpy if value.type is not None else array.dtype
                if declared != array.dtype and declared.kind != "O":
                    array = array.astype(declared)
                value.replace_all_uses_with(graph.add_constant(graph.take_name(value.name), array))
            folded.append(node)
            inputs_of_folded.update((v, None) for v in node.inputs if v is not None and v.is_const)
        graph.remove_nodes(folded)
        orphans = [v for v in inputs_of_folded if not v.uses and not v.is_graph_output and v.graph is graph]
        for constant in orphans:
            graph.remove_constant(constant)
        log = []
        if folded:
            ops = ", ".join(sorted({n.op for n in folded}))
            log.append(f"folded {len(folded)} node{'s' if len(folded) != 1 else ''} ({ops}) into constants")
        return PassResult(graph, bool(folded), log)
