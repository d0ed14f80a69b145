"""Compare channel importance criteria on the demo's digits ResNet.

For each criterion and sparsity (30/50/70% by default): prune a copy of the trained baseline
with ``prune``, measure test accuracy straight after pruning, fine-tune for a few epochs and
measure again. Writes ``criteria.csv`` (one row per run) and ``criteria.png`` (accuracy
against sparsity, before and after fine-tuning) to ``--out``.

Run from the repository root: ``python tools/bench_criteria.py [--epochs 2] [--out bench-criteria]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

CRITERIA = ("l1", "l2", "fpgm", "random", "bn-scale", "activation-mean", "apoz", "taylor", "thinet")
SPARSITIES = (0.3, 0.5, 0.7)
CSV_NAME = "criteria.csv"
PLOT_NAME = "criteria.png"


@dataclass
class Run:
    criterion: str
    sparsity: float
    baseline_accuracy: float
    pruned_accuracy: float
    finetuned_accuracy: float
    macs_reduction: float
    prune_seconds: float
    finetune_seconds: float


def bench_criteria(
    criteria=CRITERIA,
    sparsities=SPARSITIES,
    *,
    finetune_epochs: int = 2,
    train_epochs: int = 8,
    image_size: int = 8,
    widths: tuple[int, ...] = (16, 32, 64),
    seed: int = 0,
    progress: bool = True,
) -> list[Run]:
    """Prune the same trained baseline with every criterion at every sparsity; one ``Run`` each."""
    import torch

    from irtool.frontends.torch import load_module
    from irtool.passes import criteria_data  # noqa: F401 - registers the data-driven criteria
    from irtool.passes.criteria_data import using_data
    from irtool.passes.data import digits
    from irtool.passes.finetune import evaluate, finetune
    from irtool.passes.oracle import copy_graph
    from irtool.passes.prune import prune_graph
    from irtool.tools.demo import DemoConfig, finetune_settings, train_baseline

    train = digits("train", size=image_size, seed=seed)
    test = digits("test", size=image_size, seed=seed)
    config = DemoConfig(
        image_size=image_size, widths=tuple(widths), train_epochs=train_epochs, seed=seed, progress=progress
    )
    model, _ = train_baseline(config, train)
    baseline = load_module(model, torch.from_numpy(train.arrays(2).inputs[0]), dynamic_batch=True)
    baseline_accuracy = evaluate(baseline, test)
    settings = replace(finetune_settings(config), epochs=finetune_epochs)
    runs = []
    for criterion in criteria:
        for sparsity in sparsities:
            graph = copy_graph(baseline)
            start = time.perf_counter()
            with using_data(train):
                report = prune_graph(graph, sparsity=sparsity, criterion=criterion, seed=seed)
            pruned_seconds = time.perf_counter() - start
            pruned_accuracy = evaluate(graph, test)
            tuned = finetune(graph, train, settings, desc=f"{criterion} {sparsity:.0%}")
            runs.append(
                Run(
                    criterion,
                    sparsity,
                    baseline_accuracy,
                    pruned_accuracy,
                    evaluate(graph, test),
                    report.mac_reduction() or 0.0,
                    pruned_seconds,
                    tuned.seconds,
                )
            )
            if progress:
                run = runs[-1]
                print(
                    f"{criterion:>16} {sparsity:.0%}: pruned {100 * run.pruned_accuracy:6.2f}%, "
                    f"fine-tuned {100 * run.finetuned_accuracy:6.2f}% (baseline {100 * baseline_accuracy:.2f}%)",
                    file=sys.stderr,
                )
    return runs


def write_csv(runs: list[Run], path: Path) -> Path:
    from irtool.backends.files import atomic_write_text

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[f.name for f in fields(Run)])
    writer.writeheader()
    for run in runs:
        writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in asdict(run).items()})
    return atomic_write_text(path, text.getvalue())


def write_plot(runs: list[Run], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from irtool.backends.files import atomic_write

    figure, (before, after) = plt.subplots(1, 2, figsize=(10, 4.2))
    for criterion in dict.fromkeys(r.criterion for r in runs):
        mine = sorted((r for r in runs if r.criterion == criterion), key=lambda r: r.sparsity)
        xs = [100 * r.sparsity for r in mine]
        before.plot(xs, [100 * r.pruned_accuracy for r in mine], marker="o", label=criterion)
        after.plot(xs, [100 * r.finetuned_accuracy for r in mine], marker="o", label=criterion)
    if runs:
        for axes in (before, after):
            axes.axhline(100 * runs[0].baseline_accuracy, color="gray", linestyle="--", linewidth=1)
    before.set_title("straight after pruning")
    after.set_title("after fine-tuning")
    for axes in (before, after):
        axes.set_xlabel("channels pruned (%)")
        axes.set_ylabel("digits test accuracy (%)")
        axes.grid(True, alpha=0.3)
    after.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criteria", default=",".join(CRITERIA), help="comma-separated criteria")
    parser.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES), help="comma-separated sparsities")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per run")
    parser.add_argument("--train-epochs", type=int, default=8, help="training epochs of the baseline")
    parser.add_argument("--image-size", type=int, default=8, help="digits image size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="bench-criteria", help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = bench_criteria(
        [c.strip() for c in args.criteria.split(",") if c.strip()],
        [float(s) for s in args.sparsities.split(",") if s.strip()],
        finetune_epochs=args.epochs,
        train_epochs=args.train_epochs,
        image_size=args.image_size,
        progress=not args.quiet,
    )
    print(f"{'criterion':>16} {'sparsity':>8} {'pruned':>8} {'tuned':>8} {'MACs -':>7}")
    for run in runs:
        print(
            f"{run.criterion:>16} {run.sparsity:8.0%} {100 * run.pruned_accuracy:7.2f}% "
            f"{100 * run.finetuned_accuracy:7.2f}% {100 * run.macs_reduction:6.1f}%"
        )
    print(f"baseline accuracy {100 * runs[0].baseline_accuracy:.2f}%" if runs else "no runs")
    print(f"wrote {write_csv(runs, out / CSV_NAME)} and {write_plot(runs, out / PLOT_NAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
