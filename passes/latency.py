"""A latency model of a graph's layers as functions of their groups' channel counts.

Each weighted layer (a node with MACs and a weight of two or more dimensions: conv, linear,
depthwise conv) is cut out of the graph as a one-node model, shrunk to a few channel fractions
with the prune pass's own removal machinery, and timed on the backend (onnxruntime, or
irtool's TVM backend) at a pinned thread count. A layer's latency is then interpolated over
its *relative work*: the product, over its independent channel slots, of the fraction of
positions kept. The whole model's predicted
latency is a constant overhead (the runtime's per-run cost, timed on a model that does
nothing) plus the layers' sum times a scale that maps it onto the measured whole model (the
glue ops between layers shrink with them, so they are proportional, not constant). When the
alignment probe has timed whole pruned models, overhead and scale are fitted to those instead.

Timings are cached per machine, backend and thread count in a JSON table keyed by each layer
model's signature (op, attributes, shapes), so repeated layers and repeated runs reuse them.

With ``int8`` every model timed (the one-layer models, the whole model, the probe's prunes) is
first quantized as the ``quantize`` pass quantizes it, so the target is met by the int8 model
that ships, not the float one. A one-layer model then reads and writes int8 codes, as the layer
does inside the int8 model. int8 timings live in their own table under their own keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backends.files import atomic_write_text
from ..ir.core import Graph, Node, Value
from ..ir.errors import IrtoolError
from ..ir.types import TensorType
from .cost import node_macs
from .dependency import ChannelAnalysis, ChannelGroup, SlotKey

_QUIET = logging.getLogger("irtool.latency.probe")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())

DEFAULT_FRACTIONS = (1.0, 0.75, 0.5, 0.25)
"""Channel fractions every layer is timed at."""

ALIGNMENTS = (16, 8, 4, 2)
"""Channel multiples whose speed the alignment probe compares."""

INT8_CALIBRATION_ROWS = 4
"""Random calibration rows of an int8 timing copy: the scales they give change no kernel."""


# -- relative work of a layer ----------------------------------------------------------------------
@dataclass(frozen=True)
class SlotShare:
    """One independent channel slot of a layer: its size and, per group, positions per channel."""

    size: int
    per_channel: dict[int, float]

    def kept(self, keep: Mapping[int, int], channels: Mapping[int, int]) -> float:
        removed = sum((channels[g] - keep.get(g, channels[g])) * p for g, p in self.per_channel.items())
        return max(self.size - removed, 0.0) / self.size


@dataclass
class LayerWork:
    """A node's MACs and the slots whose channel counts scale them."""

    node: Node
    macs: int
    slots: list[SlotShare]

    @property
    def groups(self) -> set[int]:
        return {g for s in self.slots for g in s.per_channel}

    def fraction(self, keep: Mapping[int, int], channels: Mapping[int, int]) -> float:
        """Work left when group ``g`` keeps ``keep[g]`` of ``channels[g]`` channels."""
        result = 1.0
        for slot in self.slots:
            result *= slot.kept(keep, channels)
        return result


def _activation_slots(groups: Iterable[ChannelGroup]) -> dict[SlotKey, dict[int, float]]:
    """Activation slot -> group id -> positions per channel, for the prunable groups."""
    slots: dict[SlotKey, dict[int, float]] = {}
    for group in groups:
        if not group.prunable:
            continue
        for member in group.members:
            if not member.value.is_const:
                share = slots.setdefault(member.key, {})
                share[group.id] = share.get(group.id, 0.0) + len(member.positions) / group.channels
    return slots


