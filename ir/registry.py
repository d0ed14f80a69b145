"""The op registry: the one place where irtool's knowledge about an op lives.

IR ops use the ONNX operator names and attribute semantics in their opset-18 form (axes, pads,
split sizes and shapes are inputs where opset 18 has them as inputs). Frontends convert to that
form; the ONNX backend converts back to the opset it emits. Each ``OpDef`` declares:

- its attributes (with defaults) and input/output ports,
- a *shape rule*: input types (and constant inputs) -> output types,
- a *channel rule*: how a channel index on one port relates to positions on the others; the
  dependency analysis is built on these rules and nothing else,
- a *cost rule*: multiply-accumulates of one execution,
- optionally a *retarget rule*, which rewrites shape-carrying operands (``Reshape``'s target shape)
  after pruning has changed the channel counts flowing through the node.

An op that is not registered is opaque: it round-trips unchanged and is a pruning barrier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import IrtoolError

AttrKind = Literal["int", "float", "string", "ints", "floats", "strings", "tensor", "graph"]
_REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """An attribute declaration. ``default`` absent means the attribute is required."""

    kind: AttrKind
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


# -- channel rules ----------------------------------------------------------------------
Port = tuple[Literal["in", "out"], int]
"""A node port: ``("in", i)`` for input i, ``("out", i)`` for output i."""


@dataclass(frozen=True)
class Tie:
    """Positions ``here[k]`` on the arrival slot and ``there[k]`` on ``port``'s ``axis`` are one channel.

    Ties are symmetric: the analysis unions each pair, so a rule may describe a relation from
    either side and get the same groups.
    """

    port: Port
    axis: int
    here: np.ndarray
    there: np.ndarray


@dataclass
class ChannelEffect:
    """What a node does with channels that arrive at one of its ports along one axis.

    - ``ties``: the other (port, axis) slots these channels continue on.
    - ``isolates``: the node ends the group here (a conv consumes its input channels through
      its weights and produces new ones): the arrival slot is sliced, nothing crosses.
    - ``approximate``: removing a channel changes this node's result beyond cutting the
      channel's contribution (normalisation statistics over the channel axis); why, in words.
    - ``barrier``: these channels cannot be removed here at all; why, in words.
    """

    ties: list[Tie] = field(default_factory=list)
    isolates: bool = False
    approximate: str | None = None
    barrier: str | None = None


@dataclass
class ChannelChoice(ChannelEffect):
    """Channels at an axis group whose one side has several axes (a reshape that splits or
    merges axes): only one of those axes can carry the channels.

    Splitting a 576-wide axis into ``(3, heads, 64)`` could make channels of the qkv blocks, of
    the heads or of the head dims; each alone gives a valid pruning, two at once couple every
    position. All arrivals at the same group of one node share ``key``. An arrival on the
    several-axes side is a request for its axis (``candidate``, its index among the candidates,
    0 the outermost) with ``options == [tie to the single side]``; an arrival on the single
    side offers ``options[k]``, a tie to candidate k. The analysis grants the outermost
    requested candidate (a request for another one blocks its channels there), or the
    outermost candidate when only the single side is reached.
    """

    options: list[Tie] = field(default_factory=list)
    key: tuple = ()
    candidate: int | None = None


ChannelRule = Callable[["Node", Port, int], ChannelEffect]  # noqa: F821
ShapeRule = Callable[["Node"], Sequence["TensorType | None"]]  # noqa: F821
CostRule = Callable[["Node"], int]  # noqa: F821
RetargetRule = Callable[["Node"], None]  # noqa: F821
BoundRule = Callable[["Node"], "float | None"]  # noqa: F821
IndexRule = Callable[["Node"], "tuple[int, int] | None"]  # noqa: F821


@dataclass(frozen=True)
class WeightLayout:
    """Where a layer's weight (input 1) keeps its output channels: what int8 quantization gives
    a scale each and what batch-norm folding multiplies.

    ``axis(node, w)`` is the axis with one entry per output channel, or None when the channels
    do not lie along one axis (a grouped transposed conv, a transposed ``A``). ``scale(node, w,
    s)`` is ``w`` with output channel ``c`` multiplied by ``s[c]``, or None when that cannot be
    done; without one, scaling goes along ``axis``.
    """

    axis: Callable[["Node", Any], "int | None"]  # noqa: F821
    scale: Callable[["Node", Any, Any], Any] | None = None  # noqa: F821

    def scaled(self, node, w, s):
        """``w`` with output channel ``c`` times ``s[c]``, or None."""
        if self.scale is not None:
            return self.scale(node, w, s)
        axis = self.axis(node, w)
        if axis is None or w.shape[axis] != s.size:
            return None
        shape = [1] * w.ndim
        shape[axis] = -1
        return w * s.reshape(shape)


INT8_FORMS = ("layer", "layer-float", "select", "own-range", "clamp")
"""How onnxruntime's int8 kernels treat an op (``OpDef.int8``):

