"""Passes: the ``Pass`` base class, results, the analysis cache, the pass registry and the manager.

A pass is a frozen dataclass whose fields are its options (xDSL's ``ModulePass``)::

    @dataclass(frozen=True)
    class Prune(Pass):
        name = "prune"
        sparsity: float = field(default=0.5, metadata={"help": "fraction of channels to remove"})

        def run(self, graph, ctx): ...

Options are spelled with dashes in pipeline strings (``round-to`` is the field ``round_to``);
``str(pass)`` is the canonical spec (``prune{criterion=l2 sparsity=0.5}``: only options that
differ from their defaults, sorted), and it parses back to an equal pass. Option types and
their text live in ``pipeline.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
import re
import sys
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

from ..ir.core import Graph
from ..ir.errors import IrtoolError
from .pipeline import PassOption, RawOption, format_value
from .registry_table import BUILTIN_ANALYSES, BUILTIN_PASSES, PASS_ENTRY_POINT_GROUP

_PASS_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


# -- passes ------------------------------------------------------------------------------
@dataclass
class PassResult:
    """What a pass returns: the graph (usually the same object, edited), and what it did."""

    graph: Graph
    modified: bool
    log: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Pass:
    """A graph transform or check. Subclasses are frozen dataclasses; their fields are options."""

    name: ClassVar[str] = ""
    preserves_function: ClassVar[bool] = True
    """False for passes that change what the model computes on purpose (quantize, sparsify,
    finetune): ``irtool opt --verify`` checks the graph just before the first of them."""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError(f"pass {type(self).__name__} has no run()")

    def requires(self, graph: Graph) -> None:
        """Raise ``IrtoolError`` when ``graph`` is not something this pass can handle."""

    def ensures(self, graph: Graph) -> None:
        """Raise ``IrtoolError`` when this pass's own postcondition does not hold (checked with verify)."""

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @classmethod
    def options(cls) -> list[PassOption]:
        hints = typing.get_type_hints(cls)
        result = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            result.append(
                PassOption(
                    name=f.name.replace("_", "-"),
                    field_name=f.name,
                    type=hints.get(f.name, str),
                    default=default,
                    help=f.metadata.get("help", ""),
                    pass_name=cls.name,
                )
            )
        return result

    @classmethod
    def from_options(cls, raw: Mapping[str, RawOption]) -> Pass:
        """Build the pass from option texts, checking names, types and the pass's own validation."""
        by_name = {o.name: o for o in cls.options()}
        values: dict[str, Any] = {}
        for key, text in raw.items():
            option = by_name.get(key) or by_name.get(key.replace("_", "-"))
            if option is None:
                listing = ", ".join(sorted(by_name)) or "none"
                hint = _did_you_mean(key, by_name)
                raise IrtoolError(f"unknown option '{key}' for pass {cls.name}{hint}; options: {listing}")
            values[option.field_name] = option.parse(text)
        missing = [o.name for o in by_name.values() if o.required and o.field_name not in values]
        if missing:
            raise IrtoolError(f"option '{missing[0]}' is required", where=cls.name)
        try:
            return cls(**values)
        except IrtoolError as exc:
            if exc.where:
                raise
            raise IrtoolError(exc.message, where=cls.name) from None

    def changed_options(self) -> dict[str, Any]:
        """Options whose value differs from the default, by pipeline name."""
        changed = {}
        for option in self.options():
            value = getattr(self, option.field_name)
            if option.required or not _same_value(value, option.default):
                changed[option.name] = value
        return changed

    def __str__(self) -> str:
        changed = self.changed_options()
        if not changed:
            return self.name
        body = " ".join(f"{k}={format_value(v)}" for k, v in sorted(changed.items()))
        return f"{self.name}{{{body}}}"


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# -- registry ----------------------------------------------------------------------------
_registered: dict[str, type[Pass]] = {}
_entry_points: dict[str, Any] | None = None


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Make ``cls`` available by its ``name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise IrtoolError(f"{cls!r} is not a Pass subclass")
    params = cls.__dict__.get("__dataclass_params__")
    if params is None or not params.frozen:
        raise IrtoolError(f"pass class {cls.__name__} must be a frozen dataclass")
    if not _PASS_NAME.fullmatch(cls.name or ""):
        raise IrtoolError(
            f"pass class {cls.__name__} has an invalid name {cls.name!r} (lower-case words joined by '-')"
        )
    existing = _registered.get(cls.name)
    if existing is not None and existing is not cls:
        raise IrtoolError(f"pass '{cls.name}' is registered twice ({existing.__name__} and {cls.__name__})")
    _registered[cls.name] = cls
    return cls


