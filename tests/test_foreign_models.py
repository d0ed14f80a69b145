"""Models none of irtool's authors wrote: small, seeded networks with the patterns the zoo lacks
(attention blocks, GRUs, 1-D audio convs, pixel-shuffle and upsample+concat decoders, grouped
convs with a channel shuffle, squeeze-excitation with hard-sigmoid, channels-last MLP-Mixer
blocks, unequal splits, einsum, masked gates, a custom ONNX op), run the way a user runs them:
ONNX written by torch.onnx (opset 13 and 17, and the dynamo exporter when onnxscript is there)
or the torch.export frontend, then ``fold-bn,prune{sparsity=0.5},dce``, the equivalence oracle,
onnxruntime on the saved file, TVM, and ``irtool opt`` on the file."""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from irtool.backends.onnx import run_onnxruntime, save_onnx
from irtool.frontends.onnx import load_onnx
from irtool.frontends.torch import load_module
from irtool.ir.shapes import infer_shapes
from irtool.passes.base import PassManager
from irtool.passes.cost import graph_cost
from irtool.passes.oracle import check_equivalence, copy_graph
from irtool.tools.cli import main as irtool_main

PIPELINE = "fold-bn,prune{sparsity=0.5},dce"
TOL = 1e-4


# -- the models --------------------------------------------------------------------------------
def _seeded(cls, *args):
    """Built under seed 0 without touching the caller's RNG; BatchNorm statistics randomised."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cls(*args)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


class AudioNet(nn.Module):
    """Conv1d + BatchNorm1d + MaxPool1d, a depthwise residual, mean over time."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(1, 16, 9, stride=2, padding=4), nn.BatchNorm1d(16)
        self.c2, self.b2 = nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32)
        self.dw = nn.Conv1d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 6)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.max_pool1d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc((F.relu(self.dw(x)) + x).mean(-1))


class ShuffleDecoder(nn.Module):
    """pixel_shuffle (ONNX DepthToSpace) and bilinear upsampling, each concatenated with a skip."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Conv2d(3, 8, 3, padding=1)
        self.enc2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up = nn.Conv2d(16, 32, 3, padding=1)
        self.dec = nn.Conv2d(16, 8, 3, padding=1)
        self.side = nn.Conv2d(24, 8, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(e1))
        d = F.relu(self.dec(torch.cat([F.pixel_shuffle(self.up(e2), 2), e1], 1)))
        s = F.relu(self.side(torch.cat([F.interpolate(e2, scale_factor=2, mode="bilinear"), e1], 1)))
        return self.out(d + s)


class GroupedShuffle(nn.Module):
    """Grouped (not depthwise) convs around a ShuffleNet-style reshape/transpose shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.g1, self.b1 = nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32)
        self.g2, self.b2 = nn.Conv2d(32, 16, 1, groups=4), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = F.relu(self.b1(self.g1(x)))
        n, c, h, w = y.shape
        y = y.reshape(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(F.relu(x + self.b2(self.g2(y))).mean((2, 3)))


class SqueezeExcite(nn.Module):
    """MobileNetV3-style: hard-swish, squeeze-excitation gated by hard-sigmoid."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.se1, self.se2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.c2 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.hardswish(self.b1(self.c1(x)))
        x = x * F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.c2(x)), 1), 1))


class Mixer(nn.Module):
    """MLP-Mixer: patches channels-last, token mixing through a transpose, LayerNorm over channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 8, stride=8)
        self.n1, self.n2 = nn.LayerNorm(16), nn.LayerNorm(16)
        self.t1, self.t2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.c1, self.c2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1).flatten(1, 2)
        x = x + self.t2(F.gelu(self.t1(self.n1(x).transpose(1, 2)))).transpose(1, 2)
        x = x + self.c2(F.gelu(self.c1(self.n2(x))))
        return self.head(x.mean(1))