def layer_work(analysis: ChannelAnalysis, nodes: Iterable[Node] | None = None) -> list[LayerWork]:
    """The MAC-doing nodes of the analysed graph with their scaling slots.

    Slots of a node that share a group (a depthwise conv's input and output) are one slot, so
    its work scales linearly with that group, not quadratically.
    """
    slots = _activation_slots(analysis.groups)
    result = []
    for node in analysis.graph.nodes if nodes is None else nodes:
        macs = node_macs(node)
        if not macs:
            continue
        families: list[tuple[set[int], SlotKey]] = []
        values = [v for v in (*node.inputs, *node.outputs) if v is not None and not v.is_const]
        for value in values:
            for axis in range(len(value.type.shape) if value.type is not None and value.type.shape is not None else 0):
                share = slots.get((value.name, axis))
                if not share:
                    continue
                merged = [f for f in families if f[0] & set(share)]
                if merged:
                    for family in merged[1:]:
                        merged[0][0].update(family[0])
                        families.remove(family)
                    merged[0][0].update(share)
                else:
                    families.append((set(share), (value.name, axis)))
        shares = []
        for _, key in families:
            size = analysis.slot_size(key)
            if size:
                shares.append(SlotShare(int(size), dict(slots[key])))
        result.append(LayerWork(node, int(macs), shares))
    return result


def predicted_macs(works: Iterable[LayerWork], keep: Mapping[int, int], channels: Mapping[int, int]) -> float:
    """Total MACs when every group keeps ``keep[g]`` channels (linear in each slot's kept share)."""
    return sum(w.macs * w.fraction(keep, channels) for w in works)


# -- one-layer models ------------------------------------------------------------------------------
def is_weighted_layer(node: Node) -> bool:
    """A node with MACs and a weight tensor: what the micro-benchmarks time on its own."""
    return bool(node_macs(node)) and any(v is not None and v.is_const and v.const.ndim >= 2 for v in node.inputs)


def layer_graph(node: Node, analysis: ChannelAnalysis, keep: Mapping[int, int]) -> Graph:
    """``node`` alone as a graph, with group ``g`` cut to its first ``keep[g]`` channels."""
    from .prune import apply_removal

    graph = Graph(f"layer_{node.name}", opset=node.graph.opset if node.graph is not None else 18)
    inputs: list[Value | None] = []
    for value in node.inputs:
        if value is None:
            inputs.append(None)
        elif value.is_const:
            inputs.append(graph.add_constant(value.name, value.const))
        else:
            if value.type is None or not value.type.is_static:
                raise IrtoolError(f"input '{value.name}' of {node.op} '{node.name}' has no static shape", where="latency")
            inputs.append(graph.add_input(value.name, value.type))
    copy = graph.add_node(
        node.op,
        inputs,
        dict(node.attrs),
        outputs=[v.name for v in node.outputs],
        output_types=[v.type for v in node.outputs],
        name=node.name,
        domain=node.domain,
    )
    graph.outputs = list(copy.outputs)
    names = {v.name for v in (*node.inputs, *node.outputs) if v is not None}
    removal: dict[SlotKey, np.ndarray] = {}
    for group in analysis.groups:
        k = keep.get(group.id, group.channels)
        if k >= group.channels:
            continue
        for member in group.members:
            if member.value.name in names:
                cut = member.positions[member.channels >= k]
                key = member.key
                removal[key] = np.union1d(removal.get(key, np.empty(0, np.int64)), cut)
    if removal:
        apply_removal(graph, removal)
    return graph


def signature(graph: Graph) -> str:
    """What a layer's timing depends on: op, attributes and every operand's shape."""
    node = graph.nodes[0]
    attrs = ",".join(f"{k}={_plain(v)}" for k, v in sorted(node.attrs.items()))
    shapes = ";".join(
        "-" if v is None else ("c" if v.is_const else "x") + "x".join(str(d) for d in (v.const.shape if v.is_const else v.type.shape))
        for v in node.inputs
    )
    return f"{node.domain}:{node.op}|{attrs}|{shapes}"


def _plain(value) -> str:
    if isinstance(value, np.ndarray):
        return str(value.tolist())
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_plain(v) for v in value) + "]"
    return str(value)


