"""Channel rules of the op registry, one op at a time: which slots a channel continues on, at
which positions, and whether the op isolates, approximates or blocks it."""

from __future__ import annotations

import numpy as np
import pytest

from irtool.ir import DType, Graph, TensorType
from irtool.ir.ops.channels import CHANNEL_RULES, RETARGET_RULES, axis_groups
from irtool.ir.registry import ChannelChoice
from irtool.ir.registry import lookup
from irtool.ir.shapes import infer_shapes

F32 = DType.float32
RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _node(op: str, input_shapes, attrs=None, *, consts=None, outputs: int = 1):
    """A one-node graph: activations of the given shapes, constants from ``consts`` (index -> array)."""
    graph = Graph()
    consts = consts or {}
    inputs = []
    for i, shape in enumerate(input_shapes):
        if i in consts:
            inputs.append(None if consts[i] is None else graph.add_constant(f"c{i}", consts[i]))
        else:
            inputs.append(graph.add_input(f"x{i}", TensorType(F32, tuple(shape))))
    node = graph.add_node(op, inputs, attrs or {}, outputs=outputs, name="n")
    infer_shapes(graph)
    graph.outputs = [v for v in node.outputs]
    return node


def _effect(node, port, axis):
    return lookup(node.op).channel(node, port, axis)


def _ties(effect):
    return {(t.port, t.axis): (list(t.here), list(t.there)) for t in effect.ties}


def test_every_rule_is_attached_to_its_opdef():
    missing = [name for name in CHANNEL_RULES if lookup(name) is not None and lookup(name).channel is not CHANNEL_RULES[name]]
    assert missing == []
    assert lookup("Reshape").retarget is RETARGET_RULES["Reshape"]
    assert lookup("Conv").channel is not None and lookup("NonZero").channel is None
    assert "NonZero" not in CHANNEL_RULES and lookup("Einsum").channel is CHANNEL_RULES["Einsum"]


def test_conv_output_channels_are_filters_and_isolate():
    node = _node("Conv", [(1, 4, 6, 6), None, None], consts={1: _randn(8, 4, 3, 3), 2: _randn(8)})
    effect = _effect(node, ("out", 0), 1)
    assert effect.isolates and effect.barrier is None
    assert _ties(effect) == {(("in", 1), 0): (list(range(8)), list(range(8))), (("in", 2), 0): (list(range(8)), list(range(8)))}
    inputs = _effect(node, ("in", 0), 1)
    assert inputs.isolates and _ties(inputs) == {(("in", 1), 1): (list(range(4)), list(range(4)))}
    assert "slides its kernel along axis 2" in _effect(node, ("in", 0), 2).barrier


def test_depthwise_conv_carries_channels_through():
    node = _node("Conv", [(1, 3, 6, 6), None], {"group": 3}, consts={1: _randn(6, 1, 3, 3)})
    effect = _effect(node, ("in", 0), 1)
    assert not effect.isolates
    assert _ties(effect)[(("out", 0), 1)] == ([0, 0, 1, 1, 2, 2], list(range(6)))
    back = _ties(_effect(node, ("out", 0), 1))
    assert back[(("in", 0), 1)] == (list(range(6)), [0, 0, 1, 1, 2, 2])


def test_grouped_conv_couples_channel_k_of_every_group():
    node = _node("Conv", [(1, 8, 6, 6), None], {"group": 2}, consts={1: _randn(6, 4, 3, 3)})
    outputs = _effect(node, ("out", 0), 1)
    assert outputs.isolates
    assert _ties(outputs)[(("out", 0), 1)] == (list(range(6)), [0, 1, 2, 0, 1, 2])
    inputs = _ties(_effect(node, ("in", 0), 1))
    assert inputs[(("in", 1), 1)] == (list(range(8)), [0, 1, 2, 3, 0, 1, 2, 3])


def test_broadcast_ties_channels_but_not_a_broadcast_size_one_axis():
    node = _node("Mul", [(1, 8, 1, 1), (1, 8, 5, 5)])
    scale = _ties(_effect(node, ("in", 0), 1))
    assert set(scale) == {(("in", 1), 1), (("out", 0), 1)}
    spatial = _ties(_effect(node, ("in", 1), 2))
    assert set(spatial) == {(("out", 0), 2)}
    assert "broadcast along axis 2" in _effect(node, ("in", 0), 2).barrier


