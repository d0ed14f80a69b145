"""The Python API for programs that drive irtool: ``optimize`` a model, get the numbers back as data.

    import irtool
    result = irtool.optimize("resnet18.onnx", "fold-bn,prune{sparsity=0.5},quantize",
                             data=dataset, targets=("onnx", "tvm"), output_dir="build")
    result.artifacts["onnx"]              # Path of the optimized ONNX model
    result.optimized.macs / result.original.macs
    result.optimized.latency["onnx"].median_ms
    result.passes[1].messages             # what prune did, line by line
    json.dumps(result.to_dict())          # the measurements as JSON

``model`` is an ONNX file, a ``.pt2`` archive, a ``package.module:factory`` spec, an
``onnx.ModelProto``, a ``torch.nn.Module`` (with ``example_inputs``) or an irtool ``Graph``
(copied, never changed). ``pipeline`` is a pipeline string, a list of passes, or a list of
scenario steps (``{"type": "prune", "parameters": {...}}``). ``data`` is what ``irtool opt
--data`` reads (a ``.npz``/``.npy`` path, or a mapping input name -> rows with optional
``labels``) or anything ``irtool.passes.data.as_dataset`` accepts (a dataset, ``"digits"``,
numpy arrays, a torch ``DataLoader``); the passes get it for calibration, data-driven criteria
and fine-tuning, and accuracy is measured on ``eval_data`` (default: ``data``) when it has labels.

Everything is measured before anything is written: a run that fails writes no file. The
artifacts are written atomically at the end, one per target (``<name>.onnx``, ``<name>.so``).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..ir.core import Graph
from ..ir.errors import IrtoolError

MEASUREMENTS_FORMAT = "irtool-measurements/1"
TARGETS = ("onnx", "tvm")
DEFAULT_TARGETS = ("onnx", "tvm")


# -- options and results ------------------------------------------------------------------------
@dataclass(frozen=True)
class Measure:
    """What to measure. Latency is the median of ``runs`` timed runs after ``warmup`` runs, of
    one batch of ``batch`` rows, with ``threads`` threads; ``baseline`` measures the original
    model too; ``verify`` runs the equivalence oracle (for pipelines that only prune)."""

    latency: bool = True
    runs: int = 20
    warmup: int = 3
    threads: int = 1
    batch: int = 1
    accuracy: bool = True
    accuracy_samples: int | None = None
    baseline: bool = True
    verify: bool = False

    def __post_init__(self) -> None:
        for name in ("runs", "threads", "batch"):
            if getattr(self, name) < 1:
                raise IrtoolError(f"measure: {name} must be at least 1, not {getattr(self, name)}")
        if self.warmup < 0:
            raise IrtoolError(f"measure: warmup must be at least 0, not {self.warmup}")
        if self.accuracy_samples is not None and self.accuracy_samples < 1:
            raise IrtoolError(f"measure: accuracy_samples must be at least 1, not {self.accuracy_samples}")


@dataclass
class Latency:
    """Milliseconds per run of one batch."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    batch: int
    threads: int


@dataclass
class Metrics:
    """One model's numbers: size from the cost analysis, and what was measured on the runtimes."""

    params: int
    macs: int
    bytes: int
    nodes: int
    latency: dict[str, Latency] = field(default_factory=dict)
    """By target: ``onnx`` (onnxruntime) and ``tvm``."""
    accuracy: float | None = None
    """Top-1 accuracy in onnxruntime on the labelled evaluation data; None without it."""
    accuracy_samples: int = 0
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    """By target other than onnx: largest difference of its outputs from onnxruntime's."""
    file_bytes: dict[str, int] = field(default_factory=dict)
    """By target: size of the written artifact (optimized model only)."""


@dataclass
class PassLog:
    """One pass of the pipeline: what it was, what it did, and the model's size after it."""

    name: str
    spec: str
    options: dict[str, Any]
    modified: bool
    seconds: float
    messages: list[str]
    params: int
    macs: int


