"""Scenarios: what ``irtool run`` and the orchestrator plugin read (JSON, TOML or YAML).

A scenario names a model, a pipeline of steps written as orchestrators such as Kenning write
them (``{"type": ..., "parameters": {...}}``), the data, the targets and what to measure::

    {
      "model": "resnet18.onnx",
      "pipeline": [
        {"type": "fold-bn"},
        {"type": "prune", "parameters": {"sparsity": 0.5, "criterion": "l2"}},
        {"type": "quantize", "parameters": {"mode": "int8"}}
      ],
      "data": {"type": "digits", "parameters": {"size": 16}},
      "targets": ["onnx", "tvm"],
      "measurements": {"path": "build/measurements.json", "latency": {"runs": 20}},
      "output_dir": "build"
    }

A step's ``type`` is a pass name (``irtool passes`` lists them), ``nni-prune`` with an NNI
``config_list``, or Kenning's ``kenning.optimizers.nni_pruning.NNIPruningOptimizer`` with its
parameters; a step may also be a pipeline string (``"prune{sparsity=0.5},dce"``), and so may
the whole ``pipeline``. Parameter values are JSON values; they are checked by the pass's own
option types. The plugin's configuration is a scenario without ``model`` and ``output_dir``;
``tools/plugin_schema.json`` is its JSON Schema.

Relative paths resolve against the folder of the file they were read from (the current
directory for a configuration given as a dict). Every problem raises ``IrtoolError`` naming
the file and the key, e.g. ``scenario.json: pipeline[1] (prune): option 'sparsity' ...``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ir.errors import IrtoolError
from ..passes.base import Pass

TARGETS = ("onnx", "tvm")
DATA_KINDS = ("digits", "npz", "random")
MODEL_KINDS = ("onnx", "pt2", "torch")
CONFIG_KEYS = ("name", "input_shapes", "pipeline", "data", "eval_data", "targets", "measurements")
SCENARIO_KEYS = (*CONFIG_KEYS, "model", "output_dir")
DEFAULT_OUTPUT_DIR = "build"
MEASUREMENTS_FILE = "measurements.json"


# -- documents -----------------------------------------------------------------------------------
def read_document(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON, TOML or YAML file (by its extension) as a dict."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise IrtoolError("file does not exist" if not path.exists() else "is not a file", where=where)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IrtoolError(f"cannot read: {exc}", where=where) from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IrtoolError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", where=where) from None
    elif suffix == ".toml":
        import tomllib

        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise IrtoolError(f"invalid TOML: {exc}", where=where) from None
    elif suffix in (".yaml", ".yml"):
        document = _read_yaml(text, where)
    else:
        raise IrtoolError(f"unknown scenario format '{suffix}'; use .json, .toml or .yaml", where=where)
    if not isinstance(document, dict):
        raise IrtoolError(f"the top level must be a table of keys, not {type(document).__name__}", where=where)
    return document


def _read_yaml(text: str, where: str) -> Any:
    try:
        import yaml
    except ModuleNotFoundError:
        raise IrtoolError("reading YAML needs PyYAML: pip install pyyaml", where=where) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise IrtoolError(f"invalid YAML: {' '.join(str(exc).split())}", where=where) from None


# -- small checks --------------------------------------------------------------------------------
def _fail(where: str, key: str, message: str) -> IrtoolError:
    return IrtoolError(f"{key}: {message}", where=where)


def _mapping(value: Any, where: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, key, f"expected a table of keys, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _check_keys(value: Mapping[str, Any], allowed: Sequence[str], where: str, key: str) -> None:
    import difflib

    for name in value:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            prefix = f"{key}." if key else ""
            raise _fail(where, f"{prefix}{name}", f"unknown key{hint}; known: {', '.join(allowed)}")


def _typed(value: Any, types: tuple[type, ...], what: str, where: str, key: str) -> Any:
    if isinstance(value, bool) and bool not in types:
        raise _fail(where, key, f"expected {what}, got {_kind(value)}")
    if not isinstance(value, types):
        raise _fail(where, key, f"expected {what}, got {_kind(value)}")
    return value


def _positive(value: Any, where: str, key: str, *, zero: bool = False) -> int:
    _typed(value, (int,), "a whole number", where, key)
    if value < (0 if zero else 1):
        raise _fail(where, key, f"must be at least {0 if zero else 1}, not {value}")
    return value


def _kind_and_parameters(value: Any, kinds: Sequence[str], where: str, key: str) -> tuple[str, dict[str, Any]]:
    """``"digits"`` or ``{"type": "digits", "parameters": {...}}`` -> (kind, parameters)."""
    if isinstance(value, str):
        kind, parameters = value, {}
    else:
        value = _mapping(value, where, key)
        _check_keys(value, ("type", "parameters"), where, key)
        if "type" not in value:
            raise _fail(where, key, "needs a 'type'")
        kind = _typed(value["type"], (str,), "a string", where, f"{key}.type")
        parameters = dict(_mapping(value.get("parameters", {}), where, f"{key}.parameters"))
    if kind not in kinds:
        raise _fail(where, f"{key}.type", f"'{kind}' is not one of {', '.join(kinds)}")
    return kind, parameters


def _resolve(base_dir: Path, path: Any, where: str, key: str) -> Path:
    text = _typed(path, (str,), "a path", where, key)
    resolved = Path(os.path.expanduser(text))
    return resolved if resolved.is_absolute() else base_dir / resolved


# -- pipeline steps ------------------------------------------------------------------------------
def _option_text(value: Any) -> str | list[str]:
    """A JSON parameter value as pipeline option text (what ``Pass.from_options`` parses)."""
    if isinstance(value, (list, tuple)) and all(_is_scalar(v) for v in value):
        return [_scalar_text(v) for v in value]
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(value, separators=(",", ":"))
    return _scalar_text(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _scalar_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _alias_steps() -> dict[str, Any]:
    from ..passes.nni_config import KENNING_NNI_TYPE, kenning_nni_passes

    return {KENNING_NNI_TYPE: kenning_nni_passes}


def load_extensions() -> None:
    """Register the pass irtool defines outside its lazy table: ``nni-prune``."""
    from ..passes import nni_config  # noqa: F401 - registers nni-prune


def step_passes(step: Any, where: str, key: str) -> tuple[list[Pass], list[str]]:
    """The passes of one step, and notes about parameters that have no effect."""
    from ..passes.base import get_pass
    from ..passes.pipeline import parse_pipeline

    load_extensions()
    if isinstance(step, str):
        try:
            return parse_pipeline(step), []
        except IrtoolError as exc:
            raise _fail(where, key, str(exc)) from None
    step = _mapping(step, where, key)
    _check_keys(step, ("type", "parameters"), where, key)
    if "type" not in step:
        raise _fail(where, key, "needs a 'type' (a pass name, e.g. 'prune')")
    kind = _typed(step["type"], (str,), "a string", where, f"{key}.type")
    parameters = _mapping(step.get("parameters") or {}, where, f"{key}.parameters")
    label = f"{key} ({kind})"
    try:
        aliases = _alias_steps()
        if kind in aliases:
            return aliases[kind](parameters)
        options = {name: _option_text(value) for name, value in parameters.items()}
        return [get_pass(kind).from_options(options)], []
    except IrtoolError as exc:
        raise _fail(where, label, str(exc)) from None


def pipeline_passes(pipeline: Any, where: str, key: str = "pipeline") -> tuple[list[Pass], list[str]]:
    """A pipeline string, or a list of steps, as passes (and notes)."""
    if isinstance(pipeline, str):
        return step_passes(pipeline, where, key)
    if not isinstance(pipeline, (list, tuple)) or not pipeline:
        raise _fail(where, key, "expected a pipeline string or a non-empty list of steps")
    passes: list[Pass] = []
    notes: list[str] = []
    for i, step in enumerate(pipeline):
        more, more_notes = step_passes(step, where, f"{key}[{i}]")
        passes += more
        notes += [f"{key}[{i}]: {note}" for note in more_notes]
    return passes, notes


# -- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSpec:
    """Where a run's data comes from: a built-in dataset, a ``.npz`` file, or random rows."""

    kind: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    base_dir: Path = Path(".")
    where: str = "data"

    def load(self, input_shapes: Sequence[Sequence[Any]] | None = None):
        """The dataset (``irtool.passes.data.Dataset``); ``random`` needs the model's input shapes."""
        from ..passes.data import ArrayDataset, digits

        params = dict(self.parameters)
        if self.kind == "digits":
            try:
                return digits(**params)
            except TypeError as exc:
                raise IrtoolError(f"digits: {exc}", where=self.where) from None
        if self.kind == "npz":
            return self._npz(params, ArrayDataset)
        return self._random(params, input_shapes, ArrayDataset)

    def _npz(self, params: dict[str, Any], ArrayDataset):
        from .model_io import read_arrays

        _check_keys(params, ("path", "inputs", "labels", "batch_size"), self.where, "parameters")
        if "path" not in params:
            raise _fail(self.where, "parameters.path", "is required for npz data")
        path = _resolve(self.base_dir, params["path"], self.where, "parameters.path")
        try:
            archive = read_arrays(path)
        except IrtoolError as exc:
            raise _fail(self.where, "parameters.path", str(exc)) from None
        names = params.get("inputs", "inputs")
        names = [names] if isinstance(names, str) else list(names)
        missing = [n for n in [*names, params.get("labels")] if n is not None and n not in archive]
        if missing:
            raise _fail(self.where, "parameters", f"'{path}' has no array '{missing[0]}' (has {', '.join(archive)})")
        labels = archive[params["labels"]] if params.get("labels") is not None else None
        batch = _positive(params.get("batch_size", 64), self.where, "parameters.batch_size")
        return ArrayDataset([archive[n] for n in names], labels, batch_size=batch, name=path.name)

    def _random(self, params: dict[str, Any], input_shapes, ArrayDataset):
        import numpy as np

        _check_keys(params, ("samples", "seed"), self.where, "parameters")
        samples = _positive(params.get("samples", 32), self.where, "parameters.samples")
        seed = _typed(params.get("seed", 0), (int,), "a whole number", self.where, "parameters.seed")
        if not input_shapes:
            raise IrtoolError("random data needs the model's input shapes", where=self.where)
        rng = np.random.default_rng(seed)
        arrays = [rng.standard_normal((samples, *shape[1:])).astype(np.float32) for shape in input_shapes]
        return ArrayDataset(arrays, name="random")


