"""The pipeline string: ``fold-bn,prune{sparsity=0.5 criterion=l2},dce`` -> a list of passes.

Grammar (MLIR's pass-pipeline syntax, without nesting)::

    pipeline := pass (',' pass)*
    pass     := NAME ('{' option* '}')?          options are separated by spaces
    option   := KEY '=' value
    value    := BARE | 'quoted' | "quoted" | '[' (item (',' item)*)? ']'

``BARE`` is any run of characters other than spaces, quotes and ``{}[],=`` (so ``layer4.*``
and ``1e-3`` need no quotes). Every syntax error names its 1-based column.

Option values are converted to the field's declared type: ``int``, ``float``, ``bool``
(``true``/``false``), ``str``, a ``Literal`` or ``Enum`` of choices, ``X | None`` (``none``) and
``tuple[X, ...]``/``list[X]`` (``[a,b]``; a single item needs no brackets).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..ir.errors import IrtoolError

if TYPE_CHECKING:
    from .base import Pass

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_BARE = re.compile(r"[^\s{}\[\],='\"]+")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

RawOption = str | list[str]
"""An option value as written in a pipeline: one token, or the items of a ``[a,b]`` list."""


# -- options -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PassOption:
    """One option of a pass: its pipeline spelling, declared type, default and help."""

    name: str
    field_name: str
    type: Any
    default: Any
    help: str
    pass_name: str

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def type_name(self) -> str:
        return _type_name(self.type)

    def parse(self, raw: RawOption) -> Any:
        """Convert the option's text to its declared type, or raise a located ``IrtoolError``."""
        return _convert(self.type, raw, self)

    def format(self, value: Any) -> str:
        """The pipeline text of ``value``; ``parse(format(v)) == v``."""
        return format_value(value)

    def error(self, message: str) -> IrtoolError:
        return IrtoolError(f"option '{self.name}' {message}", where=self.pass_name)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _sequence_item(tp: Any) -> Any | None:
    """The item type of ``tuple[X, ...]`` / ``list[X]``, or None for scalar types."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is list and len(args) == 1:
        return args[0]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _type_name(tp: Any) -> str:
    inner, optional = _unwrap_optional(tp)
    item = _sequence_item(inner)
    if item is not None:
        name = f"list[{_type_name(item)}]"
    elif typing.get_origin(inner) is Literal:
        name = "|".join(str(c) for c in typing.get_args(inner))
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        name = "|".join(m.name for m in inner)
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or none" if optional else name


_ARTICLE = {"int": "an int", "float": "a float", "bool": "true or false", "str": "a string"}


def _convert(tp: Any, raw: RawOption, option: PassOption) -> Any:
    inner, optional = _unwrap_optional(tp)
    if optional and raw == "none":
        return None
    item = _sequence_item(inner)
    if item is not None:
        items = raw if isinstance(raw, list) else [raw]
        values = [_convert_scalar(item, text, option) for text in items]
        return tuple(values) if typing.get_origin(inner) is tuple else values
    if isinstance(raw, list):
        raise option.error(f"expects {_expected(inner)}, got a list")
    return _convert_scalar(inner, raw, option)


def _expected(tp: Any) -> str:
    if typing.get_origin(tp) is Literal or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return "one of " + ", ".join(_type_name(tp).split("|"))
    return _ARTICLE.get(_type_name(tp), _type_name(tp))


def _convert_scalar(tp: Any, text: str, option: PassOption) -> Any:
    def fail() -> IrtoolError:
        return option.error(f"expects {_expected(tp)}, got '{text}'")

    if tp is bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise fail()
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise fail() from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise fail() from None
    if tp is str:
        return text
    if typing.get_origin(tp) is Literal:
        for choice in typing.get_args(tp):
            if str(choice) == text:
                return choice
        raise fail()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if text in (member.name, str(member.value)):
                return member
        raise fail()
    raise IrtoolError(f"option '{option.name}' has a type irtool cannot parse: {tp!r}", where=option.pass_name)


def format_value(value: Any) -> str:
    """The pipeline text of an option value; parsing it gives the value back."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    quote = "'" if "'" not in text else '"'
    if quote in text:
        raise IrtoolError(f"option value {text!r} contains both kinds of quote and cannot be written")
    return f"{quote}{text}{quote}"


