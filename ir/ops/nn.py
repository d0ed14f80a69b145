"""Layers: convolutions, linear layers and matmuls, pools, normalisations, recurrent cells.

Costs count multiply-accumulates of the weighted ops only, as published model MACs do.
"""

from __future__ import annotations

import math

from ..registry import Attr, WeightLayout, get_op
from ..types import DType
from .rules import (
    attr,
    broadcast,
    broadcasts_to,
    count,
    define,
    fail,
    fmt,
    is_int,
    ishape,
    itype,
    like,
    norm_axis,
    same_as,
    window_attrs,
    window_output,
)


# -- convolutions -------------------------------------------------------------------------
def _check_bias(node, channels) -> None:
    bias = ishape(node, 2)
    if bias is not None and is_int(channels) and len(bias) == 1 and is_int(bias[0]) and bias[0] != channels:
        fail(node, f"bias has {bias[0]} values for {channels} output channels")


def _conv_shape(node):
    x, w = ishape(node, 0), ishape(node, 1)
    if x is None or w is None:
        return [like(node, None if x is None else [None] * len(x))]
    if len(x) < 3 or len(w) != len(x):
        fail(node, f"input {fmt(x)} and weight {fmt(w)} are not a batch of images and a conv kernel")
    group = attr(node, "group")
    (n, c, *spatial), (m, per_group, *kernel) = x, w
    if is_int(c) and is_int(per_group) and c != per_group * group:
        fail(node, f"input has {c} channels, weight expects {per_group * group} (group={group})")
    if is_int(m) and m % group:
        fail(node, f"{m} output channels do not split into {group} groups")
    _check_bias(node, m)
    kernel = node.attrs.get("kernel_shape") or kernel
    return [like(node, [n, m, *window_output(node, spatial, kernel)])]


def _typed(node, *inputs: int) -> bool:
    """Whether those inputs have a type: shape inference leaves the outputs of an op it does
    not know untyped, and cost rules (asked about every node) must then answer None."""
    return all(i < len(node.inputs) and node.inputs[i] is not None and itype(node, i) is not None for i in inputs)


def _conv_cost(node):
    if not _typed(node, 0, 1):
        return None
    w = ishape(node, 1)
    out = count(_conv_shape(node)[0].shape)
    return None if out is None or w is None or not all(map(is_int, w)) else out * math.prod(w[1:])


def _conv_transpose_shape(node):
    x, w = ishape(node, 0), ishape(node, 1)
    if x is None or w is None:
        return [like(node, None if x is None else [None] * len(x))]
    group = attr(node, "group")
    (n, c, *spatial), (wc, per_group, *kernel) = x, w
    if is_int(c) and is_int(wc) and c != wc:
        fail(node, f"input has {c} channels, weight expects {wc}")
    m = per_group * group if is_int(per_group) else None
    _check_bias(node, m)
    k = len(spatial)
    kernel = node.attrs.get("kernel_shape") or kernel
    strides = node.attrs.get("strides") or [1] * k
    dilations = node.attrs.get("dilations") or [1] * k
    pads = node.attrs.get("pads") or [0] * (2 * k)
    extra = node.attrs.get("output_padding") or [0] * k
    if node.attrs.get("output_shape"):
        out = list(node.attrs["output_shape"])[-k:]
    elif attr(node, "auto_pad") in ("SAME_UPPER", "SAME_LOWER"):
        out = [d * s if is_int(d) else None for d, s in zip(spatial, strides)]
    else:
        if attr(node, "auto_pad") == "VALID":
            pads = [0] * (2 * k)
        out = [
            s * (d - 1) + e + (kk - 1) * dl + 1 - pb - pe if is_int(d) else None
            for d, s, e, kk, dl, pb, pe in zip(spatial, strides, extra, kernel, dilations, pads[:k], pads[k:])
        ]
    return [like(node, [n, m, *out])]


def _conv_transpose_cost(node):
    x, w = ishape(node, 0), ishape(node, 1)
    total = count(x)
    return None if total is None or w is None or not all(map(is_int, w)) else total * math.prod(w[1:])


def _conv_weight_axis(node, w):
    # Weight (C_out, C_in / group, k...).
    return 0 if w.ndim >= 3 else None


def _conv_transpose_weight_axis(node, w):
    # Weight (C_in, C_out / group, k...): the output channels lie along one axis only with one group.
    return 1 if w.ndim >= 3 and int(attr(node, "group")) == 1 else None


