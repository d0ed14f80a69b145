"""The end-to-end demo: train a small ResNet on digits, prune, fine-tune, quantize, benchmark.

Stages, each measured on the model as it is emitted (not estimated):

1. ``baseline``: a ResNet (3 stages of BasicBlocks) trained in PyTorch on scikit-learn's digits,
   lowered to the IR with the torch frontend;
2. ``pruned``: ``prune`` removes ``sparsity`` of the channels of every channel group;
3. ``fine-tuned``: ``finetune`` trains the pruned graph through the torch backend;
4. ``int8``: ``fold-bn`` and ``quantize`` (int8 QDQ, calibrated on training data).

For every stage: test accuracy in onnxruntime, params, MACs and bytes from the cost analysis,
and the latency of one batch in onnxruntime and in the TVM-compiled module. One table is
printed; ``demo-report.md``, ``demo-accuracy-latency.png``, each stage's ONNX file and the
final TVM shared library are written to the output folder.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..backends.files import atomic_write, atomic_write_text
from ..ir.core import Graph
from ..ir.errors import IrtoolError

REPORT_NAME = "demo-report.md"
PLOT_NAME = "demo-accuracy-latency.png"
STAGES = ("baseline", "pruned", "fine-tuned", "int8")


# -- the model ------------------------------------------------------------------------------------
def digits_resnet(widths: tuple[int, ...] = (16, 32, 64), classes: int = 10, seed: int = 0):
    """A ResNet for 1-channel images: a 3x3 stem, one BasicBlock per stage (stride 2 after
    the first), global average pooling and a linear classifier."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    class DigitsResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
            blocks, cin = [], widths[0]
            for k, width in enumerate(widths):
                blocks.append(BasicBlock(cin, width, 1 if k == 0 else 2))
                cin = width
            self.layers = nn.Sequential(*blocks)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            return self.fc(self.layers(self.stem(x)).mean((2, 3)))

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DigitsResNet()


# -- configuration and results ----------------------------------------------------------------------
@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("irtool-demo")
    image_size: int = 16
    widths: tuple[int, ...] = (16, 32, 64)
    train_epochs: int = 12
    train_lr: float = 0.05
    finetune_epochs: int = 8
    finetune_lr: float = 0.002
    finetune_optimizer: str = "adam"
    sparsity: float = 0.5
    criterion: str = "l1"
    bench_batch: int = 32
    bench_runs: int = 100
    threads: int = 1
    tvm_stages: tuple[str, ...] = STAGES
    """Stages compiled and timed with TVM (none: skip TVM)."""
    seed: int = 0
    progress: bool = True


@dataclass
class StageResult:
    stage: str
    accuracy: float
    params: int
    macs: int
    bytes: int
    ort_ms: float
    tvm_ms: float | None
    onnx_file: str
    log: list[str] = field(default_factory=list)


