"""Pipeline strings, pass options, the registry, the analysis cache and the pass manager."""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from typing import Literal

import numpy as np
import pytest

from irtool.ir import DType, Graph, IrtoolError, TensorType
from irtool.passes import base
from irtool.passes.base import Pass, PassContext, PassManager, PassResult, get_pass, register_pass
from irtool.passes.pipeline import format_pipeline, parse_pipeline, parse_pipeline_spec


class Rounding(enum.Enum):
    nearest = "nearest"
    down = "down"


@register_pass
@dataclass(frozen=True)
class OptionsPass(Pass):
    """A pass with one option of every kind, for the parser tests."""

    name = "test-options"
    sparsity: float = field(default=0.5, metadata={"help": "fraction of channels to remove"})
    criterion: Literal["l1", "l2", "fpgm"] = "l2"
    round_to: int = 1
    global_scope: bool = False
    exclude: tuple[str, ...] = ()
    ratios: tuple[float, ...] = (0.25,)
    rounding: Rounding = Rounding.nearest
    label: str | None = None
    path: str = "out"

    def __post_init__(self):
        if not 0 <= self.sparsity < 1:
            raise IrtoolError(f"sparsity {self.sparsity} is outside [0, 1)")

    def run(self, graph, ctx):
        return PassResult(graph, False)


@register_pass
@dataclass(frozen=True)
class RequiredPass(Pass):
    """A pass with a required option."""

    name = "test-required"
    target: int

    def run(self, graph, ctx):
        return PassResult(graph, False)


def _chain_graph(length: int = 3) -> Graph:
    graph = Graph()
    value = graph.add_input("x", TensorType(DType.float32, (1, 4)))
    for i in range(length):
        value = graph.add_node("Relu", [value], name=f"relu{i}").outputs[0]
    graph.outputs = [value]
    return graph


@register_pass
@dataclass(frozen=True)
class PopRelu(Pass):
    """Removes the last Relu before the output, one per run (for fixpoint tests)."""

    name = "test-pop-relu"

    def run(self, graph, ctx):
        out = graph.outputs[0]
        node = out.producer
        if node is None:
            return PassResult(graph, False)
        graph.outputs = [node.inputs[0]]
        graph.remove_nodes([node])
        return PassResult(graph, True, [f"removed {node.name}"])


@register_pass
@dataclass(frozen=True)
class BreakGraph(Pass):
    """Points the graph output at a value that is not in the graph."""

    name = "test-break"

    def run(self, graph, ctx):
        stray = Graph().add_input("stray", TensorType(DType.float32, (1,)))
        graph.outputs = [stray]
        return PassResult(graph, True)


# -- parsing and printing -------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, canonical",
    [
        ("test-options", "test-options"),
        ("test-options{}", "test-options"),
        ("test-options{sparsity=0.5}", "test-options"),
        ("test-options{sparsity=0.3 criterion=fpgm}", "test-options{criterion=fpgm sparsity=0.3}"),
        ("test-options{round-to=8 global-scope=true}", "test-options{global-scope=true round-to=8}"),
        ("test-options{exclude=[fc,layer4.*]}", "test-options{exclude=[fc,layer4.*]}"),
        ("test-options{exclude=[]}", "test-options"),
        ("test-options{exclude=fc}", "test-options{exclude=[fc]}"),
        ("test-options{ratios=[0.1, 1e-3]}", "test-options{ratios=[0.1,0.001]}"),
        ("test-options{rounding=down label=none}", "test-options{rounding=down}"),
        ("test-options{label='two words' path=\"it's\"}", "test-options{label='two words' path=\"it's\"}"),
        ("  test-options { sparsity = 0.25 } , test-required{target=3}", "test-options{sparsity=0.25},test-required{target=3}"),
    ],
)
def test_canonical_spec_round_trips(text, canonical):
    passes = parse_pipeline(text)
    assert format_pipeline(passes) == canonical
    assert parse_pipeline(canonical) == passes
    assert format_pipeline(parse_pipeline(canonical)) == canonical


def test_options_get_their_declared_types():
    (p,) = parse_pipeline("test-options{sparsity=0.3 round-to=8 global-scope=yes exclude=[a,b] rounding=down label=x}")
    assert p.sparsity == 0.3 and p.round_to == 8 and p.global_scope is True
    assert p.exclude == ("a", "b") and p.rounding is Rounding.down and p.label == "x"
    assert str(p) == "test-options{exclude=[a,b] global-scope=true label=x round-to=8 rounding=down sparsity=0.3}"


