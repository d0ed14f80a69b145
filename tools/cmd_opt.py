"""``irtool opt -p PIPELINE MODEL -o OUT``: run a pass pipeline and write the result.

The pipeline and the data file are validated before the model is loaded, and the output is
written last and atomically: any error leaves no output file and the input untouched.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..ir.errors import IrtoolError
from .cmd_show import add_input_shape_argument, input_shapes
from .model_io import load_model, model_data, read_arrays, save_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX file, .pt2 archive or package.module:factory")
    parser.add_argument("-p", "--pipeline", required=True, help="passes, e.g. 'fold-bn,prune{sparsity=0.5},dce'")
    parser.add_argument("-o", "--output", help="where to write the optimised ONNX model (omit for a dry run)")
    add_input_shape_argument(parser)
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="calibration and criteria data: .npz with an array per input name (and 'labels'), or one .npy",
    )
    parser.add_argument(
        "--verify", action="store_true", help="check the result against the original with the equivalence oracle"
    )
    parser.add_argument("--verify-each", action="store_true", help="run the IR verifier after every pass")
    parser.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    parser.add_argument("--timing", action="store_true", help="print how long each pass took")
    parser.add_argument("--fixpoint", action="store_true", help="repeat the pipeline until nothing changes")


def _check_output(output: str | None) -> None:
    if output is None:
        return
    path = Path(output)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise IrtoolError(f"output folder '{folder}' does not exist")
    if path.is_dir():
        raise IrtoolError(f"output '{output}' is a folder")


def _load_oracle():
    """``check_equivalence``, or a clear error before any work is done."""
    try:
        from ..passes.oracle import check_equivalence
    except ModuleNotFoundError as exc:
        if exc.name != "irtool.passes.oracle":
            raise
        raise IrtoolError(
            "--verify needs the equivalence oracle (irtool.passes.oracle), which is not available"
        ) from None
    return check_equivalence


def _report_equivalence(report) -> None:
    print(report.format())
    if not report.ok:
        raise IrtoolError("the result is not equivalent to the original; nothing written")


def run(args: argparse.Namespace) -> int:
    from ..passes.base import PassContext, PassManager
    from ..passes.cost import format_comparison, graph_cost
    from ..passes.pipeline import parse_pipeline
    from ..passes.criteria_data import data_scope

    passes = parse_pipeline(args.pipeline)
    shapes = input_shapes(args)
    _check_output(args.output)
    check_equivalence = _load_oracle() if args.verify else None
    arrays = read_arrays(args.data) if args.data is not None else None

    graph = load_model(args.model, shapes)
    data = model_data(arrays, graph, name=args.data) if arrays is not None else None
    original = graph.copy() if args.verify else None
    before = graph_cost(graph)
    ctx = PassContext(data=data)
    # The oracle checks structural passes only: verify the graph before the first pass that
    # changes the model's function on purpose (quantize, sparsify, finetune), then go on.
    split = next((i for i, p in enumerate(passes) if not p.preserves_function), len(passes))
    stages = [passes[:split], passes[split:]] if args.verify else [passes]
    records = []
    for index, stage in enumerate(stages):
        if stage:
            manager = PassManager(
                stage, verify=args.verify_each, print_ir_after_all=args.print_ir_after_all, fixpoint=args.fixpoint
            )
            with data_scope(data):
                result = manager.run(graph, ctx)
            graph = result.graph
            records.append(result)
        if args.verify and index == 0:
            report = check_equivalence(original, graph)
    for result in records:
        for record in result.records:
            for line in record.log or ["no change"]:
                print(f"{record.spec.split('{', 1)[0]}: {line}")
    print()
    print(format_comparison(before, graph_cost(graph)))
    if args.timing:
        for result in records:
            print()
            print(result.timing_report())
    if args.verify:
        print()
        if split < len(passes):
            print(f"equivalence checked before '{passes[split]}', which changes the model's function on purpose")
        _report_equivalence(report)
    if args.output:
        written = save_model(graph, args.output)
        print(f"\nwrote {written}")
    return 0
