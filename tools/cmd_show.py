"""``irtool show MODEL``: print a model's IR, then its size (nodes by op, params, MACs, bytes)."""

from __future__ import annotations

import argparse

from ..ir.core import Graph
from ..ir.errors import IrtoolError
from .model_io import load_model, parse_shape


def add_input_shape_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-shape",
        action="append",
        metavar="1x3x224x224",
        help="input shape, with :int64 (or another type) after it for a non-float input such as "
        "token ids (repeat once per model input); needed for PyTorch factories",
    )


def input_shapes(args: argparse.Namespace) -> list[tuple[int, ...]] | None:
    return [parse_shape(text) for text in args.input_shape] if args.input_shape else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX file, .pt2 archive or package.module:factory")
    add_input_shape_argument(parser)
    parser.add_argument("--summary-only", action="store_true", help="print only the summary, not the IR")
    parser.add_argument("--groups", action="store_true", help="also print the channel dependency groups")


def format_ir(graph: Graph) -> str:
    try:
        from ..ir.text import print_graph
    except ModuleNotFoundError as exc:
        if exc.name != "irtool.ir.text":
            raise
        raise IrtoolError("printing the IR needs irtool.ir.text, which is not available; use --summary-only") from None
    return print_graph(graph)


def format_groups(graph: Graph) -> str:
    try:
        from ..passes.dependency import analyze_channels
    except ModuleNotFoundError as exc:
        if exc.name != "irtool.passes.dependency":
            raise
        raise IrtoolError(
            "--groups needs the channel dependency analysis (irtool.passes.dependency), which is not available"
        ) from None
    from ..passes.oracle import prepare

    # Analyse the graph as prune sees it: static shapes, run-time shape computations folded.
    return analyze_channels(prepare(graph)).format()


def run(args: argparse.Namespace) -> int:
    from ..passes.cost import graph_cost

    graph = load_model(args.model, input_shapes(args))
    if not args.summary_only:
        print(format_ir(graph))
        print()
    if args.groups:
        print(format_groups(graph))
        print()
    print(graph_cost(graph).format())
    return 0