class SplitGate(nn.Module):
    """Unequal split and chunk, a swapped re-concatenation, a sigmoid gate and where/masked_fill."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 24, 3, padding=1)
        self.gate = nn.Conv2d(3, 24, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(16, 13, 1)
        self.c = nn.Conv2d(13, 10, 1)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        y = self.c1(x) * torch.sigmoid(self.gate(x))
        y = torch.where(y > 0, y, 0.1 * y).masked_fill(y > 2.0, 2.0)
        p, q = torch.split(y, [8, 16], dim=1)
        c1, c2 = torch.split(F.relu(self.b(q)), [8, 5], dim=1)
        c3, c4 = torch.chunk(c1, 2, dim=1)
        z = torch.cat([F.relu(self.a(p)) + torch.cat([c4, c3], 1), c2], 1)
        return self.fc(F.relu(self.c(z)).mean((2, 3)))


class GruTagger(nn.Module):
    """Token embedding, Conv1d over time, a 2-layer bidirectional GRU."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 12, 3, padding=1)
        self.gru = nn.GRU(12, 10, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(20, 4)

    def forward(self, tokens):
        x = F.relu(self.conv(self.emb(tokens).transpose(1, 2))).transpose(1, 2)
        y, _ = self.gru(x)
        return self.fc(y.mean(1))


class AttentionBlock(nn.Module):
    """nn.MultiheadAttention on conv patches, pre-norm MLP."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        return self.head(x.mean(1))


class SpaceToDepthScan(nn.Module):
    """pixel_unshuffle, then a cumulative sum along the width."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(32, 12, 1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = F.pixel_unshuffle(F.relu(self.c1(x)), 2)
        return self.fc(torch.cumsum(F.relu(self.c2(x)), dim=3).mean((2, 3)))


class ChannelMixingOps(nn.Module):
    """A channel permutation and a cumulative sum over channels (barriers: their channels must
    not be removed one by one), then an einsum layer and prunable layers behind them."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.register_buffer("perm", torch.randperm(12, generator=torch.Generator().manual_seed(1)))
        self.w = nn.Parameter(torch.randn(12, 10) * 0.3)
        self.c2 = nn.Conv2d(10, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.index_select(F.relu(self.c1(x)), 1, self.perm).cumsum(1)
        x = torch.einsum("bchw,cd->bdhw", x, self.w)
        return self.fc(self.c3(F.relu(self.c2(x))).mean((2, 3)))


class EinsumNet(nn.Module):
    """Layers written as einsum: a 1x1 conv (``bchw,oc->bohw``), a linear layer over the last
    axis (``bld,hd->blh``) and a classifier with its weight first (``kc,bc->bk``)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.w1 = nn.Parameter(torch.randn(24, 16) * 0.25)
        self.w2 = nn.Parameter(torch.randn(20, 24) * 0.2)
        self.w3 = nn.Parameter(torch.randn(5, 20) * 0.2)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(torch.einsum("bchw,oc->bohw", x, self.w1))
        x = F.relu(torch.einsum("bld,hd->blh", x.flatten(2).transpose(1, 2), self.w2))
        return torch.einsum("kc,bc->bk", self.w3, x.mean(1))


class VideoNet(nn.Module):
    """Conv3d, BatchNorm3d, 3-D max and average pooling."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8)
        self.c2 = nn.Conv3d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.max_pool3d(F.relu(self.b1(self.c1(x))), 2)
        x = F.avg_pool3d(F.relu(self.c2(x)), 2)
        return self.fc(F.adaptive_avg_pool3d(x, 1).flatten(1))


def _image(shape=(1, 3, 32, 32)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def _tokens():
    return torch.randint(0, 20, (1, 9), generator=torch.Generator().manual_seed(1))


MODELS = {
    "audio1d": (AudioNet, lambda: _image((1, 1, 256))),
    "shuffle_decoder": (ShuffleDecoder, _image),
    "grouped_shuffle": (GroupedShuffle, _image),
    "squeeze_excite": (SqueezeExcite, _image),
    "mixer": (Mixer, _image),
    "split_gate": (SplitGate, _image),
    "gru_tagger": (GruTagger, _tokens),
    "space_to_depth_scan": (SpaceToDepthScan, _image),
    "channel_mixing_ops": (ChannelMixingOps, _image),
    "video3d": (VideoNet, lambda: _image((1, 3, 4, 16, 16))),
    "einsum_layers": (EinsumNet, lambda: _image((1, 3, 16, 16))),
}


@functools.cache
def _model(name: str):
    cls, make_input = MODELS[name]
    model, x = _seeded(cls), make_input()
    with torch.no_grad():
        y = model(x).numpy()
    return model, x, y


def _onnx_bytes(model, x, opset: int, **options) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"], **options)
    return buffer.getvalue()


@functools.cache
def _graph(name: str, frontend: str):
    model, x, _ = _model(name)
    if frontend == "torch":
        return load_module(model, x)
    return load_onnx(onnx.load_from_string(_onnx_bytes(model, x, int(frontend.removeprefix("opset")))))


def _prune(graph):
    original = copy_graph(graph)
    pruned = PassManager(PIPELINE).run(copy_graph(graph)).graph
    return original, pruned


def _macs(graph) -> int:
    """MACs with the exporter's run-time shape arithmetic folded (as ``irtool show`` counts)."""
    typed = copy_graph(graph)
    infer_shapes(typed)
    typed = PassManager("const-fold").run(typed).graph
    infer_shapes(typed)
    return graph_cost(typed).macs


def _assert_equivalent(original, pruned):
    report = check_equivalence(original, pruned, tol=TOL)
    assert report.ok, report.format()
    for out in report.outputs:
        assert out.max_abs_diff <= TOL * out.scale, report.format()
    return report


def _relative(expected, got) -> float:
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    assert expected.shape == got.shape
    return float(np.abs(expected - got).max() / max(np.abs(expected).max(), 1e-6))


def _channels(graph, constant: str, axis: int = 0) -> int:
    return graph.constants[constant].const.shape[axis]


# -- the whole user path, per pattern and frontend -----------------------------------------------
MAC_REDUCTION = {
    # the least fraction of MACs the pipeline removes, from every frontend (ONNX DepthToSpace,
    # SpaceToDepth and CumSum were barriers: 0.588 and 0.500 for the decoder and the scan)
    "audio1d": 0.73,
    "shuffle_decoder": 0.72,
    "grouped_shuffle": 0.65,
    "squeeze_excite": 0.66,
    "mixer": 0.59,
    "split_gate": 0.60,
    "gru_tagger": 0.74,
    "space_to_depth_scan": 0.57,
    "channel_mixing_ops": 0.61,  # 0.39 while ONNX Einsum was a barrier
    "video3d": 0.59,
    # ONNX keeps the einsums (0.0 while Einsum was a barrier); the torch frontend lowers them to
    # MatMuls with a (1, n, k) weight (0.315 while the MatMul rule took only 2-D weights as layers)
    "einsum_layers": 0.66,
}
CASES = [(name, frontend) for name in MODELS for frontend in ("opset13", "opset17", "torch")]


@pytest.mark.parametrize("name, frontend", CASES)
def test_prune_is_exact_and_the_saved_model_runs(name, frontend, tmp_path):
    _, x, reference = _model(name)
    graph = _graph(name, frontend)
    assert _relative(reference, run_onnxruntime(graph, [x.numpy()])[0]) <= TOL
    original, pruned = _prune(graph)
    before, after = _macs(original), graph_cost(pruned).macs
    least = MAC_REDUCTION[name]
    assert 1 - after / before >= (least[frontend] if isinstance(least, dict) else least), (before, after)
    _assert_equivalent(original, pruned)
    path = save_onnx(pruned, tmp_path / "pruned.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    (saved,) = run_onnxruntime(path, [x.numpy()])
    assert saved.shape == reference.shape
    assert _relative(run_onnxruntime(pruned, [x.numpy()])[0], saved) <= TOL


def test_depth_to_space_prunes_whole_blocks():
    """ONNX's DepthToSpace (pixel_shuffle) was a barrier; now an output channel takes its block of
    four input channels with it, and the ONNX model prunes as far as the torch one."""
    onnx_pruned = _prune(_graph("shuffle_decoder", "opset17"))[1]
    torch_pruned = _prune(_graph("shuffle_decoder", "torch"))[1]
    assert graph_cost(onnx_pruned).macs == graph_cost(torch_pruned).macs
    (shuffle,) = [n for n in onnx_pruned.nodes if n.op == "DepthToSpace"]
    (up,) = [n for n in onnx_pruned.nodes if n.outputs[0] is shuffle.inputs[0]]
    assert up.inputs[1].const.shape[0] == 16  # 32 -> 16 output channels: 4 of the 8 shuffled channels
    assert shuffle.outputs[0].type.shape[1] == 4


def test_gru_hidden_units_are_pruned_in_every_gate_and_direction():
    for frontend in ("opset17", "torch"):
        pruned = _prune(_graph("gru_tagger", frontend))[1]
        grus = [n for n in pruned.nodes if n.op == "GRU"]
        assert [g.attrs["hidden_size"] for g in grus] == [5, 5], frontend
        assert [g.inputs[1].const.shape for g in grus] == [(2, 15, 6), (2, 15, 10)], frontend


def test_channel_mixing_ops_stay_whole_and_layers_behind_them_are_pruned():
    """index_select and cumsum over channels are barriers: c1 keeps all 12 channels. The einsum
    behind them is a layer (it was a barrier too): its 10 outputs go to 5 with c2's inputs, and
    c2 and c3 lose half of their outputs."""
    for frontend in ("opset13", "opset17", "torch"):
        original, pruned = _prune(_graph("channel_mixing_ops", frontend))
        convs = [n for n in pruned.nodes if n.op == "Conv"]
        assert [tuple(n.inputs[1].const.shape[:2]) for n in convs] == [(12, 3), (8, 5), (3, 8)], frontend
        assert graph_cost(pruned).macs == 786441, frontend
        assert _macs(original) == 2027538, frontend
        report = _assert_equivalent(original, pruned)
        assert report.outputs[0].max_abs_diff <= 1e-6, frontend
        if frontend != "torch":
            (einsum,) = [n for n in pruned.nodes if n.op == "Einsum"]
            assert einsum.inputs[1].const.shape == (12, 5)  # the weight loses columns d, not rows c
            assert einsum.outputs[0].type.shape == (1, 5, 32, 32)


def test_einsum_layers_from_onnx_prune_like_linear_layers():
    """``bchw,oc->bohw``, ``bld,hd->blh`` and ``kc,bc->bk`` with constant weights: each einsum
    is a layer whose weight is sliced along the letter that lost channels (no MACs went while
    Einsum was a barrier)."""
    for frontend in ("opset13", "opset17"):
        original, pruned = _prune(_graph("einsum_layers", frontend))
        before, after = _macs(original), graph_cost(pruned).macs
        assert (before, after) == (331876, 110642), frontend
        assert 1 - after / before > 0.666
        report = _assert_equivalent(original, pruned)
        assert report.outputs[0].max_abs_diff <= 1e-6, frontend
        (conv,) = [n for n in pruned.nodes if n.op == "Conv"]
        assert conv.inputs[1].const.shape == (8, 3, 3, 3)
        einsums = {n.attrs["equation"]: n for n in pruned.nodes if n.op == "Einsum"}
        weights = {eq: next(v.const.shape for v in n.inputs if v.is_const) for eq, n in einsums.items()}
        assert weights == {"bchw,oc->bohw": (12, 8), "bld,hd->blh": (10, 12), "kc,bc->bk": (5, 10)}, frontend
        assert einsums["bld,hd->blh"].outputs[0].type.shape == (1, 256, 10)
        assert einsums["kc,bc->bk"].outputs[0].type.shape == (1, 5)


def test_space_to_depth_and_a_scan_along_width_keep_channels_prunable():
    pruned = _prune(_graph("space_to_depth_scan", "opset17"))[1]
    convs = [n for n in pruned.nodes if n.op == "Conv"]
    assert [tuple(n.inputs[1].const.shape[:2]) for n in convs] == [(4, 3), (6, 16)]


# -- attention -----------------------------------------------------------------------------------
def test_multihead_attention_from_pytorch_runs_in_onnxruntime_and_prunes_heads():
    """The frontend named a helper constant ``squeeze_axes``; onnxruntime's Gather fusion adds
    an initializer of that name and then refused the model (every nn.MultiheadAttention)."""
    model, x = _seeded(AttentionBlock), _image()
    with torch.no_grad():
        reference = model(x).numpy()
    graph = load_module(model, x)
    assert _relative(reference, run_onnxruntime(graph, [x.numpy()])[0]) <= TOL
    original, pruned = _prune(graph)
    report = _assert_equivalent(original, pruned)
    assert report.approximate  # the LayerNorm over channels
    assert _channels(pruned, "attn.in_proj_weight_t", 1) == 24  # 4 heads of 4 -> 2 heads, q, k and v
    assert _channels(pruned, "attn.out_proj.weight", 1) == 8


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(self.emb(x)).mean(1))


def test_transformer_encoder_from_pytorch_prunes_heads_and_feed_forward():
    model, x = _seeded(Encoder), _image((1, 10, 6))
    with torch.no_grad():
        reference = model(x).numpy()
    graph = load_module(model, x)
    assert _relative(reference, run_onnxruntime(graph, [x.numpy()])[0]) <= TOL
    original, pruned = _prune(graph)
    _assert_equivalent(original, pruned)
    for layer in range(2):
        prefix = f"enc.layers.{layer}"
        assert _channels(pruned, f"{prefix}.self_attn.in_proj_weight_t", 1) == 24, layer
        assert _channels(pruned, f"{prefix}.linear1.weight_t", 1) == 16, layer


def test_multihead_attention_from_onnx_passes_the_oracle():
    model, x = _seeded(AttentionBlock), _image()
    graph = load_onnx(onnx.load_from_string(_onnx_bytes(model, x, 17)))
    _assert_equivalent(*_prune(graph))


# -- TVM -----------------------------------------------------------------------------------------
class UpsamplingDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.e, self.bn = nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.up, self.bn2 = nn.ConvTranspose2d(16, 8, 2, stride=2), nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn2(self.up(F.relu(self.bn(self.e(x)))))))