def test_str_of_constructed_pass_matches_parsed_one():
    p = OptionsPass(sparsity=0.75, exclude=("fc",))
    assert str(p) == "test-options{exclude=[fc] sparsity=0.75}"
    assert parse_pipeline(str(p)) == [p]


def test_syntax_alone_is_available():
    assert parse_pipeline_spec("a,b{k=v l=[1,2]}") == [("a", {}), ("b", {"k": "v", "l": ["1", "2"]})]


@pytest.mark.parametrize(
    "text, message",
    [
        ("test-options{sparsity=abc}", "test-options: option 'sparsity' expects a float, got 'abc'"),
        ("test-options{round-to=1.5}", "test-options: option 'round-to' expects an int, got '1.5'"),
        ("test-options{global-scope=maybe}", "test-options: option 'global-scope' expects true or false, got 'maybe'"),
        ("test-options{criterion=l3}", "test-options: option 'criterion' expects one of l1, l2, fpgm, got 'l3'"),
        ("test-options{rounding=up}", "test-options: option 'rounding' expects one of nearest, down, got 'up'"),
        ("test-options{sparsity=[1,2]}", "test-options: option 'sparsity' expects a float, got a list"),
        ("test-options{ratios=[0.1,x]}", "test-options: option 'ratios' expects a float, got 'x'"),
        ("test-options{sparsity=1.2}", "test-options: sparsity 1.2 is outside [0, 1)"),
        ("test-required", "test-required: option 'target' is required"),
        ("test-optoins", "unknown pass 'test-optoins' (did you mean 'test-options'?)"),
        ("zzz", "unknown pass 'zzz'"),
        (
            "test-options{sparsty=0.1}",
            "unknown option 'sparsty' for pass test-options (did you mean 'sparsity'?); options: "
            "criterion, exclude, global-scope, label, path, ratios, round-to, rounding, sparsity",
        ),
        ("", "the pipeline is empty; give passes like 'fold-bn,dce'"),
        ("dce,", "malformed pipeline at column 5: expected a pass name, found the end (in 'dce,')"),
        (",dce", "malformed pipeline at column 1: expected a pass name, found ',' (in ',dce')"),
        ("dce dce", "malformed pipeline at column 5: expected ',' between passes, found 'd' (in 'dce dce')"),
        (
            "test-options{sparsity=0.5",
            "malformed pipeline at column 26: expected '}' to close the options of 'test-options' (in 'test-options{sparsity=0.5')",
        ),
        (
            "test-options{sparsity=0.1,criterion=l1}",
            "malformed pipeline at column 26: options are separated by spaces, not commas",
        ),
        ("test-options{sparsity}", "malformed pipeline at column 22: expected '=' after option 'sparsity', found '}'"),
        ("test-options{sparsity=}", "malformed pipeline at column 23: expected a value for option 'sparsity', found '}'"),
        ("test-options{exclude=[a,b}", "malformed pipeline at column 26: expected ',' or ']' in the list for option 'exclude'"),
        ("test-options{path='abc}", "malformed pipeline at column 19: unterminated ' string"),
        ("test-options{path=a path=b}", "malformed pipeline at column 21: option 'path' is given twice"),
        ("test-options{=1}", "malformed pipeline at column 14: expected an option name or '}' for 'test-options', found '='"),
    ],
)
def test_errors_say_what_and_where(text, message):
    with pytest.raises(IrtoolError) as info:
        parse_pipeline(text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


# -- registry ---------------------------------------------------------------------------------
def test_builtin_passes_are_found_by_name():
    assert get_pass("dce").name == "dce"
    assert get_pass("const-fold").name == "const-fold"
    assert get_pass("fold-bn").name == "fold-bn"
    assert {"dce", "const-fold", "fold-bn", "prune", "quantize"} <= set(base.pass_names())


def test_registering_a_different_class_under_a_taken_name_fails():
    @dataclass(frozen=True)
    class Impostor(Pass):
        name = "dce"

    with pytest.raises(IrtoolError, match="registered twice"):
        register_pass(Impostor)


def test_pass_classes_must_be_frozen_dataclasses_with_valid_names():
    class NotDataclass(Pass):
        name = "test-nodc"

    @dataclass(frozen=True)
    class BadName(Pass):
        name = "Bad_Name"

    with pytest.raises(IrtoolError, match="frozen dataclass"):
        register_pass(NotDataclass)
    with pytest.raises(IrtoolError, match="invalid name"):
        register_pass(BadName)


@dataclass(frozen=True)
class PluginPass(Pass):
    """A pass shipped by another package through the irtool.passes entry-point group."""

    name = "test-plugin"
    level: int = 1

    def run(self, graph, ctx):
        return PassResult(graph, False, [f"level {self.level}"])


def test_entry_point_passes_load_lazily(monkeypatch):
    entry = EntryPoint("test-plugin", f"{__name__}:PluginPass", "irtool.passes")
    monkeypatch.setattr(base, "_entry_points", {"test-plugin": entry})
    monkeypatch.setattr(base, "_registered", dict(base._registered))
    assert "test-plugin" in base.pass_names()
    (p,) = parse_pipeline("test-plugin{level=3}")
    assert isinstance(p, PluginPass) and p.level == 3


# -- analysis cache ---------------------------------------------------------------------------
def test_analysis_is_computed_once_per_graph_version():
    calls = []

    def count_nodes(graph):
        calls.append(1)
        return len(graph)

    graph = _chain_graph(3)
    ctx = PassContext()
    assert ctx.analysis(count_nodes, graph) == 3
    assert ctx.analysis(count_nodes, graph) == 3
    assert len(calls) == 1
    ctx.invalidate()
    assert ctx.analysis(count_nodes, graph) == 3
    assert len(calls) == 2


def test_manager_invalidates_analyses_after_a_modifying_pass():
    seen = []

    @dataclass(frozen=True)
    class CountNodes(Pass):
        name = "test-count"

        def run(self, graph, ctx):
            seen.append(ctx.analysis("cost").node_count)
            return PassResult(graph, False)

    graph = _chain_graph(3)
    ctx = PassContext()
    PassManager([CountNodes(), CountNodes(), PopRelu(), CountNodes()]).run(graph, ctx)
    assert seen == [3, 3, 2]
    assert ctx.computed == ["cost", "cost"]


def test_analysis_receives_the_context_when_it_asks():
    def needs_data(graph, ctx):
        return float(np.sum(ctx.inputs["x"]))

    ctx = PassContext(inputs={"x": np.ones((2, 3))})
    assert ctx.analysis(needs_data, _chain_graph(1)) == 6.0


def test_unknown_analysis_is_an_error():
    with pytest.raises(IrtoolError, match=r"unknown analysis 'cots' \(did you mean 'cost'\?\)"):
        PassContext().analysis("cots", _chain_graph(1))


# -- manager ----------------------------------------------------------------------------------
def test_manager_records_logs_and_timing():
    graph = _chain_graph(3)
    out = io.StringIO()
    result = PassManager("test-pop-relu,test-pop-relu", timing=True, stream=out).run(graph)
    assert [r.log for r in result.records] == [["removed relu2"], ["removed relu1"]]
    assert all(r.seconds >= 0 for r in result.records)
    assert result.modified and len(result.graph) == 1
    report = out.getvalue()
    assert report.count("test-pop-relu") == 2 and "total" in report


def test_fixpoint_repeats_until_nothing_changes():
    graph = _chain_graph(4)
    result = PassManager([PopRelu()], fixpoint=True).run(graph)
    assert len(graph) == 0
    assert [r.modified for r in result.records] == [True, True, True, True, False]
    assert result.converged


def test_fixpoint_gives_up_after_max_iterations():
    graph = _chain_graph(5)
    result = PassManager([PopRelu()], fixpoint=True, max_iterations=2).run(graph)
    assert len(graph) == 3 and not result.converged


def test_print_ir_after_all_prints_each_pass():
    out = io.StringIO()
    PassManager("test-pop-relu,dce", print_ir_after_all=True, stream=out).run(_chain_graph(2))
    text = out.getvalue()
    assert "IR after test-pop-relu" in text and "IR after dce" in text
    assert text.count("Relu(") == 2  # one relu left, printed twice


def test_verify_reports_the_pass_that_broke_the_graph():
    with pytest.raises(IrtoolError, match=r"(?s)IR is invalid after test-break: .*graph output 0 %stray"):
        PassManager("test-pop-relu,test-break,dce", verify=True).run(_chain_graph(2))


def test_errors_inside_a_pass_name_the_pass():
    @dataclass(frozen=True)
    class Fails(Pass):
        name = "test-fails"
        level: int = 1

        def run(self, graph, ctx):
            raise IrtoolError("cannot do it", where="node 'relu0'")

    with pytest.raises(IrtoolError) as info:
        PassManager([Fails(level=2)]).run(_chain_graph(1))
    assert str(info.value) == "test-fails{level=2}: node 'relu0': cannot do it"