# -- syntax ------------------------------------------------------------------------------


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> IrtoolError:
        column = (self.pos if pos is None else pos) + 1
        return IrtoolError(f"malformed pipeline at column {column}: {message} (in '{self.text}')")

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def describe_next(self) -> str:
        char = self.peek()
        return f"'{char}'" if char else "the end"

    def take(self, char: str) -> bool:
        self.skip_spaces()
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    def match(self, pattern: re.Pattern[str]) -> str | None:
        self.skip_spaces()
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def quoted(self) -> str | None:
        self.skip_spaces()
        quote = self.peek()
        if quote not in ("'", '"'):
            return None
        end = self.text.find(quote, self.pos + 1)
        if end < 0:
            raise self.error(f"unterminated {quote} string")
        value = self.text[self.pos + 1 : end]
        self.pos = end + 1
        return value


def _parse_scalar(s: _Scanner, key: str) -> str:
    value = s.quoted()
    if value is None:
        value = s.match(_BARE)
    if value is None:
        raise s.error(f"expected a value for option '{key}', found {s.describe_next()}")
    return value


def _parse_value(s: _Scanner, key: str) -> RawOption:
    if not s.take("["):
        return _parse_scalar(s, key)
    items: list[str] = []
    if s.take("]"):
        return items
    while True:
        items.append(_parse_scalar(s, key))
        if s.take("]"):
            return items
        if not s.take(","):
            raise s.error(f"expected ',' or ']' in the list for option '{key}', found {s.describe_next()}")


def _parse_options(s: _Scanner, pass_name: str) -> dict[str, RawOption]:
    options: dict[str, RawOption] = {}
    while not s.take("}"):
        if s.peek() == "":
            raise s.error(f"expected '}}' to close the options of '{pass_name}'")
        if s.take(","):
            raise s.error("options are separated by spaces, not commas", s.pos - 1)
        start = s.pos
        key = s.match(_NAME)
        if key is None:
            raise s.error(f"expected an option name or '}}' for '{pass_name}', found {s.describe_next()}")
        if not s.take("="):
            raise s.error(f"expected '=' after option '{key}', found {s.describe_next()}")
        if key in options:
            raise s.error(f"option '{key}' is given twice for '{pass_name}'", start)
        options[key] = _parse_value(s, key)
    return options


def parse_pipeline_spec(text: str) -> list[tuple[str, dict[str, RawOption]]]:
    """The syntax alone: ``[(pass name, {option: raw value})]``, without looking passes up."""
    s = _Scanner(text)
    specs: list[tuple[str, dict[str, RawOption]]] = []
    s.skip_spaces()
    if s.peek() == "":
        raise IrtoolError("the pipeline is empty; give passes like 'fold-bn,dce'")
    while True:
        name = s.match(_NAME)
        if name is None:
            raise s.error(f"expected a pass name, found {s.describe_next()}")
        options = _parse_options(s, name) if s.take("{") else {}
        specs.append((name, options))
        if s.take(","):
            continue
        s.skip_spaces()
        if s.peek() == "":
            return specs
        raise s.error(f"expected ',' between passes, found {s.describe_next()}")


def parse_pipeline(text: str) -> list[Pass]:
    """Parse and validate a pipeline: every pass exists and every option has a valid value."""
    from .base import get_pass

    return [get_pass(name).from_options(options) for name, options in parse_pipeline_spec(text)]


def format_pipeline(passes: Sequence[Pass]) -> str:
    """The canonical pipeline string; ``parse_pipeline(format_pipeline(ps)) == ps``."""
    return ",".join(str(p) for p in passes)
