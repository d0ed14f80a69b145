"""Load a model given on the command line and save a graph, choosing the frontend by the spec;
load the data given for it.

A model spec is an ONNX file (``model.onnx``), a ``torch.export`` archive (``model.pt2``), or a
PyTorch factory ``package.module:factory`` (with an input shape). Data is an ``.npz`` file with
one array per model input, keyed by input name, and optionally ``labels``; a single-input model
also takes a file holding one array (``.npy``, or an ``.npz`` with one array under any name).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..ir.core import Graph, Value
from ..ir.errors import IrtoolError
from ..passes.data import DEFAULT_BATCH_SIZE, ArrayDataset

DATA_SUFFIXES = (".npz", ".npy")
LABELS = "labels"
"""The array of an ``.npz`` that holds labels (unless the model has an input of that name)."""
_NUMPY_MAGIC = (b"PK", b"\x93NUMPY")
"""How ``.npz`` (a zip archive) and ``.npy`` files begin; ``np.load`` would try anything else as a pickle."""
_KINDS = {"f": "f", "i": "iu", "u": "iu", "b": "b"}
"""Array dtype kinds an input of each kind takes (a float input takes any float array, and so on)."""


def is_factory_spec(spec: str) -> bool:
    return ":" in spec and not os.path.exists(spec) and not spec.endswith((".onnx", ".pt2"))


class InputShape(tuple):
    """An input's dims, with the element type a PyTorch factory's example input gets
    (``dtype``: float32 unless the shape said otherwise, as ``1x16:int64`` does for token ids)."""

    dtype: str = "float32"


INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")
"""Element types ``--input-shape`` takes after a colon."""


def parse_shape(text: str) -> InputShape:
    """``1x3x224x224`` or ``1,3,224,224`` -> (1, 3, 224, 224); ``1x16:int64`` -> (1, 16) with
    dtype int64."""
    dims_text, _, dtype = text.partition(":")
    try:
        dims = InputShape(int(d) for d in dims_text.replace(",", "x").split("x") if d)
    except ValueError:
        raise IrtoolError(f"input shape '{text}' is not like 1x3x224x224 or 1x16:int64") from None
    if not dims or any(d <= 0 for d in dims):
        raise IrtoolError(f"input shape '{text}' is not like 1x3x224x224 or 1x16:int64")
    if dtype:
        if dtype not in INPUT_DTYPES:
            raise IrtoolError(f"input shape '{text}': element type '{dtype}' is not one of {', '.join(INPUT_DTYPES)}")
        dims.dtype = dtype
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



def load_data(path: str | os.PathLike, graph: Graph) -> ArrayDataset:
    """The arrays in ``path`` as a dataset for ``graph``, checked as ``model_data`` does."""
    return model_data(read_arrays(path), graph, name=str(path))


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array in an ``.npz`` by name, or the one array of an ``.npy`` (as ``arr_0``, the
    name ``np.savez`` gives a lone array). Nothing is unpickled."""
    where = f"data '{path}'"
    path = Path(path)
    if not path.exists():
        raise IrtoolError("does not exist", where=where)
    if path.is_dir() or path.suffix not in DATA_SUFFIXES:
        raise IrtoolError("is not a .npz or .npy file", where=where)
    try:
        with open(path, "rb") as stream:
            if not stream.read(6).startswith(_NUMPY_MAGIC):
                raise IrtoolError(f"is not a NumPy {path.suffix} file", where=where)
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = {"arr_0": loaded}
        else:
            with loaded:
                arrays = {name: loaded[name] for name in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise IrtoolError(f"cannot read it as {path.suffix}: {' '.join(str(exc).split())}", where=where) from None
    if not arrays:
        raise IrtoolError("holds no arrays", where=where)
    return arrays


def model_data(arrays: Mapping[str, Any], graph: Graph, *, name: str = "arrays") -> ArrayDataset:
    """``arrays`` (input name -> rows, and optionally ``labels``) as a dataset for ``graph``,
    after checking that every input has an array of its rank, static dims and dtype kind."""
    where = f"data '{name}'"
    names = [v.name for v in graph.inputs]
    held = ", ".join(sorted(map(str, arrays))) or "none"
    arrays = {k: np.asarray(a) for k, a in arrays.items()}
    labels = arrays.pop(LABELS, None) if LABELS not in names else None
    if len(names) == 1 and len(arrays) == 1:
        arrays = {names[0]: arrays.popitem()[1]}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise IrtoolError(f"has no array for input '{missing[0]}' (arrays: {held})", where=where)
    unknown = [k for k in arrays if k not in names]
    if unknown:
        listed = ", ".join(names)
        raise IrtoolError(f"array '{unknown[0]}' is neither a model input ({listed}) nor '{LABELS}'", where=where)
    inputs = [_checked_input(arrays[v.name], v, where) for v in graph.inputs]
    rows = {f"input '{v.name}'": len(a) for v, a in zip(graph.inputs, inputs)}
    if labels is not None:
        rows[LABELS] = len(labels) if labels.ndim else 0
    if len(set(rows.values())) != 1:
        counts = ", ".join(f"{k} {n}" for k, n in rows.items())
        raise IrtoolError(f"arrays have different row counts: {counts}", where=where)
    count = next(iter(rows.values()))
    if not count:
        raise IrtoolError("holds no rows", where=where)
    batch = _fixed_batch(graph)
    if batch and count % batch:
        raise IrtoolError(f"has {count} rows; the model's batch is fixed at {batch}: give a multiple of it", where=where)
    batch_size = batch * max(1, DEFAULT_BATCH_SIZE // batch) if batch else DEFAULT_BATCH_SIZE
    return ArrayDataset(inputs, labels, batch_size=batch_size, name=name)


def _checked_input(array: np.ndarray, value: Value, where: str) -> np.ndarray:
    """The rows for input ``value``, cast to its dtype; an error when the shape or kind differs."""
    if value.type is None:
        return array
    shape = value.type.shape
    if shape is not None:
        fits = array.ndim == len(shape) and array.ndim > 0
        fits = fits and all(not isinstance(d, (int, np.integer)) or d == n for d, n in zip(shape[1:], array.shape[1:]))
        if not fits:
            takes = ", ".join(["N", *(str(d) for d in shape[1:])]) if shape else ""
            problem = f"array '{value.name}' has shape {tuple(array.shape)}, input '{value.name}' takes ({takes}) for N rows"
            raise IrtoolError(problem, where=where)
    dtype = value.type.dtype.numpy
    if array.dtype.kind not in _KINDS.get(dtype.kind, dtype.kind):
        problem = f"array '{value.name}' has dtype {array.dtype}, input '{value.name}' takes {dtype}"
        raise IrtoolError(problem, where=where)
    return array.astype(dtype, copy=False)


def _fixed_batch(graph: Graph) -> int | None:
    """The graph's static batch (the first dim of its inputs), if it has one."""
    dims = {v.type.shape[0] for v in graph.inputs if v.type is not None and v.type.shape}
    fixed = [int(d) for d in dims if isinstance(d, (int, np.integer))]
    return min(fixed) if fixed else None