@dataclass
class OptimizeResult:
    """What ``optimize`` did and measured; ``to_dict()`` is the measurements JSON."""

    name: str
    model: str
    pipeline: str
    targets: tuple[str, ...]
    output_dir: Path
    artifacts: dict[str, Path]
    original: Metrics
    optimized: Metrics
    passes: list[PassLog]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verification: dict[str, Any] | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    graph: Graph | None = field(default=None, repr=False, compare=False)
    """The optimized graph, for further work in Python."""

    def change(self) -> dict[str, float | None]:
        """Relative change of params, MACs and bytes (-0.5 is half), and latency speedups."""
        result: dict[str, float | None] = {}
        for key in ("params", "macs", "bytes"):
            before, after = getattr(self.original, key), getattr(self.optimized, key)
            result[key] = (after - before) / before if before else None
        for target, after in self.optimized.latency.items():
            before = self.original.latency.get(target)
            result[f"speedup_{target}"] = before.median_ms / after.median_ms if before and after.median_ms else None
        return result

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready measurements (``tools/measurements_schema.json``); a number that is not
        finite (a diverged output) is None, so the JSON stays standard."""
        return _finite({
            "format": MEASUREMENTS_FORMAT,
            "irtool_version": __version__,
            "name": self.name,
            "model": self.model,
            "pipeline": self.pipeline,
            "targets": list(self.targets),
            "output_dir": str(self.output_dir),
            "artifacts": {k: str(v) for k, v in self.artifacts.items()},
            "original": asdict(self.original),
            "optimized": asdict(self.optimized),
            "change": self.change(),
            "passes": [asdict(p) for p in self.passes],
            "verification": self.verification,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "seconds": self.seconds,
            "settings": dict(self.settings),
            "environment": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "machine": platform.machine(),
                "cpus": os.cpu_count() or 1,
            },
        })

    def summary(self) -> str:
        """A before/after table for people."""
        from ..passes.cost import human

        def row(label: str, before: str, after: str) -> str:
            return f"{label:<22}{before:>14}{after:>14}"

        a, b = self.original, self.optimized
        lines = [row("", "original", "optimized")]
        lines.append(row("params", human(a.params), human(b.params)))
        lines.append(row("MACs", human(a.macs), human(b.macs)))
        lines.append(row("bytes", human(a.bytes, "B"), human(b.bytes, "B")))
        for target in self.targets:
            if target in b.latency:
                before = f"{a.latency[target].median_ms:.3f}" if target in a.latency else "-"
                lines.append(row(f"latency {target} (ms)", before, f"{b.latency[target].median_ms:.3f}"))
        if b.accuracy is not None:
            before = f"{100 * a.accuracy:.2f}%" if a.accuracy is not None else "-"
            lines.append(row("accuracy", before, f"{100 * b.accuracy:.2f}%"))
        for target, path in self.artifacts.items():
            lines.append(f"{target}: {path}")
        return "\n".join(lines)


# -- inputs -------------------------------------------------------------------------------------
def _is_torch_module(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def load_graph(model: Any, *, example_inputs: Any = None, input_shapes: Sequence[Sequence[int]] | None = None) -> tuple[Graph, str]:
    """The model as a new graph, and how to name its source in reports."""
    import onnx

    if isinstance(model, Graph):
        return model.copy(), f"graph '{model.name}'"
    if isinstance(model, onnx.ModelProto):
        from ..frontends.onnx import load_onnx

        return load_onnx(model), f"ONNX model '{model.graph.name or 'unnamed'}'"
    if _is_torch_module(model):
        from ..frontends.torch import load_module

        if example_inputs is None:
            raise IrtoolError(f"optimizing a {type(model).__name__} needs example_inputs (a tensor or a tuple of them)")
        return load_module(model, example_inputs), f"torch module {type(model).__name__}"
    if isinstance(model, (str, os.PathLike)):
        from .model_io import load_model

        shapes = [tuple(s) for s in input_shapes] if input_shapes else None
        return load_model(str(model), shapes), str(model)
    raise IrtoolError(f"cannot optimize a {type(model).__name__}: give a model file, a torch module, a ModelProto or a Graph")


def resolve_pipeline(pipeline: Any) -> tuple[list, list[str]]:
    """A pipeline string, passes, pass specs or scenario steps, as (passes, notes)."""
    from ..passes.base import Pass
    from ..passes.pipeline import parse_pipeline
    from .scenario import pipeline_passes

    if isinstance(pipeline, str):
        return parse_pipeline(pipeline), []
    if isinstance(pipeline, (list, tuple)) and pipeline and all(isinstance(p, Pass) for p in pipeline):
        return list(pipeline), []
    return pipeline_passes(pipeline, "optimize")


def _feed_shapes(graph: Graph, input_shapes: Sequence[Sequence[int]] | None, batch: int) -> list[tuple[int, ...]]:
    """A static shape per graph input: the given ones, else the graph's with symbols as ``batch``
    in the first dim (and an error for other symbols)."""
    if input_shapes:
        if len(input_shapes) != len(graph.inputs):
            raise IrtoolError(f"{len(input_shapes)} input shapes given for a model with {len(graph.inputs)} inputs")
        return [tuple(int(d) for d in s) for s in input_shapes]
    shapes = []
    for value in graph.inputs:
        if value.type is None or value.type.shape is None:
            raise IrtoolError(f"input '{value.name}' has no known shape; give input_shapes")
        dims = list(value.type.shape)
        if dims and not isinstance(dims[0], (int, np.integer)):
            dims[0] = batch
        if any(not isinstance(d, (int, np.integer)) for d in dims):
            raise IrtoolError(f"input '{value.name}' has symbolic dims {tuple(value.type.shape)}; give input_shapes")
        shapes.append(tuple(int(d) for d in dims))
    return shapes


def _example_feed(graph: Graph, example_inputs: Any, shapes: Sequence[tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    names = [v.name for v in graph.inputs]
    if example_inputs is not None:
        if isinstance(example_inputs, Mapping):
            return {n: _to_numpy(example_inputs[n]) for n in names}
        items = example_inputs if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
        if len(items) != len(names):
            raise IrtoolError(f"{len(items)} example inputs given for a model with inputs {names}")
        return {n: _to_numpy(x).astype(v.type.dtype.numpy, copy=False) for n, x, v in zip(names, items, graph.inputs)}
    rng = np.random.default_rng(seed)
    feed = {}
    for value, shape in zip(graph.inputs, shapes):
        dtype = value.type.dtype if value.type is not None else None
        if dtype is not None and not dtype.is_float:
            feed[value.name] = np.zeros(shape, dtype=dtype.numpy)
        else:
            feed[value.name] = rng.standard_normal(shape).astype(dtype.numpy if dtype else np.float32)
    return feed


def _dataset(data: Any, graph: Graph, shapes: Sequence[tuple[int, ...]]):
    """``data`` as a dataset: a ``.npz``/``.npy`` path or a mapping input name -> rows is checked
    against the model's inputs, as ``irtool opt --data`` does; anything else goes to ``as_dataset``."""
    if data is None:
        return None
    from .model_io import DATA_SUFFIXES, load_data, model_data
    from .scenario import DataSpec

    if isinstance(data, DataSpec):
        return data.load(shapes)
    if isinstance(data, (str, os.PathLike)) and Path(data).suffix in DATA_SUFFIXES:
        return load_data(data, graph)
    if isinstance(data, Mapping):
        return model_data({k: _to_numpy(a) for k, a in data.items()}, graph)
    from ..passes.data import as_dataset

    return as_dataset(data)


