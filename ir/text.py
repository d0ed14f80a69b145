"""The IR's textual form: an MLIR-like listing that prints and parses back to the same graph.

```
graph @main(%input: tensor<Nx3x64x64xfloat32>) -> (%output) opset 18 {
  const %conv1.weight : tensor<64x3x7x7xfloat32>
  const %shape_0 = dense<[1, -1]> : tensor<2xint64>
  %conv_out = Conv(%input, %conv1.weight, <none>) {group = 1, pads = [3, 3, 3, 3]} : tensor<Nx64x32x32xfloat32>  loc("conv1") name("Conv_0")
  %y = com.microsoft::FusedConv(%conv_out) : ?  name("fc")
}
```

Parameters are referenced by name; their data live beside the text (``save_text`` writes an
``.npz`` file) and are handed to ``parse_graph`` as a mapping. Constants of at most
``INLINE_LIMIT`` elements (and no NaN) are printed inline as ``dense<...>`` literals, as are
tensor attributes; floats print with the fewest digits that give back their exact bits. Names
that are not plain identifiers are quoted (``%"layer1.0/conv:0"``); symbolic dims print as their
names, unknown dims as ``?``, an unknown rank as ``tensor<*xfloat32>`` and a missing type as
``?``. Graph attributes of opaque ONNX ops are bytes, printed as ``onnx_graph<"base64">``; other
protobuf messages they hold (``TypeProto``) as ``proto<"onnx.TypeProto", "base64">``. ``//``
starts a comment, so FileCheck files parse as they are. ``meta`` dicts are not printed: they
hold analysis caches, not meaning.

Nodes must appear after the values they use (the graph's topological order).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .core import Graph, Node, Value
from .errors import IrtoolError
from .types import DType, TensorType

INLINE_LIMIT = 16
"""Constants with at most this many elements are printed inline."""

_BARE_NAME = re.compile(r"[A-Za-z0-9_.]+\Z")
_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_BARE_DIM = re.compile(r"[A-Za-wyz_][A-Za-wyz0-9_]*\Z")  # no lowercase x: it separates dims
_RESERVED = frozenset(
    {"const", "true", "false", "none", "inf", "nan", "dense", "onnx_graph", "proto", "loc", "name"}
)


def _quote(text: str) -> str:
    if text.isascii():
        return json.dumps(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (undecodable bytes kept by "surrogateescape")
        return json.dumps(text)
    return json.dumps(text, ensure_ascii=False)


# == printing ===========================================================================
def _name(name: str) -> str:
    return name if _BARE_NAME.match(name) else _quote(name)


def _word(word: str) -> str:
    """An op, domain or attribute name: bare when it is an identifier, not a keyword."""
    return word if _BARE_WORD.match(word) and word not in _RESERVED else _quote(word)


def _dim(dim) -> str:
    if dim is None:
        return "?"
    if isinstance(dim, str):
        return dim if _BARE_DIM.match(dim) else _quote(dim)
    return str(int(dim))


def format_type(type: TensorType | None) -> str:
    """``tensor<Nx3x?xfloat32>``; ``?`` when there is no type at all."""
    if type is None:
        return "?"
    if type.shape is None:
        return f"tensor<*x{type.dtype.name}>"
    return "tensor<" + "".join(_dim(d) + "x" for d in type.shape) + type.dtype.name + ">"


def _scalar(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, str):
        return _quote(x)
    raise IrtoolError(f"cannot print tensor element {x!r} of type {type(x).__name__}")


def _nested(items: Any, leaf=_scalar) -> str:
    if isinstance(items, list):
        return "[" + ", ".join(_nested(x, leaf) for x in items) + "]"
    return leaf(items)


def _float_printer(scalar_type):
    """Print a float32/float16/bfloat16 element with the fewest digits that still give back its bits."""

    def text(x: float) -> str:
        short = str(scalar_type(x))
        if short in ("inf", "-inf", "nan") or scalar_type(float(short)) == scalar_type(x):
            return short
        return repr(x)

    return text


def format_dense(array: np.ndarray) -> str:
    """``dense<[[1.0, 2.0]]> : tensor<1x2xfloat32>``; parses back to the same bytes (NaN aside)."""
    array = np.asarray(array)
    return f"dense<{_dense_items(array)}> : {format_type(TensorType.of(array))}"


def _dense_items(array: np.ndarray) -> str:
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        leaf = repr if array.dtype == np.float64 else _float_printer(array.dtype.type)
        return _nested(array.astype(np.float64).tolist(), leaf)
    return _nested(array.tolist())


def _is_inline(array: np.ndarray) -> bool:
    """Small constants print inline, unless a NaN is in them (text would lose its sign and payload bits)."""
    if array.size > INLINE_LIMIT:
        return False
    if array.dtype == object:
        return all(isinstance(x, str) for x in array.flat)
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        return not np.isnan(array.astype(np.float32)).any()
    return True


def _attr(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_attr(v) for v in value) + "]"
    if isinstance(value, np.ndarray):
        return format_dense(value)
    if isinstance(value, (bytes, bytearray)):
        return f'onnx_graph<"{_b64(value)}">'
    if hasattr(value, "SerializeToString") and hasattr(value, "DESCRIPTOR"):
        return f'proto<"{value.DESCRIPTOR.full_name}", "{_b64(value.SerializeToString(deterministic=True))}">'
    raise IrtoolError(f"attribute value {value!r} of type {type(value).__name__} has no text form")


def _b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _value_ref(value: Value | None) -> str:
    return "<none>" if value is None else "%" + _name(value.name)


def _node_line(node: Node, types: dict) -> str:
    parts = ["  "]
    if node.outputs:
        parts.append(", ".join("%" + _name(v.name) for v in node.outputs))
        parts.append(" = ")
    if node.domain:
        parts.append(_word(node.domain) + "::")
    parts.append(_word(node.op))
    parts.append("(" + ", ".join(_value_ref(v) for v in node.inputs) + ")")
    if node.attrs:
        try:
            items = [f"{_word(k)} = {_attr(node.attrs[k])}" for k in sorted(node.attrs)]
        except IrtoolError as exc:
            raise IrtoolError(exc.message, where=f"node '{node.name}'") from None
        parts.append(" {" + ", ".join(items) + "}")
    out_types = [v.type for v in node.outputs]
    if any(t is not None for t in out_types):
        strs = []
        for t in out_types:
            s = types.get(t)
            if s is None:
                s = types[t] = format_type(t)
            strs.append(s)
        parts.append(" : " + ", ".join(strs))
    if node.source:
        parts.append(f"  loc({_quote(node.source)})")
    if node.name:
        parts.append(f"{' ' if node.source else '  '}name({_quote(node.name)})")
    return "".join(parts)


def print_graph(graph: Graph) -> str:
    """The graph's text; constants above ``INLINE_LIMIT`` elements are referenced by name only."""
    inputs = ", ".join(
        "%" + _name(v.name) + ("" if v.type is None else ": " + format_type(v.type)) for v in graph.inputs
    )
    outputs = ", ".join(_value_ref(v) for v in graph.outputs)
    header = f"graph @{_name(graph.name)}({inputs}) -> ({outputs}) opset {graph.opset}"
    if graph.opset_imports:
        imports = ", ".join(f"{_word(d)} = {v}" for d, v in graph.opset_imports.items())
        header += f" imports({imports})"
    lines = [header + " {"]
    for value in graph.constants.values():
        type_text = format_type(value.type if value.type is not None else TensorType.of(value.const))
        if value.const is not None and _is_inline(value.const):
            lines.append(f"  const %{_name(value.name)} = dense<{_dense_items(value.const)}> : {type_text}")
        else:
            lines.append(f"  const %{_name(value.name)} : {type_text}")
    types: dict = {}
    for node in graph.nodes:
        lines.append(_node_line(node, types))
    lines.append("}")
    return "\n".join(lines) + "\n"