# -- int8 --------------------------------------------------------------------------------------------
def check_int8_backend(backend: str) -> None:
    """int8 latency is onnxruntime's: TVM runs quantize/dequantize as float fake-quant."""
    if backend != "ort":
        raise IrtoolError(
            f"int8=true needs backend=ort: the {backend} backend runs quantize/dequantize as float, "
            "so its int8 latency says nothing about an int8 model", where="prune",
        )


def quantized_copy(graph: Graph) -> Graph:
    """A copy of the float ``graph`` quantized as the ``quantize`` pass does by default (int8
    QDQ), calibrated quietly on a few random inputs: what int8 latency is timed on."""
    from .base import PassContext
    from .quantize import Quantize, is_quantized

    if is_quantized(graph):
        raise IrtoolError(
            f"'{graph.name}' already has quantize/dequantize ops; int8 latency is timed on the float "
            "model quantized as the quantize pass does: prune the float model, then quantize", where="prune",
        )
    copy = graph.copy()
    Quantize(samples=INT8_CALIBRATION_ROWS).run(copy, PassContext(logger=_QUIET))
    return copy


def _timed(graph: Graph, int8: bool) -> Graph:
    return quantized_copy(graph) if int8 else graph


def _int8_layer(graph: Graph) -> Graph:
    """A one-layer model quantized, reading and writing int8 codes as the layer does between
    other int8 layers: a lone layer's float conversions at its edges are not paid in the chain."""
    quantized = quantized_copy(graph)
    for i, value in enumerate(list(quantized.inputs)):
        if len(value.uses) == 1 and value.uses[0][0].op == "QuantizeLinear":
            quantize = value.uses[0][0]
            codes = quantized.add_input(f"{value.name}_codes", quantize.outputs[0].type)
            quantize.outputs[0].replace_all_uses_with(codes)
            quantized.remove_nodes([quantize])
            quantized.inputs.pop()  # the codes take the float input's place
            quantized.inputs[i] = codes
    for value in list(quantized.outputs):
        dequantize = value.producer
        if dequantize is not None and dequantize.op == "DequantizeLinear" and not dequantize.inputs[0].is_const:
            quantized.outputs = [dequantize.inputs[0] if v is value else v for v in quantized.outputs]
            quantized.remove_nodes([dequantize])
    return quantized


# -- measuring ------------------------------------------------------------------------------------------
def measure_graph_ms(graph: Graph, *, backend: str = "ort", threads: int = 1, runs: int = 10, warmup: int = 3) -> float:
    """Latency in ms of one inference of ``graph`` on random inputs: the 10th percentile,
    which on a shared machine is the quiet-machine latency (load there comes in bursts that
    double the median for a while)."""
    return call_ms(session_call(graph, backend=backend, threads=threads), runs=runs, warmup=warmup)


def call_ms(call, *, runs: int = 10, warmup: int = 3) -> float:
    """``measure_graph_ms`` of a ``session_call`` already made (a TVM one costs a compile)."""
    from ..backends.bench import measure_latency

    return measure_latency(lambda _: call(), None, warmup=warmup, runs=runs).p10


def session_call(graph: Graph, *, backend: str = "ort", threads: int = 1, seed: int = 0):
    """A zero-argument call running one inference of ``graph`` on ``backend`` (``ort`` or
    ``tvm``, compiled by irtool's TVM backend); a snapshot: later edits of the graph do not
    change it."""
    from ..backends.bench import BACKENDS, prepare_runner, random_inputs

    if backend not in BACKENDS:
        raise IrtoolError(f"backend '{backend}' has no latency model; choose ort or tvm", where="latency")
    return prepare_runner(backend, graph, graph, threads, random_inputs(graph, seed))


