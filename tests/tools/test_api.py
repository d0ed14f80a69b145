"""The Python API: ``optimize`` returns artifacts, metrics and the per-pass log as data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from irtool.backends.onnx import run_onnxruntime
from irtool.frontends.onnx import load_onnx
from irtool.ir.errors import IrtoolError
from irtool.passes.cost import graph_cost
from irtool.passes.data import digits
from irtool.tools.api import Measure, OptimizeResult, optimize

FAST = Measure(runs=3, warmup=1, accuracy=False)


def digits_cnn(path: Path, *, seed: int = 0, batch="N") -> Path:
    """Conv(1->8)-ReLU-Conv(8->16, stride 2)-ReLU-GAP-Gemm(10) for 8x8 digits, random weights."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(f32) * 0.5, "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(f32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(f32) * 0.2, "w2"),
        numpy_helper.from_array(rng.standard_normal(16).astype(f32) * 0.1, "b2"),
        numpy_helper.from_array(rng.standard_normal((10, 16)).astype(f32), "fc"),
        numpy_helper.from_array(np.zeros(10, f32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return digits_cnn(tmp_path_factory.mktemp("api") / "digits_cnn.onnx")


@pytest.fixture(scope="module")
def test_rows():
    return digits("test", size=8)


def _accuracy_of(path: Path, dataset) -> float:
    batch = dataset.arrays()
    logits = run_onnxruntime(path, {"x": batch.inputs[0]})[0]
    return float((logits.argmax(1) == batch.labels).mean())


def test_optimize_prunes_writes_and_reports_as_data(model, tmp_path):
    result = optimize(
        model, "prune{sparsity=0.5}", targets=("onnx",), output_dir=tmp_path, measure=Measure(runs=3, warmup=1, verify=True)
    )
    assert isinstance(result, OptimizeResult)
    written = result.artifacts["onnx"]
    assert written == tmp_path / "digits_cnn.onnx" and written.is_file()
    before, after = graph_cost(load_onnx(model)), graph_cost(load_onnx(written))
    assert (result.original.params, result.original.macs) == (before.params, before.macs)
    assert (result.optimized.params, result.optimized.macs) == (after.params, after.macs)
    # conv1 8 -> 4 and conv2 16 -> 8 channels; the classifier keeps its 10 outputs.
    assert after.params == 4 * 9 + 4 + 8 * 4 * 9 + 8 + 10 * 8 + 10
    assert result.change()["params"] == pytest.approx(after.params / before.params - 1)
    assert [p.name for p in result.passes] == ["prune"]
    assert result.passes[0].modified and result.passes[0].params == after.params
    assert any(line.startswith("removed 12 of 24 channels") for line in result.passes[0].messages)
    assert result.optimized.file_bytes["onnx"] == written.stat().st_size
    for metrics in (result.original, result.optimized):
        latency = metrics.latency["onnx"]
        assert 0 < latency.p10_ms <= latency.median_ms <= latency.p90_ms and latency.runs == 3
    check = result.verification
    assert check["ok"] and check["channels_removed"] == 12
    assert all(o["max_abs_diff"] <= 1e-4 * o["scale"] for o in check["outputs"])


def test_pipeline_forms_are_the_same_run(model, tmp_path):
    from irtool.passes.pipeline import parse_pipeline

    text = "prune{criterion=l2 sparsity=0.25},dce"
    steps = [{"type": "prune", "parameters": {"sparsity": 0.25, "criterion": "l2"}}, {"type": "dce"}]
    results = [
        optimize(model, form, targets="onnx", output_dir=tmp_path / str(i), measure=Measure(latency=False, accuracy=False, baseline=False))
        for i, form in enumerate([text, steps, parse_pipeline(text)])
    ]
    assert {r.pipeline for r in results} == {text}
    assert len({r.optimized.params for r in results}) == 1
    files = [r.artifacts["onnx"].read_bytes() for r in results]
    assert files[0] == files[1] == files[2]


def test_data_drives_criteria_and_calibration_and_accuracy_is_measured(model, tmp_path, test_rows):
    train = digits("train", size=8)
    result = optimize(
        model,
        "prune{sparsity=0.5 criterion=apoz},quantize{samples=64}",
        data=train,
        eval_data=test_rows,
        targets=("onnx",),
        output_dir=tmp_path,
        measure=Measure(runs=3, warmup=1),
    )
    assert result.optimized.accuracy == pytest.approx(_accuracy_of(result.artifacts["onnx"], test_rows))
    assert result.original.accuracy == pytest.approx(_accuracy_of(model, test_rows))
    assert result.optimized.accuracy_samples == len(test_rows) == 360
    quantized = onnx.load(result.artifacts["onnx"])
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) >= 3
    assert any("64 samples of user data" in line for line in result.passes[1].messages)
    assert not any("random inputs" in w for w in result.warnings)


def test_data_may_be_an_npz_file_or_arrays_by_input_name(model, tmp_path):
    rows = np.random.default_rng(0).uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    rows[0, 0, 0, :2] = [-1.0, 1.0]
    np.savez(tmp_path / "calib.npz", x=rows, labels=np.zeros(16, np.int64))
    options = {"targets": "onnx", "measure": Measure(latency=False, accuracy=False, baseline=False)}
    pipeline = "quantize{calibration=minmax}"
    from_file = optimize(model, pipeline, data=tmp_path / "calib.npz", output_dir=tmp_path / "file", **options)
    from_arrays = optimize(model, pipeline, data={"x": rows}, output_dir=tmp_path / "arrays", **options)
    assert any("minmax calibration over 16 samples of user data" in m for m in from_file.passes[0].messages)
    assert from_file.artifacts["onnx"].read_bytes() == from_arrays.artifacts["onnx"].read_bytes()
    quantized = onnx.load(from_file.artifacts["onnx"])
    constants = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    (first,) = [n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    assert float(constants[first.input[1]]) == pytest.approx(2 / 255)  # uint8 over [-1, 1]

    out = tmp_path / "out"
    with pytest.raises(IrtoolError, match=r"data '.*missing\.npz': does not exist"):
        optimize(model, pipeline, data=tmp_path / "missing.npz", output_dir=out, **options)
    with pytest.raises(IrtoolError, match=r"data 'arrays': array 'x' has shape \(16, 8, 8\), input 'x' takes \(N, 1, 8, 8\)"):
        optimize(model, pipeline, data={"x": rows[:, 0]}, output_dir=out, **options)
    assert not out.exists()


def test_torch_module_with_example_inputs(tmp_path):
    torch = pytest.importorskip("torch")
    from irtool.tools.demo import digits_resnet

    module = digits_resnet(widths=(8, 16), seed=1).eval()
    x = torch.randn(2, 1, 8, 8)
    result = optimize(module, "fold-bn,prune{sparsity=0.5}", example_inputs=x, targets="onnx", output_dir=tmp_path, measure=FAST)
    out = run_onnxruntime(result.artifacts["onnx"], {result.graph.inputs[0].name: x.numpy()})[0]
    assert out.shape == (2, 10)
    assert result.optimized.macs < 0.4 * result.original.macs
    assert [p.name for p in result.passes] == ["fold-bn", "prune"]
    assert result.passes[0].macs == result.original.macs  # folding BN into convs changes no MACs


def test_tvm_target_builds_a_library_that_agrees(model, tmp_path):
    pytest.importorskip("tvm")
    from irtool.backends.tvm import load_compiled

    result = optimize(
        model, "prune{sparsity=0.5}", targets=("onnx", "tvm"), output_dir=tmp_path, measure=Measure(runs=3, warmup=1, baseline=False)
    )
    library = result.artifacts["tvm"]
    assert library.suffix == ".so" and result.optimized.file_bytes["tvm"] == library.stat().st_size
    x = np.random.default_rng(3).standard_normal((1, 1, 8, 8)).astype(np.float32)
    expected = run_onnxruntime(result.artifacts["onnx"], {"x": x})[0]
    got = load_compiled(library).run([x])[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert result.optimized.max_abs_diff["tvm"] <= 1e-3  # on the measured feed; logits are of order 1
    assert result.optimized.latency["tvm"].median_ms > 0 and "tvm" not in result.original.latency


def test_graph_argument_is_not_changed(model, tmp_path):
    graph = load_onnx(model)
    before = graph_cost(graph).params
    result = optimize(graph, "prune{sparsity=0.5}", targets="onnx", output_dir=tmp_path, measure=FAST)
    assert graph_cost(graph).params == before
    assert result.optimized.params < before


def test_measurements_are_json_valid_against_the_schema(model, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from irtool.tools.plugin import IrtoolPlugin

    result = optimize(model, "prune{sparsity=0.5},quantize", targets="onnx", output_dir=tmp_path, measure=FAST)
    document = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    jsonschema.validate(document, IrtoolPlugin.measurements_schema())
    assert document["optimized"]["params"] == result.optimized.params
    assert [p["name"] for p in document["passes"]] == ["prune", "quantize"]


@pytest.mark.parametrize(
    ("pipeline", "targets", "message"),
    [
        ("prnue{sparsity=0.5}", "onnx", "unknown pass 'prnue' (did you mean 'prune'?)"),
        ("prune{sparsity=1.5}", "onnx", "sparsity 1.5 is outside [0, 1)"),
        ([{"type": "prune", "parameters": {"sparsity": "half"}}], "onnx", "option 'sparsity' expects a float, got 'half'"),
        ("dce", "tensorrt", "unknown target 'tensorrt'; targets: onnx, tvm"),
    ],
)
def test_bad_input_fails_before_writing(model, tmp_path, pipeline, targets, message):
    out = tmp_path / "out"
    with pytest.raises(IrtoolError) as error:
        optimize(model, pipeline, targets=targets, output_dir=out, measure=FAST)
    assert message in str(error.value)
    assert not out.exists()


def test_missing_model_and_missing_example_inputs(tmp_path):
    with pytest.raises(IrtoolError, match="model '.*nothing.onnx' does not exist"):
        optimize(tmp_path / "nothing.onnx", "dce", output_dir=tmp_path / "out")
    torch = pytest.importorskip("torch")
    with pytest.raises(IrtoolError, match="needs example_inputs"):
        optimize(torch.nn.Linear(2, 2), "dce", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_optimize_is_exported_from_the_package():
    import irtool
    from irtool.tools import api

    if not hasattr(irtool, "optimize"):
        pytest.xfail("irtool/__init__.py does not re-export optimize yet")
    assert irtool.optimize is api.optimize
