"""Pruning to a budget: per-group channel counts that reach a MAC or latency target while
removing the least importance, and the ``prune-budget`` pass that applies them.

The chooser is greedy in the manner of NetAdapt: at each step every prunable group proposes
removing its next few least important channels, and the group that gives up the least
(normalised) importance per unit of cost saved wins. Cost is MACs (exact for the layers'
cost rules, which are linear in each independent channel slot) or the latency model's
prediction. The last step is shortened so the target is reached with the fewest channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..ir.core import Graph
from ..ir.errors import IrtoolError
from ..ir.shapes import infer_shapes
from .base import Pass, PassContext, PassResult, register_pass
from .criteria import importance
from .dependency import ChannelAnalysis, ChannelGroup
from .latency import LatencyModel, LayerWork, build_latency_model, compare_ms, layer_work, session_call

STEPS_PER_GROUP = 16
"""A greedy step removes about 1/16 of a group's channels (at least round-to)."""

Sensitivity = Mapping[int, list[tuple[float, float]]]
"""Group id -> (sparsity, output deviation) points, sparsity ascending, from ``analyze``."""


def resolve_target(value: float | str, full: float, unit: str) -> float:
    """A target as an absolute amount: ``"50%"`` or a number <= 1 is a fraction of ``full``;
    ``"3.5ms"`` or a number > 1 is absolute."""
    text = str(value).strip().lower()
    try:
        if text.endswith("%"):
            return full * float(text[:-1]) / 100
        if unit and text.endswith(unit):
            return float(text[: -len(unit)])
        number = float(text)
    except ValueError:
        raise IrtoolError(f"target '{value}' is not a fraction, a percentage or an amount like 3.5{unit}", where="prune-budget") from None
    if number <= 0:
        raise IrtoolError(f"target '{value}' must be positive", where="prune-budget")
    return full * number if number <= 1 else number


@dataclass
class _Cost:
    """Cost of a keep assignment, recomputed only over the layers a group touches."""

    works: list[LayerWork]
    channels: dict[int, int]
    layer_cost: Callable[[int, float], float]
    overhead: float = 0.0
    touching: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, work in enumerate(self.works):
            for gid in work.groups:
                self.touching.setdefault(gid, []).append(i)

    def total(self, keep: Mapping[int, int]) -> float:
        return self.overhead + sum(self.layer_cost(i, w.fraction(keep, self.channels)) for i, w in enumerate(self.works))

    def of_group(self, gid: int, keep: Mapping[int, int]) -> float:
        return sum(self.layer_cost(i, self.works[i].fraction(keep, self.channels)) for i in self.touching.get(gid, ()))


def _group_loss(
    group: ChannelGroup, criterion: str, seed: int, sensitivity: Sensitivity | None, weight: float = 1.0
) -> Callable[[int], float]:
    """``loss(removed)``: what the group loses when its ``removed`` least important channels go.

    Without measured sensitivity, the loss is the group's ``weight`` (its share of the model's
    MACs) times the importance it gives up: a group carrying a tenth of the model's work is worth
    a tenth, not as much as every other group, so the chooser keeps work where it is cheap to
    run and cuts it where it is slow."""
    if sensitivity is not None and group.id in sensitivity:
        xs, ys = zip(*sorted(sensitivity[group.id]))
        xs, ys = (0.0, *xs), (0.0, *ys)
        return lambda removed: float(np.interp(removed / group.channels, xs, ys))
    scores = np.sort(importance(group, criterion, np.random.default_rng(seed), normalise=True))
    cumulative = np.concatenate([[0.0], np.cumsum(scores)])
    total = max(float(cumulative[-1]), 1e-12)

    def loss(removed: int) -> float:
        # -log(kept share of the group's importance): the share removed while it is small,
        # growing without bound as the group empties, so no group (a narrow bottleneck
        # above all) is cut to nothing for a small saving.
        kept = max(1.0 - cumulative[removed] / total, 1e-12)
        return -weight * math.log(kept)

    return loss


