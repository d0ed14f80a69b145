"""The dataset interface: numpy and DataLoader adapters, the built-in digits, and the feeds
that calibration reads from a dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from irtool.ir import DType, Graph, TensorType
from irtool.ir.errors import IrtoolError
from irtool.passes.calibration import calibration_feeds
from irtool.passes.data import ArrayDataset, Batch, LoaderDataset, as_dataset, builtin_dataset, digits, labelled


def _arrays(rows: int = 10):
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    return x, np.arange(rows, dtype=np.int64)


def test_array_dataset_serves_every_row_once_in_batches():
    x, y = _arrays(10)
    dataset = ArrayDataset(x, y, batch_size=4)
    batches = list(dataset.batches())
    assert [len(b) for b in batches] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b.inputs[0] for b in batches]), x)
    assert np.array_equal(np.concatenate([b.labels for b in batches]), y)


def test_shuffle_is_seeded_and_keeps_rows_with_their_labels():
    x, y = _arrays(10)
    dataset = ArrayDataset(x, y, batch_size=3)
    first = list(dataset.batches(shuffle=True, seed=1))
    again = list(dataset.batches(shuffle=True, seed=1))
    other = list(dataset.batches(shuffle=True, seed=2))
    order = np.concatenate([b.labels for b in first])
    assert np.array_equal(order, np.concatenate([b.labels for b in again]))
    assert not np.array_equal(order, np.concatenate([b.labels for b in other]))
    assert sorted(order.tolist()) == list(range(10)) and not np.array_equal(order, np.arange(10))
    for batch in first:
        assert np.array_equal(batch.inputs[0][:, 0], batch.labels * 3)


def test_iterating_a_dataset_gives_calibration_feeds():
    graph = Graph()
    graph.add_input("x", TensorType(DType.float32, ("batch", 3)))
    x, y = _arrays(10)
    feeds, origin = calibration_feeds(graph, ArrayDataset(x, y, batch_size=4), samples=6)
    assert [f["x"].shape for f in feeds] == [(4, 3), (2, 3)]
    assert origin == "6 samples of user data"
    two_inputs = ArrayDataset([x, x + 1], y, batch_size=5)
    first = next(iter(two_inputs))
    assert isinstance(first, tuple) and len(first) == 2 and np.array_equal(first[1], x[:5] + 1)


def test_arrays_gathers_rows_up_to_a_limit():
    x, y = _arrays(10)
    batch = ArrayDataset(x, y, batch_size=4).arrays(7)
    assert batch.inputs[0].shape == (7, 3) and np.array_equal(batch.labels, y[:7])


def test_dataloader_adapter_matches_the_tensors():
    x, y = _arrays(10)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=4)
    dataset = as_dataset(loader)
    assert isinstance(dataset, LoaderDataset) and dataset.has_labels and dataset.batch_size == 4
    batches = list(dataset.batches())
    assert [len(b) for b in batches] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b.inputs[0] for b in batches]), x)
    assert np.array_equal(np.concatenate([b.labels for b in batches]), y)
    with pytest.raises(IrtoolError, match="without shuffle"):
        next(dataset.batches(shuffle=True))
    with pytest.raises(IrtoolError, match="batch size 4, not 8"):
        next(dataset.batches(8))
    from_torch_dataset = as_dataset(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=5)
    assert [len(b) for b in from_torch_dataset.batches()] == [5, 5]


def test_unlabelled_loader_and_the_labelled_check():
    x, _ = _arrays(6)
    dataset = LoaderDataset([torch.from_numpy(x[:3]), torch.from_numpy(x[3:])])
    assert not dataset.has_labels
    assert np.array_equal(dataset.arrays().inputs[0], x)
    with pytest.raises(IrtoolError, match="finetune needs labelled data"):
        labelled(dataset, "finetune")
    with pytest.raises(IrtoolError, match="finetune needs labelled data"):
        labelled(None, "finetune")


def test_row_count_mismatch_is_an_error():
    x, y = _arrays(10)
    with pytest.raises(IrtoolError, match="different row counts"):
        ArrayDataset(x, y[:9])


def test_digits_splits_are_disjoint_and_cover_the_dataset():
    train, test = digits("train"), digits("test")
    assert len(train) + len(test) == 1797 and len(test) == 360  # 20%, rounded up
    assert train.inputs[0].shape == (1437, 1, 8, 8) and train.inputs[0].dtype == np.float32
    assert train.labels.dtype == np.int64 and set(np.unique(test.labels)) == set(range(10))
    assert 0.0 == train.inputs[0].min() and train.inputs[0].max() == 1.0
    train_rows = {row.tobytes() for row in train.inputs[0]}
    overlap = sum(row.tobytes() in train_rows for row in test.inputs[0])
    # scikit-learn's digits holds a few duplicate images; the split itself shares no row.
    assert overlap <= 5
    assert np.array_equal(digits("train").labels, train.labels)


def test_digits_upsampled_is_bilinear_as_torch_computes_it():
    small = digits("test").inputs[0]
    large = digits("test", size=16).inputs[0]
    assert large.shape == (360, 1, 16, 16)
    expected = torch.nn.functional.interpolate(torch.from_numpy(small), scale_factor=2, mode="bilinear", align_corners=False)
    assert np.abs(large - expected.numpy()).max() < 1e-6
    with pytest.raises(IrtoolError, match="not a multiple of 8"):
        digits(size=12)


def test_builtin_dataset_by_name():
    assert len(builtin_dataset("digits")) == 1437
    assert len(as_dataset("digits")) == 1437
    with pytest.raises(IrtoolError, match="did you mean 'digits'"):
        builtin_dataset("digit")


def test_batch_feed_form():
    one = Batch((np.zeros((2, 3)),))
    two = Batch((np.zeros((2, 3)), np.ones((2, 1))))
    assert isinstance(one.feed(), np.ndarray) and isinstance(two.feed(), tuple) and len(two) == 2