@pytest.mark.parametrize("make", [UpsamplingDecoder, ShuffleDecoder], ids=["conv_transpose", "depth_to_space"])
def test_pruned_decoders_compile_with_tvm_and_match_onnxruntime(make):
    """A ConvTranspose behind a Conv did not compile (the NHWC conversion reached it)."""
    from irtool.backends.tvm import compile_graph

    model, x = _seeded(make), _image()
    original, pruned = _prune(load_onnx(onnx.load_from_string(_onnx_bytes(model, x, 17))))
    _assert_equivalent(original, pruned)
    expected = run_onnxruntime(pruned, [x.numpy()], threads=1)[0]
    assert _relative(expected, compile_graph(pruned).run([x.numpy()])[0]) <= TOL


@pytest.mark.parametrize("opset", [13, 17])
def test_pruned_einsum_layers_compile_with_tvm_and_match_onnxruntime(opset):
    from irtool.backends.tvm import compile_graph

    model, x, reference = _model("einsum_layers")
    original, pruned = _prune(load_onnx(onnx.load_from_string(_onnx_bytes(model, x, opset))))
    _assert_equivalent(original, pruned)
    assert graph_cost(pruned).macs == 110642
    expected = run_onnxruntime(pruned, [x.numpy()], threads=1)[0]
    assert expected.shape == reference.shape == (1, 5)
    assert _relative(expected, compile_graph(pruned).run([x.numpy()])[0]) <= TOL


