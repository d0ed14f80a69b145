"""Registers every op irtool knows: schemas, shape rules and cost rules, one topic per module.

- ``nn``: convolutions, linear layers and matmuls, pools, normalisations, recurrent layers
- ``elementwise``: activations, unary math, broadcasting binary and variadic ops
- ``tensor``: reshaping, slicing, indexing, constants, casts, reductions, softmax
- ``quant``: QuantizeLinear / DequantizeLinear
- ``rules``: the pieces of shape and cost rules they share

Channel rules are attached to these definitions by op name in ``channels``.
"""

from . import elementwise, nn, quant, tensor  # noqa: F401
