"""irtool's dataflow IR: graphs, values, nodes, types and the op registry."""

from .core import Graph, Node, Value
from .errors import IrtoolError
from .registry import Attr, ChannelEffect, OpDef, Tie, get_op, lookup, opdef_of, register_op
from .types import DType, TensorType

__all__ = [
    "Attr",
    "ChannelEffect",
    "DType",
    "Graph",
    "IrtoolError",
    "Node",
    "OpDef",
    "TensorType",
    "Tie",
    "Value",
    "get_op",
    "lookup",
    "opdef_of",
    "register_op",
]
