"""``irtool demo``: train, prune, fine-tune, quantize and benchmark a small ResNet on digits.

Prints one table (accuracy, params, MACs, bytes, onnxruntime and TVM latency per stage) and
writes a markdown report, a plot and the models to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..ir.errors import IrtoolError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .demo import DemoConfig

    default = DemoConfig()
    parser.add_argument("--out", default=str(default.out), help=f"output folder (default: {default.out})")
    parser.add_argument("--sparsity", type=float, default=default.sparsity, help="fraction of channels to prune")
    parser.add_argument("--criterion", default=default.criterion, help="channel importance: l1, l2, fpgm, apoz, taylor, ...")
    parser.add_argument("--epochs", type=int, default=default.train_epochs, help="training epochs of the baseline")
    parser.add_argument("--finetune-epochs", type=int, default=default.finetune_epochs, help="fine-tuning epochs after pruning")
    parser.add_argument(
        "--image-size", type=int, default=default.image_size, help="digits upsampled to this size (8, 16, 24, ...)"
    )
    parser.add_argument("--batch", type=int, default=default.bench_batch, help="rows per benchmarked batch")
    parser.add_argument("--runs", type=int, default=default.bench_runs, help="timed runs per backend and stage")
    parser.add_argument("--threads", type=int, default=default.threads, help="threads for torch, onnxruntime and TVM")
    parser.add_argument("--no-tvm", action="store_true", help="skip compiling and timing with TVM")
    parser.add_argument("--seed", type=int, default=default.seed, help="seed of the model, the split and training")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise IrtoolError(f"--out '{out}' is a file, not a folder")
    if not 0 <= args.sparsity < 1:
        raise IrtoolError(f"--sparsity {args.sparsity:g} is outside [0, 1)")
    counts = {"--epochs": args.epochs, "--batch": args.batch, "--runs": args.runs, "--threads": args.threads}
    for flag, value in counts.items():
        if value < 1:
            raise IrtoolError(f"{flag} must be at least 1, not {value}")
    config = DemoConfig(
        out=out,
        image_size=args.image_size,
        train_epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        sparsity=args.sparsity,
        criterion=args.criterion,
        bench_batch=args.batch,
        bench_runs=args.runs,
        threads=args.threads,
        tvm_stages=() if args.no_tvm else DemoConfig().tvm_stages,
        seed=args.seed,
        progress=not args.quiet,
    )
    run_demo(config)
    return 0