@dataclass
class DemoResult:
    config: DemoConfig
    stages: list[StageResult]
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.stage == name)

    def table(self) -> str:
        """One row per stage: accuracy, params, MACs, bytes, onnxruntime ms, TVM ms."""
        from ..passes.cost import human

        header = ("stage", "accuracy", "params", "MACs", "bytes", "onnxruntime ms", "TVM ms")
        rows = [
            (
                s.stage,
                f"{100 * s.accuracy:.2f}%",
                human(s.params),
                human(s.macs),
                human(s.bytes, "B"),
                f"{s.ort_ms:.3f}",
                f"{s.tvm_ms:.3f}" if s.tvm_ms is not None else "n/a",
            )
            for s in self.stages
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(row: tuple[str, ...]) -> str:
            cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            return "| " + " | ".join(cells) + " |"

        rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
        return "\n".join([line(header), rule, *(line(r) for r in rows)])


# -- measuring -----------------------------------------------------------------------------------------
def _interleaved_ms(runners: dict[str, Callable[[], object]], runs: int, progress: bool) -> dict[str, float]:
    """Median wall time of every runner in milliseconds. Each timed round runs all of them in
    turn, so a busy machine slows every stage alike rather than whichever ran at a bad moment."""
    from tqdm import tqdm

    for run in runners.values():
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {key: [] for key in runners}
    for _ in tqdm(range(runs), desc="benchmark", disable=not progress, file=sys.stderr, leave=False, dynamic_ncols=True):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    return {key: 1000 * statistics.median(values) for key, values in times.items()}


def _static_copy(graph: Graph, batch: int) -> Graph:
    """A copy with the batch dimension fixed (the TVM backend compiles static shapes)."""
    from ..ir.shapes import infer_shapes
    from ..passes.oracle import copy_graph

    copy = copy_graph(graph)
    for value in copy.inputs:
        value.type = value.type.with_shape((batch, *value.type.shape[1:]))
    infer_shapes(copy)
    return copy


def _onnxruntime_accuracy(session, test) -> float:
    name = session.get_inputs()[0].name
    batch = test.arrays()
    logits = session.run(None, {name: batch.inputs[0]})[0]
    return float((logits.argmax(1) == batch.labels).mean())


class _Stages:
    """Measures each stage as it is reached (accuracy, cost, files) and keeps its runnable
    models, so that latency is measured for all stages together at the end."""

    def __init__(self, config: DemoConfig, test, result: DemoResult):
        self.config = config
        self.test = test
        self.result = result
        self.bench_input = test.arrays(config.bench_batch).inputs[0]
        self.runners: dict[tuple[str, str], Callable[[], object]] = {}

    def measure(self, stage: str, graph: Graph, log: list[str]) -> StageResult:
        from ..backends.onnx import make_session, save_onnx
        from ..passes.cost import graph_cost

        config = self.config
        path = save_onnx(graph, config.out / f"digits-resnet-{stage}.onnx")
        self.result.files.append(path)
        session = make_session(path, threads=config.threads)
        accuracy = _onnxruntime_accuracy(session, self.test)
        feed = {session.get_inputs()[0].name: self.bench_input}
        self.runners[(stage, "ort")] = lambda: session.run(None, feed)
        if stage in config.tvm_stages:
            self._compile(stage, graph, session.run(None, feed)[0])
        cost = graph_cost(graph)
        result = StageResult(stage, accuracy, cost.params, cost.macs, cost.bytes, 0.0, None, path.name, log)
        self.result.stages.append(result)
        return result

    def _compile(self, stage: str, graph: Graph, expected: np.ndarray) -> None:
        try:
            from ..backends.tvm import compile_graph

            compiled = compile_graph(_static_copy(graph, self.config.bench_batch), threads=self.config.threads)
        except (IrtoolError, ImportError) as exc:
            self.result.notes.append(f"TVM, {stage}: not measured: {exc}")
            return
        tensors = compiled.prepare([self.bench_input])
        got = compiled.run_tensors(tensors)[0].numpy()
        scale = float(np.abs(expected).max()) or 1.0
        self.result.notes.append(
            f"TVM, {stage}: outputs agree with onnxruntime to {np.abs(got - expected).max() / scale:.2e} (relative)"
        )
        if stage == STAGES[-1]:
            self.result.files.append(compiled.export(self.config.out / f"digits-resnet-{stage}.so"))
        self.runners[(stage, "tvm")] = lambda: compiled.run_tensors(tensors)

    def benchmark(self) -> None:
        """Latency of every stage on every backend, measured together."""
        medians = _interleaved_ms(self.runners, self.config.bench_runs, self.config.progress)
        for stage in self.result.stages:
            stage.ort_ms = medians[(stage.stage, "ort")]
            stage.tvm_ms = medians.get((stage.stage, "tvm"))


# -- the pipeline ---------------------------------------------------------------------------------------
def finetune_settings(config: DemoConfig):
    """How the pruned model is fine-tuned."""
    from ..passes.finetune import TrainConfig

    return TrainConfig(
        epochs=config.finetune_epochs,
        lr=config.finetune_lr,
        optimizer=config.finetune_optimizer,
        seed=config.seed,
        progress=config.progress,
    )


def train_baseline(config: DemoConfig, train):
    """The demo's ResNet trained in plain PyTorch on ``train``; (model in eval mode, report)."""
    from ..passes.finetune import TrainConfig, train_module

    model = digits_resnet(config.widths, seed=config.seed)
    settings = TrainConfig(epochs=config.train_epochs, lr=config.train_lr, seed=config.seed, progress=config.progress)
    report = train_module(model, train, settings, desc="train")
    return model.eval(), report


def run_demo(config: DemoConfig | None = None, *, stream=None) -> DemoResult:
    """Run every stage, print the table to ``stream`` (stdout) and write the report files."""
    import torch

    from ..frontends.torch import load_module
    from ..passes import criteria_data  # noqa: F401 - registers the data-driven criteria
    from ..passes.base import PassContext, PassManager
    from ..passes.criteria import get_criterion
    from ..passes.criteria_data import using_data
    from ..passes.data import digits
    from ..passes.finetune import finetune
    from ..passes.prune import prune_graph

    config = replace(config or DemoConfig(), out=Path((config or DemoConfig()).out))
    get_criterion(config.criterion)  # an unknown criterion fails now, not after training
    stream = stream or sys.stdout
    config.out.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        train = digits("train", size=config.image_size, seed=config.seed)
        test = digits("test", size=config.image_size, seed=config.seed)
        result = DemoResult(config, [])
        skipped = [stage for stage in STAGES if stage not in config.tvm_stages]
        if skipped:
            result.notes.append(f"TVM: not compiled for {', '.join(skipped)} (by request)")
        stages = _Stages(config, test, result)

        model, trained = train_baseline(config, train)
        graph = load_module(model, torch.from_numpy(train.arrays(2).inputs[0]), dynamic_batch=True)
        stages.measure("baseline", graph, [f"trained {len(trained.epochs)} epochs: {trained.lines()[-2]}"])

        with using_data(train):
            pruned = prune_graph(graph, sparsity=config.sparsity, criterion=config.criterion, seed=config.seed)
        stages.measure("pruned", graph, pruned.log_lines())

        settings = finetune_settings(config)
        tuned = finetune(graph, train, settings)
        stages.measure("fine-tuned", graph, tuned.lines())

        quantized = PassManager("fold-bn,quantize").run(graph, PassContext(data=train))
        stages.measure("int8", graph, [f"{r.spec}: {line}" for r in quantized.records for line in r.log])
        stages.benchmark()
    finally:
        torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    result.files.append(_write_plot(result))
    result.files.append(_write_report(result))
    print(result.table(), file=stream)
    print(f"\n{_timing_line(result)}; report: {config.out / REPORT_NAME}", file=stream)
    return result


def _timing_line(result: DemoResult) -> str:
    return f"demo took {result.seconds:.1f} s wall, {result.cpu_seconds:.1f} s CPU"


# -- outputs ---------------------------------------------------------------------------------------------
def _write_plot(result: DemoResult) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for label, key, marker, offset in (("onnxruntime", "ort_ms", "o", (5, 4)), ("TVM", "tvm_ms", "s", (5, -11))):
        points = [(getattr(s, key), 100 * s.accuracy, s.stage) for s in result.stages if getattr(s, key) is not None]
        if not points:
            continue
        xs, ys, names = zip(*points)
        axes.scatter(xs, ys, marker=marker, label=label, zorder=3)
        for x, y, name in points:
            axes.annotate(name, (x, y), textcoords="offset points", xytext=offset, fontsize=8)
    axes.set_xlim(left=0)
    axes.set_xlabel(f"latency of a batch of {result.config.bench_batch} (ms, {result.config.threads} thread)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("digits ResNet: accuracy against latency per stage")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = result.config.out / PLOT_NAME
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)
    return path


def _write_report(result: DemoResult) -> Path:
    config = result.config
    baseline, tuned = result.stage("baseline"), result.stage("fine-tuned")
    lines = [
        "# irtool demo: digits ResNet",
        "",
        f"A ResNet with stage widths {list(config.widths)} on scikit-learn's digits "
        f"({config.image_size}x{config.image_size}), "
        f"pruned to {config.sparsity:.0%} of its channels by `{config.criterion}`, fine-tuned, and quantized to int8.",
        "Every figure below is measured: accuracy on the held-out test split in onnxruntime, cost from the IR, "
        f"latency as the median of {config.bench_runs} runs of one batch of {config.bench_batch} with "
        f"{config.threads} thread(s).",
        "",
        result.table(),
        "",
        f"Fine-tuned accuracy minus baseline: {100 * (tuned.accuracy - baseline.accuracy):+.2f} points; "
        f"MACs {100 * (1 - tuned.macs / baseline.macs):.1f}% fewer.",
        "",
        f"![accuracy against latency]({PLOT_NAME})",
        "",
        "## Stages",
    ]
    for stage in result.stages:
        lines += ["", f"### {stage.stage} (`{stage.onnx_file}`)", "", "```", *stage.log, "```"]
    lines += ["", "## Notes", "", *(f"- {note}" for note in result.notes)]
    lines += [
        f"- {_timing_line(result)}",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- settings: `{_settings(config)}`",
        "",
    ]
    return atomic_write_text(config.out / REPORT_NAME, "\n".join(lines))


def _settings(config: DemoConfig) -> str:
    return " ".join(f"{k}={v}" for k, v in asdict(config).items() if k not in ("out", "progress"))
