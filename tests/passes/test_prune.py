"""Structured pruning: the seed exercises on ResNet-18, options, the select hook, mask mode,
attention heads, LSTM units, bad input, and MobileNetV2 against TinyNN's reported numbers."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from irtool.backends.onnx import run_onnxruntime, to_onnx
from irtool.frontends.onnx import load_onnx
from irtool.ir.errors import IrtoolError
from irtool.ir.shapes import infer_shapes
from irtool.passes.base import PassContext, PassManager
from irtool.passes.dependency import analyze_channels
from irtool.passes.oracle import check_equivalence
from irtool.passes.pipeline import parse_pipeline
from irtool.passes.prune import Prune, PruneConfig, pruned_channels, prune_graph
from tests.passes.test_dependency import zoo_graph
from tests.zoo import export_onnx


def _output_shapes(graph):
    return [v.type.shape for v in graph.outputs]


def _assert_equivalent(original, pruned):
    report = check_equivalence(original, pruned)
    assert report.ok, report.format()
    return report


def _weight(graph, name):
    return graph.constants[name].const


def test_twenty_percent_of_every_conv():
    original, graph = zoo_graph("resnet18"), zoo_graph("resnet18")
    report = prune_graph(graph, sparsity=0.2)
    assert "[conv] layer1.0.conv1: in 64 -> 52, out 64 -> 52" in report.lines
    assert "[conv] layer4.1.conv2: in 512 -> 410, out 512 -> 410" in report.lines
    assert "[linear] fc: in 512 -> 410" in report.lines
    convs = [line for line in report.lines if line.startswith("[conv]")]
    assert len(convs) == 20  # every conv of ResNet-18 changes
    assert {(g.before, g.after) for g in report.groups} == {(64, 52), (128, 103), (256, 205), (512, 410)}
    assert _output_shapes(graph) == _output_shapes(original) == [(1, 1000)]
    onnx.checker.check_model(to_onnx(graph), full_check=True)
    _assert_equivalent(original, graph)


def test_only_layer4_1_conv1_by_twenty_percent():
    original, graph = zoo_graph("resnet18"), zoo_graph("resnet18")
    report = prune_graph(graph, sparsity=0, layers=("layer4.1.conv1:0.2",))
    assert report.lines == [
        "[conv] layer4.1.conv1: out 512 -> 410",
        "[bn] layer4.1.bn1: channels 512 -> 410",
        "[conv] layer4.1.conv2: in 512 -> 410",
    ]
    assert _weight(graph, "layer4.1.conv1.weight").shape == (410, 512, 3, 3)
    assert _weight(graph, "layer4.1.conv2.weight").shape == (512, 410, 3, 3)
    assert report.before.params - report.after.params == 102 * (512 * 9 * 2 + 4)
    _assert_equivalent(original, graph)


def test_conv1_alone_prunes_its_whole_group_and_names_every_layer():
    original, graph = zoo_graph("resnet18"), zoo_graph("resnet18")
    report = prune_graph(graph, sparsity=0, layers=("conv1:0.2",))
    named = [line.split("] ", 1)[1].split(":")[0] for line in report.lines]
    assert named == [
        "conv1", "bn1",
        "layer1.0.conv1", "layer1.0.conv2", "layer1.0.bn2",
        "layer1.1.conv1", "layer1.1.conv2", "layer1.1.bn2",
        "layer2.0.conv1", "layer2.0.downsample.0",
    ]  # fmt: skip
    assert "[conv] layer1.0.conv2: out 64 -> 52" in report.lines
    assert "[conv] layer2.0.downsample.0: in 64 -> 52" in report.lines
    _assert_equivalent(original, graph)


def test_select_hook_picks_the_channels_itself():
    """yapt's OneLayerPruner: select_filters prunes only layer4.1.conv1, its weakest 20% by l1."""
    graph = zoo_graph("resnet18")
    weight = _weight(graph, "layer4.1.conv1.weight")
    weakest = np.sort(np.argsort(np.abs(weight).sum(axis=(1, 2, 3)), kind="stable")[:102])
    seen = []

    def select_filters(group, importance):
        seen.append(group.name)
        if group.name != "layer4.1.conv1":
            return []
        return np.argsort(importance, kind="stable")[: int(0.2 * group.channels)]

    report = prune_graph(graph, sparsity=0, select=select_filters)
    assert len(seen) == 12 and len(report.lines) == 3
    assert pruned_channels(graph)["layer4.1.conv1.weight"][0].tolist() == weakest.tolist()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sparsity": 1.2}, "prune: sparsity 1.2 is outside [0, 1)"),
        ({"sparsity": -0.1}, "prune: sparsity -0.1 is outside [0, 1)"),
        ({"layers": ("nosuch.*:0.3",)}, "prune: layer 'nosuch.*' matches no layer"),
        ({"exclude": ("layer9*",)}, "prune: exclude pattern 'layer9*' matches no layer"),
        ({"layers": ("conv1",)}, "is not like NAME:SPARSITY"),
        ({"layers": ("conv1:1.0",)}, "sparsity 1 is outside [0, 1)"),
        ({"criterion": "l3"}, "unknown criterion 'l3' (did you mean 'l2'?)"),
        ({"scope": "everywhere"}, "scope 'everywhere' is not local or global"),
        ({"round_to": 0}, "round-to 0 must be at least 1"),
    ],
)
def test_bad_options_are_clear_errors_and_change_nothing(options, message):
    graph = zoo_graph("resnet18")
    before = {name: v.const for name, v in graph.constants.items()}
    with pytest.raises(IrtoolError) as error:
        prune_graph(graph, **options)
    assert message in str(error.value)
    assert all(graph.constants[name].const is array for name, array in before.items())


