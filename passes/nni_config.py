"""NNI-style ``config_list`` for structured pruning, for users coming from NNI (and Kenning).

A config list is a list of entries, each selecting layers and saying what to do with them::

    [{"sparsity": 0.5, "op_types": ["Conv2d"]},
     {"total_sparsity": 0.3, "op_names": ["layer3.0.conv1", "layer3.0.conv2"]},
     {"exclude": true, "op_names": ["features.0.0"]}]

Keys (NNI 2.x, and the 3.x spellings in brackets):

- selection: ``op_types`` (torch module types such as ``Conv2d`` and ``Linear``, irtool op
  names such as ``Conv``, or ``default`` for every conv, linear and recurrent layer),
  ``op_names`` (module names as in ``print(model)``, which are irtool's source names),
  ``op_partial_names`` (substrings), [``op_names_re``] (``re.match``), and per-entry
  exclusions [``exclude_op_names``, ``exclude_op_names_re``, ``exclude_op_types``]. When both
  types and names are given, a layer must satisfy both;
- action: ``sparsity`` / ``sparsity_per_layer`` [``sparse_ratio``] (each layer loses that
  fraction of its output channels), ``total_sparsity`` (the selected layers together lose that
  fraction, ranked globally), or ``exclude: true`` (not pruned).

As in NNI, a later entry overrides an earlier one for the layers both select. irtool prunes
channel *groups* (a residual stage is one group): an entry applies to a group when it selects
any of the group's producing layers. Groups no entry selects are not pruned. The plan becomes
an ordinary ``prune`` configuration (per-layer ``layers``, ``scope=global`` for
``total_sparsity``), which the pass logs.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..ir.core import Graph, Node
from ..ir.errors import IrtoolError
from ..ir.registry import opdef_of
from .base import Pass, PassContext, PassResult, register_pass
from .dependency import ChannelAnalysis, ChannelGroup, layer_name
from .prune import PruneConfig, prune_graph

WHERE = "nni-prune"

_SELECT_KEYS = (
    "op_types", "op_names", "op_partial_names", "op_names_re",
    "exclude_op_names", "exclude_op_names_re", "exclude_op_types",
)  # fmt: skip
_PER_LAYER_KEYS = ("sparsity", "sparsity_per_layer", "sparse_ratio")
_ACTION_KEYS = (*_PER_LAYER_KEYS, "total_sparsity", "exclude")
_UNSUPPORTED = {
    "max_sparsity_per_layer": "irtool's global ranking keeps min-channels per group instead",
    "max_sparse_ratio": "irtool's global ranking keeps min-channels per group instead",
    "min_sparse_ratio": "irtool's global ranking keeps min-channels per group instead",
    "global_group_id": "use total_sparsity for the layers ranked together",
    "dependency_group_id": "irtool finds channel dependencies itself",
    "granularity": "structured pruning removes whole output channels; use the sparsify pass for finer masks",
    "sparse_threshold": "irtool prunes by ratio",
}
DEFAULT_LABELS = ("conv", "deconv", "linear", "matmul", "rnn")
"""Registry labels of the layers ``op_types: ["default"]`` selects."""


# -- entries -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigEntry:
    """One entry of a config list, validated."""

    index: int
    op_types: tuple[str, ...] | None = None
    op_names: tuple[str, ...] = ()
    op_partial_names: tuple[str, ...] = ()
    op_names_re: tuple[str, ...] = ()
    exclude_op_names: tuple[str, ...] = ()
    exclude_op_names_re: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    sparsity: float | None = None
    total_sparsity: float | None = None
    exclude: bool = False

    @property
    def by_name(self) -> bool:
        return bool(self.op_names or self.op_partial_names or self.op_names_re)

    def selects(self, node: Node) -> bool:
        """Whether this entry's type and name filters select ``node``."""
        kind = nni_layer_type(node)
        if kind is None:
            return False
        names = {layer_name(node), node.name}
        if self.op_types is not None and not _type_matches(node, kind, self.op_types):
            return False
        if self.by_name and not (
            any(_name_matches(n, p) for n in names for p in self.op_names)
            or any(part in n for n in names for part in self.op_partial_names)
            or any(re.match(p, n) for n in names for p in self.op_names_re)
        ):
            return False
        if self.exclude_op_types and _type_matches(node, kind, self.exclude_op_types):
            return False
        if any(_name_matches(n, p) for n in names for p in self.exclude_op_names):
            return False
        return not any(re.match(p, n) for n in names for p in self.exclude_op_names_re)

    def describe(self) -> str:
        if self.exclude:
            return f"entry {self.index}: exclude"
        if self.total_sparsity is not None:
            return f"entry {self.index}: total_sparsity {self.total_sparsity:g}"
        return f"entry {self.index}: sparsity {self.sparsity:g}"