def choose_channels(
    graph: Graph,
    analysis: ChannelAnalysis,
    *,
    target_macs: float | str | None = None,
    target_latency: float | str | None = None,
    latency_model: LatencyModel | None = None,
    criterion: str = "l1",
    round_to: int = 1,
    min_channels: int = 1,
    sensitivity: Sensitivity | None = None,
    seed: int = 0,
) -> dict[int, int]:
    """Channels to keep per prunable group id so the graph's MACs (or predicted latency) reach
    the target; a target is absolute or a fraction of the unpruned cost (see ``resolve_target``)."""
    if (target_macs is None) == (target_latency is None):
        raise IrtoolError("give exactly one of target-macs and target-latency", where="prune-budget")
    if round_to < 1 or min_channels < 1:
        raise IrtoolError(f"round-to {round_to} and min-channels {min_channels} must be at least 1", where="prune-budget")
    channels = {g.id: g.channels for g in analysis.groups}
    if target_latency is not None:
        if latency_model is None:
            raise IrtoolError("target-latency needs a latency model", where="prune-budget")
        layers, scale = latency_model.layers, latency_model.scale
        cost = _Cost([l.work for l in layers], channels, lambda i, f: scale * layers[i].ms(f), latency_model.overhead_ms)
        target = resolve_target(target_latency, latency_model.predict(), "ms")
    else:
        works = layer_work(analysis)
        cost = _Cost(works, channels, lambda i, f: works[i].macs * f)
        target = resolve_target(target_macs, cost.total({}), "")
    groups = [g for g in analysis.groups if g.prunable and g.id in cost.touching]
    group_macs = {g.id: sum(cost.works[i].macs for i in cost.touching[g.id]) for g in groups}
    total_macs = max(sum(w.macs for w in cost.works), 1)
    loss = {g.id: _group_loss(g, criterion, seed, sensitivity, group_macs[g.id] / total_macs) for g in groups}
    floor = {g.id: min(g.channels, max(min_channels, round_to)) for g in groups}
    keep = {g.id: g.channels for g in groups}
    current = cost.total(keep)
    while current > target:
        best = None
        for group in groups:
            gid = group.id
            step = max(round_to, round_to * math.ceil(group.channels / STEPS_PER_GROUP / round_to))
            step = min(step, (keep[gid] - floor[gid]) // round_to * round_to)
            if step <= 0:
                continue
            before = cost.of_group(gid, keep)
            saved = before - cost.of_group(gid, {**keep, gid: keep[gid] - step})
            if saved <= 0:
                continue
            removed = group.channels - keep[gid]
            ratio = (loss[gid](removed + step) - loss[gid](removed)) / saved
            if best is None or ratio < best[0]:
                best = (ratio, gid, step, before)
        if best is None:
            raise IrtoolError(
                f"cannot reach the target: the least reachable cost is {current:.4g} (target {target:.4g})", where="prune-budget"
            )
        _, gid, step, before = best
        for shorter in range(round_to, step, round_to):
            if before - cost.of_group(gid, {**keep, gid: keep[gid] - shorter}) >= current - target:
                step = shorter
                break
        new_keep = {**keep, gid: keep[gid] - step}
        current += cost.of_group(gid, new_keep) - before
        keep = new_keep
    return {gid: k for gid, k in keep.items() if k < channels[gid]}


def keep_selector(keep: Mapping[int, int]):
    """A ``prune_graph`` select hook removing all but each group's ``keep`` most important channels."""

    def select(group: ChannelGroup, scores: np.ndarray):
        count = group.channels - keep.get(group.id, group.channels)
        return np.sort(np.argsort(scores, kind="stable")[:count])

    return select


@register_pass
@dataclass(frozen=True)
class PruneBudget(Pass):
    """Prune to a MAC or latency target, choosing each group's channel count (NetAdapt-style).

    Targets are a fraction (``0.5``, ``50%``) of the unpruned model or absolute (``3.5ms``,
    ``2e8`` MACs). A latency target builds (or reuses from the cache) the latency model on the
    backend and thread count, then measures the pruned model and logs predicted vs measured.
    """

    name = "prune-budget"
    target_macs: str = field(default="", metadata={"help": "MACs to reach: a fraction (0.5, 50%) or a count"})
    target_latency: str = field(default="", metadata={"help": "latency to reach: a fraction (0.5, 50%) or ms (3.5ms)"})
    backend: Literal["ort", "tvm"] = field(default="ort", metadata={"help": "backend the latency is measured on"})
    threads: int = field(default=1, metadata={"help": "thread count the latency is measured at"})
    criterion: str = field(default="l1", metadata={"help": "channel importance: l1, l2, fpgm, random, bn-scale or a plug-in"})
    round_to: int = field(default=0, metadata={"help": "keep channel counts a multiple of this; 0: measured for target-latency, else 1"})
    min_channels: int = field(default=1, metadata={"help": "channels every group keeps at least"})

    def __post_init__(self) -> None:
        if bool(self.target_macs) == bool(self.target_latency):
            raise IrtoolError("give exactly one of target-macs and target-latency", where="prune-budget")
        if self.target_latency and self.backend != "ort":
            raise IrtoolError(f"backend '{self.backend}' has no latency model yet; use ort", where="prune-budget")
        if self.threads < 1 or self.round_to < 0:
            raise IrtoolError("threads must be at least 1 and round-to at least 0", where="prune-budget")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        from .const_fold import ConstantFold
        from .prune import PruneConfig, prune_graph

        infer_shapes(graph)
        if ConstantFold().run(graph, ctx).modified:
            infer_shapes(graph)
        ctx.invalidate()
        analysis = ctx.analysis("channels", graph)
        model = None
        round_to = self.round_to or 1
        if self.target_latency:
            model = build_latency_model(
                graph, analysis, backend=self.backend, threads=self.threads, probe_alignment=self.round_to == 0, round_to=round_to
            )
            round_to = self.round_to or model.round_to
        keep = choose_channels(
            graph,
            analysis,
            target_macs=self.target_macs or None,
            target_latency=self.target_latency or None,
            latency_model=model,
            criterion=self.criterion,
            round_to=round_to,
            min_channels=self.min_channels,
        )
        predicted = model.predict(keep) if model is not None else None
        unpruned = session_call(graph, backend=self.backend, threads=self.threads) if model is not None else None
        config = PruneConfig(sparsity=0.0, criterion=self.criterion, min_channels=1)
        report = prune_graph(graph, config, select=keep_selector(keep), analysis=analysis, logger=ctx.logger)
        log = [*report.lines, *report.summary()]
        if model is not None:
            before, after = compare_ms([unpruned, session_call(graph, backend=self.backend, threads=self.threads)])
            log.append(
                f"latency: unpruned {before:.3f} ms, predicted {predicted:.3f} ms (of {model.predict():.3f}), "
                f"measured {after:.3f} ms; speedup {before / after:.2f}x, round-to {round_to}"
            )
        return PassResult(graph, report.changed, log)
