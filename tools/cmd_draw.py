"""``irtool draw MODEL -o graph.svg [--groups]``: the graph as Graphviz DOT, rendered to SVG or
PNG by Graphviz's ``dot`` when it is installed.

Nodes are labelled with their layer name and op; edges with the shape they carry. With
``--groups`` every channel group gets its own colour (blocked groups are grey and dashed) and a
legend lists the groups. The DOT file is always written (``graph.dot`` beside ``graph.svg``).
"""

from __future__ import annotations

import argparse
import colorsys
import shutil
import subprocess
from pathlib import Path

from ..backends.files import atomic_write_bytes, atomic_write_text
from ..ir.core import Graph, Value
from ..ir.errors import IrtoolError
from .cmd_show import add_input_shape_argument, input_shapes
from .model_io import load_model

RENDERED = {".svg": "svg", ".png": "png"}
DOT_SUFFIXES = (".dot", ".gv")
BLOCKED_COLOUR = "#e0e0e0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX file, .pt2 archive or package.module:factory")
    parser.add_argument("-o", "--output", required=True, help="graph.dot, graph.svg or graph.png")
    parser.add_argument("--groups", action="store_true", help="colour the channel groups (shape computations are folded first)")
    add_input_shape_argument(parser)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(value: Value) -> str:
    if value.type is None or value.type.shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in value.type.shape)


def group_colours(count: int) -> list[str]:
    """Distinct pastel colours, one per group (golden-ratio hue steps)."""
    colours = []
    for k in range(count):
        r, g, b = colorsys.hls_to_rgb((k * 0.618033988749895) % 1.0, 0.78, 0.65)
        colours.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
    return colours


def graph_to_dot(graph: Graph, analysis=None) -> str:
    """DOT text for ``graph``; with a ``ChannelAnalysis``, nodes and edges coloured by group."""
    value_group: dict[Value, object] = {}
    colours: dict[int, str] = {}
    if analysis is not None:
        palette = group_colours(len(analysis.groups))
        for group in analysis.groups:
            colours[group.id] = palette[group.id] if group.prunable else BLOCKED_COLOUR
            for member in group.members:
                if not member.value.is_const:
                    value_group.setdefault(member.value, group)
    ids = {node: f"n{i}" for i, node in enumerate(graph.nodes)}
    lines = [
        f"digraph {_quote(graph.name or 'graph')} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=8];',
    ]
    for k, value in enumerate(graph.inputs):
        lines.append(f"  i{k} [shape=ellipse, label={_quote(value.name + chr(10) + _shape(value))}];")
    for k, value in enumerate(graph.outputs):
        lines.append(f"  o{k} [shape=ellipse, label={_quote(value.name + chr(10) + _shape(value))}];")
    for node, node_id in ids.items():
        label = f"{node.source or node.name}\n{node.qualified_op}"
        attrs = [f"label={_quote(label)}"]
        group = next((value_group[v] for v in node.outputs if v in value_group), None)
        if group is not None:
            attrs.append(f'fillcolor="{colours[group.id]}"')
            attrs.append(f"tooltip={_quote(f'group {group.id}: {group.name}, {group.channels} channels, {group.state()}')}")
            if not group.prunable:
                attrs.append('style="rounded,filled,dashed"')
        lines.append(f"  {node_id} [{', '.join(attrs)}];")
    sources = {v: f"i{k}" for k, v in enumerate(graph.inputs)}
    for node, node_id in ids.items():
        for value in node.outputs:
            sources[value] = node_id
    for node, node_id in ids.items():
        for value in dict.fromkeys(v for v in node.inputs if v is not None and not v.is_const):
            if value in sources:
                lines.append(f"  {sources[value]} -> {node_id} [{_edge_attrs(value, value_group, colours)}];")
    for k, value in enumerate(graph.outputs):
        if value in sources:
            lines.append(f"  {sources[value]} -> o{k} [{_edge_attrs(value, value_group, colours)}];")
    if analysis is not None and analysis.groups:
        rows = [f"{g.id}: {g.name} ({g.channels} ch, {g.state()}{'' if g.exact else ', approx'})" for g in analysis.groups]
        legend = "channel groups\\l" + "".join(_quote(row)[1:-1] + "\\l" for row in rows)
        lines.append(f'  legend [shape=note, fillcolor="#ffffff", label="{legend}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _edge_attrs(value: Value, value_group, colours) -> str:
    attrs = [f"label={_quote(_shape(value))}"]
    group = value_group.get(value)
    if group is not None:
        attrs.append(f'color="{colours[group.id]}", penwidth=2')
    return ", ".join(attrs)


def render(dot_path: Path, output: Path, fmt: str) -> None:
    """Render with Graphviz's ``dot``; a clear error when it is missing or fails."""
    program = shutil.which("dot")
    if program is None:
        raise IrtoolError(
            f"writing {output.name} needs Graphviz's 'dot' program, which is not on PATH; "
            f"the DOT file is at {dot_path} (install graphviz, or use -o {output.with_suffix('.dot').name})"
        )
    result = subprocess.run([program, f"-T{fmt}", str(dot_path)], capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise IrtoolError(f"dot could not render {dot_path}: {message[0] if message else f'exit status {result.returncode}'}")
    atomic_write_bytes(output, result.stdout)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    suffix = output.suffix.lower()
    if suffix not in RENDERED and suffix not in DOT_SUFFIXES:
        raise IrtoolError(f"output '{output}' must end in .dot, .svg or .png")
    graph = load_model(args.model, input_shapes(args))
    analysis = None
    if args.groups:
        from ..passes.dependency import analyze_channels
        from ..passes.oracle import prepare

        graph = prepare(graph)
        analysis = analyze_channels(graph)
    dot_path = output if suffix in DOT_SUFFIXES else output.with_suffix(".dot")
    atomic_write_text(dot_path, graph_to_dot(graph, analysis))
    if suffix in RENDERED:
        render(dot_path, output, RENDERED[suffix])
    print(f"wrote {output}" + (f" and {dot_path}" if dot_path != output else ""))
    return 0