def test_bias_of_a_matmul_linear_is_aligned_from_the_right():
    node = _node("Add", [(4,), (2, 3, 4)])
    assert set(_ties(_effect(node, ("in", 0), 0))) == {(("in", 1), 2), (("out", 0), 2)}


def test_concat_offsets_and_split_sub_ranges():
    concat = _node("Concat", [(1, 3, 4, 4), (1, 5, 4, 4)], {"axis": 1})
    assert _ties(_effect(concat, ("in", 1), 1)) == {(("out", 0), 1): (list(range(5)), list(range(3, 8)))}
    back = _ties(_effect(concat, ("out", 0), 1))
    assert back[(("in", 0), 1)] == ([0, 1, 2], [0, 1, 2]) and back[(("in", 1), 1)] == ([3, 4, 5, 6, 7], list(range(5)))
    split = _node("Split", [(1, 8, 2, 2), None], {"axis": 1}, consts={1: np.array([3, 5])}, outputs=2)
    assert _ties(_effect(split, ("out", 1), 1)) == {(("in", 0), 1): (list(range(5)), list(range(3, 8)))}


def test_slice_maps_its_range_and_refuses_steps():
    consts = {1: np.array([2]), 2: np.array([6]), 3: np.array([1])}
    node = _node("Slice", [(1, 8, 2, 2), None, None, None], consts=consts)
    assert _ties(_effect(node, ("in", 0), 1)) == {(("out", 0), 1): ([2, 3, 4, 5], [0, 1, 2, 3])}
    stepped = _node("Slice", [(1, 8, 2, 2), None, None, None, None], consts={**consts, 4: np.array([2])})
    assert "steps by 2" in _effect(stepped, ("in", 0), 1).barrier


def test_flatten_ties_a_channel_to_its_block_of_features():
    node = _node("Flatten", [(1, 4, 2, 2)], {"axis": 1})
    request = _effect(node, ("in", 0), 1)
    assert isinstance(request, ChannelChoice) and request.candidate == 0
    tie = request.options[0]
    assert (tie.port, tie.axis) == (("out", 0), 1)
    assert list(tie.here) == [c for c in range(4) for _ in range(4)] and list(tie.there) == list(range(16))
    assert _effect(node, ("in", 0), 3).candidate == 2
    assert axis_groups((1, 4, 2, 2), (1, 16)) == [([0], [0]), ([1, 2, 3], [1])]