def _scale_conv_transpose(node, w, s):
    # Output channel of group g, column j is g * C_out/group + j.
    group = int(attr(node, "group"))
    if w.ndim < 2 or w.shape[0] % group or w.shape[1] * group != s.size:
        return None
    spatial = (1,) * (w.ndim - 2)
    blocks = w.reshape((group, w.shape[0] // group) + w.shape[1:])
    return (blocks * s.reshape((group, 1, w.shape[1]) + spatial)).reshape(w.shape)


_CONV_ATTRS = {**window_attrs(), "group": Attr("int", 1)}
define(
    "Conv",
    "X W B?",
    attrs=_CONV_ATTRS,
    shape=_conv_shape,
    cost=_conv_cost,
    label="conv",
    weight=WeightLayout(_conv_weight_axis),
    int8="layer",
)
define(
    "ConvTranspose",
    "X W B?",
    attrs={**_CONV_ATTRS, "output_padding": Attr("ints", None), "output_shape": Attr("ints", None)},
    shape=_conv_transpose_shape,
    cost=_conv_transpose_cost,
    label="deconv",
    weight=WeightLayout(_conv_transpose_weight_axis, _scale_conv_transpose),
    int8="layer",
)


# -- linear layers and matmuls ------------------------------------------------------------
def _gemm_shape(node):
    a, b = ishape(node, 0), ishape(node, 1)
    if a is None or b is None:
        return [like(node, [None, None])]
    if len(a) != 2 or len(b) != 2:
        fail(node, f"inputs {fmt(a)} and {fmt(b)} are not matrices")
    (m, ka), (kb, n) = a[:: -1 if attr(node, "transA") else 1], b[:: -1 if attr(node, "transB") else 1]
    if is_int(ka) and is_int(kb) and ka != kb:
        fail(node, f"A has {ka} features, B expects {kb} (transB={attr(node, 'transB')})")
    c = ishape(node, 2)
    if c is not None and not broadcasts_to(c, (m, n)):
        fail(node, f"bias of shape {fmt(c)} does not broadcast to {fmt((m, n))}")
    return [like(node, (m, n))]


def _gemm_cost(node):
    if not _typed(node, 0, 1):
        return None
    a = ishape(node, 0)
    out = count(_gemm_shape(node)[0].shape)
    k = None if a is None else a[0 if attr(node, "transA") else 1]
    return None if out is None or not is_int(k) else out * k


def _matmul_shape(node):
    a, b = ishape(node, 0), ishape(node, 1)
    if a is None or b is None:
        return [like(node, None)]
    if not a or not b:
        fail(node, "MatMul does not take scalars")
    a2, b2 = (a if len(a) > 1 else (1, *a)), (b if len(b) > 1 else (*b, 1))
    if is_int(a2[-1]) and is_int(b2[-2]) and a2[-1] != b2[-2]:
        fail(node, f"A {fmt(a)} has {a2[-1]} columns, B {fmt(b)} has {b2[-2]} rows")
    batch = broadcast(node, [a2[:-2], b2[:-2]])
    shape = (*batch, *(a2[-2:-1] if len(a) > 1 else ()), *(b2[-1:] if len(b) > 1 else ()))
    return [like(node, shape)]


def _matmul_cost(node):
    if not _typed(node, 0, 1):
        return None
    a = ishape(node, 0)
    out = count(_matmul_shape(node)[0].shape)
    return None if out is None or not is_int(a[-1]) else out * a[-1]


def _einsum_sizes(node):
    """Letter -> size for an explicit, ellipsis-free equation, and the output letters."""
    equation = attr(node, "equation").replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    shapes = [ishape(node, i) for i in range(len(node.inputs))]
    if "..." in equation or len(terms) != len(shapes) or any(s is None for s in shapes):
        return None, None
    sizes: dict[str, object] = {}
    for term, shape in zip(terms, shapes):
        if len(term) != len(shape):
            fail(node, f"term '{term}' does not fit an input of shape {fmt(shape)}")
        for letter, d in zip(term, shape):
            known = sizes.get(letter)
            if is_int(known) and is_int(d) and known != d:
                fail(node, f"index '{letter}' is {known} in one input and {d} in another")
            if not is_int(known):
                sizes[letter] = d
    if not arrow:
        rhs = "".join(sorted(c for c in sizes if lhs.count(c) == 1))
    return sizes, rhs


def _einsum_shape(node):
    sizes, rhs = _einsum_sizes(node)
    return [like(node, None if sizes is None else [sizes[c] for c in rhs])]


def _einsum_cost(node):
    sizes, _ = _einsum_sizes(node)
    if sizes is None or len(node.inputs) < 2 or not all(map(is_int, sizes.values())):
        return None
    return math.prod(sizes.values())


def _gemm_weight_axis(node, w):
    # Only a plain A @ B + C: alpha, beta and a transposed A would change what int8 scales mean.
    plain = float(attr(node, "alpha")) == 1.0 and float(attr(node, "beta")) == 1.0 and not int(attr(node, "transA"))
    if not plain or w.ndim != 2:
        return None
    return 0 if int(attr(node, "transB")) else 1


def _scale_gemm(node, w, s):
    # Y = alpha * A @ B + beta * C; a beta other than 1 would need the bias rescaled: left alone.
    transposed = bool(attr(node, "transB"))
    if float(attr(node, "beta")) != 1.0 or w.ndim != 2 or w.shape[0 if transposed else 1] != s.size:
        return None
    return w * (s[:, None] if transposed else s[None, :])


def _matmul_weight_axis(node, w):
    return w.ndim - 1 if w.ndim >= 2 else None


define(
    "Gemm",
    "A B C?",
    attrs={
        "alpha": Attr("float", 1.0),
        "beta": Attr("float", 1.0),
        "transA": Attr("int", 0),
        "transB": Attr("int", 0),
    },
    shape=_gemm_shape,
    cost=_gemm_cost,
    label="linear",
    weight=WeightLayout(_gemm_weight_axis, _scale_gemm),
    int8="layer-float",
)
define(
    "MatMul",
    "A B",
    shape=_matmul_shape,
    cost=_matmul_cost,
    label="matmul",
    weight=WeightLayout(_matmul_weight_axis),
    int8="layer-float",
)
define(
    "Einsum",
    "Inputs*",
    "Output",
    attrs={"equation": Attr("string")},
    shape=_einsum_shape,
    cost=_einsum_cost,
    label="matmul",
)


# -- pools --------------------------------------------------------------------------------
def _pool_shape(node):
    x = ishape(node, 0)
    if x is None:
        return [like(node, None)] * len(node.outputs)
    spatial = window_output(node, x[2:], attr(node, "kernel_shape"), ceil_mode=bool(attr(node, "ceil_mode")))
    shape = (*x[:2], *spatial)
    return [like(node, shape), like(node, shape, dtype=DType.int64)][: len(node.outputs)]


def _global_pool_shape(node):
    x = ishape(node, 0)
    return [like(node, None if x is None else (*x[:2], *[1] * (len(x) - 2)))]


_POOL_ATTRS = {**window_attrs(), "kernel_shape": Attr("ints"), "ceil_mode": Attr("int", 0)}
define(
    "MaxPool",
    "X",
    "Y Indices?",
    attrs={**_POOL_ATTRS, "storage_order": Attr("int", 0)},
    shape=_pool_shape,
    label="pool",
    int8="select",
)
_AVERAGE_POOL_ATTRS = {k: v for k, v in _POOL_ATTRS.items() if k != "dilations"}
define(
    "AveragePool",
    "X",
    attrs={**_AVERAGE_POOL_ATTRS, "count_include_pad": Attr("int", 0)},
    shape=_pool_shape,
    label="pool",
    int8="own-range",
)
define("LpPool", "X", attrs={**_POOL_ATTRS, "p": Attr("int", 2)}, shape=_pool_shape, label="pool")
define("GlobalAveragePool", "X", shape=_global_pool_shape, label="pool", int8="own-range")
define("GlobalMaxPool", "X", shape=_global_pool_shape, label="pool", int8="select")
define("GlobalLpPool", "X", attrs={"p": Attr("int", 2)}, shape=_global_pool_shape, label="pool")


# -- normalisation ------------------------------------------------------------------------
def _per_channel(*params: int):
    """Shape rule for norms whose listed inputs hold one value per channel (axis 1)."""

    def rule(node):
        x = ishape(node, 0)
        c = x[1] if x is not None and len(x) > 1 else None
        for i in params:
            p = ishape(node, i)
            if is_int(c) and p is not None and len(p) == 1 and is_int(p[0]) and p[0] != c:
                fail(node, f"input has {c} channels, {_port(node, i)} has {p[0]}")
        stats = [like(node, (c,), 1)]
        return [itype(node, 0), *stats * (len(node.outputs) - 1)]

    return rule


def _port(node, i: int) -> str:
    return get_op(node.op).inputs[i].rstrip("?*")


def _layer_norm_shape(node):
    x = ishape(node, 0)
    if x is None:
        stats = None
    else:
        axis = norm_axis(node, attr(node, "axis"), len(x))
        stats = (*x[:axis], *[1] * (len(x) - axis))
    return [itype(node, 0), *[like(node, stats, dtype=DType.float32)] * (len(node.outputs) - 1)]


_EPSILON = {"epsilon": Attr("float", 1e-5)}
define(
    "BatchNormalization",
    "X scale B input_mean input_var",
    "Y running_mean? running_var?",
    attrs={**_EPSILON, "momentum": Attr("float", 0.9), "training_mode": Attr("int", 0)},
    shape=_per_channel(1, 2, 3, 4),
    label="bn",
)
define("InstanceNormalization", "input scale B", "output", attrs=_EPSILON, shape=_per_channel(1, 2), label="in")
define(
    "LayerNormalization",
    "X Scale B?",
    "Y Mean? InvStdDev?",
    attrs={**_EPSILON, "axis": Attr("int", -1), "stash_type": Attr("int", 1)},
    shape=_layer_norm_shape,
    label="ln",
)
define(
    "GroupNormalization",
    "X scale bias",
    attrs={**_EPSILON, "num_groups": Attr("int")},
    shape=same_as(0),
    label="gn",
)
define(
    "LRN",
    "X",
    attrs={"alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75), "bias": Attr("float", 1.0), "size": Attr("int")},
    shape=same_as(0),
    label="norm",
)
define(
    "Dropout",
    "data ratio? training_mode?",
    "output mask?",
    attrs={"seed": Attr("int", None)},
    shape=lambda node: [itype(node, 0), like(node, ishape(node, 0), dtype=DType.bool)][: len(node.outputs)],
    label="dropout",
)


# -- recurrent layers ---------------------------------------------------------------------
def _recurrent(gates: int, extra: dict[str, Attr]):
    """Shape and cost rules for RNN/GRU/LSTM, which differ in their number of gates."""

    def dims(node):
        x, r = ishape(node, 0), ishape(node, 2)
        if x is None or len(x) != 3:
            return None
        seq, batch, features = x if not attr(node, "layout") else (x[1], x[0], x[2])
        hidden = attr(node, "hidden_size") or (r[-1] if r is not None else None)
        directions = 2 if attr(node, "direction") == "bidirectional" else 1
        w = ishape(node, 1)
        if w is not None and is_int(w[-1]) and is_int(features) and w[-1] != features:
            fail(node, f"input has {features} features, W expects {w[-1]}")
        return seq, batch, features, hidden, directions

    def shape(node):
        d = dims(node)
        if d is None:
            return [like(node, None)] * len(node.outputs)
        seq, batch, _, hidden, directions = d
        layout = attr(node, "layout")
        y = (seq, directions, batch, hidden) if not layout else (batch, seq, directions, hidden)
        state = (directions, batch, hidden) if not layout else (batch, directions, hidden)
        return [like(node, y)] + [like(node, state)] * (len(node.outputs) - 1)

    def cost(node):
        d = dims(node)
        if d is None:
            return None
        seq, batch, features, hidden, directions = d
        if not all(map(is_int, (seq, features, hidden))):
            return None
        return seq * (batch if is_int(batch) else 1) * directions * gates * (features + hidden) * hidden

    attrs = {
        "activation_alpha": Attr("floats", None),
        "activation_beta": Attr("floats", None),
        "activations": Attr("strings", None),
        "clip": Attr("float", None),
        "direction": Attr("string", "forward"),
        "hidden_size": Attr("int", None),
        "layout": Attr("int", 0),
        **extra,
    }
    return {"attrs": attrs, "shape": shape, "cost": cost, "label": "rnn"}


define(
    "RNN",
    "X W R B? sequence_lens? initial_h?",
    "Y? Y_h?",
    **_recurrent(1, {"activations": Attr("strings", ["Tanh", "Tanh"])}),
)
define(
    "GRU",
    "X W R B? sequence_lens? initial_h?",
    "Y? Y_h?",
    **_recurrent(3, {"linear_before_reset": Attr("int", 0)}),
)
define(
    "LSTM",
    "X W R B? sequence_lens? initial_h? initial_c? P?",
    "Y? Y_h? Y_c?",
    **_recurrent(4, {"input_forget": Attr("int", 0)}),
)
