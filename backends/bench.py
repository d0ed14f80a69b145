"""Inference latency on onnxruntime and TVM, shared by ``irtool bench`` and the benchmark scripts.

Latency is the wall-clock time of one inference whose inputs already sit in the runtime's
memory, after warm-up, at a pinned thread count. The models of one comparison are measured in
interleaved rounds, so a change of load on the machine slows all of them alike and speedups
between them stay honest. Each (backend, threads) configuration runs in a fresh process: thread
pools are per process (TVM sizes its pool from ``TVM_NUM_THREADS`` when it starts, onnxruntime
per session) and one runtime's spinning workers must not slow the other's measurements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..ir.core import Graph
from ..ir.errors import IrtoolError

__all__ = [
    "BACKENDS",
    "BenchRequest",
    "LatencyStats",
    "measure_interleaved",
    "measure_latency",
    "parse_backends",
    "parse_threads",
    "prepare_runner",
    "random_inputs",
    "require_backend",
    "run_isolated",
    "run_request",
]

BACKENDS = ("ort", "tvm")
"""Backend names ``irtool bench --backend`` accepts."""


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in milliseconds over ``runs`` timed inferences."""

    median: float
    p10: float
    p90: float
    runs: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "LatencyStats":
        if not seconds:
            raise IrtoolError("no timed runs to summarise")
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p10, median, p90 = np.percentile(ms, [10, 50, 90])
        return cls(median=float(median), p10=float(p10), p90=float(p90), runs=len(ms))


def measure_latency(run_fn: Callable, inputs, *, warmup: int = 5, runs: int = 30) -> LatencyStats:
    """Time ``run_fn(inputs)``: ``warmup`` untimed calls, then ``runs`` timed ones."""
    if runs < 1 or warmup < 0:
        raise IrtoolError(f"need runs >= 1 and warmup >= 0, got runs={runs} warmup={warmup}")
    for _ in range(warmup):
        run_fn(inputs)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run_fn(inputs)
        samples.append(time.perf_counter() - start)
    return LatencyStats.of(samples)


def measure_interleaved(
    calls: Sequence[Callable[[], object]],
    *,
    warmup: int = 5,
    runs: int = 30,
    rounds: int = 5,
    on_round: Callable[[int], None] | None = None,
) -> list[LatencyStats]:
    """Latency of several zero-argument calls, timed in ``rounds`` alternating blocks.

    Every call gets ``warmup`` untimed runs first, then ``runs`` timed runs spread over the
    rounds (round r times each call in turn), so slow and fast phases of a shared machine hit
    every call alike.
    """
    if runs < 1 or warmup < 0 or rounds < 1:
        raise IrtoolError(f"need runs >= 1, warmup >= 0 and rounds >= 1, got {runs}, {warmup}, {rounds}")
    rounds = min(rounds, runs)
    for call in calls:
        for _ in range(warmup):
            call()
    samples: list[list[float]] = [[] for _ in calls]
    for r in range(rounds):
        share = runs // rounds + (1 if r < runs % rounds else 0)
        for i, call in enumerate(calls):
            for _ in range(share):
                start = time.perf_counter()
                call()
                samples[i].append(time.perf_counter() - start)
            if on_round is not None:
                on_round(i)
    return [LatencyStats.of(s) for s in samples]


# -- backends ----------------------------------------------------------------------------------
def parse_backends(text: str) -> list[str]:
    """``"ort,tvm"`` -> ``["ort", "tvm"]``; an unknown name is an error naming the known ones."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise IrtoolError(f"unknown backend '{unknown[0] if unknown else text}'; choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def parse_threads(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``."""
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise IrtoolError(f"threads '{text}' is not a list of counts like 1,2") from None
    if not counts or any(c < 1 for c in counts):
        raise IrtoolError(f"threads '{text}' must be counts of at least 1")
    return list(dict.fromkeys(counts))


def require_backend(backend: str) -> None:
    """Fail early, with one line, when a backend's runtime is not installed."""
    if backend == "tvm":
        from .tvm import require_tvm

        require_tvm()


