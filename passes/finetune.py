"""Fine-tuning through the torch backend, and the schedules that interleave pruning with it.

``finetune(graph, data)`` builds the trainable module (``backends.torch.to_torch``), trains it on
labelled data with the optimizer and loss chosen by name, and writes the trained weights back
into the graph's constants (``update_constants``): the graph stays the single source of truth,
so the result goes on to ``quantize`` or any backend. Masks recorded by ``sparsify``
(``graph.meta["masks"]``) stay fixed: masked gradients are zeroed and the masked weights are
re-zeroed after every optimizer step, so no zero grows back.

Schedules (``prune_and_finetune``) decide when pruning happens:

- ``one-shot``: prune to the target, then fine-tune;
- ``iterative`` (Han et al. 2015): ``steps`` cycles, each pruning a further equal share of
  the target and retraining;
- ``layer-by-layer`` (Li et al. 2017): prune one layer (channel group) at a time to the
  target, retraining after each;
- ``gradual`` (AGP, Zhu & Gupta 2017): the sparsity follows ``s_t = s (1 - (1 - t/n)^3)``
  over ``steps`` pruning steps, fast at first and slow towards the end, retraining between.

Pruning is structured channel removal (``prune``) or fine-grained masking (``sparsify``); both
take the cumulative target. The ``finetune`` pass runs the same in a pipeline:
``prune{sparsity=0.5},finetune{epochs=3 lr=0.01}`` or ``finetune{schedule=gradual sparsity=0.5}``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from ..ir.core import Graph
from ..ir.errors import IrtoolError
from .base import Pass, PassContext, PassResult, register_pass
from .criteria_data import data_scope
from .data import Dataset, builtin_dataset, check_builtin, labelled
from .sparsify import graph_masks

SCHEDULES = ("one-shot", "iterative", "layer-by-layer", "gradual")


# -- losses and optimizers by name ---------------------------------------------------------------
LOSSES: dict[str, str] = {
    "cross-entropy": "CrossEntropyLoss",
    "nll": "NLLLoss",
    "mse": "MSELoss",
    "l1": "L1Loss",
    "smooth-l1": "SmoothL1Loss",
    "bce": "BCEWithLogitsLoss",
}
"""Loss name -> ``torch.nn`` class; the loss compares the model's first output with the labels."""

OPTIMIZERS: dict[str, tuple[str, bool]] = {
    "sgd": ("SGD", True),
    "adam": ("Adam", False),
    "adamw": ("AdamW", False),
    "rmsprop": ("RMSprop", True),
}
"""Optimizer name -> (``torch.optim`` class, whether it takes ``momentum``)."""

LOSS_CHOICES = tuple(LOSSES)
OPTIMIZER_CHOICES = tuple(OPTIMIZERS)
CLASS_LABEL_LOSSES = ("cross-entropy", "nll")
"""Losses whose labels are class indices (int64); the others compare float tensors."""


def make_optimizer(name: str, params, config: TrainConfig):
    import torch

    if name not in OPTIMIZERS:
        raise IrtoolError(f"unknown optimizer '{name}'; known: {', '.join(OPTIMIZERS)}", where="finetune")
    cls, takes_momentum = OPTIMIZERS[name]
    extra = {"momentum": config.momentum} if takes_momentum else {}
    return getattr(torch.optim, cls)(params, lr=config.lr, weight_decay=config.weight_decay, **extra)


def make_loss(name: str):
    from torch import nn

    if name not in LOSSES:
        raise IrtoolError(f"unknown loss '{name}'; known: {', '.join(LOSSES)}", where="finetune")
    return getattr(nn, LOSSES[name])()


# -- configuration ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """How to train: the ``finetune`` pass's training options, usable directly from Python."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"
    loss: str = "cross-entropy"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_decay: str = "cosine"
    max_steps: int = 0
    """Stop after this many optimizer steps in all (0: no limit)."""
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 0:
            raise IrtoolError(f"epochs must be at least 0, not {self.epochs}", where="finetune")
        if self.batch_size < 1:
            raise IrtoolError(f"batch size must be at least 1, not {self.batch_size}", where="finetune")
        if not self.lr > 0:
            raise IrtoolError(f"learning rate must be positive, not {self.lr:g}", where="finetune")
        if self.optimizer not in OPTIMIZERS:
            raise IrtoolError(f"unknown optimizer '{self.optimizer}'; known: {', '.join(OPTIMIZERS)}", where="finetune")
        if self.loss not in LOSSES:
            raise IrtoolError(f"unknown loss '{self.loss}'; known: {', '.join(LOSSES)}", where="finetune")
        if self.lr_decay not in ("none", "cosine"):
            raise IrtoolError(f"lr decay '{self.lr_decay}' is not none or cosine", where="finetune")
        if self.max_steps < 0:
            raise IrtoolError(f"max steps must be at least 0, not {self.max_steps}", where="finetune")


