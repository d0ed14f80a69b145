"""Did the pruned graph lose an optimisation? ResNet-50 pruned by irtool against the same
network built narrow.

irtool prunes the zoo's ResNet-50 uniformly (``prune{sparsity=S}``); the zoo then builds
ResNet-50 with every stage ``1 - S`` as wide and exports it with PyTorch's exporter. Both have
the same layers with the same channel counts and MACs, so a runtime that runs the pruned model
slower than the narrow one is running a worse graph (an extra op, a lost fusion, a layout
change); if they run alike, whatever the pruned model lacks against the MAC reduction is the
runtime's own cost of narrow layers. The three models are timed interleaved in onnxruntime at
each thread count, in one process per thread count (``backends/bench.py``).

Run from the repository root: ``python tools/bench_native.py [--size 224] [--threads 1,2]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(size: int, sparsity: float, folder: Path) -> list[tuple[str, str, int]]:
    """(label, ONNX path, MACs) of the unpruned, pruned and natively narrow ResNet-50."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from irtool.backends.onnx import save_onnx
    from irtool.frontends.onnx import load_onnx
    from irtool.passes.base import PassContext, PassManager
    from irtool.passes.cost import graph_cost
    from tests.zoo import export_onnx
    from tests.zoo.resnet import resnet50

    shape = (1, 3, size, size)
    full = export_onnx("resnet50", folder / "resnet50.onnx", input_shape=shape)
    pruned = PassManager(f"prune{{sparsity={sparsity}}}").run(load_onnx(full), PassContext()).graph
    pruned_path = save_onnx(pruned, folder / "resnet50_pruned.onnx")
    narrow = export_onnx(resnet50(width=1 - sparsity), folder / "resnet50_narrow.onnx", input_shape=shape)
    models = [("unpruned", str(full)), ("irtool pruned", str(pruned_path)), ("built narrow", str(narrow))]
    return [(label, path, graph_cost(load_onnx(path)).macs) for label, path in models]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="share of channels removed (default 0.5)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--runs", type=int, default=40, help="timed runs per model (default 40)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    args = parser.parse_args(argv)

    from irtool.backends.bench import BenchRequest, parse_threads, run_isolated
    from irtool.ir.errors import IrtoolError

    try:
        threads = parse_threads(args.threads)
        if not 0 < args.sparsity < 1:
            raise IrtoolError(f"sparsity {args.sparsity} is not in (0, 1)")
        with tempfile.TemporaryDirectory(prefix="irtool-native-") as folder:
            models = build(args.size, args.sparsity, Path(folder))
            if models[1][2] != models[2][2]:
                raise IrtoolError(f"pruned and narrow models differ in MACs: {models[1][2]} vs {models[2][2]}")
            print(f"ResNet-50 {args.size}x{args.size}, sparsity {args.sparsity}: MACs {models[0][2] / 1e9:.2f} G -> "
                  f"{models[1][2] / 1e9:.2f} G (/{models[0][2] / models[1][2]:.2f}) for both")  # fmt: skip
            for count in threads:
                request = BenchRequest("ort", count, [path for _, path, _ in models], runs=args.runs, rounds=args.rounds)
                stats = run_isolated(request)
                base = stats[0].median
                cells = ", ".join(f"{label} {s.median:.2f} ms ({base / s.median:.2f}x)" for (label, _, _), s in zip(models, stats))
                print(f"onnxruntime, {count} thread(s): {cells}; pruned / narrow {stats[1].median / stats[2].median:.3f}")
    except IrtoolError as exc:
        print(f"bench_native: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
