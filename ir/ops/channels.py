"""Channel rules: where a channel that arrives at one port of an op continues.

A rule is called as ``rule(node, port, axis)`` for positions arriving on ``port`` along ``axis``
and returns a ``ChannelEffect`` (see ``ir/registry.py``): ties to other (port, axis) slots,
whether the node isolates (ends) the channel, and why removing it would be approximate or
impossible. Rules read only the node's types, attributes and constant operands, never layer
names, so they hold for every model. The dependency analysis (``passes/dependency.py``) is
built on these rules and nothing else.

Retarget rules rewrite the operands and attributes that carry sizes (a Reshape's target shape,
Split sizes, Slice bounds, a depthwise conv's group, an LSTM's hidden size) after pruning has
changed the channel counts flowing through a node. The prune pass calls them once every
constant is sliced and every value has its pruned type, with ``node.meta[REMOVED_META]`` holding
the removed positions per port and axis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..registry import ChannelChoice, ChannelEffect, Port, Tie, lookup
from .rules import is_int

FOLD_HINT = "run const-fold first"
"""Said by rules that meet a shape computed at run time, which const-fold turns into a constant."""

REMOVED_META = "removed_channels"
"""Node meta written by the prune pass for retarget rules: ``{port: {axis: removed positions}}``."""


# -- reading a node -------------------------------------------------------------------------
def _value(node, port: Port):
    kind, index = port
    values = node.inputs if kind == "in" else node.outputs
    return values[index] if index < len(values) else None


def _shape(node, port: Port) -> tuple | None:
    value = _value(node, port)
    return None if value is None or value.type is None else value.type.shape


def _dim(node, port: Port, axis: int) -> int | None:
    shape = _shape(node, port)
    if shape is None or not 0 <= axis < len(shape) or not is_int(shape[axis]):
        return None
    return int(shape[axis])


def _rank(node, port: Port) -> int | None:
    shape = _shape(node, port)
    return None if shape is None else len(shape)


def _const(node, index: int) -> np.ndarray | None:
    value = node.inputs[index] if index < len(node.inputs) else None
    return None if value is None or not value.is_const else value.const


def _ints(node, index: int) -> list[int] | None:
    array = _const(node, index)
    return None if array is None else [int(v) for v in array.reshape(-1)]


def _present(node, port: Port) -> bool:
    return _value(node, port) is not None


def _attr(node, key: str, default):
    value = node.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


def _port_name(node, port: Port) -> str:
    opdef = lookup(node.op, node.domain)
    kind, index = port
    names = (opdef.inputs if kind == "in" else opdef.outputs) if opdef else ()
    if index < len(names):
        return names[index].rstrip("?*")
    return f"{'input' if kind == 'in' else 'output'} {index}"


@functools.lru_cache(maxsize=512)
def iota(n: int) -> np.ndarray:
    """``arange(n)``, shared and read-only: the positions of an identity tie."""
    array = np.arange(n, dtype=np.int64)
    array.flags.writeable = False
    return array


# -- building effects -----------------------------------------------------------------------
def barrier(reason: str) -> ChannelEffect:
    return ChannelEffect(barrier=reason)


def _unknown(node, port: Port, axis: int) -> ChannelEffect:
    return barrier(f"the size of axis {axis} of {_port_name(node, port)} is not known (run shape inference)")


def tie_same(node, port: Port, axis: int, targets: Iterable[tuple[Port, int]], **effect) -> ChannelEffect:
    """Position p on the arrival slot is position p on every target slot (sizes must agree)."""
    values = {"in": node.inputs, "out": node.outputs}
    n = _size(values, port, axis)
    if n is None:
        return _unknown(node, port, axis)
    ties = []
    positions = iota(n)
    for target, target_axis in targets:
        kind, index = target
        if (target, target_axis) == (port, axis) or index >= len(values[kind]) or values[kind][index] is None:
            continue
        m = _size(values, target, target_axis)
        if m != n:
            if m is None:
                return _unknown(node, target, target_axis)
            return barrier(f"axis {target_axis} of {_port_name(node, target)} has {m} positions, not {n}")
        ties.append(Tie(target, target_axis, positions, positions))
    return ChannelEffect(ties=ties, **effect)


def _size(values: dict, port: Port, axis: int) -> int | None:
    kind, index = port
    value = values[kind][index] if index < len(values[kind]) else None
    shape = None if value is None or value.type is None else value.type.shape
    if shape is None or not 0 <= axis < len(shape):
        return None
    d = shape[axis]
    return int(d) if isinstance(d, (int, np.integer)) and not isinstance(d, bool) else None


def _outputs(node) -> list[Port]:
    return [("out", k) for k, v in enumerate(node.outputs) if v is not None]


def _inputs(node) -> list[Port]:
    return [("in", k) for k, v in enumerate(node.inputs) if v is not None]


# -- elementwise ----------------------------------------------------------------------------
def elementwise(node, port: Port, axis: int) -> ChannelEffect:
    """Input 0 and every output share positions on every axis; other inputs are scalars."""
    if port[0] == "in" and port[1] != 0:
        return barrier(f"{_port_name(node, port)} is not channel data")
    return tie_same(node, port, axis, [(p, axis) for p in [("in", 0), *_outputs(node)]])


def _normalising(reason: str, axis_of: Callable) -> Callable:
    """Elementwise, but approximate along the axis the op normalises over (softmax, LRN)."""

    def rule(node, port: Port, axis: int) -> ChannelEffect:
        if port[0] == "in" and port[1] != 0:
            return barrier(f"{_port_name(node, port)} is not channel data")
        rank = _rank(node, port)
        if rank is None:
            return _unknown(node, port, axis)
        normalised = axis_of(node) % rank == axis
        return tie_same(
            node,
            port,
            axis,
            [(p, axis) for p in [("in", 0), *_outputs(node)]],
            approximate=reason.format(op=node.op, axis=axis) if normalised else None,
        )

    return rule


def broadcasting(node, port: Port, axis: int) -> ChannelEffect:
    """Every input and the output, aligned from the right; a broadcast size-1 dim is not tied."""
    out_rank = _rank(node, ("out", 0))
    rank = _rank(node, port)
    if out_rank is None or rank is None:
        return _unknown(node, port, axis)
    n = _dim(node, port, axis)
    if n is None:
        return _unknown(node, port, axis)
    out_axis = axis + out_rank - rank
    out_dim = _dim(node, ("out", 0), out_axis)
    if n == 1 and out_dim != 1:
        return barrier(f"{_port_name(node, port)} is broadcast along axis {axis}")
    ties = []
    for target in [*_inputs(node), ("out", 0)]:
        if target == port:
            continue
        target_rank = _rank(node, target)
        if target_rank is None:
            return _unknown(node, target, 0)
        target_axis = out_axis - (out_rank - target_rank)
        if target_axis < 0:
            continue
        m = _dim(node, target, target_axis)
        if m is None:
            return _unknown(node, target, target_axis)
        if m == 1 and n != 1:
            continue
        ties.append(Tie(target, target_axis, iota(n), iota(n)))
    return ChannelEffect(ties=ties)


# -- normalisation --------------------------------------------------------------------------
def _channel_params(first_param: int, stats_outputs: bool, spatial_barrier: str | None):
    """BatchNormalization / InstanceNormalization: axis 1 of the data is axis 0 of each param."""

    def rule(node, port: Port, axis: int) -> ChannelEffect:
        params = [(("in", i), 0) for i in range(first_param, len(node.inputs)) if node.inputs[i] is not None]
        stats = [(p, 0) for p in _outputs(node) if p[1] > 0] if stats_outputs else []
        channel_slots = [(("in", 0), 1), (("out", 0), 1), *params, *stats]
        if (port, axis) in channel_slots:
            return tie_same(node, port, axis, channel_slots)
        if port not in (("in", 0), ("out", 0)):
            return barrier(f"{_port_name(node, port)} has one value per channel only")
        if axis >= 2 and spatial_barrier:
            return barrier(spatial_barrier.format(op=node.op, axis=axis))
        return tie_same(node, port, axis, [(("in", 0), axis), (("out", 0), axis)])

    return rule


def layer_normalization(node, port: Port, axis: int) -> ChannelEffect:
    """Axes from ``axis`` on are normalised (approximate); the params cover exactly those axes."""
    rank = _rank(node, ("in", 0))
    if rank is None:
        return _unknown(node, ("in", 0), 0)
    first = _attr(node, "axis", -1) % rank
    if port in (("in", 1), ("in", 2)):
        data_axis = axis + first
    elif port in (("out", 1), ("out", 2)):
        if axis >= first:
            return barrier(f"{_port_name(node, port)} has size 1 along the normalised axes")
        data_axis = axis
    else:
        data_axis = axis
    slots = [(("in", 0), data_axis), (("out", 0), data_axis)]
    if data_axis >= first:
        slots += [(p, data_axis - first) for p in (("in", 1), ("in", 2))]
        reason = f"LayerNormalization normalises over axis {data_axis}"
        return tie_same(node, port, axis, slots, approximate=reason)
    slots += [(p, data_axis) for p in (("out", 1), ("out", 2))]
    return tie_same(node, port, axis, slots)


def group_normalization(node, port: Port, axis: int) -> ChannelEffect:
    if port in (("in", 0), ("out", 0)) and axis == 0:
        return tie_same(node, port, axis, [(("in", 0), 0), (("out", 0), 0)])
    if port in (("in", 0), ("out", 0)) and axis >= 2:
        return barrier(f"GroupNormalization normalises over axis {axis}")
    return barrier("GroupNormalization's num_groups would have to change with the channel count")


# -- convolutions ---------------------------------------------------------------------------
def _within_group(n: int, per_group: int) -> np.ndarray:
    """Position of each of n channels inside its group (the channel itself for one group)."""
    return iota(n) if n == per_group else iota(n) % per_group


def conv(node, port: Port, axis: int) -> ChannelEffect:
    """Conv: output channels are weight rows; input channels are weight columns, per group.

    Grouped convs couple channel k of every group so the groups stay equal; a depthwise conv
    (one input channel per group) carries input channel c on to output channels
    ``[c*m, (c+1)*m)`` instead of isolating.
    """
    x, w = _shape(node, ("in", 0)), _shape(node, ("in", 1))
    if x is None or w is None or not all(is_int(d) for d in (x[1], *w[:2])):
        return _unknown(node, ("in", 0) if x is None else ("in", 1), 1)
    group = int(_attr(node, "group", 1))
    out_channels, per_group_in = int(w[0]), int(w[1])
    per_group_out = out_channels // group
    depthwise = group > 1 and per_group_in == 1
    in_slots = [(("in", 0), 1), (("in", 1), 1)]
    out_slots = [(("out", 0), 1), (("in", 1), 0), (("in", 2), 0)]
    if (port, axis) in out_slots:
        if depthwise:
            m = per_group_out
            positions = iota(out_channels)
            ties = [Tie(("in", 0), 1, positions, positions // m)]
            return _merge(tie_same(node, port, axis, out_slots), ties)
        effect = tie_same(node, port, axis, out_slots, isolates=True)
        if group > 1 and effect.barrier is None:
            effect.ties.append(Tie(port, axis, iota(out_channels), _within_group(out_channels, per_group_out)))
        return effect
    if (port, axis) in in_slots:
        channels = per_group_in * group
        if depthwise:
            if port != ("in", 0):
                return barrier("a depthwise kernel has one input channel")
            m = per_group_out
            here = np.repeat(iota(channels), m)
            there = iota(channels * m)
            return ChannelEffect(ties=[Tie(p, a, here, there) for p, a in out_slots if _present(node, p)])
        within = _within_group(channels, per_group_in)
        if port == ("in", 0):
            return ChannelEffect(ties=[Tie(("in", 1), 1, iota(channels), within)], isolates=True)
        return ChannelEffect(ties=[Tie(("in", 0), 1, within, iota(channels))], isolates=True)
    if port in (("in", 0), ("out", 0)) and axis == 0:
        return tie_same(node, port, axis, [(("in", 0), 0), (("out", 0), 0)])
    return barrier(f"{node.op} slides its kernel along axis {axis}")


def conv_transpose(node, port: Port, axis: int) -> ChannelEffect:
    """ConvTranspose: the weight is (in channels, out channels per group, kernel...)."""
    x, w = _shape(node, ("in", 0)), _shape(node, ("in", 1))
    if x is None or w is None or not all(is_int(d) for d in (x[1], *w[:2])):
        return _unknown(node, ("in", 0) if x is None else ("in", 1), 1)
    group = int(_attr(node, "group", 1))
    channels, per_group_out = int(w[0]), int(w[1])
    per_group_in = channels // group
    out_channels = per_group_out * group
    in_slots = [(("in", 0), 1), (("in", 1), 0)]
    out_slots = [(("out", 0), 1), (("in", 2), 0)]
    if group > 1 and per_group_in == 1:
        m = per_group_out
        if (port, axis) in in_slots:
            here = np.repeat(iota(channels), m)
            ties = [Tie(p, a, here, iota(out_channels)) for p, a in out_slots if _present(node, p)]
            return _merge(tie_same(node, port, axis, in_slots), ties)
        if (port, axis) in out_slots:
            positions = iota(out_channels)
            ties = [Tie(p, a, positions, positions // m) for p, a in in_slots]
            return _merge(tie_same(node, port, axis, out_slots), ties)
    elif (port, axis) in in_slots:
        effect = tie_same(node, port, axis, in_slots, isolates=True)
        if group > 1 and effect.barrier is None:
            effect.ties.append(Tie(port, axis, iota(channels), _within_group(channels, per_group_in)))
        return effect
    elif (port, axis) in out_slots:
        n = out_channels
        ties = [Tie(("in", 1), 1, iota(n), _within_group(n, per_group_out))]
        return _merge(tie_same(node, port, axis, out_slots, isolates=True), ties)
    elif (port, axis) == (("in", 1), 1):
        here = np.tile(iota(per_group_out), group)
        ties = [Tie(p, a, here, iota(out_channels)) for p, a in out_slots if _present(node, p)]
        return ChannelEffect(ties=ties, isolates=True)
    if port in (("in", 0), ("out", 0)) and axis == 0:
        return tie_same(node, port, axis, [(("in", 0), 0), (("out", 0), 0)])
    return barrier(f"{node.op} slides its kernel along axis {axis}")


def _merge(effect: ChannelEffect, ties: list[Tie]) -> ChannelEffect:
    if effect.barrier is None:
        effect.ties.extend(ties)
    return effect


# -- linear layers and matmuls --------------------------------------------------------------
def gemm(node, port: Port, axis: int) -> ChannelEffect:
    """Gemm with a constant B is a linear layer: isolating on its input and output features."""
    a_k = 0 if _attr(node, "transA", 0) else 1
    b_k = 1 if _attr(node, "transB", 0) else 0
    roles: dict[str, list[tuple[Port, int]]] = {
        "k": [(("in", 0), a_k), (("in", 1), b_k)],
        "m": [(("in", 0), 1 - a_k), (("out", 0), 0)],
        "n": [(("in", 1), 1 - b_k), (("out", 0), 1)],
    }
    bias_rank = _rank(node, ("in", 2)) if _present(node, ("in", 2)) else None
    if bias_rank:
        for role, out_axis in (("m", 0), ("n", 1)):
            bias_axis = out_axis - (2 - bias_rank)
            if bias_axis >= 0 and _dim(node, ("in", 2), bias_axis) != 1:
                roles[role].append((("in", 2), bias_axis))
    weighted = node.inputs[1] is not None and node.inputs[1].is_const
    for role, slots in roles.items():
        if (port, axis) in slots:
            return tie_same(node, port, axis, slots, isolates=weighted and role != "m")
    return barrier(f"{_port_name(node, port)} is broadcast along axis {axis}")


def matmul(node, port: Port, axis: int) -> ChannelEffect:
    """Batch axes are shared, the contracted axis ties A's columns to B's rows.

    With a constant weight on the right that is 2-D, or 2-D behind broadcast axes of size 1 (how
    torch.export writes some einsums), it is a linear layer over the last axis and isolates.
    Between two activations nothing isolates: q @ k^T and attn @ v carry the head axis from q,
    k and v to the attention output, so heads go whole.
    """
    ra, rb, r = _rank(node, ("in", 0)), _rank(node, ("in", 1)), _rank(node, ("out", 0))
    if ra is None or rb is None or r is None:
        return _unknown(node, port, axis)
    if ra < 2 or rb < 2:
        return barrier("MatMul with a vector operand")
    weighted = node.inputs[1].is_const and all(d == 1 for d in node.inputs[1].const.shape[:-2])
    kind = port[0]
    if port == ("in", 0):
        role = {ra - 1: "k", ra - 2: "m"}.get(axis, "batch")
        out_axis = axis + r - ra
    elif port == ("in", 1):
        role = {rb - 2: "k", rb - 1: "n"}.get(axis, "batch")
        out_axis = axis + r - rb
    elif kind == "out":
        role = {r - 2: "m", r - 1: "n"}.get(axis, "batch")
        out_axis = axis
    else:
        return barrier(f"{_port_name(node, port)} is not an operand")
    if role == "k":
        slots = [(("in", 0), ra - 1), (("in", 1), rb - 2)]
    elif role == "m":
        slots = [(("in", 0), ra - 2), (("out", 0), r - 2)]
    elif role == "n":
        slots = [(("in", 1), rb - 1), (("out", 0), r - 1)]
    else:
        n = _dim(node, port, axis)
        if n == 1 and _dim(node, ("out", 0), out_axis) != 1:
            return barrier(f"{_port_name(node, port)} is broadcast along axis {axis}")
        slots = [(("out", 0), out_axis)]
        for operand, rank in ((("in", 0), ra), (("in", 1), rb)):
            operand_axis = out_axis - (r - rank)
            if operand_axis >= 0 and (operand == port or _dim(node, operand, operand_axis) != 1):
                slots.append((operand, operand_axis))
    return tie_same(node, port, axis, slots, isolates=weighted and role in ("k", "n"))


def _einsum_terms(node) -> tuple[list[str], str] | str:
    """The input terms and the output term of an Einsum's equation, or why they cannot be used."""
    equation = str(_attr(node, "equation", "")).replace(" ", "")
    if "." in equation:
        return "Einsum with an ellipsis ('...')"
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if not arrow:  # implicit form: the letters that occur once, in alphabetical order
        rhs = "".join(sorted(c for c in set(lhs) if c != "," and lhs.count(c) == 1))
    if any(not c.isalpha() for c in "".join(terms) + rhs):
        return f"cannot read the Einsum equation '{equation}'"
    if len(terms) != len(node.inputs) or any(v is None for v in node.inputs):
        return f"the Einsum equation '{equation}' has {len(terms)} terms for {len(node.inputs)} inputs"
    return terms, rhs