def constant_data(graph: Graph) -> dict[str, np.ndarray]:
    """The constants the text references by name only: what ``parse_graph`` needs beside the text."""
    return {
        name: value.const
        for name, value in graph.constants.items()
        if value.const is not None and not _is_inline(value.const)
    }


# == parsing ============================================================================
_STR = r'"(?:[^"\\\n]|\\.)*"'
_TOKEN = re.compile(
    rf"""
    \s*(?://[^\n]*\s*)*          # blanks and comments before a token
    (
        tensor<(?:[^<>"\n]|{_STR})*>
      | [%@](?:[A-Za-z0-9_.]+|{_STR})
      | {_STR}
      | -?(?:inf|nan)(?![A-Za-z0-9_])
      | -?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?
      | <none>
      | [A-Za-z_][A-Za-z0-9_.]*
      | ->|::|[()\[\]{{}},=:<>?]
      | .
    )?
    """,
    re.VERBOSE | re.DOTALL,
)
_DIM_TOKEN = re.compile(rf"(?P<q>{_STR})|(?P<d>\?|-?\d+|[A-Za-wyz0-9_]+)|(?P<star>\*)")
_DIGITS = frozenset("0123456789")
_WORD_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


def _is_number(token: str) -> bool:
    # Tokens are already split by _TOKEN: one starting with a digit, or '-' and longer than
    # one character (but not '->'), can only be a number.
    first = token[:1]
    if first in _DIGITS:
        return True
    if first == "-":
        return len(token) > 1 and token != "->"
    return token == "inf" or token == "nan"


