"""Time ONNX import and emit of ResNet-50 (224x224): ``load_onnx`` from a file, then
``onnx_bytes`` (``to_onnx`` and serialization in one step, the same bytes as
``to_onnx(graph).SerializeToString()`` with each weight copied once). Prints one line with
the median over several runs.

Run from the repository root: ``python tools/bench_import.py [--runs N] [--model FILE]``.
Without ``--model`` the zoo's ResNet-50 is exported once to a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.5


def _export_resnet50(folder: Path) -> Path:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.zoo import export_onnx

    return export_onnx("resnet50", folder / "resnet50.onnx", input_shape=(1, 3, 224, 224))


def measure(path: Path, runs: int) -> tuple[list[float], list[float], int, int]:
    """Import and emit times (seconds) of each run, the node count and the emitted size."""
    from irtool.backends.onnx import onnx_bytes
    from irtool.frontends.onnx import load_onnx

    imports, emits = [], []
    nodes = size = 0
    for _ in range(runs):
        start = time.perf_counter()
        graph = load_onnx(path)
        middle = time.perf_counter()
        data = onnx_bytes(graph)
        end = time.perf_counter()
        imports.append(middle - start)
        emits.append(end - middle)
        nodes, size = len(graph), len(data)
        del graph, data
    return imports, emits, nodes, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs (default 7)")
    parser.add_argument("--model", type=Path, help="an ONNX file to time instead of ResNet-50")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="irtool-bench-") as folder:
        path = args.model or _export_resnet50(Path(folder))
        imports, emits, nodes, size = measure(path, args.runs)
    totals = [a + b for a, b in zip(imports, emits)]
    total = statistics.median(totals)
    name = args.model.name if args.model else "ResNet-50 224x224"
    verdict = "meets" if total < TARGET_S else "MISSES"
    print(
        f"ONNX import + emit of {name} ({nodes} nodes, {size / 1e6:.0f} MB): "
        f"{total:.3f} s median of {args.runs} runs (import {statistics.median(imports):.3f} s, "
        f"emit {statistics.median(emits):.3f} s); {verdict} the {TARGET_S} s target"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
