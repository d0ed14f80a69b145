"""``irtool analyze``: the sensitivity table, the JSON the budget chooser reads, the plot, and
the latency table."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from irtool.ir.errors import IrtoolError
from irtool.passes.budget import choose_channels
from irtool.passes.cost import graph_cost
from irtool.passes.dependency import analyze_channels
from irtool.passes.sensitivity import load_sensitivity
from irtool.tools import cmd_analyze
from irtool.tools.model_io import save_model
from tests.passes.test_latency import _prune_to, tiny_graph


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cmd_analyze.add_arguments(parser)
    return cmd_analyze.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("analyze") / "tiny.onnx"
    save_model(tiny_graph(), path)
    return path


def test_sensitivity_table_json_and_plot(model_file, tmp_path, capsys):
    table, plot = tmp_path / "sens.json", tmp_path / "sens.png"
    assert _run([str(model_file), "--sensitivity", "--sparsities", "0.25,0.5,0.75", "--json", str(table), "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    graph = tiny_graph()
    prunable = [g for g in analyze_channels(graph).groups if g.prunable]
    assert len(lines) == 1 + len(prunable)
    assert "dev@0.25" in lines[0] and "top1@0.75" in lines[0]
    raw = json.loads(table.read_text())
    assert len(raw["groups"]) == len(prunable)
    for entry in raw["groups"].values():
        sparsities = [s for s, _ in entry["points"]]
        deviations = [d for _, d in entry["points"]]
        assert sparsities == [0.25, 0.5, 0.75]
        assert all(d > 0 for d in deviations)  # random weights: every cut changes the output
        assert deviations[-1] >= deviations[0] * 0.5  # more pruning does not come out much better
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the file feeds the chooser, which still meets its MAC target exactly
    analysis = analyze_channels(graph)
    sensitivity = load_sensitivity(table, analysis)
    keep = choose_channels(graph, analysis, target_macs=0.5, sensitivity=sensitivity)
    assert graph_cost(_prune_to(graph, keep)).macs <= 0.5 * graph_cost(graph).macs


def test_sensitivity_on_given_data(model_file, tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32))
    assert _run([str(model_file), "--sensitivity", "--sparsities", "0.5", "--data", str(data)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    deviations = [float(row.split()[3]) for row in rows]
    assert len(deviations) >= 3 and all(d > 0 for d in deviations)


def test_bad_arguments(model_file, tmp_path):
    with pytest.raises(IrtoolError, match="give --sensitivity or --latency"):
        _run([str(model_file)])
    with pytest.raises(IrtoolError, match="in \\(0, 1\\)"):
        _run([str(model_file), "--sensitivity", "--sparsities", "0.5,1.5"])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(IrtoolError, match="unreadable"):
        load_sensitivity(bad)


def test_latency_table(model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IRTOOL_CACHE_DIR", str(tmp_path))
    assert _run([str(model_file), "--latency"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "latency model: ort, 1 thread(s), 6 layers"
    rows = lines[lines.index(next(l for l in lines if l.startswith("layer "))) + 1 :]
    assert len(rows) == 6
    assert all(row.split()[-1].startswith("1.000:") for row in rows)  # every layer timed at full width
    assert len(list(tmp_path.glob("latency-ort-1-*.json"))) == 1