- ``layer``: an int8 kernel over an int8 weight (QLinearConv);
- ``layer-float``: the same, and it can also return float (QGemm, MatMulIntegerToFloat);
- ``select``: outputs values taken from the input (max pooling, reshapes, slices), so they keep
  the input's scale;
- ``own-range``: computes new int8 values with their own scale (Add, Mul, Concat, average pooling);
- ``clamp``: bounds values (Relu, Clip); absorbed into the layer before it when the bound is 0.

Ops without a form read dequantized floats."""


@dataclass
class OpDef:
    """Everything irtool knows about one op."""

    name: str
    inputs: tuple[str, ...] = ()
    """Input port names; a trailing ``?`` marks an optional input, ``*`` a variadic one."""
    outputs: tuple[str, ...] = ("Y",)
    attrs: dict[str, Attr] = field(default_factory=dict)
    shape: ShapeRule | None = None
    channel: ChannelRule | None = None
    cost: CostRule | None = None
    retarget: RetargetRule | None = None
    domain: str = ""
    label: str = ""
    """Short layer kind for reports, e.g. ``conv``, ``linear``, ``bn``."""
    weight: WeightLayout | None = None
    """For layers with a weight at input 1: where its output channels lie."""
    int8: str = ""
    """One of ``INT8_FORMS``, or empty: how onnxruntime's int8 kernels treat the op."""
    lower_bound: BoundRule | None = None
    """For clamps: the least value the output takes (None from the rule: not a constant)."""
    indexes: IndexRule | None = None
    """For ops that index into a tensor: (input position of the indices, how many entries they
    may address), or None when that count is not known. Example inputs of integer type draw
    valid indices from it (an embedding's token ids), not all zeros."""
    doc: str = ""

    def __post_init__(self) -> None:
        if self.int8 and self.int8 not in INT8_FORMS:
            raise IrtoolError(f"op {self.name}: int8 form '{self.int8}' is not one of {', '.join(INT8_FORMS)}")

    @property
    def qualified_name(self) -> str:
        return f"{self.domain}::{self.name}" if self.domain else self.name

    def attr(self, node, key: str) -> Any:
        """The node's attribute value, or the declared default."""
        if key in node.attrs:
            return node.attrs[key]
        spec = self.attrs.get(key)
        if spec is None:
            raise IrtoolError(f"op {self.name} has no attribute '{key}'", where=node.name)
        if spec.required:
            raise IrtoolError(f"{self.name} requires attribute '{key}'", where=node.name)
        return spec.default

    def arity(self) -> tuple[int, int | None]:
        """(minimum, maximum or None) number of inputs."""
        lo = sum(1 for p in self.inputs if not p.endswith(("?", "*")))
        hi = None if any(p.endswith("*") for p in self.inputs) else len(self.inputs)
        return lo, hi


_REGISTRY: dict[str, OpDef] = {}


def register_op(opdef: OpDef) -> OpDef:
    key = opdef.qualified_name
    if key in _REGISTRY:
        raise IrtoolError(f"op {key} is registered twice")
    _REGISTRY[key] = opdef
    return opdef


_loaded = False


def _ensure_loaded() -> None:
    # The definitions live in ir/ops; importing the package registers them.
    global _loaded
    if not _loaded:
        from . import ops  # noqa: F401

        _loaded = True


def lookup(op: str, domain: str = "") -> OpDef | None:
    """The op's definition, or None for an opaque op."""
    _ensure_loaded()
    return _REGISTRY.get(f"{domain}::{op}" if domain else op)


def get_op(op: str, domain: str = "") -> OpDef:
    opdef = lookup(op, domain)
    if opdef is None:
        raise IrtoolError(f"unknown op {op if not domain else domain + '::' + op}")
    return opdef


def opdef_of(node) -> OpDef | None:
    return lookup(node.op, node.domain)


def all_ops() -> list[OpDef]:
    _ensure_loaded()
    return sorted(_REGISTRY.values(), key=lambda d: d.qualified_name)


def index_bounds(graph) -> dict:
    """Graph input -> how many entries the ops it indexes into have (the least over its uses),
    for integer inputs used as indices (``OpDef.indexes``)."""
    bounds: dict = {}
    for value in graph.inputs:
        for node, position in value.uses:
            opdef = opdef_of(node)
            found = opdef.indexes(node) if opdef is not None and opdef.indexes is not None else None
            if found is not None and found[0] == position:
                bounds[value] = min(found[1], bounds.get(value, found[1]))
    return bounds