def data_spec(value: Any, base_dir: Path, where: str, key: str) -> DataSpec:
    kind, parameters = _kind_and_parameters(value, DATA_KINDS, where, key)
    return DataSpec(kind, parameters, base_dir, f"{where}: {key}")


# -- measurement options ---------------------------------------------------------------------------
def measure_options(value: Any, where: str, key: str = "measurements"):
    """The ``measurements`` table as ``api.Measure`` (and the file path it names, if any)."""
    from .api import Measure

    value = _mapping(value, where, key)
    _check_keys(value, ("path", "latency", "accuracy", "baseline", "verify"), where, key)
    options: dict[str, Any] = {}
    latency = value.get("latency", True)
    if isinstance(latency, Mapping):
        _check_keys(latency, ("runs", "warmup", "threads", "batch"), where, f"{key}.latency")
        options["latency"] = True
        for name in ("runs", "threads", "batch"):
            if name in latency:
                options[name] = _positive(latency[name], where, f"{key}.latency.{name}")
        if "warmup" in latency:
            options["warmup"] = _positive(latency["warmup"], where, f"{key}.latency.warmup", zero=True)
    else:
        options["latency"] = _typed(latency, (bool,), "true/false or a table", where, f"{key}.latency")
    accuracy = value.get("accuracy", True)
    if isinstance(accuracy, Mapping):
        _check_keys(accuracy, ("samples",), where, f"{key}.accuracy")
        options["accuracy"] = True
        if "samples" in accuracy:
            options["accuracy_samples"] = _positive(accuracy["samples"], where, f"{key}.accuracy.samples")
    else:
        options["accuracy"] = _typed(accuracy, (bool,), "true/false or a table", where, f"{key}.accuracy")
    for name in ("baseline", "verify"):
        if name in value:
            options[name] = _typed(value[name], (bool,), "true or false", where, f"{key}.{name}")
    return Measure(**options)


