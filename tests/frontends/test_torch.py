"""PyTorch -> IR: every zoo model computes what torch computes, in onnxruntime and back in torch."""

from __future__ import annotations

import functools
import importlib
import sys
import textwrap
import uuid
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from irtool.backends.onnx import run_onnxruntime
from irtool.backends.torch import to_torch
from irtool.frontends.torch import BATCH, load_factory, load_module, load_pt2
from irtool.ir.errors import IrtoolError
from irtool.ir.registry import lookup
from irtool.ir.text import print_graph
from irtool.ir.verify import verify
from irtool.tools.cli import main as irtool_main
from tests.zoo import ZOO

TOLERANCE = 1e-5


def relative_error(reference, result) -> float:
    reference, result = np.asarray(reference), np.asarray(result)
    return float(np.abs(reference - result).max() / max(np.abs(reference).max(), 1e-12))


@functools.cache
def lowered(name: str):
    zoo_model = ZOO[name]
    model, x = zoo_model.build(), zoo_model.example_input()
    return model, x, load_module(model, x)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_runs_the_same_in_onnxruntime_and_back_in_torch(name):
    model, x, graph = lowered(name)
    verify(graph)
    with torch.no_grad():
        reference = model(x).numpy()
        back_in_torch = to_torch(graph).eval()(x).numpy()
    in_onnxruntime = run_onnxruntime(graph, [x.numpy()])[0]
    assert relative_error(reference, in_onnxruntime) <= TOLERANCE
    assert relative_error(reference, back_in_torch) <= TOLERANCE
    assert not [n for n in graph.nodes if n.domain], "every zoo op has a converter"


def test_resnet18_names_layers_and_constants_as_pytorch_does():
    model, _, graph = lowered("resnet18")
    sources = {node.source for node in graph.nodes}
    assert {"conv1", "layer4.1.conv1", "layer4.1.bn2", "fc"} <= sources
    (conv,) = graph.find_nodes(source="layer4.1.conv1")
    assert conv.op == "Conv"
    state = model.state_dict()
    weight = graph.constants["layer4.1.conv1.weight"]
    assert conv.inputs[1] is weight
    assert np.array_equal(weight.const, state["layer4.1.conv1.weight"].numpy())
    weights = {k for k in state if not k.endswith("num_batches_tracked")}
    assert weights <= set(graph.constants)
    (flatten_shape,) = set(graph.constants) - weights
    assert graph.constants[flatten_shape].const.tolist() == [1, 512]


