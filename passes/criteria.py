"""Channel importance criteria for pruning: plug-ins that score every channel of a group.

A criterion is ``criterion(group, rng) -> scores``: one number per channel of the
``ChannelGroup``, higher meaning more important. Weight-based criteria read the group's
*producer* weights (conv filters, linear rows, LSTM gate rows; every constant member when the
group has no producer), summing over every producer and every position of a channel, so a
residual channel is scored by all the convs that write it and an attention head by all its rows.

Criteria register by name with ``register_criterion``; other packages add theirs through the
``irtool.criteria`` entry-point group (``name = "package.module:function"``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator

import numpy as np

from ..ir.errors import IrtoolError
from ..ir.registry import opdef_of
from .dependency import PRODUCER, ChannelGroup, Member

Criterion = Callable[[ChannelGroup, np.random.Generator], np.ndarray]
ENTRY_POINT_GROUP = "irtool.criteria"
NORM_SCALE_PORT = "scale"
"""The input port name under which normalisation ops (BatchNormalization, LayerNormalization,
InstanceNormalization, GroupNormalization) take their per-channel scale (gamma)."""

_criteria: dict[str, Criterion] = {}


def register_criterion(name: str) -> Callable[[Criterion], Criterion]:
    def decorate(fn: Criterion) -> Criterion:
        _criteria[name] = fn
        return fn

    return decorate


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def criterion_names() -> list[str]:
    return sorted(set(_criteria) | set(_entry_points()))


def get_criterion(name: str) -> Criterion:
    if name in _criteria:
        return _criteria[name]
    plugins = _entry_points()
    if name in plugins:
        return register_criterion(name)(plugins[name].load())
    known = criterion_names()
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise IrtoolError(f"unknown criterion '{name}'{hint}; known: {', '.join(known)}", where="prune")


def importance(group: ChannelGroup, criterion: Criterion | str, rng: np.random.Generator, *, normalise: bool = False) -> np.ndarray:
    """Scores of the group's channels; ``normalise`` divides by their mean so groups compare."""
    fn = get_criterion(criterion) if isinstance(criterion, str) else criterion
    scores = np.asarray(fn(group, rng), dtype=np.float64).reshape(-1)
    if len(scores) != group.channels:
        raise IrtoolError(f"criterion returned {len(scores)} scores for group {group.id} with {group.channels} channels")
    if normalise:
        mean = scores.mean() if len(scores) else 0.0
        scores = scores / mean if mean > 0 else scores
    return scores


# -- weight rows ---------------------------------------------------------------------------------
def producer_weights(group: ChannelGroup) -> list[Member]:
    members = [m for m in group.constant_members(PRODUCER) if _is_weight(m)]
    return members or [m for m in group.constant_members() if _is_weight(m)]


def _is_weight(member: Member) -> bool:
    array = member.value.const
    return array.ndim > 0 and np.issubdtype(array.dtype, np.floating)


def weight_rows(member: Member) -> np.ndarray:
    """The member's weights, one row per position of the group on its axis."""
    array = member.value.const
    rows = np.moveaxis(array, member.axis, 0).reshape(array.shape[member.axis], -1)
    whole = len(member.positions) == len(rows) and member.positions[-1] == len(rows) - 1
    return rows if whole else rows[member.positions]


_BLOCK_ELEMENTS = 1 << 20
"""Rows are scored in blocks of about this many weights, so temporaries stay small."""


def _per_channel(group: ChannelGroup, score_rows: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    total = np.zeros(group.channels)
    for member in producer_weights(group):
        rows = weight_rows(member)
        step = max(1, _BLOCK_ELEMENTS // max(1, rows.shape[1]))
        scores = np.concatenate([score_rows(rows[k : k + step]) for k in range(0, len(rows), step)])
        total += np.bincount(member.channels, weights=scores, minlength=group.channels)
    return total


# -- the built-in criteria -------------------------------------------------------------------------
@register_criterion("l1")
def l1_norm(group: ChannelGroup, rng: np.random.Generator) -> np.ndarray:
    """Sum of absolute producer weights of each channel."""
    return _per_channel(group, lambda rows: np.abs(rows).sum(axis=1).astype(np.float64))


@register_criterion("l2")
def l2_norm(group: ChannelGroup, rng: np.random.Generator) -> np.ndarray:
    """Euclidean norm of all producer weights of each channel."""
    return np.sqrt(_per_channel(group, lambda rows: np.einsum("ij,ij->i", rows, rows).astype(np.float64)))


@register_criterion("fpgm")
def geometric_median(group: ChannelGroup, rng: np.random.Generator) -> np.ndarray:
    """Filter pruning via geometric median (He et al. 2019): a channel whose filters are close
    to all others' (summed distance) is replaceable, so it scores low."""
    total = np.zeros(group.channels)
    for member in producer_weights(group):
        vectors = _channel_vectors(member, group.channels)
        total += _summed_distances(vectors)
    return total


def _channel_vectors(member: Member, channels: int) -> np.ndarray:
    """One vector per channel: its rows of the weight, concatenated (zeros where it has fewer)."""
    rows = weight_rows(member).astype(np.float32)
    counts = np.bincount(member.channels, minlength=channels)
    width = int(counts.max()) if len(counts) else 0
    order = np.argsort(member.channels, kind="stable")
    slot = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    vectors = np.zeros((channels, width, rows.shape[1]), dtype=np.float32)
    vectors[member.channels[order], slot] = rows[order]
    return vectors.reshape(channels, -1)


def _summed_distances(vectors: np.ndarray) -> np.ndarray:
    squares = np.einsum("ij,ij->i", vectors, vectors)
    gram = vectors @ vectors.T
    distances = np.sqrt(np.maximum(squares[:, None] + squares[None, :] - 2 * gram, 0))
    return distances.sum(axis=1, dtype=np.float64)


@register_criterion("random")
def random_scores(group: ChannelGroup, rng: np.random.Generator) -> np.ndarray:
    """Uniform random scores from the pass's seeded generator (a baseline)."""
    return rng.random(group.channels)


@register_criterion("bn-scale")
def norm_scale(group: ChannelGroup, rng: np.random.Generator) -> np.ndarray:
    """|gamma| of the normalisation layers in the group (network slimming, Liu et al. 2017),
    summed over them; a group without a normalisation scale falls back to l1."""
    scales = list(_norm_scales(group))
    if not scales:
        return l1_norm(group, rng)
    total = np.zeros(group.channels)
    for member in scales:
        values = np.abs(weight_rows(member)).sum(axis=1).astype(np.float64)
        total += np.bincount(member.channels, weights=values, minlength=group.channels)
    return total


def _norm_scales(group: ChannelGroup) -> Iterator[Member]:
    for member in group.constant_members():
        for node, i in member.value.uses:
            opdef = opdef_of(node)
            if opdef is not None and i < len(opdef.inputs) and opdef.inputs[i].rstrip("?*").lower() == NORM_SCALE_PORT:
                yield member
                break


# The data-driven criteria (activation mean, APoZ, Taylor, ThiNet) register themselves.
from . import criteria_data  # noqa: E402,F401