# -- measuring -----------------------------------------------------------------------------------
def _fixed_batch(graph: Graph) -> int | None:
    dims = {v.type.shape[0] for v in graph.inputs if v.type is not None and v.type.shape}
    fixed = [d for d in dims if isinstance(d, (int, np.integer))]
    return int(min(fixed)) if fixed else None


def accuracy(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], graph: Graph, dataset, limit: int | None) -> tuple[float | None, int]:
    """Top-1 accuracy of the first output over the labelled rows (at most ``limit``), and the
    number of rows used; a model with a fixed batch is fed whole batches of that size."""
    if dataset is None or not dataset.has_labels:
        return None, 0
    names = [v.name for v in graph.inputs]
    types = [v.type.dtype.numpy if v.type is not None else np.float32 for v in graph.inputs]
    step = _fixed_batch(graph)
    correct = seen = 0
    for batch in dataset.batches():
        if len(batch.inputs) != len(names):
            raise IrtoolError(f"evaluation data has {len(batch.inputs)} inputs per row, the model takes {len(names)} ({names})")
        rows = len(batch) if limit is None else min(len(batch), limit - seen)
        size = step or rows
        for start in range(0, rows - size + 1, size):
            feed = {n: a[start : start + size].astype(t, copy=False) for n, a, t in zip(names, batch.inputs, types)}
            logits = np.asarray(run(feed)[0])
            predicted = logits.argmax(axis=1) if logits.ndim > 1 else (logits > 0).astype(np.int64)
            correct += int((predicted.reshape(-1) == np.asarray(batch.labels[start : start + size]).reshape(-1)).sum())
            seen += size
        if limit is not None and seen >= limit:
            break
    if not seen:
        raise IrtoolError("the evaluation data gave no complete batch to measure accuracy on")
    return correct / seen, seen


def _static_copy(graph: Graph, shapes: Sequence[tuple[int, ...]]) -> Graph:
    """A copy whose inputs have the given static shapes (TVM compiles static shapes)."""
    from ..ir.shapes import infer_shapes

    copy = graph.copy()
    for value, shape in zip(copy.inputs, shapes):
        value.type = value.type.with_shape(shape)
    infer_shapes(copy)
    return copy


