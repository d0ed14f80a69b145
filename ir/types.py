"""Tensor types: an element type and a shape whose dims are ints or symbolic names."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

import numpy as np

Dim = Union[int, str, None]
"""A dimension: a known size, a symbolic name (``"batch"``) or ``None`` when nothing is known."""


class DType(enum.Enum):
    """Element types, with their ONNX TensorProto codes as values."""

    float32 = 1
    uint8 = 2
    int8 = 3
    uint16 = 4
    int16 = 5
    int32 = 6
    int64 = 7
    string = 8
    bool = 9
    float16 = 10
    float64 = 11
    uint32 = 12
    uint64 = 13
    bfloat16 = 16

    @property
    def onnx(self) -> int:
        return self.value

    @classmethod
    def from_onnx(cls, code: int) -> "DType":
        try:
            return cls(code)
        except ValueError:
            from .errors import IrtoolError

            raise IrtoolError(f"unsupported ONNX element type {code}") from None

    @property
    def numpy(self) -> np.dtype:
        if self is DType.bfloat16:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        if self is DType.string:
            return np.dtype(object)
        return np.dtype(self.name)

    @classmethod
    def from_numpy(cls, dtype) -> "DType":
        dtype = np.dtype(dtype)
        cached = _FROM_NUMPY.get(dtype)
        if cached is not None:
            return cached
        result = cls._from_numpy(dtype)
        _FROM_NUMPY[dtype] = result
        return result

    @classmethod
    def _from_numpy(cls, dtype: np.dtype) -> "DType":
        if dtype == np.dtype(object):
            return cls.string
        if dtype.name == "bfloat16":
            return cls.bfloat16
        try:
            return cls[dtype.name]
        except KeyError:
            from .errors import IrtoolError

            raise IrtoolError(f"unsupported numpy dtype {dtype}") from None

    @property
    def is_float(self) -> bool:
        return self in (DType.float16, DType.float32, DType.float64, DType.bfloat16)


_FROM_NUMPY: dict[np.dtype, DType] = {}


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape; ``shape is None`` means the rank is unknown."""

    dtype: DType
    shape: tuple[Dim, ...] | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, None if shape is None else tuple(shape))

    def __str__(self) -> str:
        if self.shape is None:
            return f"tensor<*x{self.dtype.name}>"
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        return f"tensor<{dims + 'x' if dims else ''}{self.dtype.name}>"

    @classmethod
    def of(cls, array: np.ndarray) -> "TensorType":
        return cls(DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))
