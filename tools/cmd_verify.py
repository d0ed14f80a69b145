"""``irtool verify ORIGINAL PRUNED``: check a pruned model against the original with the
equivalence oracle (``passes/oracle.py``).

Prints the max abs difference and the scale of every output on random inputs; exits with 1
when an exact group differs by more than ``--tol`` times the output's scale.
"""

from __future__ import annotations

import argparse

from ..ir.errors import IrtoolError
from .cmd_show import add_input_shape_argument, input_shapes
from .model_io import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("original", help="the model before pruning (ONNX file, .pt2 archive or package.module:factory)")
    parser.add_argument("pruned", help="the pruned model (irtool records what it removed in the file)")
    add_input_shape_argument(parser)
    parser.add_argument("--trials", type=int, default=2, help="random inputs to compare on (default 2)")
    parser.add_argument("--tol", type=float, default=1e-4, help="allowed max abs diff per unit of output scale (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")


def run(args: argparse.Namespace) -> int:
    from ..passes.oracle import check_equivalence

    if args.trials < 1:
        raise IrtoolError(f"--trials must be at least 1, not {args.trials}")
    if not args.tol > 0:
        raise IrtoolError(f"--tol must be positive, not {args.tol}")
    shapes = input_shapes(args)
    original = load_model(args.original, shapes)
    pruned = load_model(args.pruned, shapes)
    report = check_equivalence(original, pruned, trials=args.trials, tol=args.tol, seed=args.seed)
    print(report.format())
    return 0 if report.ok else 1