def test_pipeline_option_errors_name_the_pass():
    with pytest.raises(IrtoolError, match=r"prune: sparsity 1.2 is outside \[0, 1\)"):
        parse_pipeline("prune{sparsity=1.2}")
    spec = "prune{criterion=l2 layers=[layer4.*:0.3,conv1:0.1] scope=global sparsity=0.4}"
    assert str(parse_pipeline(spec)[0]) == spec


def test_a_layer_in_a_blocked_group_warns_with_the_reason(caplog):
    graph = zoo_graph("resnet18")
    with caplog.at_level(logging.WARNING):
        report = prune_graph(graph, sparsity=0, layers=("fc:0.5",))
    assert report.warnings == ["layer 'fc' is in group 13 (fc), which is blocked: reaches graph output 'output'"]
    assert "reaches graph output" in caplog.text and not report.changed


def test_select_may_not_empty_a_group():
    graph = zoo_graph("resnet18")
    with pytest.raises(IrtoolError, match=r"select would remove all 64 channels of group 1 \(conv1\)"):
        prune_graph(graph, sparsity=0, select=lambda group, scores: np.arange(group.channels))


def test_round_to_and_min_channels():
    graph = zoo_graph("resnet18")
    report = prune_graph(graph, sparsity=0.3, round_to=16)
    assert all(g.after % 16 == 0 for g in report.groups)
    assert {(g.before, g.after) for g in report.groups} == {(64, 48), (128, 96), (256, 176), (512, 352)}
    assert not report.unaligned_groups() and not any(line.startswith("note:") for line in report.summary())
    graph = zoo_graph("resnet18")
    report = prune_graph(graph, sparsity=0.3)
    assert {(g.before, g.after) for g in report.unaligned_groups()} == {(64, 45), (128, 90), (256, 180), (512, 359)}
    assert f"note: {len(report.groups)} of {len(report.groups)} groups now have a channel count that is not a multiple of 8" in report.summary()[1]
    graph = zoo_graph("resnet18")
    report = prune_graph(graph, sparsity=0.9 - 1e-9, min_channels=100)
    assert {(g.before, g.after) for g in report.groups} == {(64, 64), (128, 100), (256, 100), (512, 100)} - {(64, 64)}


def test_exclude_by_name_glob_and_op_type():
    graph = zoo_graph("resnet18")
    report = prune_graph(graph, sparsity=0.5, exclude=("layer4.*", "layer3.0.conv1"))
    names = {g.group.name for g in report.groups}
    assert not any(name.startswith("layer4") for name in names) and "layer3.0.conv1" not in names
    assert "layer3.1.conv1" in names
    graph = zoo_graph("vit_tiny")
    report = prune_graph(graph, sparsity=0.5, exclude=("Conv",))  # the residual stream has a conv producer
    names = {g.group.name for g in report.groups}
    assert len(names) == 24 and "patch_embed.proj" not in names


def test_global_scope_ranks_across_groups():
    original, graph = zoo_graph("resnet18"), zoo_graph("resnet18")
    report = prune_graph(graph, sparsity=0.5, scope="global")
    total = sum(g.before for g in report.groups)
    assert report.channels_removed == total // 2
    assert len({round(g.after / g.before, 2) for g in report.groups}) > 3  # not uniform
    _assert_equivalent(original, graph)


def test_criteria_choose_different_channels():
    chosen = {}
    for criterion in ("l1", "l2", "fpgm", "random", "bn-scale"):
        graph = zoo_graph("resnet18")
        prune_graph(graph, sparsity=0, layers=("layer4.1.conv1:0.25",), criterion=criterion)
        chosen[criterion] = tuple(pruned_channels(graph)["layer4.1.conv1.weight"][0])
    assert len(set(chosen.values())) == 5
    gamma = np.abs(zoo_graph("resnet18").constants["layer4.1.bn1.weight"].const)
    assert list(chosen["bn-scale"]) == sorted(np.argsort(gamma, kind="stable")[:128].tolist())


