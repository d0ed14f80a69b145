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