def compare_ms(calls, *, runs: int = 30, rounds: int = 5) -> list[float]:
    """Latency in ms (10th percentile, as ``measure_graph_ms``) of several ``session_call``s
    timed in interleaved rounds, so bursts of load hit them alike."""
    from ..backends.bench import measure_interleaved

    return [s.p10 for s in measure_interleaved(calls, warmup=3, runs=runs, rounds=rounds)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_path(backend: str, threads: int, *, int8: bool = False) -> Path:
    """``$IRTOOL_CACHE_DIR`` (or ``~/.cache/irtool``)/``latency-<backend>[-int8]-<threads>-<cpu hash>.json``."""
    folder = Path(os.environ.get("IRTOOL_CACHE_DIR") or Path.home() / ".cache" / "irtool")
    digest = hashlib.sha1(cpu_model().encode()).hexdigest()[:12]
    return folder / f"latency-{backend}{'-int8' if int8 else ''}-{threads}-{digest}.json"


class LatencyTable:
    """Cached layer timings (ms by signature) of one machine, backend and thread count, float
    or, with ``int8``, of the layers quantized (keys ``int8|<signature>``, so the two never mix)."""

    def __init__(
        self, backend: str = "ort", threads: int = 1, *, runs: int = 10, path: Path | None = None, int8: bool = False
    ):
        self.backend, self.threads, self.runs, self.int8 = backend, threads, runs, int8
        self.path = path or cache_path(backend, threads, int8=int8)
        self.entries: dict[str, float] = {}
        self.measured = 0
        if self.path.exists():
            try:
                self.entries = {k: float(v) for k, v in json.loads(self.path.read_text()).get("layers", {}).items()}
            except (ValueError, AttributeError):
                self.entries = {}

    def time(self, graph: Graph) -> float:
        """The layer's own latency: its one-node model's (quantized with ``int8``), less the
        runtime's per-run cost."""
        key = self.key(graph)
        if key not in self.entries:
            timed = _int8_layer(graph) if self.int8 else graph
            ms = measure_graph_ms(timed, backend=self.backend, threads=self.threads, runs=self.runs)
            self.entries[key] = max(ms - self.run_overhead(), 0.0)
            self.measured += 1
        return self.entries[key]

    def key(self, graph: Graph) -> str:
        return ("int8|" if self.int8 else "") + signature(graph)

    def run_overhead(self) -> float:
        """Latency of a model that does nothing (one Relu of one number), cached."""
        key = "run-overhead"
        if key not in self.entries:
            graph = Graph("empty")
            x = graph.add_input("x", TensorType.of(np.zeros([1], np.float32)))
            graph.outputs = list(graph.add_node("Relu", [x], output_types=[x.type]).outputs)
            self.entries[key] = measure_graph_ms(graph, backend=self.backend, threads=self.threads, runs=max(self.runs, 20))
        return self.entries[key]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"backend": self.backend, "threads": self.threads, "int8": self.int8, "cpu": cpu_model()}
        atomic_write_text(self.path, json.dumps({"meta": meta, "layers": self.entries}, indent=0, sort_keys=True))


def _aligned(channels: int, fraction: float, multiple: int) -> int:
    keep = int(round(channels * fraction / multiple)) * multiple
    return int(min(channels, max(keep, min(multiple, channels), 1)))


# -- the model ----------------------------------------------------------------------------------------
@dataclass
class LayerLatency:
    work: LayerWork
    points: list[tuple[float, float]]
    """(relative work, ms), relative work ascending."""

    def ms(self, fraction: float) -> float:
        xs, ys = zip(*self.points)
        if fraction < xs[0] and len(xs) > 1:
            slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
            return max(ys[0] - slope * (xs[0] - fraction), 0.0)
        return float(np.interp(fraction, xs, ys))


