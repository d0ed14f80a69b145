"""Time channel dependency analysis + pruning of ResNet-50 (224x224): the bar is 0.5 s.

Each run prunes a fresh copy of the graph (50% of every group, l1) and times
``analyze_channels`` and ``prune_graph`` (which re-infers shapes and costs before and after);
the median over the runs is printed. The model is exported from the zoo and imported once,
outside the timing.

Run from the repository root: ``python tools/bench_prune.py [--runs N] [--model FILE]``.
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


def measure(path: Path, runs: int, sparsity: float) -> tuple[list[float], list[float], int, int]:
    """Analysis and prune seconds of each run, the number of groups and of channels removed."""
    from irtool.frontends.onnx import load_onnx
    from irtool.passes.dependency import analyze_channels
    from irtool.passes.oracle import prepare
    from irtool.passes.prune import prune_graph

    base = prepare(load_onnx(path))
    analyses, prunes = [], []
    groups = removed = 0
    for _ in range(runs):
        graph = prepare(base)
        start = time.perf_counter()
        analysis = analyze_channels(graph)
        middle = time.perf_counter()
        report = prune_graph(graph, sparsity=sparsity, analysis=analysis)
        end = time.perf_counter()
        analyses.append(middle - start)
        prunes.append(end - middle)
        groups, removed = len(analysis.groups), report.channels_removed
    return analyses, prunes, groups, removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs (default 7)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of each group to prune (default 0.5)")
    parser.add_argument("--model", type=Path, help="an ONNX file to time instead of ResNet-50")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="irtool-bench-") as folder:
        path = args.model or _export_resnet50(Path(folder))
        analyses, prunes, groups, removed = measure(path, args.runs, args.sparsity)
    totals = [a + b for a, b in zip(analyses, prunes)]
    total = statistics.median(totals)
    verdict = "ok" if total < TARGET_S else "SLOWER than"
    print(
        f"{path.name}: {groups} channel groups, {removed} channels removed; median of {args.runs} runs: "
        f"analysis {statistics.median(analyses) * 1e3:.0f} ms + prune {statistics.median(prunes) * 1e3:.0f} ms "
        f"= {total * 1e3:.0f} ms ({verdict} the {TARGET_S:g} s bar)"
    )
    return 0 if total < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