def einsum(node, port: Port, axis: int) -> ChannelEffect:
    """Each letter of the equation is one set of channels, on every axis that letter labels.

    A letter kept in the output passes its positions through (like an elementwise op or a
    matmul's batch axes); a letter summed away couples the operands it appears in (a matmul's
    contracted axis). A letter read from a constant operand makes the node a layer: the
    constant's axis is sliced with the activations, and the node isolates the channels there
    (output letters only in constants are produced by the weight, summed letters that meet a
    constant are consumed by it), as does a letter summed over one operand alone (ReduceSum).
    Letters repeated within one term (diagonals, ``ii->i``) are refused.
    """
    parsed = _einsum_terms(node)
    if isinstance(parsed, str):
        return barrier(parsed)
    terms, rhs = parsed
    term = rhs if port == ("out", 0) else terms[port[1]] if port[0] == "in" else None
    if term is None:
        return barrier(f"{_port_name(node, port)} is not an Einsum output")
    rank = _rank(node, port)
    if rank is None:
        return _unknown(node, port, axis)
    if rank != len(term):
        return barrier(f"{_port_name(node, port)} has rank {rank}, its Einsum term '{term}' has {len(term)} letters")
    letter = term[axis]
    slots = [(("in", i), t.index(letter)) for i, t in enumerate(terms) if letter in t]
    if letter in rhs:
        slots.append((("out", 0), rhs.index(letter)))
    if any(t.count(letter) > 1 for t in (*terms, rhs)):
        return barrier(f"Einsum repeats index '{letter}' within one term (a diagonal)")
    holders = [node.inputs[p[1]] for p, _ in slots if p[0] == "in"]
    weighted = any(v.is_const for v in holders)
    activations = sum(not v.is_const for v in holders)
    if letter in rhs:
        isolates = weighted and not activations  # made by the weight, like a linear layer's outputs
    else:
        isolates = weighted or activations == 1  # read by the weight, or summed like ReduceSum
    return tie_same(node, port, axis, slots, isolates=isolates)


