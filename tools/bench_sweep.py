"""Real speedup against MAC reduction: ResNet-50 and MobileNetV2 pruned at sparsity 0 to 0.7.

For each model the zoo's ONNX export is pruned with the ``prune`` pass at every sparsity and
channel multiple (``round-to``: runtimes run blocked layouts, so counts that are not multiples
of the block lose speed), and all variants are timed together (interleaved, ``backends/bench.py``) on each backend and thread
count, so each speedup is measured in the same run as its unpruned model. Writes one CSV row
per (model, sparsity, round-to, backend, threads) and a plot of speedup against MAC reduction, where the
diagonal is a speedup equal to the MAC reduction.

Run from the repository root:
``python tools/bench_sweep.py [--models resnet50,mobilenet_v2] [--size 224] [--round-to 1,8]
[--backend ort,tvm] [--threads 1,2] [--out bench_sweep]``
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
FIELDS = (
    "model", "sparsity", "round_to", "backend", "threads", "macs", "mac_reduction",
    "median_ms", "p10_ms", "p90_ms", "speedup", "speedup_per_mac_reduction",
)  # fmt: skip


@dataclass
class Variant:
    sparsity: float
    round_to: int
    path: str
    macs: int


def _zoo():
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.zoo import export_onnx

    return export_onnx


def prune_variants(model: str, size: int, sparsities: list[float], round_tos: list[int], folder: Path) -> list[Variant]:
    """The unpruned model, then the model at each sparsity and channel multiple, as ONNX files with their MACs."""
    from irtool.backends.onnx import save_onnx
    from irtool.frontends.onnx import load_onnx
    from irtool.passes.base import PassContext, PassManager
    from irtool.passes.cost import graph_cost

    source = _zoo()(model, folder / f"{model}.onnx", input_shape=(1, 3, size, size))
    unpruned = load_onnx(source)
    variants = [Variant(0.0, 1, str(source), graph_cost(unpruned).macs)]
    for round_to in round_tos:
        for sparsity in (s for s in sparsities if s > 0):
            spec = f"prune{{sparsity={sparsity} round-to={round_to}}}"
            graph = PassManager(spec).run(load_onnx(source), PassContext()).graph
            path = save_onnx(graph, folder / f"{model}_s{int(round(sparsity * 100)):02d}_r{round_to}.onnx")
            variants.append(Variant(sparsity, round_to, str(path), graph_cost(graph).macs))
    return variants


def sweep(args) -> list[dict]:
    from tqdm import tqdm

    from irtool.backends.bench import BenchRequest, parse_backends, parse_threads, require_backend, run_isolated

    backends, threads = parse_backends(args.backend), parse_threads(args.threads)
    for backend in backends:
        require_backend(backend)
    rows = []
    with tempfile.TemporaryDirectory(prefix="irtool-sweep-") as folder:
        for model in args.models.split(","):
            sparsities = [float(s) for s in args.sparsities.split(",")]
            round_tos = [int(r) for r in args.round_to.split(",")]
            variants = prune_variants(model, args.size, sparsities, round_tos, Path(folder))
            requests = [
                BenchRequest(b, t, [v.path for v in variants], warmup=args.warmup, runs=args.runs, rounds=args.rounds)
                for b in backends
                for t in threads
            ]
            for request in requests:
                with tqdm(total=request.steps(), desc=f"{model} {request.backend} x{request.threads}", file=sys.stderr, leave=False) as bar:
                    stats = run_isolated(request, progress=lambda _kind: bar.update(1))
                base, base_macs = stats[0].median, variants[0].macs
                for variant, s in zip(variants, stats):
                    reduction = base_macs / variant.macs
                    speedup = base / s.median
                    rows.append({
                        "model": model, "sparsity": variant.sparsity, "round_to": variant.round_to, "backend": request.backend,
                        "threads": request.threads, "macs": variant.macs, "mac_reduction": round(reduction, 4),
                        "median_ms": round(s.median, 3), "p10_ms": round(s.p10, 3), "p90_ms": round(s.p90, 3),
                        "speedup": round(speedup, 4), "speedup_per_mac_reduction": round(speedup / reduction, 4),
                    })  # fmt: skip
                    print(
                        f"{model} s={variant.sparsity:.1f} r={variant.round_to} {request.backend} x{request.threads}: "
                        f"{s.median:8.2f} ms  MACs /{reduction:.2f}  speedup {speedup:.2f}  ({speedup / reduction:.2f} of MACs)",
                        flush=True,
                    )
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    from irtool.backends.files import atomic_write

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from irtool.backends.files import atomic_write

    figure, axes = plt.subplots(figsize=(7, 5))
    top = max([r["mac_reduction"] for r in rows] + [r["speedup"] for r in rows] + [1.0]) * 1.05
    axes.plot([1, top], [1, top], color="grey", linestyle="--", linewidth=1, label="speedup = MAC reduction")
    series: dict[tuple, list[dict]] = {}
    round_tos = sorted({r["round_to"] for r in rows if r["sparsity"] > 0})
    for row in rows:
        for round_to in round_tos if row["sparsity"] == 0 else [row["round_to"]]:  # the unpruned point starts every curve
            series.setdefault((row["model"], row["backend"], row["threads"], round_to), []).append(row)
    for (model, backend, threads, round_to), points in series.items():
        points.sort(key=lambda r: r["mac_reduction"])
        axes.plot(
            [p["mac_reduction"] for p in points],
            [p["speedup"] for p in points],
            marker="o" if backend == "ort" else "s",
            linestyle="-" if round_to == round_tos[-1] else ":",
            label=f"{model} {backend} x{threads}" + (f" round-to {round_to}" if len(round_tos) > 1 else ""),
        )
    axes.set_xlabel("MAC reduction (unpruned MACs / pruned MACs)")
    axes.set_ylabel("measured speedup (unpruned latency / pruned latency)")
    axes.set_title("structured pruning: real speedup against MAC reduction")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2", help="zoo models (default resnet50,mobilenet_v2)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES), help="comma-separated, 0 first")
    parser.add_argument("--round-to", default="1,8", help="comma-separated channel multiples pruned to (default 1,8)")
    parser.add_argument("--backend", default="ort,tvm", help="comma-separated backends (default ort,tvm)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per variant (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per variant (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--out", default="bench_sweep", help="output prefix: PREFIX.csv and PREFIX.png")
    args = parser.parse_args(argv)

    from irtool.ir.errors import IrtoolError

    try:
        if not args.sparsities.startswith("0"):
            raise IrtoolError("--sparsities must start with 0: speedups are against the unpruned model")
        rows = sweep(args)
        write_csv(rows, Path(f"{args.out}.csv"))
        plot(rows, Path(f"{args.out}.png"))
    except IrtoolError as exc:
        print(f"bench_sweep: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}.csv and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
