"""The accuracy-at-equal-latency benchmark runs end to end on a tiny setting, for the ResNet and
for MobileNetV2, with the targeted prune steered by measured sensitivity and both prunes
recalibrated: both are smaller than the unpruned model, the targeted one is predicted within its
target, accuracies are fractions, and the table and report are written. Timings are
not compared (shared machine)."""

from __future__ import annotations

import re

import pytest
import torch

from irtool.tools import bench_latency_accuracy

ARGS = ["--size", "16", "--seeds", "0", "--epochs", "1", "--runs", "3", "--rounds", "2", "--criterion", "sensitivity"]
MODEL_ARGS = {
    "resnet": ["--train-epochs", "2"],
    "mobilenet": ["--train-epochs", "1", "--width", "0.25"],
}
TITLES = {"resnet": "digits ResNet 16x16", "mobilenet": "digits MobileNetV2 (width 0.25) 16x16"}


@pytest.fixture(scope="module", params=list(MODEL_ARGS))
def report(request, tmp_path_factory):
    """The written report of one model, which holds what is printed."""
    out = tmp_path_factory.mktemp("bench") / "table.md"
    threads = torch.get_num_threads()
    argv = [*ARGS, "--model", request.param, *MODEL_ARGS[request.param], "--out", str(out)]
    assert bench_latency_accuracy.main(argv) == 0
    assert torch.get_num_threads() == threads
    text = out.read_text()
    assert text.count("# Latency-targeted vs uniform pruning") == 1
    assert f"# Latency-targeted vs uniform pruning, {TITLES[request.param]}\n" in text
    return request.param, text


def _rows(text: str) -> dict[str, list[str]]:
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["method", "latency ms", "speedup", "MACs", "MAC reduction", "params", "accuracy pruned", "accuracy fine-tuned", "BN recalibrated"]
    return {cells[0]: cells for cells in ([c.strip() for c in l.strip("|").split("|")] for l in lines[1:])}


def _macs(cell: str) -> float:
    number, _, prefix = cell.partition(" ")
    return float(number) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[prefix]


def test_table_rows_costs_and_accuracies(report):
    model, report = report
    uniform = f"uniform {bench_latency_accuracy.MODELS[model].sparsity:g}"
    rows = _rows(report)
    assert list(rows) == ["unpruned", uniform, "latency-targeted"]
    unpruned = _macs(rows["unpruned"][3])
    for name in (uniform, "latency-targeted"):
        assert _macs(rows[name][3]) < unpruned
        assert float(rows[name][4].rstrip("x")) > 1
        assert float(rows[name][1]) > 0
    for name, cells in rows.items():
        accuracies = [float(c.rstrip("%")) / 100 for c in cells[6:8] if c != "-"]
        assert accuracies and all(0 <= a <= 1 for a in accuracies)
    assert rows["unpruned"][7] == "-" and rows[uniform][7] != "-"
    assert [rows[name][8] for name in rows] == ["-", "yes", "yes"]
    assert re.search(r"bar \(at least as accurate at the same measured latency\): (holds|fails)", report)


def test_sensitivity_steers_the_targeted_prune(report):
    _, report = report
    assert "ranks groups by measured output sensitivity" in report
    assert "re-estimated on 512 training images" in report
    note = re.search(r"sensitivity on (\d+) training images in [\d.]+ s, deviation at 0.25/0.5/0.75/1: (.*)", report)
    assert note and int(note.group(1)) == bench_latency_accuracy.SENSITIVITY_ROWS
    points = re.findall(r"=([\d./]+)", note.group(2))
    assert points and all(len(p.split("/")) == 4 for p in points)


def test_targeted_prune_is_predicted_within_its_target(report):
    _, report = report
    target, predicted = map(float, re.search(r"seed 0: target ([\d.]+) ms \(try \d\), targeted predicted ([\d.]+) ms", report).groups())
    assert 0 < predicted <= target
    kept = re.search(r"channels kept, targeted: (.*)", report).group(1)
    assert kept and all(int(k) >= 1 for k in re.findall(r"=(\d+)", kept))


def test_bad_input_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as raised:
        bench_latency_accuracy.main(["--size", "12"])
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--size 12 is not a multiple of 8" in err
    with pytest.raises(SystemExit):
        bench_latency_accuracy.main(["--seeds", "a,b"])
    assert "seeds 'a,b' are not integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_latency_accuracy.main(["--model", "vgg"])
    assert "models 'vgg' are not among resnet, mobilenet" in capsys.readouterr().err


def test_models_and_their_defaults():
    args = bench_latency_accuracy.parse_args([])
    assert args.models == ["resnet"] and args.sparsity is None and args.train_epochs is None
    assert args.criterion == "weights" and args.recalibrate
    plain = bench_latency_accuracy.parse_args(["--criterion", "sensitivity", "--no-recalibrate"])
    assert plain.criterion == "sensitivity" and not plain.recalibrate
    for name, recipe in bench_latency_accuracy.MODELS.items():
        model_args = bench_latency_accuracy.for_model(args, name)
        assert (model_args.model, model_args.sparsity, model_args.train_epochs) == (name, recipe.sparsity, recipe.train_epochs)
    chosen = bench_latency_accuracy.parse_args(["--model", "mobilenet,resnet,mobilenet", "--sparsity", "0.3", "--train-epochs", "2"])
    assert chosen.models == ["mobilenet", "resnet"]
    assert bench_latency_accuracy.for_model(chosen, "mobilenet").sparsity == 0.3
    assert bench_latency_accuracy.for_model(chosen, "resnet").train_epochs == 2


def test_mobilenet_takes_one_channel():
    model = bench_latency_accuracy._mobilenet(0.25, seed=0).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    assert model.features[0][0].in_channels == 1


def test_weights_criterion_without_recalibration(tmp_path):
    out = tmp_path / "table.md"
    argv = [*ARGS[:-2], *MODEL_ARGS["resnet"], "--criterion", "weights", "--no-recalibrate", "--out", str(out)]
    assert bench_latency_accuracy.main(argv) == 0
    text = out.read_text()
    assert "ranks groups by weight norms times MAC share" in text and "left as trained" in text
    assert "sensitivity on" not in text
    assert [cells[8] for cells in _rows(text).values()] == ["-", "no", "no"]