# -- the command line ----------------------------------------------------------------------------
def _custom_op_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("FancyOp", ["c1"], ["f"], domain="com.example", name="fancy"),
        helper.make_node("Conv", ["f", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], kernel_shape=[1, 1], name="conv3"),
    ]
    weights = [weight("w1", 8, 3, 3, 3), weight("b1", 8), weight("w2", 8, 8, 3, 3), weight("b2", 8),
               weight("w3", 4, 8, 1, 1), weight("b3", 4)]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


def test_cli_on_a_model_with_an_op_irtool_does_not_know(tmp_path, capsys):
    """The custom op's output has no declared type; ``irtool opt`` died with a traceback in
    the cost of the conv behind it. Now it runs, and the op is a barrier."""
    model = _custom_op_model()
    source = tmp_path / "custom.onnx"
    onnx.save(model, str(source))
    assert irtool_main(["opt", "-p", PIPELINE, str(source), "-o", str(tmp_path / "out.onnx")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    out = onnx.load(str(tmp_path / "out.onnx"))
    weights = {t.name: tuple(t.dims) for t in out.graph.initializer}
    assert weights["w1"] == (8, 3, 3, 3)  # feeds the unknown op: left whole
    assert [n.op_type for n in out.graph.node] == ["Conv", "FancyOp", "Conv", "Relu", "Conv"]

    typed = _custom_op_model()
    typed.graph.value_info.append(onnx.helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, [1, 8, 16, 16]))
    onnx.save(typed, str(source))
    assert irtool_main(["opt", "-p", PIPELINE, str(source), "-o", str(tmp_path / "typed.onnx")]) == 0
    weights = {t.name: tuple(t.dims) for t in onnx.load(str(tmp_path / "typed.onnx")).graph.initializer}
    assert weights["w1"] == (8, 3, 3, 3) and weights["w2"] == (4, 8, 3, 3) and weights["w3"] == (4, 4, 1, 1)


# -- the dynamo exporter -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["audio1d", "split_gate"])
def test_dynamo_exported_onnx_prunes_exactly(name, tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs the onnxscript package")
    model, x, reference = _model(name)
    path = tmp_path / "dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, verbose=False)
    program.save(str(path))
    graph = load_onnx(path)
    assert _relative(reference, run_onnxruntime(graph, [x.numpy()])[0]) <= TOL
    original, pruned = _prune(graph)
    assert 1 - graph_cost(pruned).macs / _macs(original) >= MAC_REDUCTION[name]
    _assert_equivalent(original, pruned)