def random_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """One seeded input per graph input: normal floats, zeros for integer and boolean inputs."""
    rng = np.random.default_rng(seed)
    arrays = []
    for value in graph.inputs:
        if value.type is None or not value.type.is_static:
            raise IrtoolError(f"input '{value.name}' has shape {value.type}; benchmarks need a static shape (--input-shape)")
        shape, dtype = [int(d) for d in value.type.shape], value.type.dtype.numpy
        arrays.append(rng.standard_normal(shape).astype(dtype) if value.type.dtype.is_float else np.zeros(shape, dtype))
    return arrays


def prepare_runner(
    backend: str, model: "str | Graph", graph: Graph, threads: int, inputs: list[np.ndarray]
) -> Callable[[], object]:
    """A zero-argument call running one inference of the model on ``backend``: onnxruntime
    loads ``model`` (a file, or the graph itself), TVM compiles ``graph``."""
    if backend == "ort":
        from .onnx import make_session

        session = make_session(model, threads=threads)
        feeds = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
        return lambda: session.run(None, feeds)
    if backend == "tvm":
        from .tvm import compile_graph

        compiled = compile_graph(graph, threads=threads)
        tensors = compiled.prepare(inputs)
        return lambda: compiled.run_tensors(tensors)
    raise IrtoolError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")


# -- one configuration -------------------------------------------------------------------------
@dataclass
class BenchRequest:
    """Measure ONNX ``models`` on one backend at one thread count."""

    backend: str
    threads: int
    models: list[str]
    warmup: int = 5
    runs: int = 30
    rounds: int = 5
    seed: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    def steps(self) -> int:
        """Progress steps ``run_request`` reports: one per model prepared, one per model and round."""
        return len(self.models) * (1 + min(self.rounds, self.runs))


def run_request(request: BenchRequest, progress: Callable[[str], None] | None = None) -> list[LatencyStats]:
    """Run a request in this process (the caller owns thread settings)."""
    from ..frontends.onnx import load_onnx

    report = progress or (lambda _event: None)
    calls = []
    for path in request.models:
        graph = load_onnx(path)
        inputs = random_inputs(graph, request.seed)
        calls.append(prepare_runner(request.backend, path, graph, request.threads, inputs))
        report("prepared")
    return measure_interleaved(
        calls, warmup=request.warmup, runs=request.runs, rounds=request.rounds, on_round=lambda _i: report("round")
    )


def run_isolated(request: BenchRequest, progress: Callable[[str], None] | None = None) -> list[LatencyStats]:
    """Run a request in a fresh Python process with its thread pools sized to ``threads``."""
    env = dict(os.environ)
    threads = str(request.threads)
    env.update({"TVM_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, **request.extra_env})
    command = [sys.executable, "-m", __name__]
    # stderr goes to a file: a pipe nobody reads until the end could fill up and stall the worker.
    with tempfile.TemporaryFile(mode="w+") as log:
        with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env) as worker:
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write(json.dumps(asdict(request)))
            worker.stdin.close()
            result = error = None
            for line in worker.stdout:
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind = message.get("event")
                if kind in ("prepared", "round") and progress is not None:
                    progress(kind)
                elif kind == "result":
                    result = [LatencyStats(**s) for s in message["stats"]]
                elif kind == "error":
                    error = message["message"]
            worker.wait()
        log.seek(0)
        stderr = log.read()
    if error is not None:
        raise IrtoolError(error)
    if result is None:
        tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [f"exit status {worker.returncode}"]
        raise IrtoolError(f"{request.backend} benchmark process failed: {tail[0]}")
    return result


def _worker() -> int:
    """The isolated process: a JSON request on stdin, JSON events on stdout, one per line."""

    def emit(event: dict) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    try:
        request = BenchRequest(**json.loads(sys.stdin.read()))
        if request.backend == "tvm":
            from .tvm import set_threads

            set_threads(request.threads)
        stats = run_request(request, progress=lambda kind: emit({"event": kind}))
    except IrtoolError as exc:
        emit({"event": "error", "message": str(exc)})
        return 2
    emit({"event": "result", "stats": [asdict(s) for s in stats]})
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