# -- recurrent layers -----------------------------------------------------------------------
def _recurrent(gates: int) -> Callable:
    """RNN/GRU/LSTM: a hidden unit is a row in every gate block of W, R and B, a column of R,
    and a position of Y, Y_h, Y_c and the initial states; input features are columns of W."""

    def rule(node, port: Port, axis: int) -> ChannelEffect:
        hidden = _dim(node, ("in", 2), 2)
        if hidden is None:
            return _unknown(node, ("in", 2), 2)
        feature_slots = [(("in", 0), 2), (("in", 1), 2)]
        if (port, axis) in feature_slots:
            return tie_same(node, port, axis, feature_slots, isolates=True)
        blocks = {
            (("out", 0), 3): 1,
            (("out", 1), 2): 1,
            (("out", 2), 2): 1,
            (("in", 5), 2): 1,
            (("in", 6), 2): 1,
            (("in", 2), 2): 1,
            (("in", 1), 1): gates,
            (("in", 2), 1): gates,
            (("in", 3), 1): 2 * gates,
            (("in", 7), 1): 3,
        }
        if (port, axis) not in blocks:
            return barrier(f"{node.op} runs along axis {axis} of {_port_name(node, port)}")
        n = _dim(node, port, axis)
        if n is None:
            return _unknown(node, port, axis)
        here = iota(n)
        units = here % hidden
        ties = []
        for (target, target_axis), count in blocks.items():
            if not _present(node, target):
                continue
            if _dim(node, target, target_axis) != hidden * count:
                return barrier(f"axis {target_axis} of {_port_name(node, target)} does not hold {count} x {hidden} units")
            ties.append(
                Tie(target, target_axis, np.tile(here, count), np.concatenate([g * hidden + units for g in range(count)]))
            )
        return ChannelEffect(ties=ties, isolates=True)

    return rule