# -- configurations --------------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Everything a run needs besides the model and the output folder."""

    passes: list[Pass]
    notes: list[str] = field(default_factory=list)
    name: str | None = None
    input_shapes: list[tuple[int, ...]] | None = None
    data: DataSpec | None = None
    eval_data: DataSpec | None = None
    targets: tuple[str, ...] = ("onnx",)
    measure: Any = None
    """``api.Measure``."""
    measurements_path: Path | None = None
    base_dir: Path = Path(".")


def _input_shapes(value: Any, where: str) -> list[tuple[int, ...]]:
    if not isinstance(value, list) or not value:
        raise _fail(where, "input_shapes", "expected a list of shapes, e.g. [[1, 3, 224, 224]]")
    shapes = []
    for i, shape in enumerate(value):
        key = f"input_shapes[{i}]"
        if not isinstance(shape, list) or not shape:
            raise _fail(where, key, "expected a list of dimensions, e.g. [1, 3, 224, 224]")
        shapes.append(tuple(_positive(d, where, f"{key}[{j}]") for j, d in enumerate(shape)))
    return shapes


def _targets(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _fail(where, "targets", f"expected a list of targets ({', '.join(TARGETS)})")
    for i, target in enumerate(value):
        if target not in TARGETS:
            raise _fail(where, f"targets[{i}]", f"'{target}' is not one of {', '.join(TARGETS)}")
    return tuple(dict.fromkeys(value))


def parse_config(
    document: Mapping[str, Any], *, base_dir: str | os.PathLike = ".", where: str = "config", allowed: Sequence[str] = CONFIG_KEYS
) -> RunConfig:
    """Check a plugin configuration (or the shared part of a scenario) and build the run's parts."""
    from .api import Measure

    document = _mapping(document, where, "the top level")
    _check_keys(document, allowed, where, "")
    base = Path(base_dir)
    if "pipeline" not in document:
        raise _fail(where, "pipeline", "is required (a pipeline string or a list of steps)")
    passes, notes = pipeline_passes(document["pipeline"], where)
    config = RunConfig(passes, notes, base_dir=base)
    if "name" in document:
        config.name = _typed(document["name"], (str,), "a string", where, "name")
    if "input_shapes" in document:
        config.input_shapes = _input_shapes(document["input_shapes"], where)
    if "data" in document:
        config.data = data_spec(document["data"], base, where, "data")
    if "eval_data" in document:
        config.eval_data = data_spec(document["eval_data"], base, where, "eval_data")
    if "targets" in document:
        config.targets = _targets(document["targets"], where)
    measurements = document.get("measurements", {})
    config.measure = measure_options(measurements, where) if measurements else Measure()
    if isinstance(measurements, Mapping) and "path" in measurements:
        config.measurements_path = _resolve(base, measurements["path"], where, "measurements.path")
    return config


def load_config(config: Mapping[str, Any] | str | os.PathLike) -> RunConfig:
    """A plugin configuration from a dict (paths relative to the current folder) or a file."""
    if isinstance(config, Mapping):
        return parse_config(config, base_dir=Path.cwd())
    path = Path(config)
    return parse_config(read_document(path), base_dir=path.parent.resolve(), where=str(path))


# -- scenarios ---------------------------------------------------------------------------------------
@dataclass
class Scenario:
    """A run described in a file: the model, where to write, and the run configuration."""

    model: str
    config: RunConfig
    output_dir: Path
    source: Path

    @property
    def measurements_path(self) -> Path:
        return self.config.measurements_path or self.output_dir / MEASUREMENTS_FILE


def _model_spec(value: Any, base_dir: Path, where: str) -> tuple[str, list[tuple[int, ...]] | None]:
    """``"model.onnx"``, ``"pkg.module:factory"`` or ``{"type": ..., "parameters": {...}}``."""
    from .model_io import is_factory_spec

    if isinstance(value, str):
        if is_factory_spec(value) and not (base_dir / value).exists():
            return value, None
        return str(_resolve(base_dir, value, where, "model")), None
    kind, parameters = _kind_and_parameters(value, MODEL_KINDS, where, "model")
    shapes = _input_shapes(parameters["input_shapes"], where) if "input_shapes" in parameters else None
    if kind == "torch":
        _check_keys(parameters, ("factory", "input_shapes"), where, "model.parameters")
        if "factory" not in parameters:
            raise _fail(where, "model.parameters.factory", "is required (package.module:function)")
        factory = _typed(parameters["factory"], (str,), "a string", where, "model.parameters.factory")
        if ":" not in factory:
            raise _fail(where, "model.parameters.factory", f"'{factory}' is not like package.module:function")
        return factory, shapes
    _check_keys(parameters, ("path", "input_shapes"), where, "model.parameters")
    if "path" not in parameters:
        raise _fail(where, "model.parameters.path", f"is required for a {kind} model")
    path = _resolve(base_dir, parameters["path"], where, "model.parameters.path")
    if path.suffix != f".{kind}":
        raise _fail(where, "model.parameters.path", f"'{path.name}' does not end in .{kind}")
    return str(path), shapes


def load_scenario(path: str | os.PathLike, *, output_dir: str | os.PathLike | None = None) -> Scenario:
    """Read and check a scenario file; ``output_dir`` overrides the file's."""
    source = Path(path)
    document = read_document(source)
    where = str(source)
    base = source.parent.resolve()
    config = parse_config(document, base_dir=base, where=where, allowed=SCENARIO_KEYS)
    if "model" not in document:
        raise _fail(where, "model", "is required (a model file or package.module:factory)")
    model, shapes = _model_spec(document["model"], base, where)
    if shapes is not None:
        config.input_shapes = shapes
    if output_dir is not None:
        out = Path(output_dir)
    else:
        out = _resolve(base, document.get("output_dir", DEFAULT_OUTPUT_DIR), where, "output_dir")
    return Scenario(model, config, out, source)
