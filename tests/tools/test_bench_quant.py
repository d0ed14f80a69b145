"""The int8 latency benchmark runs end to end on a small input and prints its table."""

from __future__ import annotations

import re

from irtool.tools import bench_quant


def test_bench_quant_prints_one_row_per_model_with_latencies_and_ratios(capsys):
    arguments = ["--models", "resnet18", "--size", "32", "--samples", "2", "--warmup", "1", "--runs", "3"]
    assert bench_quant.main(arguments) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("resnet18 "))
    numbers = [float(n) for n in re.findall(r"\d+\.\d+", row)]
    assert len(numbers) == 10  # three (median, fastest) latencies, two ratios, two errors
    assert all(n > 0 for n in numbers[:8])
    assert numbers[-1] < 0.2  # irtool's int8 output stays close to fp32
    assert "fp32/irtool" in out and "ort/irtool" in out