# -- pools and resampling -------------------------------------------------------------------
def pool(node, port: Port, axis: int) -> ChannelEffect:
    """Pools keep batch and channel positions; they mix positions along the spatial axes."""
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses:
        return barrier(f"{node.op}'s Indices output encodes channel positions")
    if axis >= 2:
        return barrier(f"{node.op} mixes positions along axis {axis}")
    return tie_same(node, port, axis, [(("in", 0), axis), (("out", 0), axis)])


def resize(node, port: Port, axis: int) -> ChannelEffect:
    if port not in (("in", 0), ("out", 0)):
        return barrier(f"{_port_name(node, port)} is not channel data")
    if _present(node, ("in", 3)) and _const(node, 3) is None:
        return barrier(f"Resize's target sizes are computed at run time ({FOLD_HINT})")
    if _dim(node, ("in", 0), axis) != _dim(node, ("out", 0), axis):
        return barrier(f"Resize scales axis {axis}")
    return tie_same(node, port, axis, [(("in", 0), axis), (("out", 0), axis)])


def pad(node, port: Port, axis: int) -> ChannelEffect:
    if port not in (("in", 0), ("out", 0)):
        return barrier(f"{_port_name(node, port)} is not channel data")
    pads = _ints(node, 1)
    rank = _rank(node, ("in", 0))
    axes = _ints(node, 3) if _present(node, ("in", 3)) else list(range(rank or 0))
    if pads is None or axes is None or rank is None:
        return barrier(f"Pad's pads are computed at run time ({FOLD_HINT})")
    axes = [a % rank for a in axes]
    if axis in axes:
        j = axes.index(axis)
        if pads[j] != 0 or pads[j + len(axes)] != 0:
            return barrier(f"Pad pads axis {axis}")
    return tie_same(node, port, axis, [(("in", 0), axis), (("out", 0), axis)])


# -- reshaping ------------------------------------------------------------------------------
def axis_groups(src: Sequence, dst: Sequence) -> list[tuple[list[int], list[int]]] | None:
    """Match a reshape's input and output axes as contiguous groups with equal products.

    ``(N, 192, 4, 4) -> (N, 192, 16)`` gives ``[([0], [0]), ([1], [1]), ([2, 3], [2])]``.
    Size-1 axes are groups of their own with no counterpart. None when symbolic sizes make the
    grouping ambiguous.
    """
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        a = src[i] if i < len(src) else None
        b = dst[j] if j < len(dst) else None
        if a == 1 and b != 1:
            groups.append(([i], []))
            i += 1
            continue
        if b == 1 and a != 1:
            groups.append(([], [j]))
            j += 1
            continue
        if i == len(src) or j == len(dst):
            return None
        if a == b and a is not None:
            groups.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        if not (is_int(a) and is_int(b)):
            return None
        left, right, pa, pb = [i], [j], int(a), int(b)
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i == len(src) or not is_int(src[i]):
                    return None
                pa *= int(src[i])
                left.append(i)
                i += 1
            else:
                if j == len(dst) or not is_int(dst[j]):
                    return None
                pb *= int(dst[j])
                right.append(j)
                j += 1
        groups.append((left, right))
    return groups


