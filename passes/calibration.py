"""Activation ranges for post-training quantization: feeds, observation, and calibrators.

Calibration runs the float graph in onnxruntime with the tensors to observe added as graph
outputs, over the user's data (``PassContext.data``), or, when none is given, over random
inputs with a warning that the ranges will not be representative. Observation makes one pass
for each tensor's minimum and maximum and, for the histogram calibrators, a second pass that
fills a fixed histogram of the non-zero values over that range.

A calibrator turns a tensor's statistics into the real range ``(lo, hi)`` to quantize:

- ``minmax``: the observed range;
- ``percentile``: clip the tails, keeping ``percentile`` percent of the values;
- ``entropy``: the threshold whose quantized distribution is closest in KL divergence to
  the observed one (TensorRT's method);
- ``mse``: the threshold that minimises the expected squared quantization error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ..ir.core import Graph
from ..ir.errors import IrtoolError

__all__ = [
    "CALIBRATORS",
    "RANDOM_FALLBACK_WARNING",
    "TensorStats",
    "calibration_feeds",
    "choose_range",
    "observe",
]

RANDOM_FALLBACK_WARNING = (
    "quantize: no calibration data given; calibrating on random inputs (accuracy will not be representative)"
)
HISTOGRAM_BINS = 2048


@dataclass
class TensorStats:
    """What calibration saw of one tensor: its range and a histogram of its values over that range."""

    min: float
    max: float
    counts: np.ndarray | None = None
    """``HISTOGRAM_BINS`` counts of the non-zero values over ``[min, max]``; None when only the
    range was collected. Exact zeros (half of a ReLU's output) are left out: zero is exact at
    any scale, and a spike there would drown the shape the histogram calibrators look at."""

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))

    def edges(self) -> np.ndarray:
        return np.linspace(self.min, self.max, len(self.counts) + 1)

    def abs_histogram(self, bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, float]:
        """Counts of ``|x|`` over ``[0, absmax]`` in ``bins`` bins, and absmax."""
        edges = self.edges()
        centers = np.abs(0.5 * (edges[:-1] + edges[1:]))
        top = self.absmax
        if top == 0:
            return np.zeros(bins), 0.0
        counts, _ = np.histogram(centers, bins=bins, range=(0.0, top), weights=self.counts)
        return counts, top


# -- feeds -------------------------------------------------------------------------------------
def _static_dims(graph: Graph) -> dict[str, tuple]:
    dims = {}
    for value in graph.inputs:
        if value.type is None or value.type.shape is None:
            raise IrtoolError(f"input '{value.name}' has no known shape; calibration needs one")
        dims[value.name] = tuple(value.type.shape)
    return dims


def _shape_text(shape: Sequence) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, (int, np.integer)) else "N" for d in shape) + ")"


def _as_feed(graph: Graph, sample, index: int) -> dict[str, np.ndarray]:
    names = [v.name for v in graph.inputs]
    if isinstance(sample, Mapping):
        missing = [n for n in names if n not in sample]
        if missing:
            raise IrtoolError(f"calibration sample {index} has no array for input '{missing[0]}' (inputs: {names})")
        return {n: np.asarray(sample[n]) for n in names}
    if isinstance(sample, np.ndarray) or hasattr(sample, "__array__"):
        if len(names) != 1:
            raise IrtoolError(f"calibration sample {index} is one array, but the model has inputs {names}")
        return {names[0]: np.asarray(sample)}
    if isinstance(sample, Sequence) and len(sample) == len(names):
        return {n: np.asarray(a) for n, a in zip(names, sample)}
    raise IrtoolError(
        f"calibration sample {index} is a {type(sample).__name__}; expected a mapping input name -> array"
    )


def _check_shape(name: str, expected: tuple, array: np.ndarray, index: int) -> int:
    """The sample's batch (dim 0) after checking every other dim; a wrong shape is a clear error."""
    batch = expected[0] if expected else None
    fixed_batch = isinstance(batch, (int, np.integer))
    ok = array.ndim == len(expected) and all(
        not isinstance(e, (int, np.integer)) or e == g for e, g in zip(expected[1:], array.shape[1:])
    )
    if ok and fixed_batch and array.ndim and array.shape[0] % batch:
        ok = False
    if not ok:
        note = f" (the batch may be any multiple of {batch})" if fixed_batch and expected else ""
        raise IrtoolError(
            f"calibration sample {index}, input '{name}': expected shape {_shape_text(expected)}{note}, "
            f"got {tuple(array.shape)}"
        )
    return int(array.shape[0]) if array.ndim else 1


def _fixed_batch(dims: dict[str, tuple]) -> int | None:
    batches = {int(d[0]) for d in dims.values() if d and isinstance(d[0], (int, np.integer))}
    return min(batches) if batches else None


def _split_rows(feed: dict[str, np.ndarray], step: int, rows: int) -> list[dict[str, np.ndarray]]:
    """The first ``rows`` rows of a feed, in pieces of ``step`` rows (the graph's fixed batch)."""
    return [{n: a[i : i + step] if a.ndim else a for n, a in feed.items()} for i in range(0, rows, step)]


def calibration_feeds(
    graph: Graph,
    data: Iterable | None,
    *,
    samples: int,
    seed: int = 0,
    logger: logging.Logger | None = None,
) -> tuple[list[dict[str, np.ndarray]], str]:
    """Up to ``samples`` rows of calibration input as feeds the graph accepts, and where they came from.

    ``data`` is an iterable of samples, each a mapping input name -> array (or one array for a
    single-input model) whose leading dim is a batch. Every dim but the batch must match the
    graph's input; float arrays are cast to the input's type. Without data, ``samples`` random
    normal rows are used and ``RANDOM_FALLBACK_WARNING`` is logged.
    """
    dims = _static_dims(graph)
    types = {v.name: v.type.dtype.numpy for v in graph.inputs}
    feeds: list[dict[str, np.ndarray]] = []
    if data is not None:
        rows = 0
        fixed = _fixed_batch(dims)
        for index, sample in enumerate(data):
            feed = _as_feed(graph, sample, index)
            batch = min(_check_shape(n, dims[n], feed[n], index) for n in feed)
            take = min(batch, samples - rows)
            if fixed:  # whole batches only: the graph takes nothing else
                take = min(batch, max(fixed, take - take % fixed))
            feed = {n: a.astype(types[n], copy=False) for n, a in feed.items()}
            feeds += _split_rows(feed, fixed or take, take)
            rows += take
            if rows >= samples:
                break
        if feeds:
            return feeds, f"{rows} sample{'s' if rows != 1 else ''} of user data"
    (logger or logging.getLogger("irtool.passes")).warning(RANDOM_FALLBACK_WARNING)
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        feed = {}
        for value in graph.inputs:
            shape = [d if isinstance(d, (int, np.integer)) else 1 for d in dims[value.name]]
            if value.type.dtype.is_float:
                feed[value.name] = rng.standard_normal(shape).astype(types[value.name])
            else:
                feed[value.name] = np.zeros(shape, dtype=types[value.name])
        feeds.append(feed)
    return feeds, f"{samples} random input{'s' if samples != 1 else ''} (not representative)"


# -- observation -------------------------------------------------------------------------------
def _observing_session(graph: Graph, names: Sequence[str]):
    from ..backends.onnx import make_session, to_onnx

    model = to_onnx(graph)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return make_session(model)


def _run(session, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]):
    for feed in feeds:
        try:
            yield session.run(list(names), dict(feed))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise IrtoolError(f"calibration run failed in onnxruntime: {' '.join(str(exc).split())}") from None


