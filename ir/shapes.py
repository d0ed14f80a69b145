"""Type propagation: every node output's type from the op registry's shape rules.

Rules run in node order, so each sees its inputs' fresh types. Ops without a rule (opaque ops)
keep the output types they came with, as do nodes with an input whose type is unknown.
"""

from __future__ import annotations

from .core import Graph
from .errors import IrtoolError
from .ops.rules import tracking_values, where
from .registry import opdef_of
from .types import TensorType


def infer_shapes(graph: Graph, *, overwrite: bool = True) -> int:
    """Set output types from the shape rules; returns how many values changed type.

    With ``overwrite`` the rules' answer replaces what was there (a dim the rule cannot compute
    becomes unknown). Without it, existing types are kept and the rules only fill in what is
    missing: absent types, unknown ranks and unknown dims.
    Inconsistent inputs (a conv whose input lost channels its weight still has) raise
    ``IrtoolError`` naming the node.
    """
    changed = 0
    with tracking_values():
        for node in graph.nodes:
            opdef = opdef_of(node)
            if opdef is None or opdef.shape is None:
                continue
            if any(v is not None and v.type is None for v in node.inputs):
                continue
            try:
                types = list(opdef.shape(node))
            except IrtoolError:
                raise
            except Exception as exc:  # a rule meeting inputs it does not expect
                raise IrtoolError(f"{where(node)}: cannot infer output types: {exc}") from exc
            for value, new in zip(node.outputs, types):
                merged = (new or value.type) if overwrite else _fill(value.type, new)
                if merged != value.type:
                    value.type = merged
                    changed += 1
    return changed


def _fill(old: TensorType | None, new: TensorType | None) -> TensorType | None:
    """``old`` with its unknown rank or dims taken from ``new``."""
    if old is None or new is None or new.shape is None:
        return old or new
    if old.shape is None:
        return old.with_shape(new.shape)
    if len(old.shape) != len(new.shape):
        return old
    return old.with_shape(a if a is not None else b for a, b in zip(old.shape, new.shape))