def _digits(sizes: Sequence[int], k: int) -> np.ndarray:
    """Position along axis k of every flat index over axes of ``sizes`` (row-major)."""
    inner = math.prod(sizes[k + 1 :])
    return (iota(math.prod(sizes)) // inner) % sizes[k]


def _reshaping(shape_input: int | None) -> Callable:
    """Reshape, Flatten, Squeeze, Unsqueeze: same elements, regrouped axes.

    Axes are matched as contiguous groups (``axis_groups``). A merged axis (C, H, W -> C*H*W)
    ties channel c to its block of features, a split axis (D -> heads, d) ties a head to its
    block of positions; which of several axes carries the channels is a ``ChannelChoice``.
    """

    def rule(node, port: Port, axis: int) -> ChannelEffect:
        if port[0] == "in" and port[1] != 0:
            return barrier(f"{_port_name(node, port)} is not channel data")
        if shape_input is not None and _const(node, shape_input) is None:
            return barrier(f"{node.op}'s target shape is computed at run time ({FOLD_HINT})")
        src, dst = _shape(node, ("in", 0)), _shape(node, ("out", 0))
        if src is None or dst is None:
            return _unknown(node, port, axis)
        groups = axis_groups(src, dst)
        if groups is None:
            return barrier(f"cannot match the axes of {_fmt(src)} and {_fmt(dst)}")
        incoming = port[0] == "in"
        here_shape, there_shape = (src, dst) if incoming else (dst, src)
        other: Port = ("out", 0) if incoming else ("in", 0)
        index, group = next((k, g) for k, g in enumerate(groups) if axis in (g[0] if incoming else g[1]))
        here_axes, there_axes = group if incoming else group[::-1]
        if not there_axes:
            return barrier(f"axis {axis} of size 1 has no counterpart in {_fmt(there_shape)}")
        if len(here_axes) == 1 and len(there_axes) == 1:
            return tie_same(node, port, axis, [(other, there_axes[0])])
        if len(here_axes) > 1 and len(there_axes) > 1:
            return barrier(f"{node.op} regroups axes {here_axes} into {there_axes}")
        key = ("axes", index)
        if len(here_axes) > 1:  # a request: this axis of several merges into (or splits from) one
            sizes = [int(here_shape[a]) for a in here_axes]
            if sizes[here_axes.index(axis)] == 1:
                return barrier(f"axis {axis} of size 1 is merged with axes {here_axes}")
            candidates = [a for a, size in zip(here_axes, sizes) if size > 1]
            tie = Tie(other, there_axes[0], _digits(sizes, here_axes.index(axis)), iota(math.prod(sizes)))
            if len(candidates) == 1:
                return ChannelEffect(ties=[tie])
            return ChannelChoice(options=[tie], key=key, candidate=candidates.index(axis))
        sizes = [int(there_shape[a]) for a in there_axes]
        n = math.prod(sizes)
        options = [
            Tie(other, there_axis, iota(n), _digits(sizes, k))
            for k, there_axis in enumerate(there_axes)
            if sizes[k] > 1
        ]
        if len(options) == 1:
            return ChannelEffect(ties=options)
        return ChannelChoice(options=options, key=key)

    return rule


def _fmt(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape) or "scalar"


def transpose(node, port: Port, axis: int) -> ChannelEffect:
    rank = _rank(node, ("in", 0))
    if rank is None:
        return _unknown(node, port, axis)
    perm = list(_attr(node, "perm", None) or range(rank - 1, -1, -1))
    if port == ("in", 0):
        return tie_same(node, port, axis, [(("out", 0), perm.index(axis))])
    return tie_same(node, port, axis, [(("in", 0), perm[axis])])


def _block_channels(
    node, port: Port, axis: int, channel_map: Callable[[np.ndarray, int, int], np.ndarray], deep: Port
) -> ChannelEffect:
    """DepthToSpace / SpaceToDepth: each channel of the shallow side is a block of blocksize**2
    channels of the deep side (``deep``); ``channel_map(deep positions, shallow count, block)``
    gives the shallow channel of each deep one. Spatial axes interleave pixels of a block."""
    if axis == 0:
        return tie_same(node, port, axis, [(("in", 0), 0), (("out", 0), 0)])
    if axis != 1:
        return barrier(f"{node.op} interleaves a block's channels along axis {axis}")
    shallow: Port = ("out", 0) if deep == ("in", 0) else ("in", 0)
    deep_channels, shallow_channels = _dim(node, deep, 1), _dim(node, shallow, 1)
    if deep_channels is None or shallow_channels is None:
        return _unknown(node, deep if deep_channels is None else shallow, 1)
    positions = iota(deep_channels)
    mapped = channel_map(positions, shallow_channels, deep_channels // shallow_channels)
    if port == deep:
        return ChannelEffect(ties=[Tie(shallow, 1, positions, mapped)])
    return ChannelEffect(ties=[Tie(deep, 1, mapped, positions)])


def depth_to_space(node, port: Port, axis: int) -> ChannelEffect:
    """DCR: input channel ``k * C + c`` goes to output channel c; CRD: ``c * b*b + k``."""
    mode = _attr(node, "mode", "DCR")
    if mode == "CRD":
        return _block_channels(node, port, axis, lambda p, c, block: p // block, deep=("in", 0))
    return _block_channels(node, port, axis, lambda p, c, block: p % c, deep=("in", 0))


def space_to_depth(node, port: Port, axis: int) -> ChannelEffect:
    """Output channel ``k * C + c`` comes from input channel c."""
    return _block_channels(node, port, axis, lambda p, c, block: p % c, deep=("out", 0))


def cumsum(node, port: Port, axis: int) -> ChannelEffect:
    """A running sum along one axis; the other axes keep their positions."""
    if port not in (("in", 0), ("out", 0)):
        return barrier(f"{_port_name(node, port)} is not channel data")
    along, rank = _ints(node, 1), _rank(node, ("in", 0))
    if along is None or rank is None:
        return barrier(f"CumSum's axis is computed at run time ({FOLD_HINT})")
    if axis == along[0] % rank:
        return barrier(f"CumSum accumulates along axis {axis}")
    return tie_same(node, port, axis, [(("in", 0), axis), (("out", 0), axis)])


# -- joining and slicing --------------------------------------------------------------------
def concat(node, port: Port, axis: int) -> ChannelEffect:
    """Inputs sit side by side along the concat axis; other axes share positions."""
    rank = _rank(node, ("out", 0))
    if rank is None:
        return _unknown(node, port, axis)
    along = _attr(node, "axis", 0) % rank
    inputs = _inputs(node)
    if axis != along:
        return tie_same(node, port, axis, [(p, axis) for p in [*inputs, ("out", 0)]])
    sizes = [_dim(node, p, along) for p in inputs]
    if any(s is None for s in sizes):
        return _unknown(node, inputs[sizes.index(None)], along)
    offsets = np.cumsum([0, *sizes])
    if port[0] == "in":
        k = inputs.index(port)
        return ChannelEffect(ties=[Tie(("out", 0), along, iota(sizes[k]), offsets[k] + iota(sizes[k]))])
    return ChannelEffect(ties=[Tie(p, along, offsets[k] + iota(s), iota(s)) for k, (p, s) in enumerate(zip(inputs, sizes))])


def split(node, port: Port, axis: int) -> ChannelEffect:
    if port[0] == "in" and port[1] != 0:
        return barrier("Split's sizes are not channel data")
    rank = _rank(node, ("in", 0))
    if rank is None:
        return _unknown(node, port, axis)
    along = _attr(node, "axis", 0) % rank
    outputs = _outputs(node)
    if axis != along:
        return tie_same(node, port, axis, [(p, axis) for p in [("in", 0), *outputs]])
    sizes = [_dim(node, p, along) for p in outputs]
    if any(s is None for s in sizes):
        return _unknown(node, outputs[sizes.index(None)], along)
    offsets = np.cumsum([0, *sizes])
    if port == ("in", 0):
        return ChannelEffect(ties=[Tie(p, along, offsets[k] + iota(s), iota(s)) for k, (p, s) in enumerate(zip(outputs, sizes))])
    k = outputs.index(port)
    return ChannelEffect(ties=[Tie(("in", 0), along, iota(sizes[k]), offsets[k] + iota(sizes[k]))])


def _slice_bounds(node) -> tuple[list[int], list[int], list[int], list[int]] | None:
    starts, ends = _ints(node, 1), _ints(node, 2)
    rank = _rank(node, ("in", 0))
    if starts is None or ends is None or rank is None:
        return None
    axes = _ints(node, 3) if _present(node, ("in", 3)) else list(range(len(starts)))
    steps = _ints(node, 4) if _present(node, ("in", 4)) else [1] * len(starts)
    if axes is None or steps is None:
        return None
    return starts, ends, [a % rank for a in axes], steps


def slice_(node, port: Port, axis: int) -> ChannelEffect:
    """A slice along the channel axis keeps a sub-range; positions outside it are not tied."""
    if port not in (("in", 0), ("out", 0)):
        return barrier(f"{_port_name(node, port)} is not channel data")
    bounds = _slice_bounds(node)
    if bounds is None:
        return barrier(f"Slice bounds are computed at run time ({FOLD_HINT})")
    starts, ends, axes, steps = bounds
    if axis not in axes:
        return tie_same(node, port, axis, [(("in", 0), axis), (("out", 0), axis)])
    j = axes.index(axis)
    if steps[j] != 1:
        return barrier(f"Slice steps by {steps[j]} along axis {axis}")
    size = _dim(node, ("in", 0), axis)
    if size is None:
        return _unknown(node, ("in", 0), axis)
    selected = np.arange(*slice(starts[j], ends[j], 1).indices(size), dtype=np.int64)
    k = iota(len(selected))
    if port == ("in", 0):
        return ChannelEffect(ties=[Tie(("out", 0), axis, selected, k)])
    return ChannelEffect(ties=[Tie(("in", 0), axis, k, selected)])


def gather(node, port: Port, axis: int) -> ChannelEffect:
    data_rank, index_rank = _rank(node, ("in", 0)), _rank(node, ("in", 1))
    if data_rank is None or index_rank is None:
        return _unknown(node, port, axis)
    along = _attr(node, "axis", 0) % data_rank
    if port == ("in", 0):
        if axis == along:
            return barrier(f"Gather picks positions along axis {axis}")
        out_axis = axis if axis < along else axis + index_rank - 1
        return tie_same(node, port, axis, [(("out", 0), out_axis)])
    if port == ("out", 0):
        if axis < along:
            return tie_same(node, port, axis, [(("in", 0), axis)])
        if axis < along + index_rank:
            return barrier(f"axis {axis} of Gather's output comes from its indices")
        return tie_same(node, port, axis, [(("in", 0), axis - index_rank + 1)])
    return barrier("Gather's indices are not channel data")


def expand(node, port: Port, axis: int) -> ChannelEffect:
    if port not in (("in", 0), ("out", 0)):
        return barrier("Expand's shape is not channel data")
    rank, out_rank = _rank(node, ("in", 0)), _rank(node, ("out", 0))
    if rank is None or out_rank is None:
        return _unknown(node, port, axis)
    if _const(node, 1) is None:
        return barrier(f"Expand's target shape is computed at run time ({FOLD_HINT})")
    in_axis = axis if port == ("in", 0) else axis - (out_rank - rank)
    out_axis = axis if port == ("out", 0) else axis + (out_rank - rank)
    if in_axis < 0:
        return barrier(f"Expand creates axis {axis}")
    if _dim(node, ("in", 0), in_axis) != _dim(node, ("out", 0), out_axis):
        return barrier(f"Expand broadcasts along axis {out_axis}")
    return tie_same(node, port, axis, [(("in", 0), in_axis), (("out", 0), out_axis)])


def tile(node, port: Port, axis: int) -> ChannelEffect:
    if port not in (("in", 0), ("out", 0)):
        return barrier("Tile's repeats are not channel data")
    repeats = _ints(node, 1)
    if repeats is None:
        return barrier(f"Tile's repeats are computed at run time ({FOLD_HINT})")
    if repeats[axis] != 1:
        return barrier(f"Tile repeats axis {axis}")
    return tie_same(node, port, axis, [(("in", 0), axis), (("out", 0), axis)])


# -- reductions -----------------------------------------------------------------------------
_REDUCE_OVER_CHANNELS = {
    "ReduceSum": None,
    "ReduceSumSquare": None,
    "ReduceL1": None,
    "ReduceL2": None,
    "ReduceLogSum": None,
    "ReduceMean": "{op} averages over axis {axis}",
    "ReduceMax": "{op} takes the largest value over axis {axis}",
    "ReduceMin": "{op} takes the smallest value over axis {axis}",
    "ReduceLogSumExp": "{op} counts every position of axis {axis}",
}
"""Reductions whose result over the channel axis is the same with removed channels zeroed
(None), or only approximately so (why)."""


def _reduced_axes(node, rank: int) -> list[int] | None:
    if "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif _present(node, ("in", 1)):
        axes = _ints(node, 1)
        if axes is None:
            return None
    else:
        axes = [] if _attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    if not axes and not _attr(node, "noop_with_empty_axes", 0):
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


def reduction(node, port: Port, axis: int) -> ChannelEffect:
    """Over other axes a channel passes through; over the channel axis the reduction ends it."""
    rank = _rank(node, ("in", 0))
    if rank is None:
        return _unknown(node, port, axis)
    if port[0] == "in" and port[1] != 0:
        return barrier(f"{_port_name(node, port)} is not channel data")
    axes = _reduced_axes(node, rank)
    if axes is None:
        return barrier(f"{node.op}'s axes are computed at run time ({FOLD_HINT})")
    keep = bool(_attr(node, "keepdims", 1))
    kept = [a for a in range(rank) if keep or a not in axes]
    if port == ("out", 0):
        in_axis = kept[axis]
        if in_axis in axes:
            return barrier(f"axis {axis} of {node.op}'s output has size 1")
        return tie_same(node, port, axis, [(("in", 0), in_axis)])
    if axis not in axes:
        return tie_same(node, port, axis, [(("out", 0), kept.index(axis))])
    if node.op not in _REDUCE_OVER_CHANNELS:
        return barrier(f"{node.op} over axis {axis} does not ignore zeroed positions")
    reason = _REDUCE_OVER_CHANNELS[node.op]
    return ChannelEffect(isolates=True, approximate=reason.format(op=node.op, axis=axis) if reason else None)


def arg_reduction(node, port: Port, axis: int) -> ChannelEffect:
    rank = _rank(node, ("in", 0))
    if rank is None:
        return _unknown(node, port, axis)
    along = _attr(node, "axis", 0) % rank
    keep = bool(_attr(node, "keepdims", 1))
    kept = [a for a in range(rank) if keep or a != along]
    if port == ("in", 0):
        if axis == along:
            return barrier(f"{node.op} returns positions along axis {axis}")
        return tie_same(node, port, axis, [(("out", 0), kept.index(axis))])
    in_axis = kept[axis]
    if in_axis == along:
        return barrier(f"{node.op} returns positions along axis {in_axis}")
    return tie_same(node, port, axis, [(("in", 0), in_axis)])


def shape_of(node, port: Port, axis: int) -> ChannelEffect:
    """Reading a shape is harmless outside the read range; inside it the value would change."""
    rank = _rank(node, ("in", 0))
    if port != ("in", 0) or rank is None:
        return barrier("Shape's output is not channel data")
    start, end = _attr(node, "start", 0), _attr(node, "end", None)
    if axis in range(rank)[start:end]:
        return barrier(f"{node.op} reads the size of axis {axis} ({FOLD_HINT})")
    return ChannelEffect()


# -- quantisation ---------------------------------------------------------------------------
def quantize(node, port: Port, axis: int) -> ChannelEffect:
    """x and y share positions; a 1-D scale and zero point follow the quantised axis."""
    rank = _rank(node, ("in", 0))
    if rank is None:
        return _unknown(node, port, axis)
    along = _attr(node, "axis", 1) % rank
    per_axis = _rank(node, ("in", 1)) == 1
    params = [(("in", i), 0) for i in (1, 2) if _present(node, ("in", i))] if per_axis else []
    if port in (("in", 1), ("in", 2)):
        if not per_axis:
            return barrier(f"{_port_name(node, port)} is one value for the whole tensor")
        return tie_same(node, port, axis, [(("in", 0), along), (("out", 0), along), *params])
    slots = [(("in", 0), axis), (("out", 0), axis)]
    if axis == along:
        slots += params
    return tie_same(node, port, axis, slots)


def dynamic_quantize(node, port: Port, axis: int) -> ChannelEffect:
    if port not in (("in", 0), ("out", 0)):
        return barrier(f"{_port_name(node, port)} is one value for the whole tensor")
    return tie_same(
        node, port, axis, [(("in", 0), axis), (("out", 0), axis)],
        approximate="DynamicQuantizeLinear's scale depends on every channel",
    )


# -- retargeting ----------------------------------------------------------------------------
def replace_constant_input(node, index: int, array: np.ndarray) -> None:
    """Give input ``index`` a new constant value without touching other users of the old one."""
    old = node.inputs[index] if index < len(node.inputs) else None
    if old is not None and old.is_const:
        array = np.asarray(array, dtype=old.const.dtype)
        if old.const.shape == array.shape and np.array_equal(old.const, array):
            return
        if len(old.uses) == 1 and not old.is_graph_output:
            old.const = array
            return
    graph = node.graph
    hint = old.name if old is not None else f"{node.name}_{_port_name(node, ('in', index))}"
    new = graph.add_constant(hint, np.asarray(array))
    if index < len(node.inputs):
        node.replace_input_with(index, new)
    else:
        while len(node.inputs) < index:
            node.append_input(None)
        node.append_input(new)
    if old is not None and old.is_const and not old.uses and not old.is_graph_output:
        graph.remove_constant(old)


def _removed(node, port: Port) -> dict[int, np.ndarray]:
    return node.meta.get(REMOVED_META, {}).get(port, {})


def _out_shape(node, k: int = 0) -> tuple:
    return node.outputs[k].type.shape


def retarget_reshape(node) -> None:
    """Rewrite the target shape for the axes whose size changed; -1 and 0 stay where still valid."""
    target = _const(node, 1)
    if target is None:
        return
    dims = target.astype(np.int64).copy()
    out_removed, in_removed = _removed(node, ("out", 0)), _removed(node, ("in", 0))
    src, dst = node.inputs[0].type.shape, _out_shape(node)
    copies_input = not _attr(node, "allowzero", 0)
    for k, d in enumerate(dims):
        if d == 0 and copies_input:
            if (k in in_removed or k in out_removed) and src[k] != dst[k]:
                dims[k] = dst[k]
        elif k in out_removed and d != -1:
            dims[k] = dst[k]
    replace_constant_input(node, 1, dims)


def retarget_expand(node) -> None:
    target = _const(node, 1)
    if target is None:
        return
    dims = target.astype(np.int64).copy()
    dst = _out_shape(node)
    offset = len(dst) - len(dims)
    for out_axis in _removed(node, ("out", 0)):
        k = out_axis - offset
        if k >= 0 and dims[k] != 1:
            dims[k] = dst[out_axis]
    replace_constant_input(node, 1, dims)


def retarget_split(node) -> None:
    rank = len(node.inputs[0].type.shape)
    along = _attr(node, "axis", 0) % rank
    if along not in _removed(node, ("in", 0)):
        return
    sizes = np.array([v.type.shape[along] for v in node.outputs], dtype=np.int64)
    node.attrs.pop("num_outputs", None)
    replace_constant_input(node, 1, sizes)


def retarget_slice(node) -> None:
    """Bounds of a sliced channel axis move to where the kept positions are now."""
    bounds = _slice_bounds(node)
    removed = _removed(node, ("in", 0))
    if bounds is None or not removed:
        return
    starts, ends, axes, _ = bounds
    for j, axis in enumerate(axes):
        if axis not in removed:
            continue
        gone = np.sort(removed[axis])
        old_size = node.inputs[0].type.shape[axis] + len(gone)
        selected = np.arange(*slice(starts[j], ends[j], 1).indices(old_size), dtype=np.int64)
        kept = np.setdiff1d(selected, gone, assume_unique=True)
        moved = kept - np.searchsorted(gone, kept)
        starts[j], ends[j] = (int(moved[0]), int(moved[-1]) + 1) if len(moved) else (0, 0)
    replace_constant_input(node, 1, np.array(starts, dtype=np.int64))
    replace_constant_input(node, 2, np.array(ends, dtype=np.int64))


def retarget_resize(node) -> None:
    sizes = _const(node, 3)
    if sizes is None or not sizes.size:
        return
    rank = len(_out_shape(node))
    axes = [a % rank for a in (node.attrs.get("axes") or range(rank))]
    values = sizes.astype(np.int64).copy()
    for out_axis in _removed(node, ("out", 0)):
        if out_axis in axes:
            values[axes.index(out_axis)] = _out_shape(node)[out_axis]
    replace_constant_input(node, 3, values)


def retarget_conv(node) -> None:
    """A depthwise conv has one group per input channel: its group follows the channel count."""
    group = int(_attr(node, "group", 1))
    per_group = int(node.inputs[1].const.shape[1]) if node.inputs[1].is_const else None
    channels = node.inputs[0].type.shape[1]
    if group > 1 and per_group and is_int(channels) and channels // per_group != group:
        node.attrs["group"] = int(channels) // per_group


def retarget_conv_transpose(node) -> None:
    group = int(_attr(node, "group", 1))
    channels = node.inputs[0].type.shape[1]
    removed = len(_removed(node, ("in", 0)).get(1, ()))
    if group > 1 and removed and group == channels + removed:
        node.attrs["group"] = int(channels)


def retarget_recurrent(node) -> None:
    if node.inputs[2] is not None and node.inputs[2].type is not None:
        node.attrs["hidden_size"] = int(node.inputs[2].type.shape[2])


# -- the tables -----------------------------------------------------------------------------
_ELEMENTWISE = (
    "Relu", "Sigmoid", "Tanh", "Softplus", "Softsign", "Mish", "HardSwish", "HardSigmoid",
    "LeakyRelu", "Elu", "Celu", "ThresholdedRelu", "Selu", "Gelu", "Neg", "Abs", "Sqrt", "Exp",
    "Log", "Erf", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not", "Clip",
    "Identity", "Cast", "CastLike", "Dropout", "IsNaN", "IsInf", "Swish",
)  # fmt: skip
_BROADCASTING = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "PRelu", "BitShift",
)  # fmt: skip

CHANNEL_RULES: dict[str, Callable] = {
    **{name: elementwise for name in _ELEMENTWISE},
    **{name: broadcasting for name in _BROADCASTING},
    **{name: reduction for name in (*_REDUCE_OVER_CHANNELS, "ReduceProd")},
    **{name: pool for name in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")},
    "Softmax": _normalising("{op} normalises over axis {axis}", lambda n: _attr(n, "axis", -1)),
    "LogSoftmax": _normalising("{op} normalises over axis {axis}", lambda n: _attr(n, "axis", -1)),
    "Hardmax": _normalising("{op} picks one position along axis {axis}", lambda n: _attr(n, "axis", -1)),
    "LRN": _normalising("LRN normalises across neighbouring channels", lambda n: 1),
    "BatchNormalization": _channel_params(1, stats_outputs=True, spatial_barrier=None),
    "InstanceNormalization": _channel_params(1, stats_outputs=False, spatial_barrier="{op} normalises over axis {axis}"),
    "LayerNormalization": layer_normalization,
    "GroupNormalization": group_normalization,
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "Einsum": einsum,
    "RNN": _recurrent(1),
    "GRU": _recurrent(3),
    "LSTM": _recurrent(4),
    "Resize": resize,
    "Pad": pad,
    "Reshape": _reshaping(shape_input=1),
    "Flatten": _reshaping(shape_input=None),
    "Squeeze": _reshaping(shape_input=None),
    "Unsqueeze": _reshaping(shape_input=None),
    "Transpose": transpose,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "Expand": expand,
    "Tile": tile,
    "CumSum": cumsum,
    "DepthToSpace": depth_to_space,
    "SpaceToDepth": space_to_depth,
    "ArgMax": arg_reduction,
    "ArgMin": arg_reduction,
    "Shape": shape_of,
    "QuantizeLinear": quantize,
    "DequantizeLinear": quantize,
    "DynamicQuantizeLinear": dynamic_quantize,
}
"""Op name -> channel rule. An op without an entry is a barrier: no channel crosses it."""

RETARGET_RULES: dict[str, Callable] = {
    "Reshape": retarget_reshape,
    "Expand": retarget_expand,
    "Split": retarget_split,
    "Slice": retarget_slice,
    "Resize": retarget_resize,
    "Conv": retarget_conv,
    "ConvTranspose": retarget_conv_transpose,
    "RNN": retarget_recurrent,
    "GRU": retarget_recurrent,
    "LSTM": retarget_recurrent,
}
"""Op name -> rule that rewrites size-carrying operands and attributes after pruning."""


def _attach() -> None:
    for name, rule in CHANNEL_RULES.items():
        opdef = lookup(name)
        if opdef is not None:
            opdef.channel = rule
    for name, rule in RETARGET_RULES.items():
        opdef = lookup(name)
        if opdef is not None:
            opdef.retarget = rule


_attach()