def observe(
    graph: Graph,
    names: Sequence[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    histogram: bool,
    bins: int = HISTOGRAM_BINS,
) -> dict[str, TensorStats]:
    """Statistics of the named float tensors over ``feeds``: ranges, and histograms when asked."""
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    session = _observing_session(graph, names)
    low = np.full(len(names), np.inf)
    high = np.full(len(names), -np.inf)
    for outputs in _run(session, feeds, names):
        for i, array in enumerate(outputs):
            if array.size:
                low[i] = min(low[i], float(np.min(array)))
                high[i] = max(high[i], float(np.max(array)))
    low[~np.isfinite(low)] = 0.0
    high[~np.isfinite(high)] = 0.0
    stats = {n: TensorStats(float(lo), float(hi)) for n, lo, hi in zip(names, low, high)}
    if histogram:
        counts = [np.zeros(bins) for _ in names]
        for outputs in _run(session, feeds, names):
            for i, array in enumerate(outputs):
                top = high[i] if high[i] > low[i] else low[i] + 1.0
                counts[i] += np.histogram(array[array != 0], bins=bins, range=(low[i], top))[0]
        for name, c in zip(names, counts):
            stats[name].counts = c
    return stats


# -- calibrators -------------------------------------------------------------------------------
Calibrator = Callable[[TensorStats, bool, float], tuple[float, float]]


def _minmax(stats: TensorStats, symmetric: bool, percentile: float) -> tuple[float, float]:
    if symmetric:
        return -stats.absmax, stats.absmax
    return stats.min, stats.max


def _quantile(edges: np.ndarray, counts: np.ndarray, fraction: float) -> float:
    """The value below which ``fraction`` of the histogram lies (linear inside a bin)."""
    total = counts.sum()
    if total == 0:
        return float(edges[-1])
    cumulative = np.cumsum(counts) / total
    i = int(np.searchsorted(cumulative, fraction, side="left"))
    i = min(i, len(counts) - 1)
    before = cumulative[i - 1] if i else 0.0
    inside = (fraction - before) / max(cumulative[i] - before, 1e-12)
    return float(edges[i] + np.clip(inside, 0.0, 1.0) * (edges[i + 1] - edges[i]))


def _percentile(stats: TensorStats, symmetric: bool, percentile: float) -> tuple[float, float]:
    fraction = percentile / 100.0
    if symmetric:
        counts, top = stats.abs_histogram()
        t = _quantile(np.linspace(0.0, top, len(counts) + 1), counts, fraction)
        return -t, t
    edges = stats.edges()
    lo = _quantile(edges, stats.counts, 1.0 - fraction) if stats.min < 0 else stats.min
    return lo, _quantile(edges, stats.counts, fraction)


def _kl_threshold(counts: np.ndarray, top: float, levels: int) -> float:
    """TensorRT's entropy calibration on a histogram of ``|x|``: the threshold with the least KL loss."""
    bins = len(counts)
    if counts.sum() == 0 or top == 0:
        return top
    best, best_i = np.inf, bins
    candidates = np.unique(np.linspace(levels, bins, min(bins - levels + 1, 160)).astype(int))
    for i in candidates:
        reference = counts[:i].astype(np.float64).copy()
        reference[i - 1] += counts[i:].sum()
        # Merge i bins into `levels` groups, spread each group's mass over its non-empty bins.
        group = np.arange(i) * levels // i
        nonzero = counts[:i] > 0
        mass = np.bincount(group, weights=counts[:i], minlength=levels)
        filled = np.bincount(group, weights=nonzero, minlength=levels)
        expanded = np.where(nonzero, mass[group] / np.maximum(filled[group], 1), 0.0)
        p = reference / reference.sum()
        q = expanded / max(expanded.sum(), 1e-12)
        mask = p > 0
        q_safe = np.where(q[mask] > 0, q[mask], 1e-12)
        divergence = float(np.sum(p[mask] * np.log(p[mask] / q_safe)))
        if divergence < best:
            best, best_i = divergence, i
    return top * best_i / bins


def _entropy(stats: TensorStats, symmetric: bool, percentile: float) -> tuple[float, float]:
    counts, top = stats.abs_histogram()
    one_sided = not symmetric and stats.min >= 0
    t = _kl_threshold(counts, top, 255 if one_sided else 128)
    if symmetric:
        return -t, t
    return max(stats.min, -t), min(stats.max, t)


def _mse(stats: TensorStats, symmetric: bool, percentile: float) -> tuple[float, float]:
    """Scale the observed range by the factor in [0.2, 1] with the least expected squared error.

    Values inside the range contribute the rounding error ``step**2 / 12``; values outside,
    their distance to the range.
    """
    edges = stats.edges()
    centers = 0.5 * (edges[:-1] + edges[1:])
    lo, hi = (-stats.absmax, stats.absmax) if symmetric else (min(stats.min, 0.0), max(stats.max, 0.0))
    if hi - lo == 0:
        return lo, hi
    steps = 254 if symmetric else 255
    factors = np.linspace(0.2, 1.0, 81)[:, None]
    a, b = lo * factors, hi * factors
    step = (b - a) / steps
    outside = np.maximum(a - centers, 0) + np.maximum(centers - b, 0)
    inside = (outside == 0) * step**2 / 12
    error = ((outside**2 + inside) * stats.counts).sum(axis=1)
    k = int(np.argmin(error))
    return float(a[k, 0]), float(b[k, 0])


CALIBRATORS: dict[str, Calibrator] = {
    "minmax": _minmax,
    "percentile": _percentile,
    "entropy": _entropy,
    "mse": _mse,
}


def choose_range(stats: TensorStats, method: str, *, symmetric: bool, percentile: float = 99.99) -> tuple[float, float]:
    """The range ``(lo, hi)`` to quantize a tensor over, by ``method`` (a key of ``CALIBRATORS``)."""
    if method not in CALIBRATORS:
        raise IrtoolError(f"unknown calibration '{method}'; choose one of {', '.join(CALIBRATORS)}")
    if method != "minmax" and stats.counts is None:
        raise IrtoolError(f"calibration '{method}' needs histograms; observe with histogram=True")
    if method != "minmax" and stats.max == stats.min:
        return _minmax(stats, symmetric, percentile)
    lo, hi = CALIBRATORS[method](stats, symmetric, percentile)
    return float(lo), float(hi)
