"""Data for the passes that need it: a small dataset interface, adapters, and a built-in dataset.

A ``Dataset`` serves rows of model inputs, with labels when it has them, in ``Batch``es. It is
also what ``PassContext.data`` expects: iterating a dataset yields its input batches (one array
for a single-input model, a tuple of arrays otherwise), so calibration, data-driven criteria and
fine-tuning all read the same object. Labels are only needed by training and by criteria that
take gradients.

Adapters: ``ArrayDataset`` for numpy arrays, ``LoaderDataset`` for a torch ``DataLoader``, and
``as_dataset`` to pick one. ``digits()`` is scikit-learn's bundled 8x8 handwritten digits (1797
images, no download), the built-in dataset of the demo and the tests.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir.errors import IrtoolError

DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class Batch:
    """Rows of every model input (same leading size), and their labels or None."""

    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0]) if self.inputs and self.inputs[0].ndim else 1

    def feed(self) -> np.ndarray | tuple[np.ndarray, ...]:
        """The inputs as ``PassContext.data`` items are: one array, or a tuple for several inputs."""
        return self.inputs[0] if len(self.inputs) == 1 else self.inputs


class Dataset:
    """Rows of model inputs with optional labels, served in batches.

    Subclasses implement ``batches``; ``batch_size`` is the size iteration uses.
    """

    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def has_labels(self) -> bool:
        raise NotImplementedError

    def batches(self, batch_size: int | None = None, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def steps(self, batch_size: int | None = None) -> int:
        """Batches in one pass over the data."""
        return sum(1 for _ in self.batches(batch_size))

    def __iter__(self) -> Iterator[np.ndarray | tuple[np.ndarray, ...]]:
        """Input batches only, in order: the form ``PassContext.data`` and calibration read."""
        for batch in self.batches():
            yield batch.feed()

    def arrays(self, limit: int | None = None) -> Batch:
        """Every row (or the first ``limit``) as one batch; for evaluation and criteria statistics."""
        inputs: list[list[np.ndarray]] = []
        labels: list[np.ndarray] = []
        rows = 0
        for batch in self.batches():
            take = len(batch) if limit is None else min(len(batch), limit - rows)
            if not inputs:
                inputs = [[] for _ in batch.inputs]
            for parts, array in zip(inputs, batch.inputs):
                parts.append(array[:take])
            if batch.labels is not None:
                labels.append(batch.labels[:take])
            rows += take
            if limit is not None and rows >= limit:
                break
        if not inputs:
            raise IrtoolError("the dataset is empty")
        joined = tuple(np.concatenate(parts) for parts in inputs)
        return Batch(joined, np.concatenate(labels) if labels else None)


class ArrayDataset(Dataset):
    """Numpy arrays in memory: one input array (or a sequence of them, one per model input)
    whose leading axis is the row, and optional labels with one entry per row."""

    def __init__(
        self,
        inputs: np.ndarray | Sequence[np.ndarray],
        labels: np.ndarray | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        name: str = "arrays",
    ):
        arrays = (inputs,) if isinstance(inputs, np.ndarray) else tuple(inputs)
        arrays = tuple(np.asarray(a) for a in arrays)
        if not arrays or any(a.ndim == 0 for a in arrays):
            raise IrtoolError(f"dataset '{name}': inputs must be arrays with a leading row axis")
        rows = {a.shape[0] for a in arrays}
        if labels is not None:
            labels = np.asarray(labels)
            rows.add(labels.shape[0] if labels.ndim else -1)
        if len(rows) != 1:
            raise IrtoolError(f"dataset '{name}': inputs and labels have different row counts {sorted(rows)}")
        if batch_size < 1:
            raise IrtoolError(f"dataset '{name}': batch size must be at least 1, not {batch_size}")
        self.inputs = arrays
        self.labels = labels
        self.batch_size = batch_size
        self.name = name

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])

    def __repr__(self) -> str:
        shapes = ", ".join(str(a.shape[1:]) for a in self.inputs)
        return f"ArrayDataset({self.name}: {len(self)} rows of {shapes}{', labelled' if self.has_labels else ''})"

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def steps(self, batch_size: int | None = None) -> int:
        return -(-len(self) // (batch_size or self.batch_size))

    def batches(self, batch_size: int | None = None, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        size = batch_size or self.batch_size
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else None
        for start in range(0, len(self), size):
            rows = slice(start, start + size) if order is None else order[start : start + size]
            labels = None if self.labels is None else self.labels[rows]
            yield Batch(tuple(a[rows] for a in self.inputs), labels)

    def subset(self, rows: np.ndarray | slice, *, name: str | None = None) -> ArrayDataset:
        labels = None if self.labels is None else self.labels[rows]
        return ArrayDataset(
            tuple(a[rows] for a in self.inputs), labels, batch_size=self.batch_size, name=name or self.name
        )

    def split(self, fraction: float, *, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
        """A shuffled (first, rest) split with ``fraction`` of the rows (rounded up, as
        scikit-learn's ``test_size``) in the first part."""
        if not 0 < fraction < 1:
            raise IrtoolError(f"split fraction {fraction:g} is outside (0, 1)")
        order = np.random.default_rng(seed).permutation(len(self))
        cut = int(np.ceil(len(self) * fraction - 1e-9))
        return self.subset(np.sort(order[:cut])), self.subset(np.sort(order[cut:]))


class LoaderDataset(Dataset):
    """A torch ``DataLoader`` (or any iterable of ``(inputs, labels)`` or bare input batches).

    Tensors become numpy arrays. The loader decides batch size and order; ``batches`` asks
    for neither (a different batch size or shuffling is an error, not silently ignored).
    """

    def __init__(self, loader: Any, *, has_labels: bool | None = None, name: str = "loader"):
        self.loader = loader
        self.name = name
        self.batch_size = int(getattr(loader, "batch_size", None) or DEFAULT_BATCH_SIZE)
        self._has_labels = has_labels

    def __repr__(self) -> str:
        return f"LoaderDataset({self.name})"

    @property
    def has_labels(self) -> bool:
        if self._has_labels is None:
            first = next(iter(self.batches()), None)
            self._has_labels = first is not None and first.labels is not None
        return self._has_labels

    def steps(self, batch_size: int | None = None) -> int:
        if hasattr(self.loader, "__len__") and batch_size in (None, self.batch_size):
            return len(self.loader)
        return super().steps(batch_size)

    def batches(self, batch_size: int | None = None, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        if batch_size not in (None, self.batch_size):
            raise IrtoolError(
                f"dataset '{self.name}' is a DataLoader with batch size {self.batch_size}, not {batch_size}"
            )
        if shuffle and not _loader_shuffles(self.loader):
            raise IrtoolError(f"dataset '{self.name}' is a DataLoader without shuffle; build it with shuffle=True")
        for index, item in enumerate(self.loader):
            yield _loader_batch(item, index, self.name, self._has_labels)


def _loader_shuffles(loader: Any) -> bool:
    sampler = getattr(loader, "sampler", None)
    return sampler is not None and type(sampler).__name__ == "RandomSampler"


def _to_numpy(item: Any) -> np.ndarray:
    if hasattr(item, "detach"):
        return item.detach().cpu().numpy()
    return np.asarray(item)


def _loader_batch(item: Any, index: int, name: str, has_labels: bool | None) -> Batch:
    if isinstance(item, dict):
        raise IrtoolError(f"dataset '{name}', batch {index}: dict batches are not supported; yield (inputs, labels)")
    if isinstance(item, (tuple, list)):
        if has_labels is False:
            return Batch(tuple(_to_numpy(x) for x in item))
        if len(item) < 2:
            raise IrtoolError(f"dataset '{name}', batch {index}: expected (inputs, labels), got {len(item)} item(s)")
        *inputs, labels = item
        if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)):
            inputs = list(inputs[0])
        return Batch(tuple(_to_numpy(x) for x in inputs), _to_numpy(labels))
    if has_labels:
        raise IrtoolError(f"dataset '{name}', batch {index}: expected (inputs, labels), got one tensor")
    return Batch((_to_numpy(item),))