class TinyTransformer(nn.Module):
    """Patch conv, class token expanded over the batch, causal attention, mean pool, linear."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
        self.norm = nn.LayerNorm(16)
        self.qkv = nn.Linear(16, 48)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        b, n, c = tokens.shape
        q, k, v = self.qkv(self.norm(tokens)).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        pooled = attended.transpose(1, 2).reshape(b, n, c).mean(dim=1)
        return self.head(F.silu(pooled))


def test_dynamic_batch_runs_any_batch_size():
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    graph = load_module(model, torch.randn(1, 3, 16, 16), dynamic_batch=True)
    verify(graph)
    assert graph.inputs[0].type.shape == (BATCH, 3, 16, 16)
    assert graph.outputs[0].type.shape == (BATCH, 5)
    back = to_torch(graph).eval()
    for batch in (1, 3):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            reference = model(x).numpy()
            assert relative_error(reference, back(x).numpy()) <= TOLERANCE
        assert relative_error(reference, run_onnxruntime(graph, [x.numpy()])[0]) <= TOLERANCE
    # Linear on 3-D tokens is MatMul on a transposed copy of the weight, named after it.
    assert np.array_equal(graph.constants["qkv.weight_t"].const, model.qkv.weight.detach().numpy().T)
    assert graph.find_nodes(source="head")[0].op == "Gemm"


def test_a_layer_called_twice_keeps_one_weight():
    linear = nn.Linear(4, 4)
    graph = load_module(nn.Sequential(linear, nn.ReLU(), linear), torch.randn(2, 3, 4))
    (weight_t,) = [v for name, v in graph.constants.items() if name.endswith("weight_t")]
    assert [user.op for user in weight_t.users] == ["MatMul", "MatMul"]


class ImageOps(nn.Module):
    """Layers and functions the zoo does not use, each reaching its own converter."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
        self.same = nn.Conv1d(6, 6, 3, padding="same")
        self.bn = nn.BatchNorm2d(6, affine=False)
        self.ln = nn.LayerNorm(6, elementwise_affine=False)
        self.gn = nn.GroupNorm(3, 6)
        self.prelu = nn.PReLU(6)

    def forward(self, x):
        y = self.up(x)                                      # conv_transpose2d
        y = self.prelu(self.gn(self.bn(y)))
        a, b = y.chunk(2, dim=1)                            # split
        y = torch.cat([F.leaky_relu(a, 0.2), torch.clamp(b, -0.5, 0.7)], dim=1)
        y = F.avg_pool2d(y, 3, stride=2, ceil_mode=True, count_include_pad=False, padding=1)
        y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        y = F.pad(y, (1, 0, 2, 1), value=0.5)
        n, c, h, w = y.shape
        seq = self.same(y.reshape(n, c, h * w))             # conv1d, padding="same"
        seq = self.ln(seq.transpose(1, 2))
        stats = (seq.pow(2).mean(dim=-1, keepdim=True) + 1.0).rsqrt() - seq.amax(dim=-1).unsqueeze(-1) / 3
        gate = torch.where(seq > 0, seq, torch.zeros_like(seq) - 1.0)
        out = torch.softmax(gate * stats, dim=-1) + F.log_softmax(seq, dim=-1).mean(dim=1, keepdim=True)
        return F.hardsigmoid(out).squeeze(1) if out.shape[1] == 1 else F.hardsigmoid(out)

class TokenOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 8)
        self.lstm = nn.LSTM(8, 6, bidirectional=True)

    def forward(self, tokens):
        x = self.embed(tokens)                               # embedding on int64 input
        q, k, v = self.proj(x).unbind(-1)[:3]                 # unbind
        pos = torch.arange(tokens.shape[1], dtype=torch.float32)
        x = x + pos.unsqueeze(-1) / 10 + (q - k * v).unsqueeze(-1)
        y, (h, c) = self.lstm(x.transpose(0, 1))              # bidirectional, seq-first
        return torch.cat([y.mean(0), h.transpose(0, 1).flatten(1), c.sum(0)], dim=1)


@pytest.mark.parametrize("dynamic_batch", [False, True])
@pytest.mark.parametrize("make_model, make_input", [
    (ImageOps, lambda: torch.randn(2, 4, 5, 6)),
    (TokenOps, lambda: torch.randint(0, 20, (2, 7))),
])
def test_converters_beyond_the_zoo(make_model, make_input, dynamic_batch):
    torch.manual_seed(0)
    model, x = make_model().eval(), make_input()
    graph = load_module(model, x, dynamic_batch=dynamic_batch)
    verify(graph)
    assert not [n for n in graph.nodes if n.domain]
    with torch.no_grad():
        reference = model(x).numpy()
        assert relative_error(reference, to_torch(graph)(x).numpy()) <= TOLERANCE
    assert relative_error(reference, run_onnxruntime(graph, [x.numpy()])[0]) <= TOLERANCE


