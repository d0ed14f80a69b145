"""Hostile ONNX input: mutated models make the frontend load or raise ``IrtoolError``, nothing else.

Cases run in a memory-limited worker process with a per-case time limit (``tools/fuzz_onnx.py``),
so a hang or a huge allocation is a finding, not a stuck or swapping test run. Hypothesis draws
every mutation choice, so a failure shrinks to a small reproducer. ``IRTOOL_FUZZ_CASES`` sets
the number of cases (default 2,000, about 20 s on an idle machine); ``python -m irtool.tools.fuzz_onnx`` runs longer
campaigns. The bugs the fuzzer found have their smallest models below.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from irtool.tools.fuzz_onnx import (
    EXTERNAL_FILE,
    LINK_FILE,
    LOADED,
    REFUSED,
    SEEDS,
    Worker,
    make_case,
    seed_bytes,
)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CASES = int(os.environ.get("IRTOOL_FUZZ_CASES", "2000"))
TIME_LIMIT = 20.0


class HypothesisChooser:
    """Mutation choices drawn by hypothesis (so failures shrink)."""

    def __init__(self, data):
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def choice(self, options):
        options = list(options)
        return options[self.integer(0, len(options) - 1)]

    def binary(self, most: int) -> bytes:
        return self.data.draw(st.binary(max_size=most))


@pytest.fixture(scope="module")
def worker():
    with Worker(timeout=TIME_LIMIT) as w:
        yield w


def test_seed_models_load(worker):
    assert set(SEEDS) == {"conv", "shapes", "control", "external"}
    for name, data in seed_bytes().items():
        outcome = worker.check(data)
        assert outcome.status == LOADED, (name, outcome.detail)


def test_mutated_models_raise_only_irtool_errors(worker):
    statuses = Counter()

    @settings(
        max_examples=CASES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def check(data):
        case = make_case(HypothesisChooser(data))
        outcome = worker.check(case.data)
        statuses[outcome.status] += 1
        assert outcome.ok, "\n".join([*case.steps, outcome.detail])

    check()
    assert sum(statuses.values()) >= CASES
    # Both paths are exercised: some mutants still load, most are refused with a message.
    assert statuses[LOADED] >= 0.02 * CASES and statuses[REFUSED] >= 0.5 * CASES, statuses


# -- the smallest models of the bugs the fuzzer found ------------------------------------------------
def _model(nodes, inputs, outputs, initializers=(), opset: int = 17, **graph_fields) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "repro", inputs, outputs, list(initializers), **graph_fields)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _float_io(name: str, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _relu_model() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_float_io("x", [2])], [_float_io("y", [2])])


def _sparse_model(dims, indices) -> onnx.ModelProto:
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(len(indices), dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(indices, dtype=np.int64), "s_idx"),
        dims,
    )
    node = helper.make_node("Add", ["x", "s"], ["y"])
    return _model([node], [_float_io("x", [2])], [_float_io("y", [2])], sparse_initializer=[sparse])


def _replace_bytes(model: onnx.ModelProto, old: bytes, new: bytes) -> bytes:
    data = model.SerializeToString()
    assert data.count(old) == 1
    return data.replace(old, new)


def _unknown_element_type() -> bytes:
    constant = helper.make_node("Constant", [], ["k"], value=TensorProto(name="k", data_type=31, dims=[2], raw_data=bytes(8)))
    return _model([constant, helper.make_node("Add", ["x", "k"], ["y"])], [_float_io("x", [2])], [_float_io("y", [2])]).SerializeToString()


def _negative_external_offset() -> bytes:
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", EXTERNAL_FILE), ("offset", "-8"), ("length", "8")):
        tensor.external_data.add(key=key, value=value)
    node = helper.make_node("Add", ["x", "w"], ["y"])
    return _model([node], [_float_io("x", [2])], [_float_io("y", [2])], [tensor]).SerializeToString()


def _huge_one_dimensional_cast() -> bytes:
    """A 32-byte float16 initializer that claims 2**31 elements, cast and added: ONNX's data
    propagation makes one dim object per element of a 1-D tensor, so a 200-byte file asks for
    gigabytes (2**26 elements: 7 GB and 12 s) before the frontend says the raw data is short."""
    h = TensorProto(name="h", data_type=TensorProto.FLOAT16, dims=[2**31], raw_data=bytes(32))
    nodes = [helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "hf"], ["y"])]
    return _model(nodes, [_float_io("x", [1, 16])], [_float_io("y", [1, 16])], [h]).SerializeToString()


REPRODUCERS = {
    # numpy_helper raises KeyError for an element type it does not know.
    "unknown element type": (_unknown_element_type, "tensor 'k' cannot be read"),
    # np.zeros of the dense size: MemoryError (8 GiB), or ValueError past numpy's largest array.
    "sparse tensor of 2**31 elements": (lambda: _sparse_model([2**31], [0]).SerializeToString(), "sparse tensor 's'"),
    "sparse tensor of 2**80 elements": (lambda: _sparse_model([2**40, 2**40], [[0, 0]]).SerializeToString(), "sparse tensor 's'"),
    # protobuf hands out invalid UTF-8 as bytes: TypeError in onnx.defs, UnicodeDecodeError on assignment.
    "op type not UTF-8": (lambda: _replace_bytes(_relu_model(), b"Relu", b"R\xfflu"), "not valid UTF-8"),
    "graph name not UTF-8": (lambda: _replace_bytes(_relu_model(), b"repro", b"r\xfdpro"), "not valid UTF-8"),
    "attribute name not UTF-8": (
        lambda: _replace_bytes(
            _model([helper.make_node("Flatten", ["x"], ["y"], axis=1)], [_float_io("x", [2, 2])], [_float_io("y", [2, 2])]),
            b"axis",
            b"a\xf1is",
        ),
        "not valid UTF-8",
    ),
    # np.fromfile with a negative offset: OSError.
    "negative external data offset": (_negative_external_offset, "negative offset"),
}


@pytest.mark.parametrize("name", sorted(REPRODUCERS))
def test_fuzzer_findings_are_refused_with_a_message(worker, name):
    build, message = REPRODUCERS[name]
    outcome = worker.check(build())
    assert outcome.ok, outcome.detail
    if message is not None:
        assert outcome.status == REFUSED and message in outcome.detail, outcome


def test_a_huge_declared_dim_costs_neither_memory_nor_time():
    with Worker(timeout=TIME_LIMIT) as fresh:  # its peak memory starts from the imports alone
        outcome = fresh.check(_huge_one_dimensional_cast())
    assert outcome.status == REFUSED, outcome.detail
    assert "has 32 bytes of raw data, its shape [2147483648] needs 4294967296" in outcome.detail


def test_external_data_outside_the_folder_is_never_read(worker):
    """The fuzz folder holds a symlink to a file outside it; every way out is refused."""
    tensor = onnx.ModelProto.FromString(seed_bytes()["external"])
    for location in ("../secret.bin", "/etc/passwd", "a/../../secret.bin", LINK_FILE):
        model = onnx.ModelProto()
        model.CopyFrom(tensor)
        entry = next(e for e in model.graph.initializer[0].external_data if e.key == "location")
        entry.value = location
        outcome = worker.check(model.SerializeToString())
        assert outcome.status == REFUSED, (location, outcome)
        assert "outside the model's folder" in outcome.detail or "relative path inside" in outcome.detail
