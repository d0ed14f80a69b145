"""Latency measurement, ``irtool bench`` and the sparsity sweep: numbers, files and clear errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from irtool.backends.bench import (
    BenchRequest,
    LatencyStats,
    measure_interleaved,
    measure_latency,
    parse_backends,
    parse_threads,
    run_isolated,
)
from irtool.frontends.onnx import load_onnx
from irtool.ir.errors import IrtoolError
from irtool.passes.cost import graph_cost
from irtool.tools.cli import main


def conv_net(path: Path, width: int) -> Path:
    """conv 3x3 (3 -> width) -> relu -> conv 1x1 (width -> 8) on 1x3x32x32: MACs grow with width."""
    rng = np.random.default_rng(width)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["y"]),
    ]
    weights = [
        numpy_helper.from_array(rng.standard_normal((width, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, width, 1, 1)).astype(np.float32), "w2"),
    ]
    graph = helper.make_graph(
        nodes,
        f"net{width}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])],
        weights,
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bench")
    return conv_net(folder / "wide.onnx", 64), conv_net(folder / "narrow.onnx", 16)


# -- measuring ---------------------------------------------------------------------------------
def test_latency_stats_are_percentiles_in_milliseconds():
    stats = LatencyStats.of([i / 1000 for i in range(1, 12)])  # 1 ms .. 11 ms
    assert (stats.p10, stats.median, stats.p90, stats.runs) == pytest.approx((2.0, 6.0, 10.0, 11))


def test_measure_latency_times_each_run_after_warmup():
    calls = []

    def run(inputs):
        calls.append(inputs)
        time.sleep(0.003)

    stats = measure_latency(run, "in", warmup=2, runs=5)
    assert len(calls) == 7 and set(calls) == {"in"}
    assert stats.runs == 5
    assert 3.0 <= stats.p10 <= stats.median <= stats.p90 < 50.0


def test_interleaved_rounds_alternate_between_models():
    order = []
    calls = [lambda: order.append("a"), lambda: order.append("b")]
    stats = measure_interleaved(calls, warmup=1, runs=4, rounds=2)
    assert [s.runs for s in stats] == [4, 4]
    assert "".join(order) == "ab" + "aabb" + "aabb"


def test_backend_and_thread_lists_are_validated():
    assert parse_backends("ort, TVM,ort") == ["ort", "tvm"]
    assert parse_threads("1,2,1") == [1, 2]
    with pytest.raises(IrtoolError, match="unknown backend 'cuda'; choose from ort, tvm"):
        parse_backends("ort,cuda")
    with pytest.raises(IrtoolError, match="threads '0' must be counts of at least 1"):
        parse_threads("0")


def test_isolated_run_measures_every_model_and_reports_progress(nets):
    steps = []
    request = BenchRequest("ort", 1, [str(p) for p in nets], warmup=1, runs=4, rounds=2)
    stats = run_isolated(request, progress=steps.append)
    assert len(stats) == 2 and all(s.runs == 4 and 0 < s.p10 <= s.median <= s.p90 for s in stats)
    assert len(steps) == request.steps() == 6


def test_isolated_run_reports_a_bad_model_as_one_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(IrtoolError, match="bad.onnx"):
        run_isolated(BenchRequest("ort", 1, [str(bad)], warmup=0, runs=1))


# -- irtool bench ------------------------------------------------------------------------------
def test_bench_json_report_and_plot(nets, tmp_path, capsys):
    wide, narrow = nets
    report, plot = tmp_path / "report.md", tmp_path / "latency.png"
    argv = ["bench", str(wide), str(narrow), "--backend", "ort,tvm", "--threads", "1", "--runs", "6", "--warmup", "1"]
    assert main(argv + ["--rounds", "2", "--json", "--report", str(report), "--plot", str(plot)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["backend"]) for r in rows] == [("wide", "ort"), ("narrow", "ort"), ("wide", "tvm"), ("narrow", "tvm")]
    macs = {p.stem: graph_cost(load_onnx(p)).macs for p in nets}
    for row in rows:
        assert row["threads"] == 1 and row["runs"] == 6
        assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["macs"] == macs[row["model"]] and row["size_bytes"] == Path(row["file"]).stat().st_size
    for first, second in (rows[0:2], rows[2:4]):
        assert first["speedup"] == 1.0
        assert second["speedup"] == pytest.approx(first["median_ms"] / second["median_ms"])
        assert first["mac_reduction"] == 1.0 and second["mac_reduction"] == 4.0
        assert second["latency_efficiency"] == pytest.approx(second["speedup"] / 4.0)
    assert macs["wide"] == 4 * macs["narrow"]
    table = report.read_text().splitlines()
    assert sum(line.startswith("| wide") or line.startswith("| narrow") for line in table) == 4
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_table(nets, capsys):
    assert main(["bench", str(nets[1]), "--runs", "2", "--warmup", "0", "--rounds", "1"]) == 0
    header, rule, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["model", "backend", "threads", "median", "ms", "p10", "ms", "p90", "ms", "MACs", "params", "size", "speedup", "MAC", "cut", "efficiency"]
    assert row.split()[:3] == ["narrow", "ort", "1"] and row.split()[-3:] == ["1.00x", "1.00x", "1.00"]


def _one_line_exit_2(args: list[str], env: dict | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "irtool.tools.cli", "bench", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bench_unknown_backend_is_one_line(nets):
    assert _one_line_exit_2([str(nets[0]), "--backend", "ort,cuda"]) == "irtool: bench: unknown backend 'cuda'; choose from ort, tvm"


def test_bench_missing_model_is_one_line(tmp_path):
    missing = tmp_path / "missing.onnx"
    assert _one_line_exit_2([str(missing)]) == f"irtool: bench: model '{missing}' does not exist"


def test_bench_without_tvm_is_one_line(nets, tmp_path):
    # A 'tvm' package that fails to import shadows the installed one, as if TVM were absent.
    fake = tmp_path / "no_tvm" / "tvm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named tvm')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    line = _one_line_exit_2([str(nets[0]), "--backend", "tvm"], env=env)
    assert line == "irtool: bench: TVM is not installed (pip install 'irtool[tvm]')"


# -- the sparsity sweep ------------------------------------------------------------------------
def test_sweep_writes_speedup_against_mac_reduction(tmp_path, capsys):
    from irtool.tools import bench_sweep

    out = tmp_path / "sweep"
    argv = ["--models", "resnet18", "--size", "32", "--sparsities", "0,0.5", "--backend", "ort", "--threads", "1"]
    assert bench_sweep.main(argv + ["--runs", "4", "--warmup", "1", "--rounds", "2", "--out", str(out)]) == 0
    with open(f"{out}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], float(r["sparsity"]), int(r["round_to"])) for r in rows] == [
        ("resnet18", 0.0, 1), ("resnet18", 0.5, 1), ("resnet18", 0.5, 8)
    ]  # fmt: skip
    base, pruned, aligned = rows
    assert int(aligned["macs"]) == int(pruned["macs"])  # half of 64..512 channels is a multiple of 8 already
    assert float(base["mac_reduction"]) == 1.0 and float(base["speedup"]) == 1.0
    assert float(pruned["mac_reduction"]) > 2.0  # half the channels of most layers: about a quarter of the MACs
    assert int(base["macs"]) / int(pruned["macs"]) == pytest.approx(float(pruned["mac_reduction"]), rel=1e-3)
    ratio = float(base["median_ms"]) / float(pruned["median_ms"])
    assert float(pruned["speedup"]) == pytest.approx(ratio, rel=1e-2)
    assert Path(f"{out}.png").read_bytes()[:4] == b"\x89PNG"


def test_pruned_resnet50_has_the_layers_of_resnet50_built_narrow(tmp_path, capsys):
    from irtool.tools import bench_native

    models = bench_native.build(32, 0.5, tmp_path)
    (_, _, full), (_, _, pruned), (_, _, narrow) = models
    assert pruned == narrow and full / pruned == pytest.approx(3.80, abs=0.01)  # 3.89 at 224x224: the fc weighs more at 32x32
    assert bench_native.main(["--size", "32", "--threads", "1", "--runs", "2", "--rounds", "1"]) == 0
    assert "pruned / narrow" in capsys.readouterr().out
    assert bench_native.main(["--sparsity", "1.5"]) == 2
