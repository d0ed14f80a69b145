"""Re-estimating BatchNormalization statistics after pruning, without training.

Pruning changes what every later layer sees, but BatchNormalization keeps the running mean and
variance measured on the unpruned network, so accuracy right after pruning can collapse. A few
hundred unlabelled rows put through the network with BatchNormalization in training mode give
fresh statistics: a cheap step before, or instead of, fine-tuning.

The graph runs through the torch backend (``backends.torch.to_torch``) under ``torch.no_grad()``,
with only the BatchNormalization layers in training mode (dropout stays off) and a cumulative
average over the batches (torch's ``momentum=None``). Only the running mean and variance
constants are written back; every weight stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..ir.core import Graph, Value
from ..ir.errors import IrtoolError
from ..ir.registry import opdef_of
from .base import Pass, PassContext, PassResult, register_pass
from .data import as_dataset, builtin_dataset, check_builtin
from .finetune import input_tensors
from .fold_bn import BN_LABEL


def batchnorm_statistics(graph: Graph) -> list[Value]:
    """The running mean and variance constants of every BatchNormalization, in graph order."""
    stats: list[Value] = []
    for node in graph.nodes:
        opdef = opdef_of(node)
        if opdef is None or opdef.label != BN_LABEL:
            continue
        pair = node.inputs[3:5]
        if len(pair) != 2 or not all(v is not None and v.is_const for v in pair):
            raise IrtoolError("running statistics must be constants to be recalibrated", where=f"node '{node.name}'")
        if any(v in stats for v in pair):
            raise IrtoolError("running statistics shared with another BatchNormalization", where=f"node '{node.name}'")
        stats += pair
    return stats


def recalibrate_batchnorm(graph: Graph, data: Any, *, samples: int = 512, batch_size: int = 64) -> tuple[int, int]:
    """Replace the BatchNormalization running statistics of ``graph`` by those of ``data``.

    Uses the first ``samples`` rows in batches of ``batch_size``, each batch weighing the same,
    as a torch BatchNorm with ``momentum=None`` does. Returns (layers, rows used).
    """
    import torch

    from ..backends.torch import TrainableBatchNorm, to_torch, update_constants

    stats = {v.name for v in batchnorm_statistics(graph)}
    if not stats:
        return 0, 0
    rows = as_dataset(data).arrays(limit=samples).inputs
    if len(rows) != len(graph.inputs):
        raise IrtoolError(f"the data has {len(rows)} inputs per row, the model takes {len(graph.inputs)}")
    module = to_torch(graph)
    layers = [m for m in module.modules() if isinstance(m, TrainableBatchNorm)]
    for layer in layers:
        layer.train()
    count = len(rows[0])
    with torch.no_grad():
        for k, start in enumerate(range(0, count, batch_size), 1):
            for layer in layers:
                layer.momentum = 1.0 / k
            batch = input_tensors(tuple(a[start : start + batch_size] for a in rows), graph)
            try:
                module(*batch)
            except (RuntimeError, ValueError) as exc:
                raise IrtoolError(f"forward pass failed in torch: {' '.join(str(exc).split())}") from None
    state = {key: t for key, t in module.state_dict().items() if module.constant_names.get(key) in stats}
    update_constants(graph, state)
    return len(stats) // 2, count


@register_pass
@dataclass(frozen=True)
class RecalibrateBatchNorm(Pass):
    """Re-estimate BatchNormalization running statistics on unlabelled data (after pruning).

    Data comes from ``dataset=digits`` when given, else from ``PassContext.data`` (``irtool opt
    --data``). It changes outputs on purpose, so ``opt --verify`` checks the graph before it.
    """

    name = "bn-recalibrate"
    preserves_function = False
    dataset: str = field(default="", metadata={"help": "a built-in dataset (digits); default: the pipeline's data"})
    samples: int = field(default=512, metadata={"help": "rows to measure the statistics on"})
    batch_size: int = field(default=64, metadata={"help": "rows per forward pass"})

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise IrtoolError(f"samples must be at least 1, not {self.samples}")
        if self.batch_size < 1:
            raise IrtoolError(f"batch size must be at least 1, not {self.batch_size}")
        if self.dataset:
            check_builtin(self.dataset)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not batchnorm_statistics(graph):
            return PassResult(graph, False, ["no BatchNormalization: nothing to recalibrate"])
        data = builtin_dataset(self.dataset) if self.dataset else ctx.data
        if data is None:
            raise IrtoolError("needs input data: give irtool opt --data FILE or dataset=digits")
        layers, rows = recalibrate_batchnorm(graph, data, samples=self.samples, batch_size=self.batch_size)
        return PassResult(graph, True, [f"recalibrated {layers} BatchNormalization layers on {rows} samples"])