def test_mask_mode_zeroes_instead_of_removing():
    original, graph = zoo_graph("resnet18"), zoo_graph("resnet18")
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    report = prune_graph(graph, sparsity=0.5, mode="mask")
    assert report.lines[0] == "[conv] conv1: out 64 -> 32 (masked)"
    assert report.after.params == report.before.params
    weight = _weight(graph, "layer1.0.conv1.weight")
    removed = pruned_channels(graph)["layer1.0.conv1.weight"][0]
    assert weight.shape == (64, 64, 3, 3) and not weight[removed].any() and len(removed) == 32
    assert run_onnxruntime(graph, [x])[0].shape == (1, 1000)
    _assert_equivalent(original, graph)


def test_pruning_twice_composes_the_record():
    original, graph = zoo_graph("resnet18"), zoo_graph("resnet18")
    prune_graph(graph, sparsity=0, layers=("layer4.1.conv1:0.5",))
    prune_graph(graph, sparsity=0, layers=("layer4.1.conv1:0.5",))
    assert _weight(graph, "layer4.1.conv1.weight").shape[0] == 128
    assert len(pruned_channels(graph)["layer4.1.conv1.weight"][0]) == 384
    _assert_equivalent(original, graph)


def test_the_pass_runs_in_a_pipeline_and_logs_the_summary():
    graph = zoo_graph("resnet18")
    result = PassManager("prune{sparsity=0.5 criterion=l2}").run(graph, PassContext())
    log = result.records[0].log
    assert log[0] == "[conv] conv1: out 64 -> 32"
    assert "removed 1440 of 2880 channels in 12 groups" in log
    assert any(line.split()[:1] == ["MACs"] and line.endswith("%") for line in log)
    assert str(Prune(sparsity=0.5, criterion="l2")) == "prune{criterion=l2}"


def test_attention_heads_go_whole_and_the_head_count_follows():
    original, graph = zoo_graph("vit_tiny"), zoo_graph("vit_tiny")
    report = prune_graph(graph, sparsity=0, layers=("blocks.0.attn.qkv:0.34",))
    assert report.lines == [
        "[matmul] blocks.0.attn.qkv: out 576 -> 384",
        "[matmul] blocks.0.attn.proj: in 192 -> 128",
    ]
    split = graph.find_nodes(op="Reshape", source="blocks.0.attn")[0]
    assert split.inputs[1].const.tolist() == [1, 17, 3, 2, 64]
    merge = graph.find_nodes(op="Reshape", source="blocks.0.attn")[1]
    assert merge.inputs[1].const.tolist() == [1, 17, 128]
    assert _output_shapes(graph) == [(1, 1000)]
    _assert_equivalent(original, graph)


def test_lstm_hidden_size_follows():
    original, graph = zoo_graph("lstm_classifier"), zoo_graph("lstm_classifier")
    prune_graph(graph, sparsity=0.25)
    assert [n.attrs["hidden_size"] for n in graph.find_nodes(op="LSTM")] == [48, 48]
    assert _weight(graph, graph.find_nodes(op="LSTM")[1].inputs[2].name).shape == (1, 192, 48)
    _assert_equivalent(original, graph)


def test_mobilenet_v2_quarter_l2_against_tinynn(tmp_path):
    """TinyNN reports 40.99% fewer FLOPS for MobileNetV2, sparsity 0.25, l2_norm, at 224x224."""
    path = export_onnx("mobilenet_v2", tmp_path / "mobilenet_v2.onnx", input_shape=(1, 3, 224, 224))
    graph = load_onnx(path)
    infer_shapes(graph)
    report = prune_graph(graph, sparsity=0.25, criterion="l2")
    assert report.lines[:4] == [  # the same channel counts TinyNN logs
        "[conv] features.0.0: out 32 -> 24",
        "[bn] features.0.1: channels 32 -> 24",
        "[conv] features.1.conv.0.0: channels 32 -> 24",
        "[bn] features.1.conv.0.1: channels 32 -> 24",
    ]
    assert "[conv] features.2.conv.0.0: in 16 -> 12, out 96 -> 72" in report.lines
    assert report.before.macs == 300_774_272
    assert report.mac_reduction() == pytest.approx(0.417, abs=0.001)
    assert any(line.startswith("MACs") and "-41.7%" in line for line in report.summary())


def test_prune_config_is_the_pass_options():
    assert PruneConfig().sparsity == Prune().sparsity == 0.5
    assert Prune(layers=("a:0.1",)).config().layers == ("a:0.1",)
    assert analyze_channels(zoo_graph("resnet18")).groups  # the analysis the pass asks for
