"""Scenarios (JSON, TOML, YAML), ``irtool run``, NNI config lists and Kenning's NNI step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from irtool.frontends.onnx import load_onnx
from irtool.ir.errors import IrtoolError
from irtool.passes.base import PassContext, PassManager
from irtool.passes.cost import graph_cost
from irtool.passes.data import digits
from irtool.passes.nni_config import KENNING_NNI_TYPE, NniPrune, kenning_nni_passes
from irtool.passes.pipeline import parse_pipeline
from irtool.tools import cli
from irtool.tools.api import Measure, optimize
from irtool.tools.scenario import load_scenario, parse_config

from .test_api import digits_cnn

SCENARIO = {
    "model": "digits_cnn.onnx",
    "pipeline": [
        {"type": "prune", "parameters": {"sparsity": 0.5, "criterion": "l2", "exclude": ["conv1"]}},
        {"type": "quantize", "parameters": {"samples": 16, "per_channel": True}},
        "dce",
    ],
    "data": {"type": "digits", "parameters": {"size": 8}},
    "eval_data": {"type": "digits", "parameters": {"size": 8, "split": "test"}},
    "targets": ["onnx"],
    "measurements": {"latency": {"runs": 3, "warmup": 1}, "accuracy": {"samples": 100}, "baseline": True},
    "output_dir": "build",
}
PIPELINE = "prune{criterion=l2 exclude=[conv1]},quantize{samples=16},dce"

TOML = """
model = "digits_cnn.onnx"
output_dir = "build"
targets = ["onnx"]
pipeline = [
  {type = "prune", parameters = {sparsity = 0.5, criterion = "l2", exclude = ["conv1"]}},
  {type = "quantize", parameters = {samples = 16, per_channel = true}},
  "dce",
]

[data]
type = "digits"
parameters = {size = 8}

[eval_data]
type = "digits"
parameters = {size = 8, split = "test"}

[measurements]
latency = {runs = 3, warmup = 1}
accuracy = {samples = 100}
baseline = true
"""

YAML = """
model: digits_cnn.onnx
output_dir: build
targets: [onnx]
pipeline:
  - type: prune
    parameters: {sparsity: 0.5, criterion: l2, exclude: [conv1]}
  - type: quantize
    parameters: {samples: 16, per_channel: true}
  - dce
data: {type: digits, parameters: {size: 8}}
eval_data: {type: digits, parameters: {size: 8, split: test}}
measurements:
  latency: {runs: 3, warmup: 1}
  accuracy: {samples: 100}
  baseline: true