def as_dataset(source: Any, labels: np.ndarray | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE) -> Dataset:
    """A ``Dataset`` from a dataset, a built-in name (``"digits"``), numpy arrays, a torch
    ``DataLoader``/``Dataset``, or any iterable of batches."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, str):
        return builtin_dataset(source)
    if isinstance(source, np.ndarray) or (
        isinstance(source, (tuple, list)) and source and all(isinstance(a, np.ndarray) for a in source)
    ):
        return ArrayDataset(source, labels, batch_size=batch_size)
    if labels is not None:
        raise IrtoolError(f"labels can be given separately only with numpy inputs, not a {type(source).__name__}")
    if _is_torch_map_dataset(source):
        from torch.utils.data import DataLoader

        return LoaderDataset(DataLoader(source, batch_size=batch_size), name=type(source).__name__)
    if hasattr(source, "__iter__"):
        return LoaderDataset(source, name=type(source).__name__)
    raise IrtoolError(f"cannot use a {type(source).__name__} as a dataset")


def _is_torch_map_dataset(source: Any) -> bool:
    try:
        from torch.utils.data import Dataset as TorchDataset
    except ModuleNotFoundError:  # pragma: no cover - torch is an optional extra
        return False
    return isinstance(source, TorchDataset) and hasattr(source, "__len__") and hasattr(source, "__getitem__")


# -- built-in datasets ---------------------------------------------------------------------------
def digits(
    split: str = "train",
    *,
    size: int = 8,
    test_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ArrayDataset:
    """scikit-learn's handwritten digits: (N, 1, size, size) float32 in [0, 1] and int64 labels.

    ``split`` is ``train``, ``test`` or ``all``; the split is a seeded shuffle (the same for a
    given seed and fraction), so train and test never share a row. ``size`` upsamples the 8x8
    images by an integer factor (bilinear), e.g. 16.
    """
    if split not in ("train", "test", "all"):
        raise IrtoolError(f"digits split '{split}' is not train, test or all")
    if size < 8 or size % 8:
        raise IrtoolError(f"digits size {size} is not a multiple of 8")
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise IrtoolError("the digits dataset needs scikit-learn: pip install irtool[data]") from None
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]
    if size != 8:
        images = _upsample(images, size // 8)
    dataset = ArrayDataset(images, bunch.target.astype(np.int64), batch_size=batch_size, name="digits")
    if split == "all":
        return dataset
    test, train = dataset.split(test_fraction, seed=seed)
    chosen = train if split == "train" else test
    chosen.name = f"digits-{split}"
    return chosen


def _upsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling by an integer factor (half-pixel centres, edges clamped)."""
    size = images.shape[-1]
    centres = (np.arange(size * factor) + 0.5) / factor - 0.5
    low = np.clip(np.floor(centres).astype(np.int64), 0, size - 1)
    high = np.clip(low + 1, 0, size - 1)
    weight = np.clip(centres - low, 0, 1).astype(np.float32)
    rows = images[..., low, :] * (1 - weight)[:, None] + images[..., high, :] * weight[:, None]
    return (rows[..., low] * (1 - weight) + rows[..., high] * weight).astype(np.float32)


