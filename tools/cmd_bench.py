"""``irtool bench MODEL [MODEL...]``: inference latency on onnxruntime and TVM.

For every backend and thread count, all models are measured in one process, in interleaved
rounds (``backends/bench.py``), so the speedup against the first model compares like with like.
Prints a table (or ``--json``), and can write a markdown report and a plot of latency
against MACs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..backends.bench import BenchRequest, LatencyStats, parse_backends, parse_threads, require_backend, run_isolated
from ..ir.errors import IrtoolError
from .cmd_show import add_input_shape_argument, input_shapes
from .model_io import load_model

COLUMNS = ("model", "backend", "threads", "median ms", "p10 ms", "p90 ms", "MACs", "params", "size", "speedup", "MAC cut", "efficiency")
"""``MAC cut`` is the first model's MACs over this one's; ``efficiency`` the speedup over the MAC
cut: 1.00 when latency fell exactly as the MACs did."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="ONNX files, .pt2 archives or package.module:factory")
    parser.add_argument("--backend", default="ort", help="comma-separated backends: ort, tvm (default ort)")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the runs are spread over (default 5)")
    add_input_shape_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--report", metavar="FILE.md", help="also write a markdown report")
    parser.add_argument("--plot", metavar="FILE.png", help="also plot latency against MACs")


@dataclass
class ModelInfo:
    label: str
    path: str
    """The ONNX file the runtimes load."""
    macs: int | None
    params: int | None
    size: int
    """Bytes of the model file as given (of the exported ONNX file for other formats)."""


@dataclass
class Row:
    model: ModelInfo
    backend: str
    threads: int
    latency: LatencyStats
    speedup: float
    mac_cut: float | None = None
    """The first model's MACs over this one's (None without both counts)."""

    @property
    def efficiency(self) -> float | None:
        """Speedup over MAC cut: how much of the MAC reduction the runtime turned into speed."""
        return self.speedup / self.mac_cut if self.mac_cut else None

    def as_dict(self) -> dict:
        return {
            "model": self.model.label,
            "file": self.model.path,
            "backend": self.backend,
            "threads": self.threads,
            "median_ms": self.latency.median,
            "p10_ms": self.latency.p10,
            "p90_ms": self.latency.p90,
            "runs": self.latency.runs,
            "macs": self.model.macs,
            "params": self.model.params,
            "size_bytes": self.model.size,
            "speedup": self.speedup,
            "mac_reduction": self.mac_cut,
            "latency_efficiency": self.efficiency,
        }


def run(args: argparse.Namespace) -> int:
    backends = parse_backends(args.backend)
    threads = parse_threads(args.threads)
    if args.runs < 1 or args.warmup < 0 or args.rounds < 1:
        raise IrtoolError("--runs and --rounds must be at least 1, --warmup at least 0")
    for output in (args.report, args.plot):
        _check_output(output)
    for backend in backends:
        require_backend(backend)
    shapes = input_shapes(args)
    with tempfile.TemporaryDirectory(prefix="irtool-bench-") as folder:
        models = [_prepare(spec, shapes, Path(folder), i) for i, spec in enumerate(args.models)]
        rows = _measure(models, backends, threads, args)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        print(format_table(rows))
    if args.report:
        from ..backends.files import atomic_write_text

        atomic_write_text(args.report, format_report(rows, args))
    if args.plot:
        plot_latency(rows, args.plot)
    return 0


def _check_output(path: str | None) -> None:
    if path is None:
        return
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    if not folder.is_dir():
        raise IrtoolError(f"output folder '{folder}' does not exist")


