"""The names of irtool's own passes and analyses, mapped to where they are defined.

Entries are ``"module:attribute"`` strings imported only when the pass is used, so the CLI's
``--help`` stays fast and a pass whose dependencies are missing does not break the others. Third-party
packages add passes through the ``irtool.passes`` entry-point group instead of editing this table.
"""

from __future__ import annotations

BUILTIN_PASSES: dict[str, str] = {
    "dce": "irtool.passes.dce:DeadCodeElimination",
    "const-fold": "irtool.passes.const_fold:ConstantFold",
    "fold-bn": "irtool.passes.fold_bn:FoldBatchNorm",
    "prune": "irtool.passes.prune:Prune",
    "nni-prune": "irtool.passes.nni_config:NniPrune",
    "sparsify": "irtool.passes.sparsify:Sparsify",
    "quantize": "irtool.passes.quantize:Quantize",
    "finetune": "irtool.passes.finetune:Finetune",
    "bn-recalibrate": "irtool.passes.recalibrate:RecalibrateBatchNorm",
}

BUILTIN_ANALYSES: dict[str, str] = {
    "cost": "irtool.passes.cost:graph_cost",
    "channels": "irtool.passes.dependency:analyze_channels",
}

PASS_ENTRY_POINT_GROUP = "irtool.passes"
