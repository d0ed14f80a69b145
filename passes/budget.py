"""Pruning to a budget: per-group channel counts that reach a MAC or latency target while
removing the least importance. The ``prune`` pass calls ``choose_to_budget`` when it is given
``target-macs`` or ``target-latency`` instead of a sparsity.

The chooser is greedy in the manner of NetAdapt: at each step every prunable group proposes
removing its next few least important channels, and the group that gives up the least
(normalised) importance per unit of cost saved wins. Cost is MACs (exact for the layers'
cost rules, which are linear in each independent channel slot) or the latency model's
prediction. The last step is shortened so the target is reached with the fewest channels.

A latency target is then closed on the measured latency: the pruned model is timed against the
unpruned one, and when it misses the target by more than the tolerance the target handed to
the chooser is corrected by the measured/predicted ratio at that operating point and the
channels are chosen again (a few rounds at most). The model predicts relative changes well
but a runtime's fused kernels and layouts shift the absolute point; one correction removes it.

With ``int8`` the latency model and every measured model are the int8 ones the ``quantize`` pass
makes, so ``prune{target-latency=0.5 int8=true},quantize`` meets the target as shipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ..ir.core import Graph
from ..ir.errors import IrtoolError
from .criteria import importance
from .dependency import ChannelAnalysis, ChannelGroup
from .latency import (
    LatencyModel,
    LayerWork,
    build_latency_model,
    check_int8_backend,
    compare_ms,
    layer_work,
    quantized_copy,
    session_call,
)
from .quantize import is_quantized
from .sensitivity import Sensitivity, load_sensitivity

STEPS_PER_GROUP = 16
"""A greedy step removes about 1/16 of a group's channels (at least round-to)."""

LATENCY_ROUNDS = 3
"""Choices (the first and its corrections) a latency target gets at most."""

LATENCY_TOLERANCE = 0.05
"""A measured latency within this fraction of the target needs no correction."""

_QUIET = logging.getLogger("irtool.budget.measure")
_QUIET.propagate = False


def resolve_target(value: float | str, full: float, unit: str) -> float:
    """A target as an absolute amount: ``"50%"`` or a number <= 1 is a fraction of ``full``;
    ``"3.5ms"`` or a number > 1 is absolute."""
    text = str(value).strip().lower()
    try:
        if text.endswith("%"):
            number, scale = float(text[:-1]) / 100, full
        elif unit and text.endswith(unit):
            number, scale = float(text[: -len(unit)]), 1.0
        else:
            number = float(text)
            scale = full if number <= 1 else 1.0
    except ValueError:
        raise IrtoolError(f"target '{value}' is not a fraction, a percentage or an amount like 3.5{unit}", where="prune") from None
    if not number > 0:
        raise IrtoolError(f"target '{value}' must be positive", where="prune")
    return number * scale


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
    exclude_groups: Collection[int] = (),
) -> dict[int, int]:
    """Channels to keep per prunable group id so the graph's MACs (or predicted latency) reach
    the target; a target is absolute or a fraction of the unpruned cost (see ``resolve_target``).
    Groups in ``exclude_groups`` keep all their channels."""
    if (target_macs is None) == (target_latency is None):
        raise IrtoolError("give exactly one of target-macs and target-latency", where="prune")
    if round_to < 1 or min_channels < 1:
        raise IrtoolError(f"round-to {round_to} and min-channels {min_channels} must be at least 1", where="prune")
    channels = {g.id: g.channels for g in analysis.groups}
    if target_latency is not None:
        if latency_model is None:
            raise IrtoolError("target-latency needs a latency model", where="prune")
        layers, scale = latency_model.layers, latency_model.scale
        cost = _Cost([l.work for l in layers], channels, lambda i, f: scale * layers[i].ms(f), latency_model.overhead_ms)
        target = resolve_target(target_latency, latency_model.predict(), "ms")
    else:
        works = layer_work(analysis)
        cost = _Cost(works, channels, lambda i, f: works[i].macs * f)
        target = resolve_target(target_macs, cost.total({}), "")
    groups = [g for g in analysis.groups if g.prunable and g.id in cost.touching and g.id not in exclude_groups]
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
                f"cannot reach the target: the least reachable cost is {current:.4g} (target {target:.4g})", where="prune"
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