class Fn(nn.Module):
    """One functional op as a module, for the converter table below."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


_MASK = torch.tril(torch.ones(5, 5, dtype=torch.bool))
_INDEX = torch.tensor([3, 0, 5, -1])

ATEN_CASES = {
    # ops real models use that once became opaque aten nodes (onnxruntime cannot run those)
    "flip": lambda x: torch.flip(x, [1, 3]),
    "roll": lambda x: torch.roll(x, (2, -3), (1, 3)),
    "roll-flat": lambda x: torch.roll(x, 5),
    "cumsum": lambda x: torch.cumsum(x, 2),
    "normalize": lambda x: F.normalize(x, dim=1),
    "vector-norm-1-inf-3": lambda x: torch.linalg.vector_norm(x, 1, dim=(2, 3), keepdim=True)
    + torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True)
    + torch.linalg.vector_norm(x, 3, dim=1, keepdim=True),
    "ne-not-xor": lambda x: torch.where(~(x != 0.5) ^ (x > 0), x, -x),
    "index-one-tensor": lambda x: x[:, _INDEX],
    "gather": lambda x: torch.gather(x, 3, (torch.arange(2 * 6 * 5 * 7).reshape(2, 6, 5, 7) * 5) % 7),
    "topk": lambda x: torch.topk(x, 3, dim=1, largest=False).values,
    "repeat": lambda x: x.repeat(1, 2, 1, 3),
    "var-std-var_mean": lambda x: x.var(1, keepdim=True) + x.std((2, 3), correction=0)[..., None, None]
    + torch.var_mean(x, 3, keepdim=True)[1],
    "max-min-dim": lambda x: x.max(1, keepdim=True)[0] - x.min(2).values[:, :, None] + x.argmax(3)[..., None],
    "argmax-flat": lambda x: x + x.argmin().float(),
    "prod": lambda x: torch.prod(x, 1),
    "any-all": lambda x: x + (x > 2).any(1, keepdim=True).float() - (x > -3).all().float(),
    "adaptive-max-pool": lambda x: F.adaptive_max_pool2d(x[:, :, :4, :6], (2, 3)) + F.adaptive_max_pool2d(x, 1),
    "sign-round-trunc": lambda x: torch.sign(x) + torch.round(x * 3) + torch.trunc(x * 3),
    "exp2-log1p-expm1": lambda x: torch.exp2(x) + torch.log1p(x.abs()) + torch.expm1(x),
    "trunc-division": lambda x: torch.div(x * 7, 2.0, rounding_mode="trunc"),
    "fmod-remainder": lambda x: torch.fmod(x * 3, 2.0) + torch.remainder(x * 3, x.abs() + 0.5),
    "clamp-tensor": lambda x: torch.clamp(x, min=torch.tensor(-0.5), max=x.mean(1, keepdim=True)),
    "pad-reflect": lambda x: F.pad(x, (1, 2, 2, 0), mode="reflect"),
    "pad-replicate": lambda x: F.pad(x, (1, 2, 2, 0), mode="replicate"),
    "pad-circular": lambda x: F.pad(x, (1, 2, 2, 0), mode="circular"),
    "selu-celu-logsigmoid": lambda x: F.selu(x) + F.celu(x, 0.7) + F.logsigmoid(x),
    "softplus-beta": lambda x: F.softplus(x * 10, beta=0.5, threshold=3),
    "sdpa-boolean-mask": lambda x: F.scaled_dot_product_attention(x, x, x, attn_mask=_MASK),
    "bicubic": lambda x: F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False),
    "nearest-exact": lambda x: F.interpolate(x, size=(9, 11), mode="nearest-exact"),
    # 5 x float32(9/5) is 9 in float32 but 8.99999 in double: these resize to a size, not a scale
    "resize-to-sizes": lambda x: F.interpolate(x, size=(9, 11), mode="bilinear", align_corners=True)
    + F.interpolate(x, size=(9, 11), mode="nearest") + F.interpolate(x, size=(9, 11), mode="bicubic"),
    "pool3d": lambda x: F.max_pool3d(x.reshape(2, 3, 2, 5, 7), (1, 2, 2), ceil_mode=True)
    + F.avg_pool3d(x.reshape(2, 3, 2, 5, 7), (2, 3, 3), stride=1, padding=(0, 1, 1)) [..., :3, :4]
    + F.adaptive_avg_pool3d(x.reshape(2, 3, 2, 5, 7), 1),
}


@pytest.mark.parametrize("name", sorted(ATEN_CASES))
def test_common_aten_ops_lower_to_ir_ops(name):
    """Each op is converted (no opaque node) and computes what torch computes, in onnxruntime
    and back in torch."""
    model = Fn(ATEN_CASES[name]).eval()
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(0))
    graph = load_module(model, x)
    verify(graph)
    assert not [n.qualified_op for n in graph.nodes if n.domain]
    with torch.no_grad():
        reference = model(x).numpy()
        back_in_torch = to_torch(graph).eval()(x).numpy()
    assert relative_error(reference, run_onnxruntime(graph, [x.numpy()])[0]) <= 1e-5
    assert relative_error(reference, back_in_torch) <= 1e-5


def test_trunc_division_rounds_toward_zero():
    """It was lowered as a plain Div: -3.5 came out instead of -3."""
    model = Fn(lambda x: torch.div(x, 2.0, rounding_mode="trunc")).eval()
    x = torch.tensor([[-7.0, -1.0, 1.0, 7.0, 5.5]])
    out = run_onnxruntime(load_module(model, x), [x.numpy()])[0]
    np.testing.assert_array_equal(out, [[-3.0, -0.0, 0.0, 3.0, 2.0]])


class PaddedScan(nn.Module):
    def forward(self, x):
        padded = F.pad(x, (1, 2, 1, 0), mode="reflect") + F.pad(x, (1, 2, 1, 0), mode="replicate")
        return torch.cumprod(padded + F.pad(x, (1, 2, 1, 0), mode="circular"), 1)


def test_padding_modes_stay_pads_when_an_unknown_op_makes_the_graph_decompose():
    """torch.export's decompositions turn reflect/replicate padding into index arithmetic."""
    x = torch.randn(1, 2, 5, 6, generator=torch.Generator().manual_seed(0))
    graph = load_module(PaddedScan().eval(), x)
    assert [n.attrs["mode"] for n in graph.nodes if n.op == "Pad"] == ["reflect", "edge", "wrap"]
    assert [n.op for n in graph.nodes if n.domain] == ["cumprod"]
    with torch.no_grad():
        assert relative_error(PaddedScan()(x).numpy(), to_torch(graph).eval()(x).numpy()) <= TOLERANCE