def _plugin_entry_points() -> dict[str, Any]:
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        _entry_points = {ep.name: ep for ep in entry_points(group=PASS_ENTRY_POINT_GROUP)}
    return _entry_points


def pass_names() -> list[str]:
    """Every pass name known, without importing any pass."""
    return sorted(set(BUILTIN_PASSES) | set(_registered) | set(_plugin_entry_points()))


def _import_reference(reference: str) -> Any | None:
    """Import ``module:attribute``; None when the module itself does not exist."""
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    return getattr(module, attribute)


def get_pass(name: str) -> type[Pass]:
    """The pass class called ``name``; an unknown name gets a did-you-mean error."""
    if name in _registered:
        return _registered[name]
    if name in BUILTIN_PASSES:
        reference = BUILTIN_PASSES[name]
        cls = _import_reference(reference)
        if cls is None:
            raise IrtoolError(f"pass '{name}' is not available: module {reference.partition(':')[0]} is missing")
    elif name in _plugin_entry_points():
        cls = _plugin_entry_points()[name].load()
    else:
        raise IrtoolError(f"unknown pass '{name}'{_did_you_mean(name, pass_names())}")
    if getattr(cls, "name", None) != name:
        raise IrtoolError(f"pass '{name}' resolves to {cls!r}, whose name is {getattr(cls, 'name', None)!r}")
    return register_pass(cls)


def load_all_passes() -> tuple[dict[str, type[Pass]], dict[str, str]]:
    """Every pass that can be imported, and for the others why not."""
    loaded, unavailable = {}, {}
    for name in pass_names():
        try:
            loaded[name] = get_pass(name)
        except IrtoolError as exc:
            unavailable[name] = str(exc)
    return loaded, unavailable


# -- analyses ----------------------------------------------------------------------------
Analysis = Callable[..., Any]
"""An analysis is a callable ``f(graph)`` (a function, or a class built from the graph).

If it declares a ``ctx`` parameter it also receives the ``PassContext`` (data-driven analyses)."""

_analyses: dict[str, Analysis] = {}


def register_analysis(name: str, analysis: Analysis) -> Analysis:
    _analyses[name] = analysis
    return analysis


def get_analysis(name: str) -> Analysis:
    if name in _analyses:
        return _analyses[name]
    known = sorted(set(_analyses) | set(BUILTIN_ANALYSES))
    if name not in BUILTIN_ANALYSES:
        raise IrtoolError(f"unknown analysis '{name}'{_did_you_mean(name, known)}")
    analysis = _import_reference(BUILTIN_ANALYSES[name])
    if analysis is None:
        raise IrtoolError(f"analysis '{name}' is not available: {BUILTIN_ANALYSES[name]} is missing")
    return register_analysis(name, analysis)


def _wants_ctx(analysis: Analysis) -> bool:
    try:
        return "ctx" in inspect.signature(analysis).parameters
    except (TypeError, ValueError):
        return False


class PassContext:
    """What passes share during one pipeline run: the analysis cache, user data and a logger.

    - ``inputs``: an example feed (graph input name -> array), for passes that run the model.
    - ``data``: an iterable of feeds for data-driven passes (calibration, activation criteria).
    - ``analysis(key)``: an analysis result for the current graph, computed once per graph
      version. The manager invalidates the cache when a pass reports ``modified``; a pass that
      edits the graph and then asks for an analysis again must call ``invalidate()`` itself.
    """

    def __init__(
        self,
        *,
        inputs: Mapping[str, Any] | None = None,
        data: Iterable[Mapping[str, Any]] | None = None,
        logger: logging.Logger | None = None,
    ):
        self.inputs = inputs
        self.data = data
        self.logger = logger or logging.getLogger("irtool.passes")
        self.graph: Graph | None = None
        self.version = 0
        self._cache: dict[tuple[int, Any], tuple[Graph, Any]] = {}
        self.computed: list[str] = []
        """Names of the analyses computed (not served from the cache), in order; for reports and tests."""

    def analysis(self, key: str | Analysis, graph: Graph | None = None) -> Any:
        graph = graph if graph is not None else self.graph
        if graph is None:
            raise IrtoolError("PassContext.analysis needs a graph: none is being run")
        analysis = get_analysis(key) if isinstance(key, str) else key
        cache_key = (id(graph), analysis)
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] is graph:
            return hit[1]
        result = analysis(graph, ctx=self) if _wants_ctx(analysis) else analysis(graph)
        self._cache[cache_key] = (graph, result)
        self.computed.append(key if isinstance(key, str) else getattr(key, "__name__", repr(key)))
        return result

    def invalidate(self) -> None:
        self._cache.clear()
        self.version += 1