def _is_word(token: str) -> bool:
    return token[:1] in _WORD_START and not token.startswith("tensor<")


def _unquote(text: str) -> str:
    return json.loads(text) if "\\" in text else text[1:-1]


@lru_cache(maxsize=4096)
def _parse_type(text: str) -> TensorType:
    """Parse ``tensor<...>``; ValueError with the reason on malformed text."""
    inner = text[len("tensor<") : -1]
    dims: list = []
    pos = 0
    unknown_rank = False
    while True:
        m = _DIM_TOKEN.match(inner, pos)
        if m is None:
            raise ValueError(f"bad dimension at '{inner[pos:]}'")
        pos = m.end()
        at_end = pos == len(inner)
        if m.lastgroup == "d" and at_end:
            try:
                dtype = DType[m.group("d")]
            except KeyError:
                raise ValueError(f"unknown element type '{m.group('d')}'") from None
            if unknown_rank:
                if dims:
                    raise ValueError("'*' (unknown rank) cannot follow dimensions")
                return TensorType(dtype, None)
            return TensorType(dtype, tuple(dims))
        if at_end or inner[pos] != "x":
            raise ValueError(f"expected 'x' after '{m.group()}'")
        pos += 1
        if m.lastgroup == "star":
            unknown_rank = True
        elif m.lastgroup == "q":
            dims.append(_unquote(m.group("q")))
        else:
            word = m.group("d")
            if word == "?":
                dims.append(None)
            elif word.lstrip("-").isdigit():
                dims.append(int(word))
            elif _BARE_DIM.match(word):
                dims.append(word)
            else:
                raise ValueError(f"bad dimension '{word}'")


def _coerce_constant(array: np.ndarray, type: TensorType) -> np.ndarray:
    """Undo what .npz storage does to dtypes it cannot hold (bfloat16, strings)."""
    array = np.asarray(array)
    if type.dtype is DType.bfloat16 and array.dtype.itemsize == 2 and array.dtype.kind in "uV":
        return array.view(DType.bfloat16.numpy)
    if type.dtype is DType.string and array.dtype.kind == "U":
        return array.astype(object)
    return array


def _message_class(full_name: str):
    from google.protobuf import descriptor_pool, message_factory

    if full_name.startswith("onnx."):
        import onnx  # noqa: F401  (registers onnx's message types)
    try:
        return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))
    except KeyError:
        return None


def _number(text: str) -> int | float:
    if text.lstrip("-").isdigit():
        return int(text)
    return float(text)