class Unpool(nn.Module):
    def forward(self, x):
        y, indices = F.max_pool2d(x, 2, return_indices=True)
        return F.max_unpool2d(y * 2, indices, 2)


def test_max_pool_whose_indices_are_read_stays_an_aten_op():
    """The converter returned no indices, and the unpooling that read them lost an input."""
    x = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    graph = load_module(Unpool().eval(), x)
    assert [n.op for n in graph.nodes if n.domain][0] == "max_pool2d_with_indices"
    assert all(None not in n.inputs for n in graph.nodes if n.domain)
    with torch.no_grad():
        assert relative_error(Unpool()(x).numpy(), to_torch(graph).eval()(x).numpy()) <= TOLERANCE


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.single = nn.GRU(10, 4)

    def forward(self, x):
        y, h = self.gru(x)
        z, _ = self.single(y.transpose(0, 1))
        return torch.cat([z.transpose(0, 1).flatten(1), h.transpose(0, 1).flatten(1)], 1)


def test_gru_is_one_onnx_gru_per_layer():
    """Kept whole (it used to decompose into a per-step loop with aten::flip for the reverse
    direction, which onnxruntime could not run)."""
    torch.manual_seed(0)
    model = Recurrent().eval()
    x = torch.randn(2, 7, 6)
    graph = load_module(model, x)
    grus = graph.find_nodes(op="GRU")
    assert [(g.attrs["direction"], g.attrs["hidden_size"], g.attrs["linear_before_reset"]) for g in grus] == [
        ("bidirectional", 5, 1), ("bidirectional", 5, 1), ("forward", 4, 1)
    ]
    assert graph.constants["gru.W_l1"].const.shape == (2, 15, 10)
    with torch.no_grad():
        reference = model(x).numpy()
        assert relative_error(reference, to_torch(graph).eval()(x).numpy()) <= TOLERANCE
    assert relative_error(reference, run_onnxruntime(graph, [x.numpy()])[0]) <= TOLERANCE


def test_helper_constants_cannot_collide_with_onnxruntime_initializers():
    """onnxruntime's Gather fusion adds an initializer named ``squeeze_axes`` (unique among node
    names only): a helper constant of ours with that name made it refuse nn.MultiheadAttention."""
    torch.manual_seed(0)
    model = SelfAttention().eval()
    x = torch.randn(1, 5, 8)
    graph = load_module(model, x)
    assert "squeeze.axes" in graph.constants and "squeeze_axes" not in graph.constants
    with torch.no_grad():
        reference = model(x).numpy()
    assert relative_error(reference, run_onnxruntime(graph, [x.numpy()])[0]) <= TOLERANCE


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class CumulativeHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.drop = nn.Dropout(0.25)

    def forward(self, x):
        return self.drop(torch.cumprod(self.conv(x), dim=1))


