"""Load a model given on the command line and save a graph, choosing the frontend by the spec.

A model spec is an ONNX file (``model.onnx``), a ``torch.export`` archive (``model.pt2``), or a
PyTorch factory ``package.module:factory`` (with an input shape).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..ir.core import Graph
from ..ir.errors import IrtoolError


def is_factory_spec(spec: str) -> bool:
    return ":" in spec and not os.path.exists(spec) and not spec.endswith((".onnx", ".pt2"))


def parse_shape(text: str) -> tuple[int, ...]:
    """``1x3x224x224`` or ``1,3,224,224`` -> (1, 3, 224, 224)."""
    try:
        dims = tuple(int(d) for d in text.replace(",", "x").split("x") if d)
    except ValueError:
        raise IrtoolError(f"input shape '{text}' is not like 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise IrtoolError(f"input shape '{text}' is not like 1x3x224x224")
    return dims


def load_model(spec: str, input_shapes: list[tuple[int, ...]] | None = None) -> Graph:
    """Lower the model named by ``spec`` into the IR, with every type the registry can infer."""
    from ..ir.shapes import infer_shapes

    graph = _lower(spec, input_shapes)
    try:
        infer_shapes(graph, overwrite=False)
    except IrtoolError:
        pass  # the frontend's own types stand; passes that need more report it themselves
    return graph


def _lower(spec: str, input_shapes: list[tuple[int, ...]] | None) -> Graph:
    if is_factory_spec(spec):
        from ..frontends.torch import load_factory

        return load_factory(spec, input_shapes)
    path = Path(spec)
    if not path.exists():
        raise IrtoolError(f"model '{spec}' does not exist")
    if path.is_dir():
        raise IrtoolError(f"model '{spec}' is a folder, not a model file")
    if path.suffix == ".pt2":
        from ..frontends.torch import load_pt2

        return load_pt2(path)
    from ..frontends.onnx import load_onnx

    return load_onnx(path)


def save_model(graph: Graph, path: str | os.PathLike) -> Path:
    """Write the graph as ONNX (the only file format we emit from the CLI), atomically."""
    from ..backends.onnx import save_onnx

    return save_onnx(graph, path)