class _Parser:
    """Recursive descent over the token texts; a token's kind is told by its first characters."""

    def __init__(self, text: str, constants: Mapping[str, np.ndarray], source: str):
        self.text = text
        self.source = source
        self.constants = constants
        self.tokens: list[str] = _TOKEN.findall(text)  # ends with "" (end of text)
        if not self.tokens or self.tokens[-1]:
            self.tokens.append("")
        self.i = 0
        self.values: dict[str, Value] = {}
        self.defined_at: dict[str, int] = {}

    # -- errors ----------------------------------------------------------------------
    def offset(self, index: int) -> int:
        """Where token ``index`` starts in the text (computed only for error messages)."""
        for k, m in enumerate(_TOKEN.finditer(self.text)):
            if k == index:
                return m.start(1) if m.group(1) else len(self.text)
        return len(self.text)

    def where(self, index: int) -> str:
        pos = self.offset(index)
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"{self.source}:{line}:{column}"

    def error(self, index: int, expected: str | None = None, *, message: str = ""):
        if not message:
            token = self.tokens[index]
            found = f"'{token[:40]}'" if token else "end of text"
            message = f"expected {expected}, found {found}"
        raise IrtoolError(message, where=self.where(index))

    # -- tokens ----------------------------------------------------------------------
    def next(self) -> str:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def accept(self, text: str) -> bool:
        if self.tokens[self.i] == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if self.tokens[self.i] != text:
            self.error(self.i, f"'{text}'")
        self.i += 1

    def items(self, close: str, parse_item) -> list:
        """Comma-separated items up to ``close`` (the opening bracket is already read)."""
        result: list = []
        if self.accept(close):
            return result
        while True:
            result.append(parse_item())
            if self.accept(close):
                return result
            if not self.accept(","):
                self.error(self.i, f"',' or '{close}'")

    def string(self, index: int) -> str:
        token = self.tokens[index]
        try:
            return _unquote(token[1:] if token[0] in "%@" else token)
        except ValueError as exc:
            self.error(index, message=f"bad string literal {token}: {exc}")

    def quoted(self, what: str) -> str:
        if self.tokens[self.i][:1] != '"':
            self.error(self.i, what)
        self.i += 1
        return self.string(self.i - 1)

    def sigil_name(self, sigil: str, what: str) -> str:
        """The name in a ``%name`` or ``@name`` token."""
        token = self.tokens[self.i]
        if token[:1] != sigil or len(token) < 2:
            self.error(self.i, what)
        self.i += 1
        return self.string(self.i - 1) if token[1:2] == '"' else token[1:]

    def word(self, what: str) -> str:
        token = self.tokens[self.i]
        if _is_word(token):
            self.i += 1
            return token
        if token[:1] == '"':
            return self.quoted(what)
        self.error(self.i, what)

    def integer(self, what: str) -> int:
        token = self.tokens[self.i]
        if not (_is_number(token) and token.lstrip("-").isdigit()):
            self.error(self.i, what)
        self.i += 1
        return int(token)

    def type(self) -> TensorType | None:
        token = self.next()
        if token == "?":
            return None
        if not token.startswith("tensor<"):
            self.error(self.i - 1, "a type like tensor<1x3xfloat32> or '?'")
        try:
            return _parse_type(token)
        except ValueError as exc:
            self.error(self.i - 1, message=f"bad type {token}: {exc}")

    # -- values ----------------------------------------------------------------------
    def define(self, what: str) -> str:
        index = self.i
        name = self.sigil_name("%", what)
        if name in self.defined_at:
            first = self.where(self.defined_at[name])
            self.error(index, message=f"value %{name} is defined twice (first at {first})")
        self.defined_at[name] = index
        return name

    def use(self) -> Value:
        index = self.i
        name = self.sigil_name("%", "an input like %x or <none>")
        value = self.values.get(name)
        if value is None:
            self.error(index, message=f"value %{name} is used before it is defined")
        return value

    # -- literals --------------------------------------------------------------------
    def literal(self) -> Any:
        """A dense element or nested list of them."""
        token = self.next()
        if _is_number(token):
            return _number(token)
        if token[:1] == '"':
            return self.string(self.i - 1)
        if token == "true" or token == "false":
            return token == "true"
        if token == "[":
            return self.items("]", self.literal)
        self.error(self.i - 1, "a number, string, true, false or '['")

    def dense(self) -> np.ndarray:
        """``<literal> : tensor<...>`` after the word ``dense``."""
        self.expect("<")
        start = self.i
        items = self.literal()
        self.expect(">")
        self.expect(":")
        type_index = self.i
        type = self.type()
        if type is None or not type.is_static:
            self.error(type_index, "a static tensor type for the dense literal")
        try:
            return np.array(items, dtype=type.dtype.numpy).reshape(type.shape)
        except (ValueError, TypeError, OverflowError) as exc:
            self.error(start, message=f"dense literal does not fit {format_type(type)}: {exc}")

    def attr_value(self) -> Any:
        token = self.tokens[self.i]
        if token == "dense":
            self.i += 1
            return self.dense()
        if token == "onnx_graph":
            self.i += 1
            self.expect("<")
            index = self.i
            data = self.quoted("a base64 string")
            self.expect(">")
            try:
                return base64.b64decode(data, validate=True)
            except ValueError:
                self.error(index, message="onnx_graph<...> holds invalid base64")
        if token == "proto":
            self.i += 1
            return self.proto()
        if token == "none":
            self.i += 1
            return None
        if token == "[":
            self.i += 1
            return self.items("]", self.attr_value)
        if _is_number(token) or token[:1] == '"' or token == "true" or token == "false":
            return self.literal()
        self.error(self.i, "an attribute value")

    def proto(self) -> Any:
        """``<"full.MessageName", "base64">``: a protobuf message kept by an opaque op (ONNX TypeProto)."""
        self.expect("<")
        name_index = self.i
        name = self.quoted("a quoted message type name")
        self.expect(",")
        data_index = self.i
        data = self.quoted("a base64 string")
        self.expect(">")
        message_class = _message_class(name)
        if message_class is None:
            self.error(name_index, message=f"unknown protobuf message type '{name}'")
        try:
            message = message_class()
            message.ParseFromString(base64.b64decode(data, validate=True))
        except Exception as exc:  # binascii.Error or protobuf's DecodeError
            self.error(data_index, message=f"cannot decode {name}: {exc}")
        return message

    def attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}

        def item() -> None:
            index = self.i
            key = self.word("an attribute name")
            if key in attrs:
                self.error(index, message=f"attribute '{key}' is given twice")
            self.expect("=")
            attrs[key] = self.attr_value()

        self.items("}", item)
        return attrs

    # -- graph -----------------------------------------------------------------------
    def graph(self) -> Graph:
        self.expect("graph")
        name = self.sigil_name("@", "a graph name like @main")

        def graph_input() -> tuple[str, TensorType | None]:
            input_name = self.define("an input like %x")
            return input_name, self.type() if self.accept(":") else None

        self.expect("(")
        inputs = self.items(")", graph_input)
        self.expect("->")
        self.expect("(")
        output_start = self.i
        outputs = self.items(")", lambda: self.sigil_name("%", "an output like %y"))
        self.expect("opset")
        graph = Graph(name, opset=self.integer("an integer opset version"))
        if self.accept("imports"):

            def opset_import() -> None:
                domain = self.word("a domain name")
                self.expect("=")
                graph.opset_imports[domain] = self.integer("an integer version")

            self.expect("(")
            self.items(")", opset_import)
        for input_name, type in inputs:
            self.values[input_name] = graph.add_input(input_name, type)
        self.expect("{")
        while not self.accept("}"):
            self.statement(graph)
        if self.tokens[self.i]:
            self.error(self.i, "end of text after the graph's '}'")
        for k, output in enumerate(outputs):
            if output not in self.values:
                self.error(output_start + 2 * k, message=f"graph output %{output} is not defined")
        graph.outputs = [self.values[output] for output in outputs]
        return graph

    def statement(self, graph: Graph) -> None:
        token = self.tokens[self.i]
        if token == "const":
            self.i += 1
            self.constant(graph)
        elif token[:1] == "%":
            names = [self.define("an output like %y")]
            while self.accept(","):
                names.append(self.define("an output like %y"))
            self.expect("=")
            self.node(graph, names)
        elif _is_word(token) or token[:1] == '"':
            self.node(graph, [])
        else:
            self.error(self.i, "a node, 'const' or '}'")

    def constant(self, graph: Graph) -> None:
        name_index = self.i
        name = self.define("a constant name like %w")
        if self.accept("="):
            self.expect("dense")
            array = self.dense()
        else:
            self.expect(":")
            type_index = self.i
            type = self.type()
            if type is None:
                self.error(type_index, "the constant's tensor type")
            if name not in self.constants:
                self.error(name_index, message=f"constant %{name} has no data: it is not in the constants given")
            array = _coerce_constant(self.constants[name], type)
            if array.dtype != type.dtype.numpy or array.shape != type.shape:
                self.error(
                    name_index,
                    message=f"constant %{name}: data is {array.dtype}{list(array.shape)} "
                    f"but the text declares {format_type(type)}",
                )
        value = graph.add_constant(name, array)
        if value.name != name:
            value.name = name
        self.values[name] = value

    def operand(self) -> Value | None:
        if self.accept("<none>"):
            return None
        return self.use()

    def node(self, graph: Graph, output_names: list[str]) -> None:
        op = self.word("an op name")
        domain = ""
        if self.accept("::"):
            domain, op = op, self.word("an op name after '::'")
        self.expect("(")
        inputs = self.items(")", self.operand)
        attrs = self.attrs() if self.accept("{") else {}
        types: list[TensorType | None] = [None] * len(output_names)
        if self.accept(":"):
            type_index = self.i
            types = [self.type()]
            while self.accept(","):
                types.append(self.type())
            if len(types) != len(output_names):
                self.error(type_index, message=f"{len(output_names)} outputs but {len(types)} types")
        source = node_name = ""
        if self.accept("loc"):
            self.expect("(")
            source = self.quoted("a quoted source name")
            self.expect(")")
        if self.accept("name"):
            self.expect("(")
            node_name = self.quoted("a quoted node name")
            self.expect(")")
        outputs = [Value(n, t) for n, t in zip(output_names, types)]
        node = Node(op, inputs, outputs, attrs, name=node_name, source=source, domain=domain)
        graph.insert(node)
        # The graph keeps names unique by renaming on collision; the text's names are the truth.
        if node_name and node.name != node_name:
            node.name = node_name
        for value, name in zip(outputs, output_names):
            if value.name != name:
                value.name = name
            self.values[name] = value