"""


@pytest.fixture()
def folder(tmp_path) -> Path:
    digits_cnn(tmp_path / "digits_cnn.onnx")
    return tmp_path


@pytest.fixture()
def run_command(monkeypatch):
    """``irtool run`` through the real CLI entry point."""
    monkeypatch.setitem(cli.COMMANDS, "run", "run a scenario file")
    return lambda *args: cli.main(["run", *map(str, args)])


def _write(folder: Path, name: str, document) -> Path:
    path = folder / name
    path.write_text(document if isinstance(document, str) else json.dumps(document, indent=2))
    return path


@pytest.mark.parametrize(("name", "text"), [("s.json", json.dumps(SCENARIO)), ("s.toml", TOML), ("s.yaml", YAML)])
def test_json_toml_and_yaml_scenarios_mean_the_same(folder, name, text):
    pytest.importorskip("yaml")
    scenario = load_scenario(_write(folder, name, text))
    config = scenario.config
    assert ",".join(str(p) for p in config.passes) == PIPELINE
    assert scenario.model == str(folder / "digits_cnn.onnx")
    assert scenario.output_dir == folder / "build"
    assert scenario.measurements_path == folder / "build" / "measurements.json"
    assert config.targets == ("onnx",)
    assert config.measure == Measure(runs=3, warmup=1, accuracy_samples=100)
    assert (config.data.kind, dict(config.data.parameters)) == ("digits", {"size": 8})
    assert dict(config.eval_data.parameters) == {"size": 8, "split": "test"}


def test_irtool_run_writes_artifact_and_measurements(folder, run_command, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    from irtool.tools.plugin import IrtoolPlugin

    assert run_command(_write(folder, "scenario.json", SCENARIO)) == 0
    out = capsys.readouterr().out
    measurements = json.loads((folder / "build" / "measurements.json").read_text())
    jsonschema.validate(measurements, IrtoolPlugin.measurements_schema())
    artifact = folder / "build" / "digits_cnn.onnx"
    assert measurements["artifacts"] == {"onnx": str(artifact)}
    cost = graph_cost(load_onnx(artifact))
    assert measurements["optimized"]["params"] == cost.params
    assert measurements["pipeline"] == PIPELINE
    # conv1 is excluded; conv2 loses half its 16 channels, so the classifier reads 8.
    assert measurements["passes"][0]["messages"][:2] == ["[conv] conv2: out 16 -> 8", "[linear] fc: in 16 -> 8"]
    assert measurements["optimized"]["accuracy_samples"] == 100
    assert "prune{criterion=l2 exclude=[conv1]}: removed 8 of 16 channels in 1 group" in out
    assert f"measurements: {folder / 'build' / 'measurements.json'}" in out


def test_irtool_run_check_only_checks(folder, run_command, capsys):
    assert run_command(_write(folder, "scenario.json", SCENARIO), "--check") == 0
    assert f"ok: {folder / 'digits_cnn.onnx'} -> {PIPELINE} -> onnx" in capsys.readouterr().out
    assert not (folder / "build").exists()


def _broken(**changes):
    document = json.loads(json.dumps(SCENARIO))
    for key, value in changes.items():
        if value is None:
            document.pop(key)
        else:
            document[key] = value
    return document


BAD_SCENARIOS = [
    (_broken(pipline="dce"), "pipline: unknown key (did you mean 'pipeline'?)"),
    (_broken(pipeline=None), "pipeline: is required"),
    (_broken(pipeline=[{"type": "prune", "parameters": {"sparsity": "half"}}]),
     "pipeline[0] (prune): prune: option 'sparsity' expects a float, got 'half'"),
    (_broken(pipeline=[{"type": "prnue"}]), "pipeline[0] (prnue): unknown pass 'prnue' (did you mean 'prune'?)"),
    (_broken(pipeline=[{"type": "prune", "params": {}}]), "pipeline[0].params: unknown key (did you mean 'parameters'?)"),
    (_broken(targets=["onnx", "tensorrt"]), "targets[1]: 'tensorrt' is not one of onnx, tvm"),
    (_broken(data={"type": "imagenet"}), "data.type: 'imagenet' is not one of digits, npz, random"),
    (_broken(measurements={"latency": {"runs": 0}}), "measurements.latency.runs: must be at least 1, not 0"),
    (_broken(model="missing.onnx"), "missing.onnx' does not exist"),
    (_broken(model=None), "model: is required"),
    (_broken(input_shapes=[[1, -3]]), "input_shapes[0][1]: must be at least 1, not -3"),
]  # fmt: skip


@pytest.mark.parametrize(("document", "message"), BAD_SCENARIOS)
def test_bad_scenarios_say_what_and_where_and_write_nothing(folder, run_command, capsys, document, message):
    path = _write(folder, "scenario.json", document)
    assert run_command(path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("irtool: run: ") and len(err.splitlines()) == 1
    assert message in err
    assert str(path) in err or "does not exist" in err
    assert sorted(p.name for p in folder.iterdir()) == ["digits_cnn.onnx", "scenario.json"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("s.json", '{\n  "model": "m.onnx",\n  "pipeline": [,]\n}', "invalid JSON at line 3, column 16"),
        ("s.toml", "model = \n", "invalid TOML"),
        ("s.yaml", "model: [unclosed\n", "invalid YAML"),
        ("s.ini", "[x]\n", "unknown scenario format '.ini'; use .json, .toml or .yaml"),
        ("s.json", "[1, 2]", "the top level must be a table of keys, not list"),
    ],
)
def test_unreadable_scenario_files(folder, name, text, message):
    with pytest.raises(IrtoolError) as error:
        load_scenario(_write(folder, name, text))
    assert message in str(error.value) and name in str(error.value)


# -- NNI config lists ---------------------------------------------------------------------------
def _channels(graph, layer: str) -> int:
    node = next(n for n in graph.nodes if n.name == layer)
    return int(node.inputs[1].const.shape[0])


def _prune_with(folder: Path, config_list, **options):
    graph = load_onnx(folder / "digits_cnn.onnx")
    result = PassManager([NniPrune.from_config_list(config_list, **options)]).run(graph, PassContext())
    return result.graph, result.records[0].log


def test_config_list_sparsity_by_type_with_an_excluded_name(folder):
    graph, log = _prune_with(folder, [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"exclude": True, "op_names": ["conv1"]}])
    assert (_channels(graph, "conv1"), _channels(graph, "conv2")) == (8, 8)
    assert log[0] == "entry 0: sparsity 0.5: 1 group (conv2)"


def test_config_list_later_entries_override_earlier_ones(folder):
    config = [{"sparsity": 0.5, "op_types": ["default"]}, {"sparsity": 0.25, "op_names": ["conv2"]}]
    graph, _ = _prune_with(folder, config)
    assert (_channels(graph, "conv1"), _channels(graph, "conv2")) == (4, 12)


def test_config_list_total_sparsity_ranks_the_selected_layers_together(folder):
    graph, log = _prune_with(folder, [{"total_sparsity": 0.5, "op_types": ["Conv2d"]}])
    assert _channels(graph, "conv1") + _channels(graph, "conv2") == 12
    assert log[0] == "entry 0: total_sparsity 0.5: 2 groups (conv1, conv2)"


def test_config_list_by_partial_name_and_regex(folder):
    graph, _ = _prune_with(folder, [{"sparse_ratio": 0.75, "op_partial_names": ["onv1"]}])
    assert (_channels(graph, "conv1"), _channels(graph, "conv2")) == (2, 16)
    graph, _ = _prune_with(folder, [{"sparsity": 0.5, "op_names_re": ["conv[0-9]"], "exclude_op_names": ["conv2"]}])
    assert (_channels(graph, "conv1"), _channels(graph, "conv2")) == (4, 16)


def test_config_list_that_selects_nothing_warns(folder):
    graph, log = _prune_with(folder, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    assert graph_cost(graph).params == graph_cost(load_onnx(folder / "digits_cnn.onnx")).params
    assert "warning: config_list entry 0 selects no prunable layer" in log


def test_nni_prune_spec_round_trips_through_the_pipeline_syntax():
    prune = NniPrune.from_config_list([{"sparsity": 0.5, "op_types": ["Conv2d"]}], criterion="l2")
    text = str(prune)
    assert text == """nni-prune{config-list='[{"sparsity":0.5,"op_types":["Conv2d"]}]' criterion=l2}"""
    assert parse_pipeline(text) == [prune]


@pytest.mark.parametrize(
    ("config_list", "message"),
    [
        ([{"sparsty": 0.5, "op_types": ["Conv2d"]}], "config_list entry 0: unknown key 'sparsty' (did you mean 'sparsity'?)"),
        ([{"sparsity": 0.5, "exclude": True, "op_types": ["Conv2d"]}], "entry 0 needs exactly one of sparsity, total_sparsity or exclude"),
        ([{"sparsity": 1.0, "op_types": ["Conv2d"]}], "'sparsity' must be a number in [0, 1), not 1.0"),
        ([{"sparsity": 0.5}], "config_list entry 0 selects no layers: give op_types or op_names"),
        ([{"total_sparsity": 0.5, "max_sparsity_per_layer": 0.8, "op_types": ["Conv2d"]}],
         "'max_sparsity_per_layer' is not supported"),
        ([{"total_sparsity": 0.5, "op_types": ["Conv2d"]}, {"total_sparsity": 0.3, "op_names": ["fc"]}],
         "different total_sparsity values [0.3, 0.5]"),
        ([], "config_list must be a non-empty list of entries"),
    ],
)  # fmt: skip
def test_bad_config_lists(config_list, message):
    with pytest.raises(IrtoolError) as error:
        NniPrune.from_config_list(config_list)
    assert message in str(error.value) and str(error.value).startswith("nni-prune: ")


def test_nni_prune_as_a_scenario_step(folder):
    document = {"pipeline": [{"type": "nni-prune", "parameters": {"config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}], "criterion": "l2"}}]}
    config = parse_config(document)
    assert [str(p) for p in config.passes] == ["""nni-prune{config-list='[{"sparsity":0.5,"op_types":["Conv2d"]}]' criterion=l2}"""]


# -- Kenning's NNIPruningOptimizer ----------------------------------------------------------------
KENNING_STEP = {
    "type": KENNING_NNI_TYPE,
    "parameters": {
        "pruner_type": "mean_rank",
        "config_list": [{"total_sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}],
        "training_steps": 92,
        "activation": "relu",
        "compiled_model_path": "build/nni-pruning-0_15.pth",
        "mode": "dependency_aware",
        "finetuning_epochs": 1,
        "finetuning_batch_size": 64,
        "confidence": 8,
        "criterion": "torch.nn.CrossEntropyLoss",
        "optimizer": "torch.optim.Adam",
        "pruning_on_cuda": True,
        "finetuning_learning_rate": 1e-04,
        "exclude_last_layer": True,
    },
}


def test_kenning_nni_step_maps_to_prune_and_finetune():
    passes, notes = kenning_nni_passes(KENNING_STEP["parameters"])
    assert [str(p) for p in passes] == [
        """nni-prune{config-list='[{"total_sparsity":0.5,"op_types":["Conv2d","Linear"]}]' criterion=activation-mean}""",
        "finetune{lr=0.0001 optimizer=adam progress=false}",  # epochs=1 and batch-size=64 are the defaults
    ]
    assert "pruning_on_cuda ignored: irtool prunes on the CPU" in notes
    assert "exclude_last_layer ignored: irtool never changes the shape of a model output" in notes
    with pytest.raises(IrtoolError, match="pruner_type 'slim' is not one of"):
        kenning_nni_passes({"config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}], "pruner_type": "slim"})


def test_kenning_nni_step_runs_with_data(folder):
    pytest.importorskip("torch")
    train = digits("train", size=8)
    result = optimize(
        folder / "digits_cnn.onnx",
        [KENNING_STEP],
        data=train,
        eval_data=digits("test", size=8),
        targets="onnx",
        output_dir=folder / "out",
        measure=Measure(runs=3, warmup=1),
    )
    assert [p.name for p in result.passes] == ["nni-prune", "finetune"]
    pruned = load_onnx(result.artifacts["onnx"])
    assert _channels(pruned, "conv1") + _channels(pruned, "conv2") == 12
    assert result.passes[1].messages[0].startswith("epoch 1: loss ")
    assert result.optimized.accuracy is not None and result.optimized.accuracy_samples == 360


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"inputs,labels\n1,2\n", "is not a NumPy .npz file")],
)
def test_unreadable_npz_data_names_the_key_and_the_file(tmp_path, content, message):
    if content is not None:
        (tmp_path / "d.npz").write_bytes(content)
    config = {"pipeline": "dce", "data": {"type": "npz", "parameters": {"path": "d.npz"}}}
    spec = parse_config(config, base_dir=tmp_path).data
    with pytest.raises(IrtoolError) as error:
        spec.load()
    assert "data: parameters.path" in str(error.value) and message in str(error.value)
    assert "d.npz" in str(error.value)
