"""``irtool verify`` and ``irtool draw`` from the command line, on a zoo model exported to ONNX."""

from __future__ import annotations

import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from irtool.tools.cli import main
from tests.zoo import export_onnx


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return export_onnx("resnet18", folder / "resnet18.onnx")


@pytest.fixture(scope="module")
def pruned(resnet18, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "pruned.onnx"
    assert main(["opt", "-p", "const-fold,dce,prune{sparsity=0.5 criterion=l2}", str(resnet18), "-o", str(out)]) == 0
    return out


def test_verify_accepts_a_faithful_prune(resnet18, pruned, capsys):
    assert main(["verify", str(resnet18), str(pruned), "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "oracle: 1440 removed channels in 12 groups, 3 random inputs" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("output ") and line.endswith("ok"))
    diff, scale = (float(x) for x in row.split()[1:3])
    assert diff <= 1e-4 * scale
    assert out.splitlines()[-1] == "equivalent"


def test_verify_rejects_a_tampered_model(resnet18, pruned, tmp_path, capsys):
    model = onnx.load(str(pruned))
    weight = next(t for t in model.graph.initializer if t.name == "layer3.1.conv2.weight")
    array = numpy_helper.to_array(weight).copy()
    array[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    bad = tmp_path / "tampered.onnx"
    onnx.save(model, str(bad))
    assert main(["verify", str(resnet18), str(bad)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "NOT equivalent"


def test_opt_verify_runs_the_oracle(resnet18, capsys):
    assert main(["opt", "-p", "const-fold,dce,prune{sparsity=0.3 scope=global}", str(resnet18), "--verify"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"prune: removed \d+ of 2880 channels in 12 groups", out)
    assert out.rstrip().endswith("equivalent")


def test_verify_bad_arguments_are_one_line_errors(resnet18, pruned, capsys):
    assert main(["verify", str(resnet18), str(pruned), "--trials", "0"]) == 2
    assert capsys.readouterr().err.strip() == "irtool: verify: --trials must be at least 1, not 0"


def test_draw_writes_dot_with_one_colour_per_group(resnet18, tmp_path, capsys):
    out = tmp_path / "graph.dot"
    assert main(["draw", str(resnet18), "-o", str(out), "--groups"]) == 0
    text = out.read_text()
    nodes = re.findall(r"^  n\d+ \[label=\"([^\"]*)\"", text, flags=re.M)
    assert len(nodes) == 69 and "layer4.1.conv1\\nConv" in nodes
    fills = dict(re.findall(r"label=\"([^\\\"]+)\\n\w+\", fillcolor=\"(#[0-9a-f]{6})\"", text))
    assert fills["conv1"] == fills["layer1.0.conv2"] != fills["layer1.0.conv1"]
    assert len(set(fills.values())) == 13  # 12 prunable groups and the grey of the blocked fc group
    assert "12: layer4.1.conv1 (512 ch, prunable)" in text and "13: fc (1000 ch, blocked: reaches graph output" in text
    assert len(re.findall(r" -> ", text)) == 78  # 69 nodes, 8 residual adds take two, one to the output
    assert f"wrote {out}" in capsys.readouterr().out


def test_draw_svg_needs_graphviz(resnet18, tmp_path, capsys):
    out = tmp_path / "graph.svg"
    code = main(["draw", str(resnet18), "-o", str(out)])
    assert (tmp_path / "graph.dot").exists()
    if shutil.which("dot") is None:
        assert code == 2 and not out.exists()
        assert "needs Graphviz's 'dot' program, which is not on PATH" in capsys.readouterr().err
    else:
        assert code == 0 and "<svg" in out.read_text()


def test_draw_refuses_other_formats(resnet18, tmp_path, capsys):
    assert main(["draw", str(resnet18), "-o", str(tmp_path / "graph.pdf")]) == 2
    assert "must end in .dot, .svg or .png" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