BUILTIN_DATASETS: dict[str, Callable[..., Dataset]] = {"digits": digits}
"""Datasets a pipeline can name (``finetune{dataset=digits}``)."""


def check_builtin(name: str) -> None:
    """Fail, naming the built-in datasets, unless ``name`` is one; a pass checks its
    ``dataset=`` option this way when the pipeline is parsed, before any work is done."""
    if name not in BUILTIN_DATASETS:
        close = difflib.get_close_matches(name, list(BUILTIN_DATASETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise IrtoolError(f"unknown dataset '{name}'{hint}; built in: {', '.join(sorted(BUILTIN_DATASETS))}")


def builtin_dataset(name: str, **options) -> Dataset:
    check_builtin(name)
    return BUILTIN_DATASETS[name](**options)


def labelled(data: Any, what: str) -> Dataset:
    """``data`` as a dataset with labels, or an error saying that ``what`` needs them."""
    if data is None:
        raise IrtoolError(
            f"{what} needs labelled data: irtool opt --data FILE.npz (with a 'labels' array), the pass's "
            "dataset=digits, or from Python a dataset (irtool.passes.data) as PassContext.data"
        )
    dataset = as_dataset(data)
    if not dataset.has_labels:
        raise IrtoolError(f"{what} needs labelled data, and dataset {dataset!r} has no labels")
    return dataset