def _name_matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def _type_matches(node: Node, kind: str, types: Sequence[str]) -> bool:
    for wanted in types:
        if wanted == kind or wanted == node.op:
            return True
        if wanted == "default":
            opdef = opdef_of(node)
            if opdef is not None and opdef.label in DEFAULT_LABELS:
                return True
    return False


def nni_layer_type(node: Node) -> str | None:
    """The torch module type NNI users call this layer (``Conv2d``, ``Linear``, ``LSTM``...),
    from the registry's layer label; None for nodes that are not layers with weights."""
    opdef = opdef_of(node)
    label = opdef.label if opdef is not None else ""
    if label in ("conv", "deconv"):
        rank = _rank(node.inputs[1] if len(node.inputs) > 1 else None)
        if rank is None or rank < 3:
            return None
        return f"{'Conv' if label == 'conv' else 'ConvTranspose'}{rank - 2}d"
    if label == "linear":
        return "Linear"
    if label == "matmul" and len(node.inputs) == 2 and node.inputs[1] is not None and node.inputs[1].is_const:
        return "Linear" if node.inputs[1].const.ndim == 2 else None
    if label == "rnn":
        return node.op
    if label == "bn":
        rank = _rank(node.inputs[0] if node.inputs else None)
        return f"BatchNorm{max(rank - 2, 1)}d" if rank is not None else None
    return None


def _rank(value) -> int | None:
    if value is None:
        return None
    if value.is_const:
        return value.const.ndim
    if value.type is not None and value.type.shape is not None:
        return len(value.type.shape)
    return None


