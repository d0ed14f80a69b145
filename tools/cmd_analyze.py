"""``irtool analyze MODEL --sensitivity``: how much each channel group's pruning changes the
model's output, at several sparsities, as a table, a JSON file and a plot; ``--latency``: the
model's latency table (``passes/latency.py``), layer by layer.

The measuring lives in ``passes/sensitivity.py``; this is the command around it. The JSON file
(``--json``) is what ``prune{target-macs=... sensitivity=FILE}`` reads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..ir.core import Graph
from ..ir.errors import IrtoolError
from ..passes.sensitivity import GroupSensitivity
from .cmd_show import add_input_shape_argument, input_shapes
from .model_io import load_model


def parse_sparsities(text: str) -> list[float]:
    try:
        values = sorted({float(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise IrtoolError(f"sparsities '{text}' is not a list like 0.25,0.5,0.75") from None
    if not values or any(not 0 < v < 1 for v in values):
        raise IrtoolError(f"sparsities '{text}' must be numbers in (0, 1)")
    return values


def format_table(rows: list[GroupSensitivity], sparsities: list[float]) -> str:
    width = max([len(r.name) for r in rows] + [5])
    header = f"{'group':>5}  {'layer':<{width}}  {'ch':>5}" + "".join(f"  {f'dev@{s:g}':>10}" for s in sparsities)
    if rows and rows[0].agreement:
        header += "".join(f"  {f'top1@{s:g}':>9}" for s in sparsities)
    lines = [header]
    for r in rows:
        line = f"{r.group:>5}  {r.name:<{width}}  {r.channels:>5}" + "".join(f"  {r.deviation[s]:>10.3e}" for s in sparsities)
        if r.agreement:
            line += "".join(f"  {r.agreement[s]:>9.3f}" for s in sparsities)
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[GroupSensitivity], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..backends.files import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        xs = sorted(r.deviation)
        ax.plot(xs, [r.deviation[x] for x in xs], marker="o", linewidth=1, label=r.name)
    ax.set_xlabel("sparsity of the group")
    ax.set_ylabel("relative output deviation")
    ax.set_yscale("symlog", linthresh=1e-3)
    if len(rows) <= 12:
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)


def format_latency(graph: Graph, threads: int, backend: str = "ort") -> str:
    """The latency model's summary and each layer's (relative work, ms) points."""
    from ..passes.dependency import analyze_channels, layer_name
    from ..passes.latency import build_latency_model

    model = build_latency_model(graph, analyze_channels(graph), backend=backend, threads=threads)
    width = max([len(layer_name(l.work.node)) for l in model.layers] + [5])
    lines = [model.format(), f"{'layer':<{width}}  {'MACs':>12}  ms at relative work"]
    for layer in model.layers:
        points = "  ".join(f"{x:.3f}:{ms:.4f}" for x, ms in layer.points)
        lines.append(f"{layer_name(layer.work.node):<{width}}  {layer.work.macs:>12}  {points}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX file, .pt2 archive or package.module:factory")
    add_input_shape_argument(parser)
    parser.add_argument("--sensitivity", action="store_true", help="prune each group alone at several sparsities and measure the output change")
    parser.add_argument("--sparsities", default="0.25,0.5,0.75", help="sparsities to try per group (default 0.25,0.5,0.75)")
    parser.add_argument("--criterion", default="l1", help="which channels a group loses first (default l1)")
    parser.add_argument("--data", type=Path, help="a .npy batch of inputs (default: one seeded random input)")
    parser.add_argument("--json", type=Path, help="write the table as JSON, the budget chooser's sensitivity input")
    parser.add_argument("--plot", type=Path, help="write a plot of deviation against sparsity (PNG or SVG)")
    parser.add_argument("--latency", action="store_true", help="build (or reuse from the cache) the latency table and print it")
    parser.add_argument("--backend", choices=("ort", "tvm"), default="ort", help="backend the latency table is timed on (default ort)")
    parser.add_argument("--threads", type=int, default=1, help="threads of the latency table (default 1)")


def _inputs(graph: Graph, data: Path | None) -> list[np.ndarray]:
    from ..backends.bench import random_inputs

    if data is None:
        return random_inputs(graph, seed=0)
    if len(graph.inputs) != 1:
        raise IrtoolError(f"--data gives one input, but the model has {len(graph.inputs)}")
    try:
        array = np.load(data)
    except (OSError, ValueError) as exc:
        raise IrtoolError(f"--data '{data}' is not a .npy file: {exc}") from None
    return [array.astype(graph.inputs[0].type.dtype.numpy)]


def run(args: argparse.Namespace) -> int:
    from ..passes.oracle import prepare
    from ..passes.sensitivity import measure_sensitivity, to_json

    if not args.sensitivity and not args.latency:
        raise IrtoolError("nothing to analyze: give --sensitivity or --latency")
    if args.threads < 1:
        raise IrtoolError(f"--threads must be at least 1, not {args.threads}")
    sparsities = parse_sparsities(args.sparsities)
    graph = prepare(load_model(args.model, input_shapes(args)))
    if args.latency:
        print(format_latency(graph, args.threads, args.backend))
    if not args.sensitivity:
        return 0
    inputs = _inputs(graph, args.data)
    rows = measure_sensitivity(graph, sparsities, inputs, criterion=args.criterion)
    print(format_table(rows, sparsities))
    if args.json:
        from ..backends.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(to_json(rows), indent=1))
    if args.plot:
        plot(rows, args.plot)
    return 0