# -- the report -------------------------------------------------------------------------------------
@dataclass
class EpochLog:
    epoch: int
    loss: float
    accuracy: float | None
    """Training accuracy over the epoch (classification), else None."""
    seconds: float


@dataclass
class FinetuneReport:
    epochs: list[EpochLog] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    masked_weights: int = 0
    """Constants whose masks were kept fixed."""
    accuracy: float | None = None
    """Accuracy on the evaluation data after training, when some was given."""

    def lines(self) -> list[str]:
        lines = []
        for e in self.epochs:
            acc = f", accuracy {100 * e.accuracy:.1f}%" if e.accuracy is not None else ""
            lines.append(f"epoch {e.epoch}: loss {e.loss:.4f}{acc} ({e.seconds:.1f} s)")
        kept = f", {self.masked_weights} sparsity masks kept" if self.masked_weights else ""
        lines.append(f"{self.steps} steps in {self.seconds:.1f} s{kept}")
        if self.accuracy is not None:
            lines.append(f"evaluation accuracy {100 * self.accuracy:.2f}%")
        return lines


# -- masks --------------------------------------------------------------------------------------------
class MaskKeeper:
    """Keeps masked weights of a ``to_torch`` module at zero: their gradients are zeroed by a
    hook, and ``apply()`` (after every optimizer step) re-zeroes them against momentum and
    weight decay."""

    def __init__(self, module, masks: dict[str, np.ndarray]):
        import torch

        by_name = {name: key for key, name in getattr(module, "constant_names", {}).items()}
        params = dict(module.named_parameters())
        self.pairs = []
        self.handles = []
        for name, keep in masks.items():
            param = params.get(by_name.get(name, name))
            if param is None:
                continue
            mask = torch.from_numpy(np.ascontiguousarray(keep)).to(param.dtype)
            self.pairs.append((param, mask))
            self.handles.append(param.register_hook(lambda grad, mask=mask: grad * mask))

    def __len__(self) -> int:
        return len(self.pairs)

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for param, mask in self.pairs:
                param.mul_(mask)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# -- training -------------------------------------------------------------------------------------------
def input_tensors(arrays: tuple[np.ndarray, ...], graph: Graph | None = None) -> list:
    """Torch tensors of one batch's inputs, cast to the graph's input types when there is a graph."""
    import torch

    if graph is None:
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    if len(arrays) != len(graph.inputs):
        raise IrtoolError(
            f"the data has {len(arrays)} inputs per row, the model takes {len(graph.inputs)}", where="finetune"
        )
    return [torch.from_numpy(np.ascontiguousarray(a, dtype=v.type.dtype.numpy)) for a, v in zip(arrays, graph.inputs)]


def label_tensor(labels: np.ndarray, loss: str):
    import torch

    target = torch.from_numpy(np.ascontiguousarray(labels))
    return target.long() if loss in CLASS_LABEL_LOSSES else target.float()


def _correct(output, target) -> int | None:
    if output.dim() != 2 or target.dim() != 1 or target.dtype.is_floating_point:
        return None
    return int((output.argmax(1) == target).sum())