def test_unknown_aten_op_becomes_an_opaque_barrier_and_dropout_is_kept():
    torch.manual_seed(0)
    model = CumulativeHead().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = load_module(model, x)
    verify(graph)
    (opaque,) = [n for n in graph.nodes if n.domain]
    assert (opaque.domain, opaque.op, opaque.source) == ("aten", "cumprod", "")
    assert opaque.attrs["dim"] == 1
    assert lookup(opaque.op, opaque.domain) is None
    assert "aten::cumprod" in print_graph(graph)
    (dropout,) = graph.find_nodes(op="Dropout")
    assert dropout.source == "drop"
    assert float(dropout.inputs[1].const) == 0.25
    # The torch backend calls the ATen op itself, so the model still runs (and trains) in torch.
    with torch.no_grad():
        assert relative_error(model(x).numpy(), to_torch(graph).eval()(x).numpy()) <= TOLERANCE


class ObservedInPlace(nn.Module):
    """In-place ops whose writes are visible elsewhere: lowering them as functional ops would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        z = y.relu_()  # y itself now holds relu(y)
        flat = z.flatten(1)
        flat.sigmoid_()  # writes through a view into z (and y)
        return y + z + x.mean()


def test_in_place_writes_seen_through_aliases_keep_their_meaning():
    torch.manual_seed(0)
    model = ObservedInPlace().eval()
    x = torch.randn(2, 3, 6, 6)
    graph = load_module(model, x)
    with torch.no_grad():
        reference = model(x.clone()).numpy()
        assert relative_error(reference, to_torch(graph)(x).numpy()) <= TOLERANCE
    assert relative_error(reference, run_onnxruntime(graph, [x.numpy()])[0]) <= TOLERANCE


def test_train_mode_lowering_keeps_batch_statistics_and_dropout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.3), nn.Flatten(), nn.Linear(16, 2))
    graph = load_module(model, torch.randn(2, 3, 4, 4), train=True, dynamic_batch=True)
    assert model.training, "the module's own mode is restored"
    (bn,) = graph.find_nodes(op="BatchNormalization")
    assert bn.attrs["training_mode"] == 1 and bn.attrs["momentum"] == pytest.approx(0.9)
    (dropout,) = graph.find_nodes(op="Dropout")
    assert bool(dropout.inputs[2].const)
    module = to_torch(graph).train()
    x = torch.randn(5, 3, 4, 4)
    torch.manual_seed(1)
    expected = model(x)
    torch.manual_seed(1)
    assert relative_error(expected.detach().numpy(), module(x).detach().numpy()) <= TOLERANCE


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


def test_untraceable_model_is_one_clear_error():
    with pytest.raises(IrtoolError) as info:
        load_module(DataDependent(), torch.randn(2, 3))
    message = str(info.value)
    assert message.startswith("torch.export cannot trace DataDependent")
    assert "\n" not in message


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A fresh importable module in the current directory, as a user's models.py would be."""
    name = f"models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def small():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

        def not_a_module():
            return 3

        class DataDependent(nn.Module):
            def forward(self, x):
                return x * 2 if x.sum() > 0 else x

        def data_dependent():
            return DataDependent()

        class Zoo:
            @staticmethod
            def build():
                return small()

        class Tagger(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed, self.gru, self.head = nn.Embedding(20, 8), nn.GRU(8, 6, batch_first=True), nn.Linear(6, 3)

            def forward(self, tokens):
                return self.head(self.gru(self.embed(tokens))[0])

        def tagger():
            torch.manual_seed(0)
            return Tagger()
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return name


def test_factory_is_imported_from_the_current_directory(factory_module):
    graph = load_factory(f"{factory_module}:small", [(2, 3, 12, 12)])
    assert graph.name == "small"
    assert [n.op for n in graph.nodes] == [
        "Conv", "BatchNormalization", "Clip", "GlobalAveragePool", "Reshape", "Gemm"
    ]
    assert graph.inputs[0].type.shape == (2, 3, 12, 12)
    nested = load_factory(f"{factory_module}:Zoo.build", [(1, 3, 8, 8)])
    assert len(nested.nodes) == 6


def test_factory_takes_token_ids_when_the_shape_says_int64(factory_module, capfd):
    from irtool.tools.model_io import parse_shape

    graph = load_factory(f"{factory_module}:tagger", [parse_shape("2x12:int64")])
    assert graph.inputs[0].type.dtype.numpy == np.int64 and graph.inputs[0].type.shape == (2, 12)
    tokens = np.arange(24, dtype=np.int64).reshape(2, 12) % 20
    module = importlib.import_module(factory_module).tagger()
    with torch.no_grad():
        expected = module(torch.from_numpy(tokens)).numpy()
    assert np.abs(run_onnxruntime(graph, [tokens])[0] - expected).max() < 1e-5
    capfd.readouterr()
    assert irtool_main(["show", f"{factory_module}:tagger", "--input-shape", "1x12:int64", "--summary-only"]) == 0
    assert irtool_main(["show", f"{factory_module}:tagger", "--input-shape", "1x12:long"]) == 2
    error = capfd.readouterr().err
    assert error.count("\n") == 1 and "element type 'long' is not one of float32, float16, float64, int64, int32, bool" in error


@pytest.mark.parametrize(
    "spec, shapes, message",
    [
        ("no_such_package_xyz.models:build", [(1, 3, 8, 8)], "cannot import 'no_such_package_xyz.models'"),
        ("{m}:missing", [(1, 3, 8, 8)], "has no attribute 'missing'"),
        ("{m}:not_a_module", [(1, 3, 8, 8)], "returned int, not a torch.nn.Module"),
        ("{m}:small", None, "needs --input-shape"),
        ("{m}:small", [(1, 5, 8, 8)], "torch.export cannot trace Sequential"),
    ],
)
def test_bad_factory_is_one_clear_error(factory_module, spec, shapes, message):
    with pytest.raises(IrtoolError) as info:
        load_factory(spec.format(m=factory_module), shapes)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_pt2_archive_loads_and_unsafe_or_corrupt_ones_are_refused(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardswish(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3))
    x = torch.randn(1, 3, 8, 8)
    torch.export.save(torch.export.export(model.eval(), (x,)), tmp_path / "model.pt2")
    graph = load_pt2(tmp_path / "model.pt2")
    assert graph.name == "model"
    with torch.no_grad():
        assert relative_error(model(x).numpy(), run_onnxruntime(graph, [x.numpy()])[0]) <= TOLERANCE

    pickled = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(tmp_path / "model.pt2") as source, zipfile.ZipFile(pickled, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data/weights/model_weights_config.json"):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            target.writestr(item, data)
    with pytest.raises(IrtoolError, match=r"holds pickled objects \(data/weights/model_weights_config.json\)"):
        load_pt2(pickled)

    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"PK\x03\x04 this is not an archive")
    with pytest.raises(IrtoolError, match="is not a readable torch.export archive"):
        load_pt2(corrupt)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no_such_package_xyz:build", "--input-shape", "1x3x8x8"], "cannot import 'no_such_package_xyz'"),
        (["{m}:data_dependent", "--input-shape", "2x3"], "torch.export cannot trace DataDependent"),
        (["{tmp}/corrupt.pt2"], "corrupt.pt2' is not a readable torch.export archive"),
    ],
)
def test_cli_bad_model_is_one_line_and_exit_2(factory_module, tmp_path, capfd, argv, message):
    (tmp_path / "corrupt.pt2").write_bytes(b"\x00" * 64)
    argv = [a.format(m=factory_module, tmp=tmp_path) for a in argv]
    capfd.readouterr()
    assert irtool_main(["show", *argv]) == 2
    out, error = capfd.readouterr()
    assert out == "" and error.count("\n") == 1 and message in error, error
