"""The equivalence oracle, and the test irtool's correctness rests on: every zoo model, at
sparsity 0.3, 0.5 and 0.7, local and global, from the ONNX and the PyTorch frontends, prunes,
keeps its output shapes, passes onnx.checker, runs in onnxruntime and computes what the original
computes with the removed channels zeroed (max abs diff <= 1e-4 x output scale on exact groups)."""

from __future__ import annotations

import functools
import itertools
import os

import numpy as np
import onnx
import pytest

from irtool.backends.onnx import run_onnxruntime, to_onnx
from irtool.frontends.onnx import load_onnx
from irtool.ir.errors import IrtoolError
from irtool.passes.oracle import check_equivalence, copy_graph, record_from_constants
from irtool.passes.prune import RECORD_KEY, prune_graph
from tests.passes.test_dependency import zoo_graph
from tests.zoo import ZOO

SPARSITIES = (0.3, 0.5, 0.7)
SCOPES = ("local", "global")
TOL = 1e-4
CASES = list(itertools.product(ZOO, SPARSITIES, SCOPES))
# The PyTorch frontend gives the same graphs as ONNX up to op spelling; by default it is swept at
# two settings per model to keep CI short, and at all six with IRTOOL_FULL_SWEEP=1.
TORCH_CASES = (
    CASES
    if os.environ.get("IRTOOL_FULL_SWEEP")
    else [c for c in CASES if (c[1], c[2]) in {(0.5, "local"), (0.7, "global")}]
)


def _check_pruned_model(original, pruned, report):
    assert report.changed, "nothing was pruned"
    assert [v.type.shape for v in pruned.outputs] == [v.type.shape for v in original.outputs]
    onnx.checker.check_model(to_onnx(pruned), full_check=True)
    oracle = check_equivalence(original, pruned, tol=TOL)
    assert oracle.ok, oracle.format()
    assert all(o.max_abs_diff <= TOL * o.scale for o in oracle.outputs)
    assert report.mac_reduction() > 0.1
    return oracle


@pytest.mark.parametrize("name, sparsity, scope", CASES)
def test_zoo_from_onnx(name, sparsity, scope):
    original, pruned = zoo_graph(name), zoo_graph(name)
    report = prune_graph(pruned, sparsity=sparsity, scope=scope)
    oracle = _check_pruned_model(original, pruned, report)
    if oracle.approximate:  # only layer norms over channels make a group approximate in the zoo
        assert name in ("convnext_tiny", "vit_tiny")


@functools.lru_cache(maxsize=1)
def _torch_graph(name: str):
    from irtool.frontends.torch import load_module

    model = ZOO[name]
    return load_module(model.build(), model.example_input())


@pytest.mark.parametrize("name, sparsity, scope", TORCH_CASES)
def test_zoo_from_pytorch(name, sparsity, scope):
    original = _torch_graph(name)
    pruned = copy_graph(original)
    report = prune_graph(pruned, sparsity=sparsity, scope=scope)
    _check_pruned_model(original, pruned, report)


def test_a_wrong_weight_is_caught():
    original, pruned = zoo_graph("resnet18"), zoo_graph("resnet18")
    prune_graph(pruned, sparsity=0.5)
    weight = pruned.constants["layer2.1.conv1.weight"]
    tampered = weight.const.copy()
    tampered[3] *= 1.5
    weight.const = tampered
    report = check_equivalence(original, pruned)
    assert not report.ok and report.outputs[0].relative > 1e-3
    assert report.format().splitlines()[-1] == "NOT equivalent"


def test_the_record_survives_an_onnx_file(tmp_path):
    from irtool.backends.onnx import save_onnx

    original, pruned = zoo_graph("mobilenet_v2"), zoo_graph("mobilenet_v2")
    pruning = prune_graph(pruned, sparsity=0.4, criterion="l2")
    path = save_onnx(pruned, tmp_path / "pruned.onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert RECORD_KEY in props
    report = check_equivalence(original, load_onnx(path))
    assert report.ok and report.channels == pruning.channels_removed == 3640


def test_without_a_record_the_removed_channels_are_found_by_comparing_constants():
    original, pruned = zoo_graph("resnet18"), zoo_graph("resnet18")
    pruning = prune_graph(pruned, sparsity=0.3, criterion="random", seed=3)
    pruned.meta["metadata_props"].pop(RECORD_KEY)
    found = record_from_constants(original, pruned)
    assert len(found["layer3.0.bn1.weight"][0]) == 76
    report = check_equivalence(original, pruned)
    assert report.ok and report.channels == pruning.channels_removed == 858


def test_approximate_groups_report_their_deviation():
    original, pruned = zoo_graph("vit_tiny"), zoo_graph("vit_tiny")
    prune_graph(pruned, sparsity=0.5)
    report = check_equivalence(original, pruned, trials=1)
    assert report.ok
    assert report.approximate == ["patch_embed.proj: LayerNormalization 'blocks.0.norm1': LayerNormalization normalises over axis 2"]
    assert report.deviation[0].relative > 1e-2  # the layer norms see fewer channels
    assert report.outputs[0].relative < TOL
    text = report.format()
    assert "exact groups only" in text and "deviation of the whole pruned model" in text


def test_given_inputs_are_used():
    original, pruned = zoo_graph("squeezenet1_1"), zoo_graph("squeezenet1_1")
    prune_graph(pruned, sparsity=0.5)
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
    report = check_equivalence(original, pruned, inputs={"input": x})
    assert report.trials == 1 and report.ok
    assert report.outputs[0].scale == pytest.approx(float(np.abs(run_onnxruntime(pruned, [x])[0]).max()), rel=1e-3)


def test_a_record_that_splits_a_group_is_refused():
    original, pruned = zoo_graph("resnet18"), zoo_graph("resnet18")
    with pytest.raises(IrtoolError, match="do not form whole channel groups"):
        check_equivalence(original, pruned, removed={"layer1.0.bn2.weight": {0: np.array([3])}, "layer1.1.bn2.bias": {0: np.array([4])}})


def test_random_token_ids_address_every_row_of_the_embeddings_they_index():
    import torch
    from torch import nn

    from irtool.frontends.torch import load_module
    from irtool.ir.registry import index_bounds
    from irtool.passes.oracle import random_inputs

    class TwoTables(nn.Module):
        def __init__(self):
            super().__init__()
            self.small, self.large = nn.Embedding(7, 4), nn.Embedding(50, 4)

        def forward(self, tokens):
            return self.small(tokens) + self.large(tokens)

    graph = load_module(TwoTables().eval(), (torch.zeros(4, 64, dtype=torch.int64),))
    assert list(index_bounds(graph).values()) == [7]  # the smaller table bounds the ids
    tokens = random_inputs(graph, np.random.default_rng(0))[graph.inputs[0].name]
    assert tokens.dtype == np.int64 and tokens.min() == 0 and tokens.max() == 6
    assert len(np.unique(tokens)) == 7
