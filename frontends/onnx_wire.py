"""The protobuf wire format, as far as moving ONNX weights without copying them needs it.

Protobuf's own parser and serializer copy every weight into and out of its memory. The
frontend walks a serialized ModelProto to its initializers instead (their raw bytes stay views
of the file), and the backend writes initializers piece by piece, straight from the arrays.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import DecodeError

MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_RAW_DATA = 7, 5, 9
"""Field numbers of ``ModelProto.graph``, ``GraphProto.initializer`` and ``TensorProto.raw_data``."""
LEN = 2
"""The wire type of length-delimited fields: messages, bytes, strings."""


def fields(view: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, value start, value end, field start) of each field in a message;
    ``DecodeError`` when the bytes are not one."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = varint(view, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = varint(view, pos, end)
            value_start = pos
        elif wire == 1:
            value_start, pos = pos, pos + 8
        elif wire == LEN:
            length, value_start = varint(view, pos, end)
            pos = value_start + length
        elif wire == 5:
            value_start, pos = pos, pos + 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        if number == 0 or pos > end:
            raise DecodeError("truncated message")
        yield number, wire, value_start, pos, field_start


def varint(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while pos < end and shift < 64:
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise DecodeError("truncated varint")


def varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_prefix(number: int, length: int) -> bytes:
    """The key and length that come before the ``length`` bytes of length-delimited field ``number``."""
    return varint_bytes(number << 3 | LEN) + varint_bytes(length)
