"""Bad input through the command line: each is refused with one line saying what and where, and
nothing is written. External data must stay inside the model's folder; outputs are atomic, so an
interrupted run leaves no partial file; models over protobuf's 2 GB limit go through external data.

The 2 GB case runs in CI with the backend's external-data threshold lowered (the same code path
with kilobytes instead of gigabytes); ``IRTOOL_SLOW_TESTS=1`` also runs it with a real 2.2 GB
weight (needs about 7 GB of memory and 5 GB of disk).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import irtool.backends.onnx as onnx_backend
from irtool.backends.onnx import make_session, run_onnxruntime
from irtool.frontends.onnx import load_onnx
from irtool.tools.cli import main

from .test_api import digits_cnn

REPO = Path(__file__).resolve().parents[2]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _refused(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit status 2 and one line on stderr; return that line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


# -- external data that escapes the model's folder ------------------------------------------------------
def _external_model(folder: Path, location: str) -> Path:
    """``folder/model/m.onnx`` whose weight is external data at ``location``; ``folder/secret.bin``
    holds valid data for it, so only the location can make loading fail."""
    weight = np.arange(16, dtype=np.float32).reshape(4, 4)
    (folder / "secret.bin").write_bytes(weight.tobytes())
    model_dir = folder / "model"
    model_dir.mkdir()
    (model_dir / "link.bin").symlink_to(Path("..") / "secret.bin")
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4], data_location=TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value=location)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "escape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [tensor],
    )
    path = model_dir / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../secret.bin", "external data location '../secret.bin' must be a relative path inside the model's folder"),
        ("sub/../../secret.bin", "must be a relative path inside the model's folder"),
        ("{folder}/secret.bin", "must be a relative path inside the model's folder"),
        ("link.bin", "external data location 'link.bin' leads outside the model's folder"),
    ],
)
def test_external_data_outside_the_models_folder_is_refused(tmp_path, capsys, location, message):
    model = _external_model(tmp_path, location.format(folder=tmp_path))
    before = _listing(tmp_path)
    out = tmp_path / "model" / "out.onnx"
    line = _refused(["opt", str(model), "-p", "dce", "-o", str(out)], capsys)
    assert line.startswith(f"irtool: opt: {model}: tensor 'w' ") and message in line
    assert _listing(tmp_path) == before


def test_external_data_inside_the_folder_loads(tmp_path):
    model = _external_model(tmp_path, "../secret.bin")
    (tmp_path / "model" / "weights.bin").write_bytes((tmp_path / "secret.bin").read_bytes())
    proto = onnx.load(model, load_external_data=False)
    proto.graph.initializer[0].external_data[0].value = "weights.bin"
    onnx.save(proto, model)
    np.testing.assert_array_equal(load_onnx(model).constants["w"].const, np.arange(16, dtype=np.float32).reshape(4, 4))


# -- corrupt files --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda good: good[: len(good) // 2], "truncated or corrupt ONNX file (protobuf parse failed)"),
        (lambda good: b"\x08" + bytes(range(256)) * 4, "truncated or corrupt ONNX file (protobuf parse failed)"),
        (lambda good: b"PK\x03\x04 not a model at all", "not an ONNX model"),
        (lambda good: b"", "file is empty, not an ONNX model"),
    ],
)
def test_corrupt_model_files_are_refused(tmp_path, capsys, content, message):
    good = digits_cnn(tmp_path / "good.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content(good))
    before = _listing(tmp_path)
    line = _refused(["opt", str(bad), "-p", "dce", "-o", str(tmp_path / "out.onnx")], capsys)
    assert line.startswith(f"irtool: opt: {bad}: ") and message in line
    assert _listing(tmp_path) == before


# -- interrupted writes ----------------------------------------------------------------------------------
SLOW_WRITER = """
    import sys, time
    import irtool.backends.onnx as backend

    marker, threshold, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if threshold:
        backend.EXTERNAL_DATA_THRESHOLD = threshold

    def write_slowly(path, chunks):
        with open(path, "wb") as stream:
            for i, chunk in enumerate(chunks):
                stream.write(chunk)
                if i == 1:
                    stream.flush()
                    open(marker, "w").close()
                    time.sleep(120)

    backend._write_chunks = write_slowly
    from irtool.tools.cli import main
    sys.exit(main(argv))
