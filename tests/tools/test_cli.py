"""The show, opt and passes commands: output, numbers, and errors (one line, exit 2, nothing written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from irtool.backends.onnx import run_onnxruntime
from irtool.frontends.onnx import load_onnx
from irtool.passes.cost import graph_cost, human
from irtool.tools.cli import main

SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from tests.zoo import export_onnx

    return Path(export_onnx("resnet18", tmp_path_factory.mktemp("cli") / "resnet18.onnx", input_shape=SHAPE))


@pytest.fixture(scope="module")
def feeds():
    from tests.zoo import ZOO

    return {"input": ZOO["resnet18"].example_input(SHAPE).numpy()}


def _fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# -- passes -----------------------------------------------------------------------------------
def test_passes_lists_every_pass_with_its_options(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in ("dce", "const-fold", "fold-bn", "prune", "quantize"):
        assert any(line.startswith(f"{name} ") for line in out.splitlines()), name
    assert "    max-elements: int (default 1000000)" in out
    assert "analyses: channels, cost" in out


def test_passes_describes_one_pass(capsys):
    assert main(["passes", "const-fold"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("const-fold") and len(lines) == 3


# -- show -------------------------------------------------------------------------------------
def test_show_summary_matches_the_cost_analysis(model, capsys):
    assert main(["show", str(model), "--summary-only"]) == 0
    out = capsys.readouterr().out.strip()
    cost = graph_cost(load_onnx(model))
    assert out == cost.format()
    assert cost.by_op["Conv"] == 20 and cost.by_op["BatchNormalization"] == 20
    from tests.zoo import ZOO
    from tests.zoo.macs import count_macs

    reference = count_macs(ZOO["resnet18"].build(), SHAPE)
    assert cost.macs == reference
    assert f"MACs: {human(reference)}" in out and human(reference) == "37.52 M"


def test_show_prints_the_ir_then_the_summary(model, capsys):
    assert main(["show", str(model)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph @")
    assert out.count(" = Conv(") == 20
    assert out.rstrip().endswith(graph_cost(load_onnx(model)).format().splitlines()[-1])


def test_show_groups(model, capsys):
    from irtool.passes.dependency import analyze_channels

    assert main(["show", str(model), "--summary-only", "--groups"]) == 0
    out = capsys.readouterr().out
    assert analyze_channels(load_onnx(model)).format() in out
    assert out.rstrip().endswith(graph_cost(load_onnx(model)).format())


# -- opt --------------------------------------------------------------------------------------
def test_opt_runs_the_pipeline_and_writes_an_equivalent_model(model, feeds, tmp_path, capsys):
    out_path = tmp_path / "folded.onnx"
    assert main(["opt", "-p", "const-fold,fold-bn,dce", str(model), "-o", str(out_path), "--timing"]) == 0
    out = capsys.readouterr().out
    assert "fold-bn: folded 20 batch norms (20 into Conv)" in out
    assert "const-fold: no change" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert rows["nodes"][1:] == ["69", "49", "-29.0%"]
    assert rows["MACs"][-1] == "0.0%"
    assert "total" in rows and f"wrote {out_path}" in out

    written = onnx.load(out_path)
    assert not [n for n in written.graph.node if n.op_type == "BatchNormalization"]
    expected = run_onnxruntime(str(model), feeds)[0]
    got = run_onnxruntime(str(out_path), feeds)[0]
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_opt_without_output_is_a_dry_run(model, tmp_path, capsys):
    before = _fingerprint(model)
    assert main(["opt", "-p", "fold-bn", str(model)]) == 0
    assert "fold-bn: folded 20 batch norms" in capsys.readouterr().out
    assert _fingerprint(model) == before


def test_opt_prints_ir_after_each_pass(model, capsys):
    assert main(["opt", "-p", "fold-bn,dce", str(model), "--print-ir-after-all", "--verify-each"]) == 0
    out = capsys.readouterr().out
    assert out.count("// -----// IR after ") == 2
    assert out.count(" = BatchNormalization(") == 0


def test_opt_verify_runs_the_oracle(model, tmp_path, capsys):
    out_path = tmp_path / "pruned.onnx"
    assert main(["opt", "-p", "fold-bn,prune{sparsity=0.5},dce", str(model), "-o", str(out_path), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "oracle: " in out and "\nequivalent\n" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert float(rows["MACs"][-1].rstrip("%")) < -50
    assert out_path.exists()


def _input_scales(path: Path) -> dict[str, float]:
    """The scale of the QuantizeLinear on each graph input of a quantized model."""
    model = onnx.load(path)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inputs]
    return {n.input[0]: float(constants[n.input[1]]) for n in quantizers}


def test_opt_data_calibrates_quantize(model, tmp_path, capsys):
    rows = np.random.default_rng(0).uniform(-2, 2, (8, 3, 32, 32)).astype(np.float32)
    rows[0, 0, 0, :2] = [-2.0, 2.0]
    np.savez(tmp_path / "calib.npz", input=rows, labels=np.arange(8))
    calibrated, guessed = tmp_path / "calibrated.onnx", tmp_path / "random.onnx"
    pipeline = "quantize{calibration=minmax}"
    assert main(["opt", "-p", pipeline, str(model), "--data", str(tmp_path / "calib.npz"), "-o", str(calibrated)]) == 0
    assert "minmax calibration over 8 samples of user data" in capsys.readouterr().out
    assert main(["opt", "-p", pipeline, str(model), "-o", str(guessed)]) == 0
    assert "minmax calibration over 32 random inputs" in capsys.readouterr().out
    # uint8 activations over [-2, 2]: scale 4 / 255; random normal inputs reach further.
    assert _input_scales(calibrated) == {"input": pytest.approx(4 / 255)}
    assert _input_scales(guessed)["input"] > 0.03


def _two_input_model(path: Path) -> Path:
    """y = Conv(a) + Conv(b), 1x1 convs on (N, 2, 4, 4) inputs."""
    ones = onnx.numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    nodes = [
        onnx.helper.make_node("Conv", ["a", "w"], ["ca"], name="conv_a"),
        onnx.helper.make_node("Conv", ["b", "w"], ["cb"], name="conv_b"),
        onnx.helper.make_node("Add", ["ca", "cb"], ["y"], name="add"),
    ]
    io = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", 2, 4, 4]) for n in ("a", "b", "y")]
    graph = onnx.helper.make_graph(nodes, "two_inputs", io[:2], io[2:], [ones])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    return path


def test_opt_data_feeds_each_input_by_name(tmp_path, capsys):
    model = _two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    rows = {name: rng.uniform(0, top, (5, 2, 4, 4)).astype(np.float32) for name, top in (("b", 3.0), ("a", 1.0))}
    for name, top in (("a", 1.0), ("b", 3.0)):
        rows[name][0, 0, 0, :2] = [0.0, top]
    np.savez(tmp_path / "calib.npz", **rows)
    out = tmp_path / "q.onnx"
    argv = ["opt", "-p", "quantize{calibration=minmax}", str(model), "--data", str(tmp_path / "calib.npz"), "-o", str(out)]
    assert main(argv) == 0
    assert "over 5 samples of user data" in capsys.readouterr().out
    assert _input_scales(out) == {"a": pytest.approx(1 / 255), "b": pytest.approx(3 / 255)}


def test_opt_data_errors_are_one_line_exit_2_and_write_nothing(model, tmp_path, capsys):
    rows = np.zeros((4, 3, 32, 32), np.float32)
    files = {
        "shape.npz": {"input": np.zeros((4, 3, 16, 16), np.float32)},
        "dtype.npz": {"input": rows.astype(np.int64)},
        "names.npz": {"image": rows, "depth": rows[:, :1]},
        "typo.npz": {"input": rows, "lables": np.arange(4)},
        "rows.npz": {"input": rows, "labels": np.arange(5)},
    }
    for name, arrays in files.items():
        np.savez(tmp_path / name, **arrays)
    (tmp_path / "text.npz").write_text("input,label\n")
    (tmp_path / "rows.csv").write_text("input,label\n")
    expected = {
        "missing.npz": "does not exist",
        "rows.csv": "is not a .npz or .npy file",
        "text.npz": "is not a NumPy .npz file",
        "shape.npz": "array 'input' has shape (4, 3, 16, 16), input 'input' takes (N, 3, 32, 32) for N rows",
        "dtype.npz": "array 'input' has dtype int64, input 'input' takes float32",
        "names.npz": "has no array for input 'input' (arrays: depth, image)",
        "typo.npz": "array 'lables' is neither a model input (input) nor 'labels'",
        "rows.npz": "arrays have different row counts: input 'input' 4, labels 5",
    }
    before = _fingerprint(model)
    out = tmp_path / "out.onnx"
    for name, problem in expected.items():
        data = tmp_path / name
        assert main(["opt", "-p", "quantize", str(model), "--data", str(data), "-o", str(out)]) == 2, name
        assert capsys.readouterr().err == f"irtool: opt: data '{data}': {problem}\n"
        assert not out.exists()
    assert _fingerprint(model) == before


def _error_cases(model: Path, tmp: Path) -> list[tuple[list[str], str]]:
    text_file = tmp / "notes.onnx"
    text_file.write_text("this is not a model\n")
    truncated = tmp / "truncated.onnx"
    truncated.write_bytes(model.read_bytes()[:4000])
    out = str(tmp / "out.onnx")
    m = str(model)
    return [
        (["opt", "-p", "prnue", m, "-o", out], "irtool: opt: unknown pass 'prnue' (did you mean 'prune'?)"),
        (["opt", "-p", "fold-bn{x=1}", m, "-o", out], "irtool: opt: unknown option 'x' for pass fold-bn; options: none"),
        (
            ["opt", "-p", "const-fold{max-elements=big}", m, "-o", out],
            "irtool: opt: const-fold: option 'max-elements' expects an int, got 'big'",
        ),
        (
            ["opt", "-p", "dce{", m, "-o", out],
            "irtool: opt: malformed pipeline at column 5: expected '}' to close the options of 'dce'",
        ),
        (["opt", "-p", "dce", str(tmp / "missing.onnx"), "-o", out], "irtool: opt: model '"),
        (["opt", "-p", "dce", str(text_file), "-o", out], f"irtool: opt: {text_file}: "),
        (["opt", "-p", "dce", str(truncated), "-o", out], f"irtool: opt: {truncated}: "),
        (["opt", "-p", "dce", m, "-o", str(tmp / "no" / "such" / "out.onnx")], "irtool: opt: output folder"),
        (["opt", "-p", "bogus", str(tmp / "missing.onnx"), "-o", out], "irtool: opt: unknown pass 'bogus'"),
        (["show", str(truncated)], f"irtool: show: {truncated}: "),
    ]


def test_errors_are_one_line_exit_2_and_write_nothing(model, tmp_path, capsys):
    before = _fingerprint(model)
    for argv, message in _error_cases(model, tmp_path):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.err.startswith(message), (argv, captured.err)
        assert captured.err.count("\n") == 1, captured.err
        assert not (tmp_path / "out.onnx").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]
    assert _fingerprint(model) == before


def test_exit_codes_from_a_real_process(model, tmp_path):
    before = _fingerprint(model)
    for argv, message in _error_cases(model, tmp_path)[:7]:
        proc = subprocess.run(
            [sys.executable, "-m", "irtool.tools.cli", *argv],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stdout == ""
        assert not (tmp_path / "out.onnx").exists()
    assert _fingerprint(model) == before