def first_output(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def train_module(
    module, dataset: Dataset, config: TrainConfig, *, graph: Graph | None = None, desc: str = "finetune"
) -> FinetuneReport:
    """Train a torch module in place on labelled data.

    With ``graph`` (the graph ``module`` was made from by ``to_torch``) inputs are cast to its
    input types and its sparsity masks are kept; the graph itself is not updated.
    """
    import torch
    from tqdm import tqdm

    config.validate()
    torch.manual_seed(config.seed)
    keeper = MaskKeeper(module, graph_masks(graph) if graph is not None else {})
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer(config.optimizer, params, config)
    loss_fn = make_loss(config.loss)
    per_epoch = dataset.steps(config.batch_size)
    total = per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    report = FinetuneReport(masked_weights=len(keeper))
    start = time.perf_counter()
    module.train()
    try:
        for epoch in range(config.epochs):
            if report.steps >= total:
                break
            began, losses, correct, seen = time.perf_counter(), [], 0, 0
            bar = tqdm(
                total=min(per_epoch, total - report.steps),
                desc=f"{desc} {epoch + 1}/{config.epochs}",
                disable=not config.progress,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
            for batch in dataset.batches(config.batch_size, shuffle=True, seed=config.seed + epoch):
                if report.steps >= total:
                    break
                if batch.labels is None:
                    raise IrtoolError("a training batch has no labels", where="finetune")
                _set_lr(optimizer, config, report.steps, total)
                optimizer.zero_grad(set_to_none=True)
                output = first_output(module(*input_tensors(batch.inputs, graph)))
                target = label_tensor(batch.labels, config.loss)
                loss = loss_fn(output, target)
                loss.backward()
                optimizer.step()
                keeper.apply()
                report.steps += 1
                losses.append(float(loss.detach()))
                hits = _correct(output.detach(), target)
                if hits is not None:
                    correct, seen = correct + hits, seen + len(target)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.close()
            if losses:
                accuracy = correct / seen if seen else None
                report.epochs.append(EpochLog(epoch + 1, float(np.mean(losses)), accuracy, time.perf_counter() - began))
    finally:
        keeper.remove()
        module.eval()
    report.seconds = time.perf_counter() - start
    return report


def _set_lr(optimizer, config: TrainConfig, step: int, total: int) -> None:
    scale = 0.5 * (1 + math.cos(math.pi * step / total)) if config.lr_decay == "cosine" and total else 1.0
    for group in optimizer.param_groups:
        group["lr"] = config.lr * scale


def evaluate(module_or_graph, data: Any, *, batch_size: int = 256) -> float:
    """Classification accuracy of a ``to_torch`` module (or a graph, run through torch) on labelled data."""
    import torch

    from ..backends.torch import to_torch

    dataset = labelled(data, "evaluate")
    graph = module_or_graph if isinstance(module_or_graph, Graph) else None
    module = to_torch(graph) if graph is not None else module_or_graph
    module.eval()
    correct = seen = 0
    with torch.no_grad():
        for batch in dataset.batches(batch_size):
            output = first_output(module(*input_tensors(batch.inputs, graph)))
            hits = _correct(output, torch.from_numpy(batch.labels).long())
            if hits is None:
                raise IrtoolError("evaluate measures classification accuracy: the model must output (batch, classes)")
            correct, seen = correct + hits, seen + len(batch.labels)
    return correct / seen if seen else 0.0


def finetune(
    graph: Graph,
    data: Any,
    config: TrainConfig | None = None,
    *,
    eval_data: Any = None,
    desc: str = "finetune",
    **options,
) -> FinetuneReport:
    """Train ``graph``'s weights on labelled ``data`` and write them back into the graph.

    ``config`` (or keyword options with the same names) says how; ``eval_data`` adds the
    accuracy after training to the report.
    """
    from ..backends.torch import to_torch, update_constants

    config = replace(config or TrainConfig(), **options)
    config.validate()
    dataset = labelled(data, "finetune")
    module = to_torch(graph)
    report = train_module(module, dataset, config, graph=graph, desc=desc)
    update_constants(graph, module)
    if eval_data is not None:
        report.accuracy = evaluate(module, eval_data)
    return report


# -- pruning steps for the schedules ------------------------------------------------------------------
class ChannelPruner:
    """Structured pruning (``prune_graph``) towards a cumulative share of the original channels.

    A group pruned to ``s_prev`` already gets relative sparsity ``1 - (1 - s) / (1 - s_prev)``,
    so the remaining channels are ``(1 - s)`` of the original. Data-driven criteria see ``data``.
    """

    def __init__(self, data: Any = None, **prune_options):
        from .prune import PruneConfig

        self.data = data
        self.config = PruneConfig(**prune_options)
        self.reached: dict[str | None, float] = {}

    def layers(self, graph: Graph) -> list[str]:
        from .dependency import analyze_channels, layer_name

        return [layer_name(g.centre) for g in analyze_channels(graph).groups if g.prunable and g.centre is not None]

    def __call__(self, graph: Graph, target: float, layer: str | None = None) -> list[str]:
        from .prune import prune_graph

        before = self.reached.get(layer, self.reached.get(None, 0.0))
        relative = max(0.0, 1 - (1 - target) / (1 - before)) if before < 1 else 0.0
        self.reached[layer] = target
        if layer is None:
            config = replace(self.config, sparsity=relative)
        else:
            config = replace(self.config, sparsity=0.0, layers=(f"{layer}:{relative}",))
        with data_scope(self.data):
            report = prune_graph(graph, config)
        return report.summary()[:1]


class WeightPruner:
    """Fine-grained masking (``sparsify_graph``): masks accumulate, so the target is used as is."""

    def __init__(self, data: Any = None, **sparsify_options):
        from .sparsify import SparsifyConfig

        self.data = data
        self.config = SparsifyConfig(**sparsify_options)

    def layers(self, graph: Graph) -> list[str]:
        from .dependency import layer_name
        from .quantize import find_layers

        return list(dict.fromkeys(layer_name(layer.node) for layer in find_layers(graph)))

    def __call__(self, graph: Graph, target: float, layer: str | None = None) -> list[str]:
        from .sparsify import sparsify_graph

        config = replace(self.config, sparsity=target)
        if layer is not None:
            config = replace(config, exclude=tuple(n for n in self.layers(graph) if n != layer))
        report = sparsify_graph(graph, config, data=self.data)
        return report.lines()[-1:]



Pruner = Callable[[Graph, float, "str | None"], list[str]]


def schedule_targets(schedule: str, sparsity: float, steps: int) -> list[float]:
    """The cumulative sparsity after each pruning step of a schedule (not layer-by-layer)."""
    if schedule == "one-shot":
        return [sparsity]
    if schedule == "iterative":
        return [sparsity * (t + 1) / steps for t in range(steps)]
    if schedule == "gradual":
        return [sparsity * (1 - (1 - (t + 1) / steps) ** 3) for t in range(steps)]
    raise IrtoolError(f"unknown schedule '{schedule}'; known: {', '.join(SCHEDULES)}", where="finetune")


@dataclass
class ScheduleStep:
    target: float
    layer: str | None
    prune_log: list[str]
    finetune: FinetuneReport


@dataclass
class ScheduleReport:
    schedule: str
    steps: list[ScheduleStep] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = []
        for k, step in enumerate(self.steps, 1):
            where = f" {step.layer}" if step.layer else ""
            pruned = "; ".join(step.prune_log)
            last = step.finetune.epochs[-1] if step.finetune.epochs else None
            trained = f", fine-tuned to loss {last.loss:.4f}" if last else ""
            acc = f", accuracy {100 * step.finetune.accuracy:.2f}%" if step.finetune.accuracy is not None else ""
            lines.append(f"{self.schedule} step {k}{where}: sparsity {step.target:.3f}: {pruned}{trained}{acc}")
        return lines


def _steps(schedule: str, pruner, graph: Graph, sparsity: float, steps: int) -> Iterator[tuple[float, str | None]]:
    if schedule == "layer-by-layer":
        for layer in pruner.layers(graph):
            yield sparsity, layer
        return
    for target in schedule_targets(schedule, sparsity, steps):
        yield target, None


def prune_and_finetune(
    graph: Graph,
    data: Any,
    *,
    sparsity: float,
    schedule: str = "one-shot",
    steps: int = 3,
    pruner: Pruner | None = None,
    train: TrainConfig | None = None,
    eval_data: Any = None,
) -> ScheduleReport:
    """Prune ``graph`` to ``sparsity`` on a schedule, fine-tuning after every pruning step.

    ``pruner`` is a ``ChannelPruner`` (the default, l1) or a ``WeightPruner``, or any callable
    ``pruner(graph, cumulative_sparsity, layer_or_None) -> log lines`` with a ``layers(graph)``
    method for ``layer-by-layer``. ``train`` is used for every fine-tuning step.
    """
    if schedule not in SCHEDULES:
        raise IrtoolError(f"unknown schedule '{schedule}'; known: {', '.join(SCHEDULES)}", where="finetune")
    if steps < 1:
        raise IrtoolError(f"steps must be at least 1, not {steps}", where="finetune")
    if not 0 <= sparsity < 1:
        raise IrtoolError(f"sparsity {sparsity:g} is outside [0, 1)", where="finetune")
    dataset = labelled(data, "finetune")
    pruner = pruner or ChannelPruner(dataset)
    train = train or TrainConfig()
    report = ScheduleReport(schedule)
    for k, (target, layer) in enumerate(list(_steps(schedule, pruner, graph, sparsity, steps)), 1):
        log = pruner(graph, target, layer)
        trained = finetune(graph, dataset, train, eval_data=eval_data, desc=f"{schedule} {k}")
        report.steps.append(ScheduleStep(target, layer, log, trained))
    return report


# -- the pass -------------------------------------------------------------------------------------------
@register_pass
@dataclass(frozen=True)
class Finetune(Pass):
    """Train the model's weights on labelled data through the torch backend, optionally pruning on a schedule.

    Data comes from ``dataset=digits`` (a built-in dataset) when given, else from
    ``PassContext.data`` (a labelled ``irtool.passes.data`` dataset): the pass's own option is
    the more specific choice, as in ``bn-recalibrate``. Sparsity masks from ``sparsify`` stay fixed.
    """

    name = "finetune"
    preserves_function = False
    epochs: int = field(default=1, metadata={"help": "passes over the data (per pruning step with a schedule)"})
    batch_size: int = field(default=64, metadata={"help": "rows per optimizer step"})
    lr: float = field(default=0.01, metadata={"help": "learning rate"})
    optimizer: Literal[OPTIMIZER_CHOICES] = field(default="sgd", metadata={"help": "optimizer"})
    loss: Literal[LOSS_CHOICES] = field(
        default="cross-entropy", metadata={"help": "loss between the first output and the labels"}
    )
    momentum: float = field(default=0.9, metadata={"help": "momentum of sgd and rmsprop"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay"})
    lr_decay: Literal["none", "cosine"] = field(default="cosine", metadata={"help": "learning-rate decay over the steps"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps (0: no limit)"})
    seed: int = field(default=0, metadata={"help": "seed of shuffling and dropout"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    dataset: str = field(default="", metadata={"help": "a built-in dataset (digits); default: the pipeline's data"})
    schedule: Literal["none", "one-shot", "iterative", "layer-by-layer", "gradual"] = field(
        default="none", metadata={"help": "prune while fine-tuning on this schedule"}
    )
    sparsity: float = field(default=0.5, metadata={"help": "the schedule's final sparsity"})
    steps: int = field(default=3, metadata={"help": "pruning steps of the iterative and gradual schedules"})
    method: Literal["prune", "sparsify"] = field(default="prune", metadata={"help": "remove channels, or zero weights"})
    criterion: str = field(default="l1", metadata={"help": "importance criterion of the pruning method"})
    granularity: str = field(default="element", metadata={"help": "sparsify granularity (method=sparsify)"})

    def __post_init__(self) -> None:
        self.train_config().validate()
        if self.dataset:
            check_builtin(self.dataset)
        if self.schedule != "none":
            if not 0 <= self.sparsity < 1:
                raise IrtoolError(f"sparsity {self.sparsity:g} is outside [0, 1)")
            if self.steps < 1:
                raise IrtoolError(f"steps must be at least 1, not {self.steps}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        dataset = labelled(builtin_dataset(self.dataset) if self.dataset else ctx.data, "finetune")
        if self.schedule == "none":
            report = finetune(graph, dataset, self.train_config())
            return PassResult(graph, report.steps > 0, report.lines())
        if self.method == "prune":
            pruner: Pruner = ChannelPruner(dataset, criterion=self.criterion, seed=self.seed)
        else:
            pruner = WeightPruner(dataset, granularity=self.granularity, criterion=self.criterion, seed=self.seed)
        schedule = prune_and_finetune(
            graph,
            dataset,
            sparsity=self.sparsity,
            schedule=self.schedule,
            steps=self.steps,
            pruner=pruner,
            train=self.train_config(),
        )
        return PassResult(graph, bool(schedule.steps), schedule.lines())