@dataclass
class LatencyModel:
    """Per-layer latency curves, the constant overhead, and what the alignment probe found."""

    backend: str
    threads: int
    layers: list[LayerLatency]
    channels: dict[int, int]
    measured_ms: float
    overhead_ms: float
    scale: float = 1.0
    """Layer timings times ``scale`` plus ``overhead_ms`` is the whole model. The glue between
    layers (activations, adds, pooling) shrinks with the channels as the layers do, and
    one-layer models pay for layout changes that chained layers skip; both are proportional
    to the layers, so they go into ``scale``, and only the runtime's per-run cost is constant."""
    alignment: dict[int, float] = field(default_factory=dict)
    """Channel multiple -> whole-model latency per MAC at that multiple, relative to multiples of 1."""
    round_to: int = 1
    """The channel multiple the probe found worth rounding to (1: none)."""
    int8: bool = False
    """Timed on the models quantized as the ``quantize`` pass does."""

    def layer_sum(self, keep: Mapping[int, int] | None = None) -> float:
        keep = keep or {}
        return sum(layer.ms(layer.work.fraction(keep, self.channels)) for layer in self.layers)

    def predict(self, keep: Mapping[int, int] | None = None) -> float:
        """Predicted whole-model latency in ms when group ``g`` keeps ``keep[g]`` channels."""
        return max(self.overhead_ms + self.scale * self.layer_sum(keep), 0.0)

    def format(self) -> str:
        lines = [
            f"latency model: {self.backend}{' int8' if self.int8 else ''}, {self.threads} thread(s), {len(self.layers)} layers",
            f"measured {self.measured_ms:.3f} ms = {self.scale:.3f} x layers {self.layer_sum():.3f} ms + overhead {self.overhead_ms:.3f} ms",
        ]
        if self.alignment:
            cells = ", ".join(f"x{n}: {r:.3f}" for n, r in self.alignment.items())
            lines.append(f"latency per MAC at channel multiples, relative to 1: {cells}; round-to {self.round_to}")
        return "\n".join(lines)


def build_latency_model(
    graph: Graph,
    analysis: ChannelAnalysis,
    *,
    backend: str = "ort",
    threads: int = 1,
    fractions: Iterable[float] = DEFAULT_FRACTIONS,
    runs: int = 10,
    probe_alignment: bool = True,
    round_to: int = 1,
    table: LatencyTable | None = None,
    int8: bool = False,
) -> LatencyModel:
    """Time every weighted layer of the (prepared, static-shaped) ``graph`` at ``fractions`` of
    its groups' channels, and the whole model once; caches timings in ``table``.

    With ``probe_alignment`` the channel multiple to round to is measured first (see
    ``alignment_probe``) and replaces ``round_to``; layers are timed at multiples of it.
    With ``int8`` every model is timed quantized (see ``quantized_copy``)."""
    if int8:
        check_int8_backend(backend)
    table = table or LatencyTable(backend, threads, runs=runs, int8=int8)
    if table.int8 != int8:
        kinds = ("float", "int8")
        raise IrtoolError(f"the latency table holds {kinds[table.int8]} timings, the model asks {kinds[int8]}", where="latency")
    call = session_call(_timed(graph, int8), backend=backend, threads=threads)
    whole = call_ms(call, runs=max(runs, 20))
    samples = alignment_probe(graph, backend=backend, threads=threads, int8=int8) if probe_alignment else []
    alignment = alignment_profile(samples) if samples else {}
    round_to = best_alignment(alignment) if samples else max(round_to, 1)
    channels = {g.id: g.channels for g in analysis.groups}
    prunable = [g for g in analysis.groups if g.prunable]
    layers = []
    for work in layer_work(analysis, [n for n in analysis.graph.nodes if is_weighted_layer(n)]):
        points: dict[float, float] = {}
        for f in sorted(set(fractions), reverse=True):
            keep = {g.id: _aligned(g.channels, f, round_to) for g in prunable if g.id in work.groups}
            x = round(work.fraction(keep, channels), 6)
            if x not in points and x > 0:
                points[x] = table.time(layer_graph(work.node, analysis, keep))
            if not work.groups:
                break
        xs, ys = zip(*sorted(points.items()))
        # less work never takes longer: a timing that says so is noise from a loaded machine
        layers.append(LayerLatency(work, list(zip(xs, np.maximum.accumulate(ys).tolist()))))
    # the quieter of two measurements, before and after the layers: load on a shared machine
    # comes in bursts, and a burst would land in the overhead
    measured = min(whole, call_ms(call, runs=max(runs, 20)))
    model = LatencyModel(backend, threads, layers, channels, measured, 0.0, int8=int8)
    layers_ms = model.layer_sum()
    model.overhead_ms = min(table.run_overhead(), measured)
    if layers_ms > 0:
        model.scale = (measured - model.overhead_ms) / layers_ms
    calibrated = [s for s in samples if s.multiple == 0 or s.multiple >= round_to]
    if len(calibrated) >= 2:
        _fit_to_whole_models(model, calibrated)
    model.alignment, model.round_to = alignment, round_to
    table.save()
    return model