def parse_graph(
    text: str, constants: Mapping[str, np.ndarray] | None = None, *, source: str = "<text>"
) -> Graph:
    """Parse ``print_graph``'s text; ``constants`` supplies the data of constants not printed inline.

    Arrays are used as given, not copied. ``source`` names the text in error messages, which
    read ``source:line:column: expected ..., found ...``.
    """
    return _Parser(text, constants or {}, source).graph()


# == files ==============================================================================
def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    # Written entry by entry rather than with np.savez, whose keyword names can clash with ours.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            array = np.asarray(array)
            if array.dtype.name == "bfloat16":
                array = array.view(np.uint16)
            elif array.dtype == object:
                array = array.astype(str)
            with archive.open(name + ".npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.ascontiguousarray(array), allow_pickle=False)


def save_text(graph: Graph, path: str | os.PathLike) -> Path:
    """Write the graph's text to ``path`` and its named constants to ``path + ".npz"``, each atomically."""
    from ..backends.files import atomic_write

    text = print_graph(graph)
    atomic_write(str(path) + ".npz", lambda tmp: _write_npz(tmp, constant_data(graph)))
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_text(path: str | os.PathLike) -> Graph:
    """Read a graph written by ``save_text`` (the ``.npz`` beside it is optional when nothing needs it)."""
    path = Path(path)
    if not path.is_file():
        raise IrtoolError(f"IR text file '{path}' does not exist")
    text = path.read_text(encoding="utf-8")
    npz = Path(str(path) + ".npz")
    constants: dict[str, np.ndarray] = {}
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as archive:
                constants = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise IrtoolError(f"cannot read constants: {exc}", where=str(npz)) from None
    return parse_graph(text, constants, source=str(path))


# == comparison =========================================================================
def _canon(value: Any) -> Any:
    """A comparable form of an attribute value: kinds stay apart, floats compare by repr (NaN == NaN)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, np.integer)):
        return ("int", int(value))
    if isinstance(value, (float, np.floating)):
        return ("float", repr(float(value)))
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", bytes(value))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_canon(v) for v in value))
    if isinstance(value, np.ndarray):
        return ("tensor", value.dtype.str, value.shape, _array_key(value))
    if hasattr(value, "SerializeToString") and hasattr(value, "DESCRIPTOR"):
        return ("proto", value.DESCRIPTOR.full_name, value.SerializeToString(deterministic=True))
    return ("other", value)


def _array_key(array: np.ndarray) -> Any:
    if array.dtype == object:
        return repr(array.tolist())
    return np.ascontiguousarray(array).tobytes()


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    def raw(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x).reshape(-1).view(np.uint8)

    return bool(np.array_equal(raw(a), raw(b)))


def _describe_array(a: np.ndarray) -> str:
    return f"{a.dtype}{list(a.shape)}"


def _differences(a: Graph, b: Graph) -> Iterator[str]:
    def names(values) -> list:
        return [None if v is None else v.name for v in values]

    if a.name != b.name:
        yield f"graph name: '{a.name}' vs '{b.name}'"
    if a.opset != b.opset:
        yield f"opset: {a.opset} vs {b.opset}"
    if a.opset_imports != b.opset_imports:
        yield f"opset imports: {a.opset_imports} vs {b.opset_imports}"
    if names(a.inputs) != names(b.inputs):
        yield f"inputs: {names(a.inputs)} vs {names(b.inputs)}"
    for va, vb in zip(a.inputs, b.inputs):
        if va.type != vb.type:
            yield f"input %{va.name}: type {format_type(va.type)} vs {format_type(vb.type)}"
    if names(a.outputs) != names(b.outputs):
        yield f"outputs: {names(a.outputs)} vs {names(b.outputs)}"
    if a.constants.keys() != b.constants.keys():
        only_a = sorted(a.constants.keys() - b.constants.keys())
        only_b = sorted(b.constants.keys() - a.constants.keys())
        yield f"constants only in the first graph: {only_a[:5]}, only in the second: {only_b[:5]}"
    for name, ca in a.constants.items():
        cb = b.constants.get(name)
        if cb is None:
            continue
        if ca.type != cb.type:
            yield f"constant %{name}: type {format_type(ca.type)} vs {format_type(cb.type)}"
        xa, xb = ca.const, cb.const
        if (xa is None) != (xb is None) or (xa is not None and not _same_array(xa, xb)):
            left = "none" if xa is None else _describe_array(xa)
            right = "none" if xb is None else _describe_array(xb)
            yield f"constant %{name}: data differ ({left} vs {right})"
    if len(a) != len(b):
        yield f"node count: {len(a)} vs {len(b)}"
    for k, (na, nb) in enumerate(zip(a.nodes, b.nodes)):
        where = f"node {k} '{na.name}'"
        for what, x, y in (
            ("op", na.qualified_op, nb.qualified_op),
            ("name", na.name, nb.name),
            ("source", na.source, nb.source),
            ("inputs", names(na.inputs), names(nb.inputs)),
            ("outputs", names(na.outputs), names(nb.outputs)),
        ):
            if x != y:
                yield f"{where}: {what} {x!r} vs {y!r}"
        for va, vb in zip(na.outputs, nb.outputs):
            if va.type != vb.type:
                yield f"{where}: output %{va.name} type {format_type(va.type)} vs {format_type(vb.type)}"
        if na.attrs.keys() != nb.attrs.keys():
            yield f"{where}: attribute names {sorted(na.attrs)} vs {sorted(nb.attrs)}"
            continue
        for key in sorted(na.attrs):
            if _canon(na.attrs[key]) != _canon(nb.attrs[key]):
                yield f"{where}: attribute '{key}' {_short(na.attrs[key])} vs {_short(nb.attrs[key])}"


def graph_differences(a: Graph, b: Graph, *, limit: int = 20) -> list[str]:
    """Where two graphs differ structurally (names, ops, attrs, types, edges, constant bytes).

    Nodes are compared in order, constants by name; ``meta`` is ignored.
    """
    return list(itertools.islice(_differences(a, b), limit))


def _short(value: Any) -> str:
    try:
        text = _attr(value)
    except IrtoolError:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def graphs_equal(a: Graph, b: Graph) -> bool:
    """Structural equality: same ops, attrs, names, types, edges and constant bytes."""
    return next(_differences(a, b), None) is None


def assert_graphs_equal(a: Graph, b: Graph) -> None:
    """Raise AssertionError listing the differences (for tests)."""
    differences = graph_differences(a, b)
    if differences:
        raise AssertionError("graphs differ:\n  " + "\n  ".join(differences))