def _prepare(spec: str, shapes, folder: Path, index: int) -> ModelInfo:
    """Load the model (for its cost and a clear error if it is bad) and give it an ONNX file."""
    graph = load_model(spec, shapes)
    macs = params = None
    try:
        from ..passes.cost import graph_cost

        cost = graph_cost(graph)
        macs, params = cost.macs, cost.params
    except ModuleNotFoundError:  # cost analysis not available: the columns stay empty
        pass
    path = Path(spec)
    if path.suffix == ".onnx" and path.is_file() and not shapes:
        onnx_path, size = str(path), path.stat().st_size
    else:
        from ..backends.onnx import save_onnx

        onnx_path = str(save_onnx(graph, folder / f"model{index}.onnx"))
        size = path.stat().st_size if path.is_file() else Path(onnx_path).stat().st_size
    label = path.stem if path.is_file() else spec.rsplit(":", 1)[-1]
    return ModelInfo(label=label, path=onnx_path, macs=macs, params=params, size=size)


def _measure(models: list[ModelInfo], backends: list[str], threads: list[int], args) -> list[Row]:
    from tqdm import tqdm

    requests = [
        BenchRequest(backend=b, threads=t, models=[m.path for m in models], warmup=args.warmup, runs=args.runs, rounds=args.rounds)
        for b in backends
        for t in threads
    ]
    rows: list[Row] = []
    with tqdm(total=sum(r.steps() for r in requests), desc="bench", unit="step", file=sys.stderr, leave=False) as bar:
        for request in requests:
            bar.set_postfix_str(f"{request.backend} x{request.threads}")
            stats = run_isolated(request, progress=lambda _kind: bar.update(1))
            base = stats[0].median
            rows.extend(
                Row(model, request.backend, request.threads, s, base / s.median if s.median > 0 else float("nan"), _mac_cut(models[0], model))
                for model, s in zip(models, stats)
            )
    return rows


def _mac_cut(base: ModelInfo, model: ModelInfo) -> float | None:
    return base.macs / model.macs if base.macs and model.macs else None


# -- output ------------------------------------------------------------------------------------
def _cells(row: Row) -> list[str]:
    from ..passes.cost import human

    return [
        row.model.label,
        row.backend,
        str(row.threads),
        f"{row.latency.median:.2f}",
        f"{row.latency.p10:.2f}",
        f"{row.latency.p90:.2f}",
        human(row.model.macs) if row.model.macs is not None else "?",
        human(row.model.params) if row.model.params is not None else "?",
        human(row.model.size, "B"),
        f"{row.speedup:.2f}x",
        f"{row.mac_cut:.2f}x" if row.mac_cut is not None else "?",
        f"{row.efficiency:.2f}" if row.efficiency is not None else "?",
    ]


def format_table(rows: list[Row]) -> str:
    table = [list(COLUMNS)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(rows: list[Row], args) -> str:
    lines = [
        "# irtool bench",
        "",
        f"Latency of one inference after {args.warmup} warm-up runs, {args.runs} timed runs per model "
        f"in {args.rounds} interleaved rounds; speedup against the first model at the same backend and "
        f"thread count; MAC cut is the first model's MACs over the model's, efficiency the speedup over "
        f"the MAC cut. Machine: {os.cpu_count()} logical CPUs.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(" --- " if i < 3 else " ---: " for i in range(len(COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_latency(rows: list[Row], path: str) -> None:
    """Median latency (with p10-p90 bars) against MACs, one series per backend and thread count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise IrtoolError("--plot needs matplotlib (pip install 'irtool[plot]')") from None
    from ..backends.files import atomic_write

    figure, axes = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        series.setdefault((row.backend, row.threads), []).append(row)
    for (backend, threads), points in series.items():
        points = [p for p in points if p.model.macs is not None]
        if not points:
            continue
        x = [p.model.macs / 1e9 for p in points]
        y = [p.latency.median for p in points]
        errors = [[p.latency.median - p.latency.p10 for p in points], [p.latency.p90 - p.latency.median for p in points]]
        axes.errorbar(x, y, yerr=errors, fmt="o", capsize=3, label=f"{backend}, {threads} thread{'s' if threads > 1 else ''}")
        for p, xi, yi in zip(points, x, y):
            axes.annotate(p.model.label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xlabel("GMACs")
    axes.set_ylabel("median latency (ms)")
    axes.set_title("latency against MACs")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)