# -- manager -----------------------------------------------------------------------------
@dataclass
class PassRecord:
    """One execution of one pass."""

    spec: str
    modified: bool
    seconds: float
    log: list[str]
    iteration: int = 0


@dataclass
class PipelineResult:
    graph: Graph
    modified: bool
    records: list[PassRecord]
    converged: bool = True

    def timing_report(self) -> str:
        total = sum(r.seconds for r in self.records) or 1e-12
        width = max((len(r.spec) for r in self.records), default=4)
        lines = [f"{'pass':<{width}}  {'seconds':>9}  {'share':>6}"]
        for r in self.records:
            lines.append(f"{r.spec:<{width}}  {r.seconds:9.4f}  {100 * r.seconds / total:5.1f}%")
        lines.append(f"{'total':<{width}}  {total:9.4f}")
        return "\n".join(lines)


def _load_verifier() -> Callable[[Graph], None] | None:
    try:
        from ..ir.verify import verify
    except ModuleNotFoundError as exc:
        if exc.name != "irtool.ir.verify":
            raise
        return None
    return verify


def _print_graph(graph: Graph) -> str:
    try:
        from ..ir.text import print_graph
    except ModuleNotFoundError as exc:
        if exc.name != "irtool.ir.text":
            raise
        return f"{graph!r} (the textual IR printer is not available)"
    return print_graph(graph)


class PassManager:
    """Runs passes in order; optionally verifies, prints and times each, or iterates to a fixpoint.

    ``passes`` is a list of passes or a pipeline string. With ``fixpoint`` the whole pipeline
    repeats until no pass modifies the graph (at most ``max_iterations`` rounds).
    """

    def __init__(
        self,
        passes: Sequence[Pass] | str,
        *,
        verify: bool = False,
        print_ir_after_all: bool = False,
        timing: bool = False,
        fixpoint: bool = False,
        max_iterations: int = 10,
        stream: TextIO | None = None,
    ):
        if isinstance(passes, str):
            from .pipeline import parse_pipeline

            passes = parse_pipeline(passes)
        self.passes = list(passes)
        self.verify = verify
        self.print_ir_after_all = print_ir_after_all
        self.timing = timing
        self.fixpoint = fixpoint
        self.max_iterations = max_iterations
        self.stream = stream

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PipelineResult:
        ctx = ctx or PassContext()
        verifier = _load_verifier() if self.verify else None
        if self.verify and verifier is None:
            ctx.logger.warning("irtool.ir.verify is not available; IR verification skipped")
        records: list[PassRecord] = []
        rounds = self.max_iterations if self.fixpoint else 1
        any_modified = False
        converged = not self.fixpoint
        for iteration in range(rounds):
            round_modified = False
            for p in self.passes:
                graph, record = self._run_one(p, graph, ctx, verifier, iteration)
                records.append(record)
                round_modified |= record.modified
            any_modified |= round_modified
            if not round_modified:
                converged = True
                break
        if not converged:
            ctx.logger.warning("pipeline %s did not reach a fixpoint in %d rounds", self, rounds)
        result = PipelineResult(graph, any_modified, records, converged)
        if self.timing:
            print(result.timing_report(), file=self._out())
        return result

    def _run_one(
        self, p: Pass, graph: Graph, ctx: PassContext, verifier: Callable[[Graph], None] | None, iteration: int
    ) -> tuple[Graph, PassRecord]:
        spec = str(p)
        ctx.graph = graph
        start = time.perf_counter()
        try:
            p.requires(graph)
            result = p.run(graph, ctx)
        except IrtoolError as exc:
            where = f"{spec}: {exc.where}" if exc.where else spec
            raise IrtoolError(exc.message, where=where) from exc
        seconds = time.perf_counter() - start
        if not isinstance(result, PassResult):
            raise TypeError(f"pass {spec} returned {type(result).__name__}, not PassResult")
        if result.modified or result.graph is not graph:
            ctx.invalidate()
        graph = result.graph
        ctx.graph = graph
        for line in result.log:
            ctx.logger.info("%s: %s", p.name, line)
        if verifier is not None:
            try:
                verifier(graph)
                p.ensures(graph)
            except IrtoolError as exc:
                raise IrtoolError(f"IR is invalid after {spec}: {exc}") from exc
        if self.print_ir_after_all:
            print(f"// -----// IR after {spec} //----- //", file=self._out())
            print(_print_graph(graph), file=self._out())
        return graph, PassRecord(spec, result.modified, seconds, list(result.log), iteration)