# -- the prune pass's targets -------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """A MAC or latency target (fractions like ``0.5``/``50%``, or ``3.5ms``, ``2e8`` MACs) and
    what the choice depends on; the budget part of the ``prune`` pass's options."""

    target_macs: str = ""
    target_latency: str = ""
    backend: str = "ort"
    threads: int = 1
    sensitivity: str = ""
    criterion: str = "l1"
    round_to: int = 0
    """A channel multiple; 0: the latency model's measured one for a latency target, else 1."""
    min_channels: int = 1
    seed: int = 0
    int8: bool = False
    """Time the models quantized as the ``quantize`` pass does: the target is the int8 model's."""

    @property
    def active(self) -> bool:
        return bool(self.target_macs or self.target_latency)

    def validate(self) -> None:
        if self.target_macs and self.target_latency:
            raise IrtoolError("give one of target-macs and target-latency, not both", where="prune")
        if self.target_macs:
            resolve_target(self.target_macs, 1.0, "")
        if self.target_latency:
            resolve_target(self.target_latency, 1.0, "ms")
        if self.threads < 1 or self.round_to < 0:
            raise IrtoolError(f"threads {self.threads} must be at least 1 and round-to {self.round_to} at least 0", where="prune")
        if self.sensitivity and not self.active:
            raise IrtoolError("sensitivity steers a target: give target-macs or target-latency", where="prune")
        if (self.backend, self.threads) != ("ort", 1) and not self.target_latency:
            raise IrtoolError("backend and threads say where target-latency is measured: give target-latency", where="prune")
        if self.int8 and not self.target_latency:
            raise IrtoolError("int8 says target-latency is the int8 model's: give target-latency", where="prune")
        if self.int8:
            check_int8_backend(self.backend)


@dataclass
class LatencyRound:
    """One choice of the closed loop: the chooser's target, the prediction and the measurement."""

    chooser_ms: float
    keep: dict[int, int]
    predicted_ms: float
    unpruned_ms: float
    measured_ms: float
    goal_ms: float
    """The target in measured terms (a fraction applies to the unpruned latency measured beside)."""

    @property
    def miss(self) -> float:
        """Measured over goal, less one: +0.08 is 8% slower than the target."""
        return self.measured_ms / self.goal_ms - 1

    def line(self, number: int, full_predicted: float) -> str:
        return (
            f"latency round {number}: chooser target {self.chooser_ms:.3f} ms, predicted {self.predicted_ms:.3f} ms, "
            f"measured {self.measured_ms:.3f} ms of unpruned {self.unpruned_ms:.3f} ms (goal {self.goal_ms:.3f} ms, "
            f"{self.miss:+.1%}); speedup predicted {full_predicted / self.predicted_ms:.2f}x, "
            f"measured {self.unpruned_ms / self.measured_ms:.2f}x"
        )


@dataclass
class BudgetChoice:
    """Channels to keep per group id, the multiple they were rounded to, and for a latency
    target the model, every round of the loop and the one kept."""

    keep: dict[int, int]
    round_to: int
    model: LatencyModel | None = None
    rounds: list[LatencyRound] = field(default_factory=list)
    final: LatencyRound | None = None
    log: list[str] = field(default_factory=list)


def choose_to_budget(
    graph: Graph,
    analysis: ChannelAnalysis,
    budget: Budget,
    *,
    latency_model: LatencyModel | None = None,
    exclude_groups: Collection[int] = (),
    max_rounds: int = LATENCY_ROUNDS,
    tolerance: float = LATENCY_TOLERANCE,
) -> BudgetChoice:
    """Channels to keep for ``budget``'s target in the prepared ``graph`` (left unchanged).

    A latency target builds (or takes) the latency model on the budget's backend and threads,
    and closes the loop on measured latency (see the module docstring); the result is the round
    measured closest to the target without being more than ``tolerance`` above it, if any."""
    budget.validate()
    if not budget.active:
        raise IrtoolError("a budget needs target-macs or target-latency", where="prune")
    if is_quantized(graph):
        raise IrtoolError(
            "a target is chosen on the float model and this one already has quantize/dequantize ops: "
            "prune before quantize (int8=true times the int8 model)", where="prune",
        )
    sensitivity = load_sensitivity(budget.sensitivity, analysis) if budget.sensitivity else None
    choose = partial(
        choose_channels, graph, analysis, criterion=budget.criterion, min_channels=budget.min_channels,
        sensitivity=sensitivity, seed=budget.seed, exclude_groups=exclude_groups,
    )
    if budget.target_macs:
        round_to = budget.round_to or 1
        return BudgetChoice(choose(target_macs=budget.target_macs, round_to=round_to), round_to)
    model = latency_model or build_latency_model(
        graph, analysis, backend=budget.backend, threads=budget.threads,
        probe_alignment=budget.round_to == 0, round_to=budget.round_to or 1, int8=budget.int8,
    )
    built = [] if latency_model is not None else model.format().splitlines()
    if (model.backend, model.threads, model.int8) != (budget.backend, budget.threads, budget.int8):
        kinds = ("float", "int8")
        raise IrtoolError(
            f"the latency model is of {kinds[model.int8]} {model.backend} at {model.threads} thread(s), the target of "
            f"{kinds[budget.int8]} {budget.backend} at {budget.threads}", where="prune",
        )
    round_to = budget.round_to or model.round_to
    choice = BudgetChoice({}, round_to, model, log=built)
    _close_the_loop(graph, budget, choice, partial(choose, latency_model=model, round_to=round_to), max_rounds, tolerance)
    return choice


