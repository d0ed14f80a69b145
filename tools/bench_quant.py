"""Latency of irtool's int8 models against fp32 and onnxruntime's own static quantizer.

For each zoo model (ResNet-18 and MobileNetV2 by default, 224x224): export it, fold batch
norms with irtool (the fp32 baseline both quantizers start from), quantize it with irtool's
``quantize`` pass and with ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8
weights, uint8 activations) on the same calibration data, then time all three in onnxruntime
with pinned threads: warm-up runs, then the three models in turn for each timed round, so
a busy neighbour slows them alike. Prints medians, the ratios, and how far each int8 model's
output is from fp32.

Run from the repository root: ``python tools/bench_quant.py [--size 224] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Variant:
    label: str
    model: bytes
    session: object = None
    times: list[float] | None = None
    output: np.ndarray | None = None


def _zoo():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import tests.zoo as zoo

    return zoo


def calibration_data(shape: tuple[int, ...], samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded image-like samples (smooth noise, as natural images are smoother than white noise)."""
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(samples):
        coarse = rng.standard_normal((1, shape[1], shape[2] // 8 + 1, shape[3] // 8 + 1)).astype(np.float32)
        image = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)[:, :, : shape[2], : shape[3]]
        image += 0.3 * rng.standard_normal(image.shape).astype(np.float32)
        data.append({"input": image})
    return data


def build_variants(name: str, size: int, data, calibration: str, folder: Path) -> list[Variant]:
    from irtool.backends.onnx import onnx_bytes
    from irtool.frontends.onnx import load_onnx
    from irtool.passes.base import PassContext, PassManager

    zoo = _zoo()
    exported = zoo.export_onnx(name, folder / f"{name}.onnx", input_shape=(1, 3, size, size))
    graph = load_onnx(exported)
    PassManager("fold-bn").run(graph)
    fp32 = onnx_bytes(graph)
    fp32_path = folder / f"{name}_fp32.onnx"
    fp32_path.write_bytes(fp32)

    start = time.perf_counter()
    PassManager(f"quantize{{calibration={calibration} samples={len(data)}}}").run(graph, PassContext(data=data))
    irtool_int8 = onnx_bytes(graph)
    irtool_seconds = time.perf_counter() - start

    start = time.perf_counter()
    ort_int8 = _ort_quantize(fp32_path, folder / f"{name}_ort_int8.onnx", data, calibration)
    ort_seconds = time.perf_counter() - start
    print(f"{name}: quantized by irtool in {irtool_seconds:.1f} s, by onnxruntime in {ort_seconds:.1f} s", flush=True)
    return [Variant("fp32", fp32), Variant("ort-int8", ort_int8), Variant("irtool-int8", irtool_int8)]


def _ort_quantize(source: Path, target: Path, data, calibration: str) -> bytes:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter(data)

        def get_next(self):
            return next(self.samples, None)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}  # fmt: skip
    quantize_static(
        str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=methods.get(calibration, CalibrationMethod.MinMax),
    )  # fmt: skip
    return target.read_bytes()


def time_variants(variants: list[Variant], feed: dict[str, np.ndarray], threads: int, warmup: int, runs: int) -> None:
    from irtool.backends.onnx import make_session

    for v in variants:
        v.session = make_session(v.model, threads=threads)
        v.times = []
        for _ in range(warmup):
            v.output = v.session.run(None, feed)[0]
    for _ in range(runs):
        for v in variants:
            start = time.perf_counter()
            v.session.run(None, feed)
            v.times.append(time.perf_counter() - start)


COLUMNS = ("model", "fp32 ms", "ort-int8 ms", "irtool-int8 ms", "fp32/irtool", "ort/irtool", "ort err", "irtool err")
WIDTHS = (14, 16, 17, 18, 13, 12, 10, 12)


def _row(cells) -> str:
    return cells[0].ljust(WIDTHS[0]) + "".join(c.rjust(w) for c, w in zip(cells[1:], WIDTHS[1:]))


def report(name: str, variants: list[Variant]) -> str:
    """One table row: median (and fastest) latencies, speed ratios, and output error against fp32."""
    fp32, ort, ours = (statistics.median(v.times) * 1e3 for v in variants)
    fastest = [min(v.times) * 1e3 for v in variants]
    reference = variants[0].output
    scale = float(np.abs(reference).max()) or 1.0

    def error(v: Variant) -> str:
        return f"{float(np.abs(v.output - reference).max()) / scale:.3f}"

    cells = [name]
    cells += [f"{median:.1f} ({low:.1f})" for median, low in zip((fp32, ort, ours), fastest)]
    cells += [f"{fp32 / ours:.2f}x", f"{ort / ours:.2f}x", error(variants[1]), error(variants[2])]
    return _row(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2", help="zoo names, comma separated")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--samples", type=int, default=16, help="calibration samples (default 16)")
    parser.add_argument("--calibration", default="minmax", choices=["minmax", "percentile", "entropy"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30, help="timed rounds (default 30)")
    args = parser.parse_args(argv)

    shape = (1, 3, args.size, args.size)
    data = calibration_data(shape, args.samples, seed=0)
    feed = calibration_data(shape, 1, seed=1)[0]
    lines = [_row(COLUMNS)]
    with tempfile.TemporaryDirectory(prefix="irtool-bench-quant-") as folder:
        for name in args.models.split(","):
            variants = build_variants(name, args.size, data, args.calibration, Path(folder))
            time_variants(variants, feed, args.threads, args.warmup, args.runs)
            lines.append(report(name, variants))
    print(f"\n{args.size}x{args.size}, batch 1, {args.threads} thread(s), {args.calibration} calibration on "
          f"{args.samples} samples; ms: median (fastest) of {args.runs} interleaved runs; "
          f"err: max |int8 - fp32| / max |fp32| on one held-out input")  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