"""


def _interrupt_opt(tmp_path: Path, model: Path, out: Path, signum: int, threshold: int = 0) -> subprocess.CompletedProcess:
    """Run ``irtool opt`` whose model writer stops half way, then send ``signum``."""
    marker = tmp_path / "writing"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-c", textwrap.dedent(SLOW_WRITER), str(marker), str(threshold)]
    command += ["opt", str(model), "-p", "dce", "-o", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the writer never started"
        time.sleep(0.05)
    model_tmp = [p for p in out.parent.glob(f".{out.name}.*.tmp") if not p.name.startswith(f".{out.name}.data.")]
    assert len(model_tmp) == 1 and model_tmp[0].stat().st_size > 0, "the run was not interrupted mid-write"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.parametrize("existing", [False, True], ids=["new output", "overwrite"])
def test_interrupt_leaves_no_partial_output_and_cleans_up(tmp_path, existing):
    model = digits_cnn(tmp_path / "m.onnx")
    digest = _digest(model)
    out = tmp_path / "out.onnx"
    if existing:
        out.write_bytes(b"the previous result")
    done = _interrupt_opt(tmp_path, model, out, signal.SIGINT)
    assert done.returncode == 130 and done.stderr.strip() == "irtool: opt: interrupted"
    assert _digest(model) == digest
    assert (out.read_bytes() == b"the previous result") if existing else not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", "writing", *(["out.onnx"] if existing else [])])


def test_kill_leaves_no_partial_output(tmp_path):
    """SIGKILL gives no chance to clean up: the output is absent, and the only trace is the
    hidden temporary file the rename would have put in place."""
    model = digits_cnn(tmp_path / "m.onnx")
    digest = _digest(model)
    out = tmp_path / "out.onnx"
    done = _interrupt_opt(tmp_path, model, out, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    assert not out.exists() and _digest(model) == digest
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("m.onnx", "writing")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.onnx.") and leftovers[0].endswith(".tmp")


def test_terminate_cleans_up_like_interrupt(tmp_path):
    model = digits_cnn(tmp_path / "m.onnx")
    done = _interrupt_opt(tmp_path, model, tmp_path / "out.onnx", signal.SIGTERM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "writing"]
    assert done.returncode != 0


def test_kill_during_an_external_data_save_leaves_no_partial_output(tmp_path):
    model = digits_cnn(tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    _interrupt_opt(tmp_path, model, out, signal.SIGKILL, threshold=1000)
    assert not out.exists()
    assert not (tmp_path / "out.onnx.data").exists()


# -- models over 2 GB ---------------------------------------------------------------------------------------
def test_models_over_the_threshold_are_written_with_external_data(tmp_path, monkeypatch, capsys):
    """The same path as a > 2 GB model, with the threshold at 1 kB instead of 1.8 GB."""
    model = digits_cnn(tmp_path / "m.onnx")
    monkeypatch.setattr(onnx_backend, "EXTERNAL_DATA_THRESHOLD", 1000)
    out = tmp_path / "out.onnx"
    assert main(["opt", str(model), "-p", "prune{sparsity=0.25}", "-o", str(out)]) == 0
    capsys.readouterr()
    data = tmp_path / "out.onnx.data"
    header = onnx.load(out, load_external_data=False)
    external = {t.name for t in header.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert external == {"w2"}  # conv2's 12x6x3x3 weight; tensors under 1 KiB stay inline
    assert data.stat().st_size >= 12 * 6 * 9 * 4
    onnx.checker.check_model(str(out), full_check=True)

    reloaded = load_onnx(out)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    from_file = run_onnxruntime(out, {"x": x})[0]
    in_memory = make_session(reloaded).run(None, {"x": x})[0]  # goes through a temporary external-data file
    np.testing.assert_allclose(in_memory, from_file, rtol=0, atol=0)
    with pytest.raises(Exception, match="too big for one protobuf"):
        onnx_backend.onnx_bytes(reloaded)

    # An external-data model is also accepted as input, and re-saved the same way.
    again = tmp_path / "again" / "again.onnx"
    again.parent.mkdir()
    assert main(["opt", str(out), "-p", "dce", "-o", str(again)]) == 0
    np.testing.assert_array_equal(run_onnxruntime(again, {"x": x})[0], from_file)


@pytest.mark.skipif(not os.environ.get("IRTOOL_SLOW_TESTS"), reason="set IRTOOL_SLOW_TESTS=1 to run (2.2 GB weight)")
def test_a_real_model_over_2_gb(tmp_path):
    rows, cols = 8, 70_000_000  # 2.24 GB of float32
    weight = np.repeat(np.arange(1, rows + 1, dtype=np.float32)[:, None], cols, axis=1)
    weight.tofile(tmp_path / "big.onnx.data")
    del weight
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[rows, cols], data_location=TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value="big.onnx.data")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        [tensor],
    )
    model = tmp_path / "big.onnx"
    model.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    out = tmp_path / "out" / "big-out.onnx"
    out.parent.mkdir()
    command = [sys.executable, "-m", "irtool.tools.cli", "opt", str(model), "-p", "dce", "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size < 10_000
    assert (out.parent / "big-out.onnx.data").stat().st_size >= rows * cols * 4
    x = np.ones((1, rows), dtype=np.float32)
    y = run_onnxruntime(out, {"x": x})[0]
    assert y.shape == (1, cols) and float(y.min()) == float(y.max()) == rows * (rows + 1) / 2