def _strings(entry: Mapping[str, Any], key: str, index: int) -> tuple[str, ...]:
    value = entry[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise IrtoolError(f"config_list entry {index}: '{key}' must be a list of strings", where=WHERE)
    for pattern in value if key.endswith("_re") else ():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise IrtoolError(f"config_list entry {index}: '{key}' has a bad regular expression '{pattern}': {exc}", where=WHERE) from None
    return tuple(value)


def _ratio(entry: Mapping[str, Any], key: str, index: int) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise IrtoolError(f"config_list entry {index}: '{key}' must be a number in [0, 1), not {value!r}", where=WHERE)
    return float(value)


def parse_entry(entry: Any, index: int) -> ConfigEntry:
    """Check one entry's keys and values; every problem names the entry."""
    if not isinstance(entry, Mapping):
        raise IrtoolError(f"config_list entry {index} must be an object, not {type(entry).__name__}", where=WHERE)
    known = (*_SELECT_KEYS, *_ACTION_KEYS)
    for key in entry:
        if key in _UNSUPPORTED:
            raise IrtoolError(f"config_list entry {index}: '{key}' is not supported ({_UNSUPPORTED[key]})", where=WHERE)
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise IrtoolError(f"config_list entry {index}: unknown key '{key}'{hint}", where=WHERE)
    per_layer = [k for k in _PER_LAYER_KEYS if k in entry]
    actions = per_layer + [k for k in ("total_sparsity",) if k in entry] + (["exclude"] if entry.get("exclude") else [])
    if "exclude" in entry and not isinstance(entry["exclude"], bool):
        raise IrtoolError(f"config_list entry {index}: 'exclude' must be true or false", where=WHERE)
    if len(actions) != 1:
        said = ", ".join(actions) if actions else "none"
        raise IrtoolError(
            f"config_list entry {index} needs exactly one of sparsity, total_sparsity or exclude (has {said})",
            where=WHERE,
        )
    values: dict[str, Any] = {key: _strings(entry, key, index) for key in _SELECT_KEYS if key in entry}
    if "op_types" not in values and not any(k in values for k in ("op_names", "op_partial_names", "op_names_re")):
        raise IrtoolError(f"config_list entry {index} selects no layers: give op_types or op_names", where=WHERE)
    if per_layer:
        values["sparsity"] = _ratio(entry, per_layer[0], index)
    elif "total_sparsity" in entry:
        values["total_sparsity"] = _ratio(entry, "total_sparsity", index)
    else:
        values["exclude"] = True
    return ConfigEntry(index=index, **values)


def parse_config_list(config_list: Any) -> list[ConfigEntry]:
    """Validate a config list (a list of entries, or its JSON text)."""
    if isinstance(config_list, str):
        try:
            config_list = json.loads(config_list)
        except ValueError as exc:
            raise IrtoolError(f"config_list is not valid JSON: {exc}", where=WHERE) from None
    if not isinstance(config_list, (list, tuple)) or not config_list:
        raise IrtoolError("config_list must be a non-empty list of entries", where=WHERE)
    entries = [parse_entry(entry, i) for i, entry in enumerate(config_list)]
    totals = sorted({e.total_sparsity for e in entries if e.total_sparsity is not None})
    if len(totals) > 1:
        raise IrtoolError(
            f"config_list has different total_sparsity values {totals}; irtool ranks one pool of layers globally",
            where=WHERE,
        )
    return entries


# -- the plan ------------------------------------------------------------------------------------
@dataclass
class PruningPlan:
    """What a config list means for one graph: per group, the entry that decides it."""

    decisions: dict[int, ConfigEntry] = field(default_factory=dict)
    groups: dict[int, ChannelGroup] = field(default_factory=dict)
    unmatched_entries: list[int] = field(default_factory=list)

    def groups_of(self, predicate) -> list[ChannelGroup]:
        return [self.groups[gid] for gid, entry in self.decisions.items() if predicate(entry)]

    def prune_config(self, base: PruneConfig) -> PruneConfig:
        """The ``prune`` configuration that carries out this plan."""
        local = self.groups_of(lambda e: e.sparsity is not None)
        pooled = self.groups_of(lambda e: e.total_sparsity is not None)
        layers = tuple(f"{_literal(_producer(g).name)}:{self.decisions[g.id].sparsity!r}" for g in local)
        if not pooled:
            return replace(base, sparsity=0.0, layers=layers, scope="local", exclude=())
        # The global pool is every prunable group without its own sparsity and not excluded:
        # exclude the groups no entry chose.
        chosen = {g.id for g in [*local, *pooled]}
        others = [g for g in self.groups.values() if g.id not in chosen]
        exclude = tuple(dict.fromkeys(_literal(p.name) for g in others for p in g.producers))
        total = self.decisions[pooled[0].id].total_sparsity
        return replace(base, sparsity=total, layers=layers, scope="global", exclude=exclude)

    def lines(self) -> list[str]:
        lines = []
        for entry in dict.fromkeys(self.decisions.values()):
            names = [g.name for g in self.groups_of(lambda e, entry=entry: e is entry)]
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            lines.append(f"{entry.describe()}: {len(names)} group{'s' if len(names) != 1 else ''} ({shown})")
        lines += [f"warning: config_list entry {i} selects no prunable layer" for i in self.unmatched_entries]
        return lines


def _producer(group: ChannelGroup) -> Node:
    return next((p for p in group.producers if nni_layer_type(p)), group.producers[0])


def _literal(name: str) -> str:
    """A glob pattern that matches exactly ``name``."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def plan_pruning(analysis: ChannelAnalysis, entries: Sequence[ConfigEntry]) -> PruningPlan:
    """Which entry decides each prunable group (the last one selecting one of its producers)."""
    plan = PruningPlan()
    used: set[int] = set()
    for group in analysis.groups:
        if not group.prunable:
            continue
        plan.groups[group.id] = group
        deciding = None
        for entry in entries:
            if any(entry.selects(p) for p in group.producers):
                deciding = entry
                used.add(entry.index)
        if deciding is not None and not deciding.exclude:
            plan.decisions[group.id] = deciding
    plan.unmatched_entries = [e.index for e in entries if e.index not in used]
    return plan


def prune_with_config_list(graph: Graph, config_list: Any, base: PruneConfig | None = None, *, analysis=None, logger=None):
    """Prune ``graph`` in place as the config list says; returns ``(plan, PruneReport)``."""
    from .dependency import analyze_channels

    entries = parse_config_list(config_list)
    analysis = analysis or analyze_channels(graph)
    plan = plan_pruning(analysis, entries)
    config = plan.prune_config(base or PruneConfig())
    return plan, prune_graph(graph, config, analysis=analysis, logger=logger)


# -- the pass ------------------------------------------------------------------------------------
@register_pass
@dataclass(frozen=True)
class NniPrune(Pass):
    """Structured pruning configured by an NNI-style config_list (op_types, op_names, sparsity, total_sparsity, exclude).

    ``config-list`` is the list as JSON: ``nni-prune{config-list='[{"sparsity":0.5,"op_types":["Conv2d"]}]'}``.
    """

    name = "nni-prune"
    config_list: str = field(metadata={"help": "the NNI config_list as JSON"})
    criterion: str = field(default="l1", metadata={"help": "channel importance: l1, l2, fpgm, apoz, activation-mean, ..."})
    round_to: int = field(default=1, metadata={"help": "keep channel counts a multiple of this"})
    min_channels: int = field(default=1, metadata={"help": "channels every group keeps at least"})
    seed: int = field(default=0, metadata={"help": "seed of the random criterion"})

    def __post_init__(self) -> None:
        parse_config_list(self.config_list)
        # Compact JSON, so equal lists print (and round-trip) as the same pipeline text.
        object.__setattr__(self, "config_list", json.dumps(json.loads(self.config_list), separators=(",", ":")))
        self.base_config().validate()

    @classmethod
    def from_config_list(cls, config_list: Sequence[Mapping[str, Any]], **options) -> NniPrune:
        return cls(config_list=json.dumps(list(config_list), separators=(",", ":")), **options)

    def base_config(self) -> PruneConfig:
        return PruneConfig(criterion=self.criterion, round_to=self.round_to, min_channels=self.min_channels, seed=self.seed)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        analysis = ctx.analysis("channels", graph)
        plan, report = prune_with_config_list(graph, self.config_list, self.base_config(), analysis=analysis, logger=ctx.logger)
        for line in plan.lines():
            if line.startswith("warning: "):
                ctx.logger.warning("%s: %s", self.name, line.removeprefix("warning: "))
        return PassResult(graph, report.changed, [*plan.lines(), *report.lines, *report.summary()])


# -- Kenning's NNIPruningOptimizer ------------------------------------------------------------------
KENNING_NNI_TYPE = "kenning.optimizers.nni_pruning.NNIPruningOptimizer"

_PRUNERS = {
    "apoz": "apoz",
    "mean_rank": "activation-mean",
    "l1": "l1",
    "l1norm": "l1",
    "l2": "l2",
    "l2norm": "l2",
    "fpgm": "fpgm",
    "taylor": "taylor",
    "taylorfo": "taylor",
}
_OPTIMIZERS = {"torch.optim.SGD": "sgd", "torch.optim.Adam": "adam", "torch.optim.AdamW": "adamw", "torch.optim.RMSprop": "rmsprop"}
_LOSSES = {
    "torch.nn.CrossEntropyLoss": "cross-entropy",
    "torch.nn.NLLLoss": "nll",
    "torch.nn.MSELoss": "mse",
    "torch.nn.L1Loss": "l1",
    "torch.nn.SmoothL1Loss": "smooth-l1",
    "torch.nn.BCEWithLogitsLoss": "bce",
}
_KENNING_IGNORED = {
    "training_steps": "data-driven criteria use the data given to the run",
    "activation": "activation statistics are taken where the next layers read them",
    "confidence": "not needed",
    "pruning_on_cuda": "irtool prunes on the CPU",
    "compiled_model_path": "artifacts go to the run's output folder",
    "exclude_last_layer": "irtool never changes the shape of a model output",
    "mode": "irtool always prunes dependency-aware",
    "model_framework": "not needed",
}


def _choice(table: Mapping[str, str], key: str, value: Any) -> str:
    if value not in table:
        raise IrtoolError(f"{KENNING_NNI_TYPE}: {key} '{value}' is not one of {', '.join(table)}")
    return table[value]


def kenning_nni_passes(parameters: Mapping[str, Any]) -> tuple[list[Pass], list[str]]:
    """Passes for the parameters of Kenning's ``NNIPruningOptimizer``, and notes on the ones
    irtool does not need: ``nni-prune``, then ``finetune`` when ``finetuning_epochs`` > 0."""
    from .base import get_pass

    known = {"pruner_type", "config_list", "finetuning_epochs", "finetuning_batch_size", "finetuning_learning_rate",
             "optimizer", "criterion", *_KENNING_IGNORED}  # fmt: skip
    for key in parameters:
        if key not in known:
            raise IrtoolError(f"{KENNING_NNI_TYPE}: unknown parameter '{key}'")
    if "config_list" not in parameters:
        raise IrtoolError(f"{KENNING_NNI_TYPE}: parameter 'config_list' is required")
    criterion = _choice(_PRUNERS, "pruner_type", parameters.get("pruner_type", "l1"))
    passes: list[Pass] = [NniPrune.from_config_list(parameters["config_list"], criterion=criterion)]
    notes = [f"{key} ignored: {why}" for key, why in _KENNING_IGNORED.items() if key in parameters]
    if parameters.get("mode") not in (None, "dependency_aware"):
        notes.append(f"mode '{parameters['mode']}' asked to ignore channel dependencies; irtool keeps them")
    epochs = parameters.get("finetuning_epochs", 0)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise IrtoolError(f"{KENNING_NNI_TYPE}: finetuning_epochs must be a whole number, not {epochs!r}")
    if epochs:
        options = {"epochs": str(epochs), "progress": "false"}
        if "finetuning_batch_size" in parameters:
            options["batch-size"] = str(parameters["finetuning_batch_size"])
        if "finetuning_learning_rate" in parameters:
            options["lr"] = repr(float(parameters["finetuning_learning_rate"]))
        if "optimizer" in parameters:
            options["optimizer"] = _choice(_OPTIMIZERS, "optimizer", parameters["optimizer"])
        if "criterion" in parameters:
            options["loss"] = _choice(_LOSSES, "criterion", parameters["criterion"])
        passes.append(get_pass("finetune").from_options(options))
    return passes, notes