def test_head_split_offers_each_axis_and_requests_its_own():
    node = _node("Reshape", [(1, 5, 12), None], consts={1: np.array([1, 5, 3, 4])})
    offer = _effect(node, ("in", 0), 2)
    assert isinstance(offer, ChannelChoice) and offer.candidate is None
    assert [(t.axis, list(t.there)) for t in offer.options] == [
        (2, [p // 4 for p in range(12)]),
        (3, [p % 4 for p in range(12)]),
    ]
    request = _effect(node, ("out", 0), 2)
    assert isinstance(request, ChannelChoice) and request.candidate == 0 and request.key == offer.key
    assert list(request.options[0].here) == [p // 4 for p in range(12)]


def test_transpose_gather_and_reductions():
    transpose = _node("Transpose", [(1, 3, 4, 5)], {"perm": [0, 2, 3, 1]})
    assert set(_ties(_effect(transpose, ("in", 0), 1))) == {(("out", 0), 3)}
    gather = _node("Gather", [(2, 6, 7), None], {"axis": 1}, consts={1: np.array(0)})
    assert set(_ties(_effect(gather, ("in", 0), 2))) == {(("out", 0), 1)}
    assert "picks positions along axis 1" in _effect(gather, ("in", 0), 1).barrier
    mean = _node("ReduceMean", [(1, 8, 4, 4), None], {"keepdims": 0}, consts={1: np.array([2, 3])})
    assert set(_ties(_effect(mean, ("in", 0), 1))) == {(("out", 0), 1)}
    over_channels = _node("ReduceMean", [(1, 8, 4, 4), None], consts={1: np.array([1])})
    effect = _effect(over_channels, ("in", 0), 1)
    assert effect.isolates and "averages over axis 1" in effect.approximate
    total = _effect(_node("ReduceSum", [(1, 8, 4, 4), None], consts={1: np.array([1])}), ("in", 0), 1)
    assert total.isolates and total.approximate is None


def test_normalisation_over_channels_is_approximate():
    ln = _node("LayerNormalization", [(1, 5, 8), None, None], consts={1: _randn(8), 2: _randn(8)})
    effect = _effect(ln, ("in", 0), 2)
    assert "normalises over axis 2" in effect.approximate
    assert set(_ties(effect)) == {(("out", 0), 2), (("in", 1), 0), (("in", 2), 0)}
    assert _effect(ln, ("in", 0), 1).approximate is None
    softmax = _node("Softmax", [(1, 3, 5, 5)], {"axis": -1})
    assert _effect(softmax, ("in", 0), 3).approximate and _effect(softmax, ("in", 0), 1).approximate is None
    gn = _node("GroupNormalization", [(1, 8, 4, 4), None, None], {"num_groups": 2}, consts={1: _randn(8), 2: _randn(8)})
    assert "num_groups" in _effect(gn, ("in", 0), 1).barrier


def test_lstm_hidden_unit_ties_every_gate_block():
    hidden, features = 3, 5
    consts = {1: _randn(1, 4 * hidden, features), 2: _randn(1, 4 * hidden, hidden), 3: _randn(1, 8 * hidden)}
    node = _node("LSTM", [(7, 1, features), None, None, None], {"hidden_size": hidden}, consts=consts, outputs=3)
    effect = _effect(node, ("out", 0), 3)
    assert effect.isolates
    ties = _ties(effect)
    assert ties[(("in", 1), 1)] == ([0, 1, 2] * 4, [g * hidden + u for g in range(4) for u in range(3)])
    assert ties[(("in", 3), 1)][1] == [g * hidden + u for g in range(8) for u in range(3)]
    assert ties[(("in", 2), 2)] == ([0, 1, 2], [0, 1, 2])
    assert _ties(_effect(node, ("in", 0), 2)) == {(("in", 1), 2): (list(range(5)), list(range(5)))}


def test_matmul_between_activations_shares_heads_and_contracts():
    node = _node("MatMul", [(1, 3, 5, 4), (1, 3, 4, 5)])
    heads = _effect(node, ("in", 0), 1)
    assert not heads.isolates and set(_ties(heads)) == {(("out", 0), 1), (("in", 1), 1)}
    assert set(_ties(_effect(node, ("in", 0), 3))) == {(("in", 1), 2)}
    linear = _node("MatMul", [(1, 5, 4), None], consts={1: _randn(4, 6)})
    assert _effect(linear, ("out", 0), 2).isolates and _effect(linear, ("in", 0), 2).isolates
    assert not _effect(linear, ("in", 0), 1).isolates


def test_einsum_passes_kept_letters_through_and_contracts_summed_ones():
    conv1x1 = _node("Einsum", [(1, 4, 5, 5), None], {"equation": "bchw,oc->bohw"}, consts={1: _randn(6, 4)})
    consumed = _effect(conv1x1, ("in", 0), 1)
    assert consumed.isolates and consumed.barrier is None
    assert _ties(consumed) == {(("in", 1), 1): (list(range(4)), list(range(4)))}
    produced = _effect(conv1x1, ("out", 0), 1)
    assert produced.isolates and _ties(produced) == {(("in", 1), 0): (list(range(6)), list(range(6)))}
    spatial = _effect(conv1x1, ("in", 0), 2)
    assert not spatial.isolates and _ties(spatial) == {(("out", 0), 2): (list(range(5)), list(range(5)))}
    linear = _node("Einsum", [(2, 7, 8), None], {"equation": "b l d, h d -> b l h"}, consts={1: _randn(3, 8)})
    assert set(_ties(_effect(linear, ("in", 0), 2))) == {(("in", 1), 1)}
    assert _effect(linear, ("out", 0), 2).isolates and not _effect(linear, ("in", 0), 1).isolates
    # between activations: heads pass through, the summed axis couples q and k, nothing isolates
    scores = _node("Einsum", [(1, 2, 5, 4), (1, 2, 6, 4)], {"equation": "bhqd,bhkd->bhqk"})
    heads = _effect(scores, ("in", 0), 1)
    assert not heads.isolates and set(_ties(heads)) == {(("in", 1), 1), (("out", 0), 1)}
    summed = _effect(scores, ("in", 1), 3)
    assert not summed.isolates and _ties(summed) == {(("in", 0), 3): (list(range(4)), list(range(4)))}
    # a per-channel scale by a constant is a parameter, not a layer
    scale = _node("Einsum", [(1, 4, 3), None], {"equation": "bcl,c->bcl"}, consts={1: _randn(4)})
    effect = _effect(scale, ("in", 0), 1)
    assert not effect.isolates and set(_ties(effect)) == {(("in", 1), 0), (("out", 0), 1)}
    # summed over one operand alone: a ReduceSum, which ends the channel
    total = _effect(_node("Einsum", [(1, 4, 3)], {"equation": "bcl->bl"}), ("in", 0), 1)
    assert total.isolates and total.barrier is None and _ties(total) == {}
    implicit = _node("Einsum", [(3, 4), (4, 5)], {"equation": "ij,jk"})
    assert set(_ties(_effect(implicit, ("in", 1), 1))) == {(("out", 0), 1)}
    assert set(_ties(_effect(implicit, ("in", 0), 1))) == {(("in", 1), 0)}


def test_einsum_refuses_diagonals_and_ellipses():
    diagonal = _node("Einsum", [(2, 4, 4)], {"equation": "bii->bi"})
    assert "diagonal" in _effect(diagonal, ("in", 0), 1).barrier
    assert "diagonal" in _effect(diagonal, ("out", 0), 1).barrier
    assert _effect(diagonal, ("in", 0), 0).barrier is None  # b is still a plain axis
    ellipsis = _node("Einsum", [(2, 3, 4), None], {"equation": "...d,hd->...h"}, consts={1: _randn(5, 4)})
    assert "ellipsis" in _effect(ellipsis, ("in", 0), 2).barrier
    assert "ellipsis" in _effect(ellipsis, ("out", 0), 2).barrier


def test_retarget_rewrites_a_reshape_target_and_a_depthwise_group():
    from irtool.ir.ops.channels import REMOVED_META

    node = _node("Reshape", [(1, 5, 12), None], consts={1: np.array([1, 5, 3, 4])})
    node.outputs[0].type = node.outputs[0].type.with_shape((1, 5, 2, 4))
    node.inputs[0].type = node.inputs[0].type.with_shape((1, 5, 8))
    node.meta[REMOVED_META] = {("out", 0): {2: np.array([1])}, ("in", 0): {2: np.arange(4, 8)}}
    lookup("Reshape").retarget(node)
    assert node.inputs[1].const.tolist() == [1, 5, 2, 4]
    conv = _node("Conv", [(1, 3, 6, 6), None], {"group": 3}, consts={1: _randn(3, 1, 3, 3)})
    conv.inputs[0].type = conv.inputs[0].type.with_shape((1, 2, 6, 6))
    lookup("Conv").retarget(conv)
    assert conv.attrs["group"] == 2


def test_pruning_through_einsums_slices_each_weight_on_its_letter_and_is_exact():
    from irtool.passes.base import PassManager
    from irtool.passes.cost import graph_cost
    from irtool.passes.oracle import check_equivalence, copy_graph

    graph = Graph()
    x = graph.add_input("x", TensorType(F32, (1, 3, 6, 6)))
    conv = graph.add_node("Conv", [x, graph.add_constant("w0", _randn(8, 3, 3, 3))], {"pads": [1, 1, 1, 1]}, name="conv")
    scaled = graph.add_node("Einsum", [conv.outputs[0], graph.add_constant("s", _randn(8))], {"equation": "bchw,c->bchw"}, name="scale")
    relu = graph.add_node("Relu", [scaled.outputs[0]], name="relu")
    mix = graph.add_node("Einsum", [graph.add_constant("w1", _randn(6, 8)), relu.outputs[0]], {"equation": "oc,bchw->bohw"}, name="mix")
    graph.outputs = [mix.outputs[0]]
    infer_shapes(graph)
    before = graph_cost(graph).macs
    pruned = PassManager("prune{sparsity=0.5},dce").run(copy_graph(graph)).graph
    assert pruned.constants["w0"].const.shape == (4, 3, 3, 3)
    assert pruned.constants["s"].const.shape == (4,)  # the scale is a parameter of conv's channels
    assert pruned.constants["w1"].const.shape == (6, 4)  # mix keeps its 6 outputs (a graph output)
    assert (before, graph_cost(pruned).macs) == (3 * 8 * 9 * 36 + 8 * 36 + 6 * 8 * 36, 3 * 4 * 9 * 36 + 4 * 36 + 6 * 4 * 36)  # conv, scale, mix
    report = check_equivalence(graph, pruned)
    assert report.ok and report.outputs[0].max_abs_diff <= 1e-5, report.format()