def _close_the_loop(graph: Graph, budget: Budget, choice: BudgetChoice, choose, max_rounds: int, tolerance: float) -> None:
    """Choose, prune a copy, measure it beside the unpruned model (both quantized with int8);
    correct and repeat."""
    model = choice.model
    full = model.predict()
    unpruned = _session(graph, budget)
    chooser_ms = resolve_target(budget.target_latency, full, "ms")
    while len(choice.rounds) < max_rounds:
        try:
            # an absolute amount in ms: a bare number <= 1 would read as a fraction
            keep = choose(target_latency=f"{float(chooser_ms)!r}ms")
        except IrtoolError as exc:
            if not choice.rounds:
                raise
            choice.log.append(f"latency round {len(choice.rounds) + 1}: corrected target {chooser_ms:.3f} ms: {exc}")
            break
        if any(r.keep == keep for r in choice.rounds):
            choice.log.append(f"latency round {len(choice.rounds) + 1}: corrected target {chooser_ms:.3f} ms chose the same channels again")
            break
        pruned = _session(pruned_copy(graph, keep), budget)
        base, after = compare_ms([unpruned, pruned])
        goal = resolve_target(budget.target_latency, base, "ms")
        measured = LatencyRound(chooser_ms, keep, model.predict(keep), base, after, goal)
        choice.rounds.append(measured)
        choice.log.append(measured.line(len(choice.rounds), full))
        if abs(measured.miss) <= tolerance:
            break
        chooser_ms = goal * measured.predicted_ms / measured.measured_ms
    best = closest_round(choice.rounds, tolerance)
    choice.keep, choice.final = best.keep, best
    choice.log.append(
        f"latency: unpruned {best.unpruned_ms:.3f} ms, predicted {best.predicted_ms:.3f} ms (of {full:.3f}), "
        f"measured {best.measured_ms:.3f} ms; speedup {best.unpruned_ms / best.measured_ms:.2f}x "
        f"(target {best.unpruned_ms / best.goal_ms:.2f}x), round {choice.rounds.index(best) + 1} of {len(choice.rounds)}, "
        f"round-to {choice.round_to}"
    )


def _session(graph: Graph, budget: Budget):
    """A ``session_call`` of ``graph`` as the budget times it: quantized first with int8."""
    return session_call(quantized_copy(graph) if budget.int8 else graph, backend=budget.backend, threads=budget.threads)


def closest_round(rounds: list[LatencyRound], tolerance: float = LATENCY_TOLERANCE) -> LatencyRound:
    """The round measured closest to its goal among those at most ``tolerance`` above it, or
    the closest of all when every round is slower than that: a target is a bound more than a goal."""
    within = [r for r in rounds if r.miss <= tolerance]
    return min(within or rounds, key=lambda r: abs(r.miss))


def pruned_copy(graph: Graph, keep: Mapping[int, int], criterion: str = "l1") -> Graph:
    """A copy of ``graph`` with group ``g`` cut to its ``keep[g]`` most important channels by
    ``criterion``. For timing, which channels go does not matter, so the plain l1 default picks
    them (data criteria would rerun the model for nothing)."""
    from .dependency import analyze_channels
    from .prune import PruneConfig, prune_graph

    copy = graph.copy()
    prune_graph(copy, PruneConfig(sparsity=0.0, criterion=criterion), select=keep_selector(keep), analysis=analyze_channels(copy), logger=_QUIET)
    return copy