@dataclass
class _Runtimes:
    """A model ready to run on each target, with the feed it is measured on."""

    graph: Graph
    session: Any
    compiled: Any = None

    def run_onnx(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(None, dict(feed))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise IrtoolError(f"onnxruntime failed to run the model: {' '.join(str(exc).split())}") from None

    def run_tvm(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.compiled.run([feed[v.name] for v in self.graph.inputs])

    def timed_call(self, target: str, feed: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """One inference on ``target`` with the inputs already in the runtime's memory."""
        if target == "onnx":
            feed = dict(feed)
            return lambda: self.session.run(None, feed)
        tensors = self.compiled.prepare([feed[v.name] for v in self.graph.inputs])
        return lambda: self.compiled.run_tensors(tensors)


def _prepare(graph: Graph, targets: Sequence[str], shapes, measure: Measure) -> _Runtimes:
    from ..backends.onnx import make_session

    runtimes = _Runtimes(graph, make_session(graph, threads=measure.threads))
    if "tvm" in targets:
        from ..backends.tvm import compile_graph

        runtimes.compiled = compile_graph(_static_copy(graph, shapes), threads=measure.threads)
    return runtimes


def _quality(runtimes: _Runtimes, feed: dict[str, np.ndarray], eval_set, measure: Measure) -> Metrics:
    """Cost, accuracy, and how far the other targets' outputs are from onnxruntime's."""
    from ..passes.cost import graph_cost

    cost = graph_cost(runtimes.graph)
    metrics = Metrics(cost.params, cost.macs, cost.bytes, cost.node_count)
    if runtimes.compiled is not None:
        reference = runtimes.run_onnx(feed)
        outputs = runtimes.run_tvm(feed)
        metrics.max_abs_diff["tvm"] = max(
            (float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0)
            for a, b in zip(outputs, reference)
        )
    if measure.accuracy:
        metrics.accuracy, metrics.accuracy_samples = accuracy(runtimes.run_onnx, runtimes.graph, eval_set, measure.accuracy_samples)
    return metrics


def _time(models: Sequence[tuple[_Runtimes, Metrics]], targets: Sequence[str], feed: dict[str, np.ndarray], measure: Measure) -> None:
    """Latency per target, the models timed in interleaved rounds so load changes hit all alike."""
    from ..backends.bench import measure_interleaved

    batch = int(next(iter(feed.values())).shape[0]) if feed and next(iter(feed.values())).ndim else 1
    for target in targets:
        calls = [runtimes.timed_call(target, feed) for runtimes, _ in models]
        stats = measure_interleaved(calls, warmup=measure.warmup, runs=measure.runs, rounds=min(5, measure.runs))
        for (_, metrics), s in zip(models, stats):
            metrics.latency[target] = Latency(s.median, s.p10, s.p90, s.runs, batch, measure.threads)


def _verification(original: Graph, optimized: Graph) -> dict[str, Any]:
    from ..passes.oracle import check_equivalence

    report = check_equivalence(original, optimized)
    return {
        "ok": bool(report.ok),
        "tolerance": report.tol,
        "trials": report.trials,
        "channels_removed": report.channels,
        "outputs": [{"name": o.name, "max_abs_diff": o.max_abs_diff, "scale": o.scale} for o in report.outputs],
        "approximate_groups": list(report.approximate),
    }


class _WarningCollector(logging.Handler):
    """Collects irtool's warnings during a run, so they reach the result as data."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# -- running -------------------------------------------------------------------------------------
def run_passes(graph: Graph, passes: Sequence, ctx) -> tuple[Graph, list[PassLog]]:
    """Run the passes one by one (so each one's effect on the cost is recorded)."""
    from ..passes.base import PassManager
    from ..passes.cost import graph_cost

    logs = []
    for p in passes:
        result = PassManager([p]).run(graph, ctx)
        graph = result.graph
        cost = graph_cost(graph)
        for record in result.records:
            options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.changed_options().items()}
            logs.append(
                PassLog(p.name, record.spec, _json_ready(options), record.modified, record.seconds, list(record.log), cost.params, cost.macs)
            )
    return graph, logs


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _file_stem(model: Any) -> str | None:
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix in (".onnx", ".pt2"):
        return Path(model).stem
    return None


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def _output_dir(output_dir: str | os.PathLike | None) -> Path:
    if output_dir is None:
        return Path(tempfile.mkdtemp(prefix="irtool-"))
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise IrtoolError(f"output folder '{path}' is a file")
    return path


def _check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets:
        raise IrtoolError(f"no target given; targets: {', '.join(TARGETS)}")
    for target in targets:
        if target not in TARGETS:
            raise IrtoolError(f"unknown target '{target}'; targets: {', '.join(TARGETS)}")
    return tuple(dict.fromkeys(targets))


def optimize(
    model: Any,
    pipeline: Any,
    *,
    example_inputs: Any = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    data: Any = None,
    eval_data: Any = None,
    targets: Sequence[str] = DEFAULT_TARGETS,
    output_dir: str | os.PathLike | None = None,
    name: str | None = None,
    measure: Measure | None = None,
) -> OptimizeResult:
    """Run ``pipeline`` on ``model``, measure the original and the result, write one artifact per
    target into ``output_dir`` (a new temporary folder when None) and return the numbers.

    Raises ``IrtoolError`` for bad input (the model, the pipeline, the data, the targets); then
    nothing has been written.
    """
    from ..passes.base import PassContext
    from .scenario import load_extensions

    started = time.perf_counter()
    measure = measure or Measure()
    targets = _check_targets(targets)
    load_extensions()
    passes, notes = resolve_pipeline(pipeline)
    if output_dir is not None:
        _output_dir(output_dir)
    graph, model_label = load_graph(model, example_inputs=example_inputs, input_shapes=input_shapes)
    shapes = _feed_shapes(graph, input_shapes, measure.batch)
    feed = _example_feed(graph, example_inputs, shapes)
    dataset = _dataset(data, graph, shapes)
    eval_set = _dataset(eval_data, graph, shapes) if eval_data is not None else dataset
    stem = _safe_name(name or _file_stem(model) or graph.name or "model")

    collector = _WarningCollector()
    irtool_logger = logging.getLogger("irtool")
    irtool_logger.addHandler(collector)
    try:
        original = graph.copy()
        models = []
        if measure.baseline:
            baseline = _prepare(original, targets, shapes, measure)
            models.append((baseline, _quality(baseline, feed, eval_set, measure)))
        ctx = PassContext(inputs=feed, data=dataset)
        from ..passes.criteria_data import data_scope

        with data_scope(dataset):
            graph, logs = run_passes(graph, passes, ctx)
        runtimes = _prepare(graph, targets, shapes, measure)
        models.append((runtimes, _quality(runtimes, feed, eval_set, measure)))
        if measure.latency:
            _time(models, targets, feed, measure)
        original_metrics = models[0][1] if measure.baseline else _cost_only(original)
        optimized_metrics = models[-1][1]
        verification = _verification(original, graph) if measure.verify else None
    finally:
        irtool_logger.removeHandler(collector)
    folder = _output_dir(output_dir)
    artifacts = _write_artifacts(graph, runtimes, targets, folder, stem)
    optimized_metrics.file_bytes = {t: p.stat().st_size + _data_file_bytes(p) for t, p in artifacts.items()}
    from ..passes.pipeline import format_pipeline

    return OptimizeResult(
        name=stem,
        model=model_label,
        pipeline=format_pipeline(passes),
        targets=targets,
        output_dir=folder,
        artifacts=artifacts,
        original=original_metrics,
        optimized=optimized_metrics,
        passes=logs,
        warnings=list(dict.fromkeys(collector.messages)),
        notes=notes,
        verification=verification,
        seconds=time.perf_counter() - started,
        settings={k: v for k, v in asdict(measure).items()} | {"input_shapes": [list(s) for s in shapes]},
        graph=graph,
    )


def _cost_only(graph: Graph) -> Metrics:
    from ..passes.cost import graph_cost

    cost = graph_cost(graph)
    return Metrics(cost.params, cost.macs, cost.bytes, cost.node_count)



def _data_file_bytes(path: Path) -> int:
    data = path.with_name(f"{path.name}.data")
    return data.stat().st_size if path.suffix == ".onnx" and data.is_file() else 0


def _write_artifacts(graph: Graph, runtimes: _Runtimes, targets: Sequence[str], folder: Path, stem: str) -> dict[str, Path]:
    from ..backends.onnx import save_onnx

    folder.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Path] = {}
    if "onnx" in targets:
        artifacts["onnx"] = save_onnx(graph, folder / f"{stem}.onnx")
    if "tvm" in targets:
        artifacts["tvm"] = runtimes.compiled.export(folder / f"{stem}.so")
    return artifacts


def summarize_change(result: OptimizeResult) -> str:
    """One line: params, MACs and the onnxruntime speedup."""
    change = result.change()
    parts = [f"{key} {100 * value:+.1f}%" for key in ("params", "macs") if (value := change.get(key)) is not None]
    speedup = change.get("speedup_onnx")
    if speedup is not None and math.isfinite(speedup):
        parts.append(f"onnxruntime {speedup:.2f}x")
    return ", ".join(parts)
