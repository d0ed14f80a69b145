"""Latency-aware pruning: prune a zoo model to a latency target and compare it with a uniform
prune of the same predicted latency; time building ResNet-50's latency table.

For the target model it builds the latency model (in a fresh cache folder unless ``--cache``),
chooses channels for ``--target`` (a fraction of the unpruned latency) as ``prune{target-latency}``
does, closing the loop on measured latency, and measures the unpruned, budget-pruned and
uniformly pruned models in interleaved rounds. It prints the predicted and measured latencies,
the speedup against the target speedup, the MAC reduction, the latency efficiency (speedup /
MAC reduction) of both prunes, and PASS/FAIL for issue #9's bars: measured speedup within 10%
of the target, efficiency at least 0.9 and at least the uniform prune's. Latencies are 10th
percentiles (the quiet-machine latency; see ``irtool.passes.latency.measure_graph_ms``); on a
machine shared with other work a miss can be noise, so run it again before reading much into
one. With ``--int8`` the target is the int8 model's (``prune{target-latency int8=true}``, after
``fold-bn``) and the three models are measured after the ``quantize`` pass. With ``--resnet50`` it also builds
ResNet-50's table and compares predicted with measured latency, unpruned and at a uniform 50% prune.

Run from the repository root: ``python tools/bench_latency.py [--size 224] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _zoo_graph(name: str, size: int, folder: Path):
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from irtool.frontends.onnx import load_onnx
    from irtool.passes.oracle import prepare
    from tests.zoo import export_onnx

    path = export_onnx(name, folder / f"{name}.onnx", input_shape=(1, 3, size, size))
    return prepare(load_onnx(path))


def _uniform_keep(analysis, sparsity: float, round_to: int) -> dict[int, int]:
    from irtool.passes.prune import PruneConfig, _keep_count

    config = PruneConfig(sparsity=sparsity, round_to=round_to)
    return {g.id: _keep_count(g.channels, sparsity, config) for g in analysis.groups if g.prunable}


def _passes(pipeline: str, graph):
    """A copy of ``graph`` after ``pipeline``."""
    from irtool.passes.base import PassManager

    return PassManager(pipeline).run(graph.copy()).graph


def target_run(
    name: str, size: int, backend: str, threads: int, target: float, runs: int, rounds: int, folder: Path, int8: bool = False
) -> None:
    from irtool.passes.budget import Budget, choose_to_budget, pruned_copy
    from irtool.passes.cost import graph_cost
    from irtool.passes.dependency import analyze_channels
    from irtool.passes.latency import build_latency_model, compare_ms, session_call

    graph = _zoo_graph(name, size, folder)
    if int8:  # batch norms left between int8 convs would run in float: fold-bn,prune{...},quantize
        graph = _passes("fold-bn", graph)
    analysis = analyze_channels(graph)
    start = time.perf_counter()
    model = build_latency_model(graph, analysis, backend=backend, threads=threads, int8=int8)
    built = time.perf_counter() - start
    print(f"{name} {size}x{size}, {backend}{' int8' if int8 else ''}, {threads} thread(s): latency model built in {built:.1f} s")
    print(model.format())
    # the prune pass's own choice: chooser, then the loop closed on measured latency
    wanted = Budget(target_latency=str(target), backend=backend, threads=threads, int8=int8)
    choice = choose_to_budget(graph, analysis, wanted, latency_model=model)
    print("\n".join(choice.log))
    keep = choice.keep
    # the uniform prune whose predicted latency is closest to the budget prune's
    sparsities = [s / 100 for s in range(5, 80)]
    budget_predicted = model.predict(keep)
    uniform_s = min(sparsities, key=lambda s: abs(model.predict(_uniform_keep(analysis, s, model.round_to)) - budget_predicted))
    uniform_keep = _uniform_keep(analysis, uniform_s, model.round_to)
    budget = pruned_copy(graph, keep)
    uniform = pruned_copy(graph, uniform_keep)
    shipped = [_passes("quantize", g) if int8 else g for g in (graph, budget, uniform)]  # as prune{...},quantize leaves them
    calls = [session_call(g, backend=backend, threads=threads) for g in shipped]
    base, budget_ms, uniform_ms = compare_ms(calls, runs=runs, rounds=rounds)
    macs = graph_cost(graph).macs
    rows = [
        ("budget", budget_ms, budget_predicted, graph_cost(budget).macs),
        (f"uniform s={uniform_s:.2f}", uniform_ms, model.predict(uniform_keep), graph_cost(uniform).macs),
    ]
    full = model.predict()
    print(f"unpruned: measured {base:.2f} ms, predicted {full:.2f} ms; target {target:g} -> speedup {1 / target:.2f}x")
    speedups, efficiency = {}, {}
    for label, ms, predicted, pruned_macs in rows:
        speedup, mac_ratio = base / ms, macs / pruned_macs
        speedups[label], efficiency[label] = speedup, speedup / mac_ratio
        print(
            f"{label:>16}: measured {ms:.2f} ms, predicted {predicted:.2f} ms ({100 * (predicted - ms) / ms:+.0f}%); "
            f"speedup measured {speedup:.2f}x, predicted {full / predicted:.2f}x, {100 * (speedup * target - 1):+.0f}% vs target; "
            f"MAC reduction {mac_ratio:.2f}x, latency efficiency (speedup / MAC reduction) {efficiency[label]:.2f}"
        )
    budget_speedup, (budget_eff, uniform_eff) = speedups["budget"], efficiency.values()
    print(f"latency efficiency budget / uniform: {budget_eff / uniform_eff:.2f}")
    miss = budget_speedup * target - 1
    checks = [
        (abs(miss) <= 0.10, f"measured speedup {budget_speedup:.2f}x within 10% of the target {1 / target:.2f}x ({100 * miss:+.1f}%)"),
        (budget_eff >= 0.9, f"latency efficiency of the budget prune {budget_eff:.2f} >= 0.9"),
        (budget_eff >= uniform_eff, f"latency efficiency of the budget prune {budget_eff:.2f} >= the uniform prune's {uniform_eff:.2f}"),
    ]
    for passed, text in checks:
        print(f"{'PASS' if passed else 'FAIL'}: {text}")


def resnet_run(size: int, threads: int, runs: int, rounds: int, folder: Path) -> None:
    from irtool.passes.budget import pruned_copy
    from irtool.passes.dependency import analyze_channels
    from irtool.passes.latency import build_latency_model, compare_ms, session_call

    graph = _zoo_graph("resnet50", size, folder)
    analysis = analyze_channels(graph)
    start = time.perf_counter()
    model = build_latency_model(graph, analysis, threads=threads)
    built = time.perf_counter() - start
    print(f"resnet50 {size}x{size}: latency table built in {built:.1f} s (bar 120 s), {len(model.layers)} layers")
    print(model.format())
    keep = _uniform_keep(analysis, 0.5, model.round_to)
    pruned = pruned_copy(graph, keep)
    base, half = compare_ms([session_call(g, threads=threads) for g in (graph, pruned)], runs=runs, rounds=rounds)
    for label, ms, predicted in (("unpruned", base, model.predict()), ("uniform 50%", half, model.predict(keep))):
        print(f"{label:>12}: measured {ms:.2f} ms, predicted {predicted:.2f} ms ({100 * (predicted - ms) / ms:+.0f}%, bar 15%)")
    ratio, predicted_ratio = half / base, model.predict(keep) / model.predict()
    print(f"pruned/unpruned latency: measured {ratio:.3f}, predicted {predicted_ratio:.3f} ({100 * (predicted_ratio - ratio) / ratio:+.0f}%)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2", help="zoo model pruned to the target (default mobilenet_v2)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--backend", choices=("ort", "tvm"), default="ort", help="backend pruned for and measured on (default ort)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--target", type=float, default=0.5, help="latency target as a fraction of the unpruned (default 0.5)")
    parser.add_argument("--runs", type=int, default=60, help="timed runs per model (default 60)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds the runs are spread over (default 10)")
    parser.add_argument("--int8", action="store_true", help="prune for and measure the models after the quantize pass (ort)")
    parser.add_argument("--resnet50", action="store_true", help="also time building ResNet-50's latency table")
    parser.add_argument("--cache", action="store_true", help="use the user's latency cache instead of a fresh one")
    args = parser.parse_args(argv)
    if args.int8 and args.backend != "ort":
        parser.error("--int8 needs --backend ort: TVM runs quantize/dequantize as float")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="irtool-bench-") as folder:
        if not args.cache:
            os.environ["IRTOOL_CACHE_DIR"] = folder
        target_run(args.model, args.size, args.backend, args.threads, args.target, args.runs, args.rounds, Path(folder), args.int8)
        if args.resnet50:
            resnet_run(args.size, args.threads, args.runs, args.rounds, Path(folder))
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