@dataclass
class ProbeSample:
    """A whole model the alignment probe timed: its channel multiple, keep counts and latency."""

    multiple: int
    keep: dict[int, int]
    ms: float
    macs: int


def alignment_probe(
    graph: Graph, *, backend: str = "ort", threads: int = 1, sparsity: float = 0.3, runs: int = 20, int8: bool = False
) -> list[ProbeSample]:
    """Time, interleaved, the unpruned model (multiple 0) and uniform prunes whose channel
    counts are multiples of 1, 2, 4, 8, 16 (all quantized with ``int8``). Runtimes run aligned
    counts faster (blocked layouts), and that shows only across chained layers, so the probe
    times whole models."""
    from .cost import graph_cost
    from .oracle import copy_graph
    from .prune import prune_graph

    calls = [session_call(_timed(graph, int8), backend=backend, threads=threads)]
    samples = [ProbeSample(0, {}, 0.0, graph_cost(graph).macs)]
    for n in (1, *sorted(ALIGNMENTS)):
        pruned = copy_graph(graph)
        report = prune_graph(pruned, sparsity=sparsity, round_to=n, logger=_QUIET)
        calls.append(session_call(_timed(pruned, int8), backend=backend, threads=threads))
        keep = {change.group.id: change.after for change in report.groups}
        samples.append(ProbeSample(n, keep, 0.0, max(graph_cost(pruned).macs, 1)))
    for sample, ms in zip(samples, compare_ms(calls, runs=runs)):
        sample.ms = ms
    return samples


def alignment_profile(samples: list[ProbeSample]) -> dict[int, float]:
    """Latency per MAC of the probe's prunes at each multiple, relative to multiples of 1."""
    per_mac = {s.multiple: s.ms / s.macs for s in samples if s.multiple}
    return {n: r / per_mac[1] for n, r in per_mac.items() if n > 1}


def _fit_to_whole_models(model: LatencyModel, samples: list[ProbeSample]) -> None:
    """Fit ``overhead + scale * layer sum`` to whole models timed side by side (the unpruned
    and the aligned uniform prunes), when that gives a positive scale: one-layer models carry
    costs that chained layers do not, so their sum alone misjudges how much pruning gains."""
    sums = np.array([model.layer_sum(s.keep) for s in samples])
    times = np.array([s.ms for s in samples])
    if np.ptp(sums) <= 0:
        return
    scale, overhead = np.polyfit(sums, times, 1)
    if overhead < 0:
        # A run cannot cost less than nothing: with few points close together (noise on a
        # shared machine) the free line can cross zero; keep the measured per-run cost instead
        # and fit the scale alone through it.
        overhead = model.overhead_ms
        scale = float(np.dot(sums, times - overhead) / np.dot(sums, sums))
    if scale > 0:
        model.scale, model.overhead_ms = float(scale), float(overhead)
        model.measured_ms = float(times[0])


def best_alignment(alignment: Mapping[int, float], margin: float = 0.03) -> int:
    """The smallest multiple within ``margin`` of the fastest per-MAC time, if it beats 1 by the margin."""
    if not alignment or min(alignment.values()) > 1 - margin:
        return 1
    fastest = min(alignment.values())
    return min(n for n, r in alignment.items() if r <= fastest + margin)
