"""irtool's own model zoo: plain-PyTorch re-implementations of well-known architectures
(no torchvision/timm), randomly initialised with fixed seeds.

Every factory (e.g. ``tests.zoo.resnet:resnet18``) returns the model in ``eval()`` mode,
built under ``torch.manual_seed(seed)`` (seed=0 by default, inside a forked RNG so the
caller's RNG state is untouched), with all BatchNorm running stats / affine params and
LayerNorm affine params set to non-trivial random values.

    from tests.zoo import ZOO, get, export_onnx
    zm = get("resnet50")
    model = zm.build()                   # sized for zm.input_shape
    x = zm.example_input()               # seeded randn of zm.input_shape
    export_onnx("resnet50", "r50.onnx")  # input "input", output "output", opset 17
"""
from __future__ import annotations

import functools
import importlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from .convnext import convnext_tiny
from .densenet import densenet121
from .efficientnet import efficientnet_b0
from .inception import inception_net
from .lstm import lstm_classifier
from .mobilenetv2 import mobilenet_v2
from .mobilenetv3 import mobilenet_v3_small
from .resnet import resnet18, resnet50
from .shufflenet import shufflenet_v2_x1_0
from .squeezenet import squeezenet1_1
from .unet import unet
from .vgg import vgg11_bn
from .vit import vit_tiny

__all__ = [
    "ZooModel",
    "ZOO",
    "get",
    "names",
    "load_factory",
    "export_onnx",
    "onnx_bytes",
    "run_onnxruntime",
    "ONNX_INPUT_NAME",
    "ONNX_OUTPUT_NAME",
    "ONNX_OPSET",
]

ONNX_INPUT_NAME = "input"
ONNX_OUTPUT_NAME = "output"
ONNX_OPSET = 17


@dataclass(frozen=True)
class ZooModel:
    name: str
    factory: Callable[..., nn.Module]  # factory(**kwargs) -> eval-mode model, seeded
    input_shape: tuple[int, ...]  # small test size
    full_input_shape: tuple[int, ...]  # published size
    published_macs: Optional[float]  # at full_input_shape; None if no published number
    # Optional: input shape -> extra factory kwargs (ViT: image_size from H).
    shape_kwargs: Optional[Callable[[tuple[int, ...]], dict]] = None
    # Shape of the output for a batch of 1 at input_shape (for tests); None: not checked.
    output_shape: Optional[tuple[int, ...]] = None

    @property
    def factory_path(self) -> str:
        """``"module:function"`` path of the factory, e.g. ``tests.zoo.resnet:resnet18``."""
        return f"{self.factory.__module__}:{self.factory.__name__}"

    def build(self, input_shape: Optional[Sequence[int]] = None, **kwargs) -> nn.Module:
        """Build the eval-mode, seeded model.  ``input_shape`` (default ``self.input_shape``)
        only matters for models whose construction depends on it (ViT)."""
        shape = tuple(input_shape) if input_shape is not None else self.input_shape
        kw = dict(self.shape_kwargs(shape)) if self.shape_kwargs is not None else {}
        kw.update(kwargs)
        return self.factory(**kw)

    def build_full(self, **kwargs) -> nn.Module:
        """Build the model for ``full_input_shape``."""
        return self.build(self.full_input_shape, **kwargs)

    def example_input(self, shape: Optional[Sequence[int]] = None, seed: int = 0) -> torch.Tensor:
        """Deterministic ``randn`` input (private generator) of ``shape`` (default input_shape)."""
        shape = tuple(shape) if shape is not None else self.input_shape
        g = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float32)


def _vit_kwargs(shape: tuple[int, ...]) -> dict:
    if shape[-1] != shape[-2]:
        raise ValueError(f"vit_tiny needs a square input, got {shape}")
    return {"image_size": int(shape[-1])}


def _vgg_kwargs(shape: tuple[int, ...]) -> dict:
    # At test sizes the 25088x4096 classifier (400 MB) would dominate every test: keep the
    # topology (features, adaptive pool, flatten into three linears) with a narrower classifier.
    if shape[-1] >= 224:
        return {}
    return {"pool_size": max(1, int(shape[-1]) // 32), "hidden": 512}


_IMG = (1, 3, 64, 64)
# published_macs (multiply-accumulates of conv + linear layers, 224x224, batch 1):
#   resnet18 1.82G, resnet50 4.09G, mobilenet_v2 0.30G, efficientnet_b0 0.39G,
#   squeezenet1_1 0.35G, vgg11_bn 7.61G, convnext_tiny 4.46G, densenet121 2.83G:
#   torchvision model table ("GFLOPS" column, which counts MACs);
#   mobilenet_v3_small 0.056G (56M MAdds, Howard et al. 2019);
#   shufflenet_v2_x1_0 0.146G (146M FLOPs = MACs, Ma et al. 2018);
#   vit_tiny 1.26G (DeiT-Ti/16 is usually quoted as 1.3 GFLOPs(=MACs); 1.26G with the
#   attention matmuls counted, as tests.zoo.macs does).
_IMG_FULL = (1, 3, 224, 224)

ZOO: dict[str, ZooModel] = {
    z.name: z
    for z in [
        ZooModel("resnet18", resnet18, _IMG, _IMG_FULL, 1.82e9, output_shape=(1, 1000)),
        ZooModel("resnet50", resnet50, _IMG, _IMG_FULL, 4.09e9, output_shape=(1, 1000)),
        ZooModel("mobilenet_v2", mobilenet_v2, _IMG, _IMG_FULL, 0.30e9, output_shape=(1, 1000)),
        ZooModel("mobilenet_v3_small", mobilenet_v3_small, _IMG, _IMG_FULL, 0.056e9, output_shape=(1, 1000)),
        ZooModel("efficientnet_b0", efficientnet_b0, _IMG, _IMG_FULL, 0.39e9, output_shape=(1, 1000)),
        ZooModel("densenet121", densenet121, _IMG, _IMG_FULL, 2.83e9, output_shape=(1, 1000)),
        ZooModel("shufflenet_v2_x1_0", shufflenet_v2_x1_0, _IMG, _IMG_FULL, 0.146e9, output_shape=(1, 1000)),
        ZooModel("inception", inception_net, _IMG, _IMG_FULL, None, output_shape=(1, 1000)),
        ZooModel("squeezenet1_1", squeezenet1_1, _IMG, _IMG_FULL, 0.35e9, output_shape=(1, 1000)),
        ZooModel("vgg11_bn", vgg11_bn, _IMG, _IMG_FULL, 7.61e9, shape_kwargs=_vgg_kwargs,
                 output_shape=(1, 1000)),
        ZooModel("convnext_tiny", convnext_tiny, _IMG, _IMG_FULL, 4.46e9, output_shape=(1, 1000)),
        ZooModel("vit_tiny", vit_tiny, _IMG, _IMG_FULL, 1.26e9, shape_kwargs=_vit_kwargs,
                 output_shape=(1, 1000)),
        ZooModel("lstm_classifier", lstm_classifier, (1, 16, 32), (1, 16, 32), None, output_shape=(1, 10)),
        ZooModel("unet", unet, _IMG, (1, 3, 256, 256), None, output_shape=(1, 2, 64, 64)),
    ]
}

_ALIASES = {
    "shufflenet_v2": "shufflenet_v2_x1_0",
    "inception_net": "inception",
    "lstm": "lstm_classifier",
    "vgg11": "vgg11_bn",
}


def names() -> list[str]:
    return list(ZOO)


def get(name: str) -> ZooModel:
    key = _ALIASES.get(name, name)
    try:
        return ZOO[key]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None


def load_factory(path: str) -> Callable[..., nn.Module]:
    """Resolve ``"package.module:function"`` (e.g. ``tests.zoo.resnet:resnet18``)."""
    mod_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"factory path must look like 'module:function', got {path!r}")
    return getattr(importlib.import_module(mod_name), attr)


def _resolve(model_or_name, input_shape, example_input):
    if isinstance(model_or_name, str):
        model_or_name = get(model_or_name)
    if isinstance(model_or_name, ZooModel):
        zm = model_or_name
        shape = tuple(input_shape) if input_shape is not None else zm.input_shape
        model = zm.build(shape)
        x = example_input if example_input is not None else zm.example_input(shape)
        return model, x
    if isinstance(model_or_name, nn.Module):
        if example_input is None:
            if input_shape is None:
                raise ValueError("export_onnx(nn.Module, ...) needs input_shape or example_input")
            g = torch.Generator().manual_seed(0)
            example_input = torch.randn(tuple(input_shape), generator=g)
        return model_or_name, example_input
    raise TypeError(f"expected a zoo name, ZooModel or nn.Module, got {type(model_or_name)!r}")


def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix P with ``P @ v`` == 1-D adaptive average pooling of v."""
    p = torch.zeros(n_out, n_in, dtype=torch.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)  # ceil
        p[i, start:end] = 1.0 / (end - start)
    return p


def _adaptive_avg_pool2d_symbolic(g, input, output_size):
    """aten::adaptive_avg_pool2d for the legacy exporter.  Same as torch's built-in
    (GlobalAveragePool when the output is 1x1, AveragePool when the input size is a
    multiple of the output size), plus the case torch refuses ("output size that are not
    factor of input size", e.g. VGG's 7x7 avgpool on a 2x2 map from a 64x64 input):
    exact separable form ``P_h @ x @ P_w^T`` with two constant MatMuls."""
    from torch.onnx import symbolic_helper as sh

    try:
        out = sh._parse_arg(output_size, "is")
    except Exception:
        return sh._unimplemented("adaptive_avg_pool2d", "output_size is not constant", input)
    if list(out) == [1, 1]:
        return g.op("GlobalAveragePool", input)
    sizes = sh._get_tensor_sizes(input)
    dims = list(sizes[2:]) if sizes is not None else None
    if dims is None or len(dims) != 2 or any(d is None for d in dims):
        return sh._unimplemented("adaptive_avg_pool2d", "input size not accessible", input)
    if all(d % o == 0 for d, o in zip(dims, out)):
        k = [d // o for d, o in zip(dims, out)]
        return g.op("AveragePool", input, kernel_shape_i=k, strides_i=k)
    (h, w), (oh, ow) = dims, out
    y = input
    if w != ow:
        y = g.op("MatMul", y, g.op("Constant", value_t=_pool_matrix(w, ow).t().contiguous()))
    if h != oh:
        y = g.op("MatMul", g.op("Constant", value_t=_pool_matrix(h, oh)), y)
    return y


def _export(model: nn.Module, x: torch.Tensor, f, *, dynamic_batch: bool, opset_version: int,
            keep_batchnorm: bool) -> None:
    if model.training:
        raise ValueError("export_onnx expects an eval()-mode model")
    dynamic_axes = (
        {ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    )
    # Legacy TorchScript-based exporter (dynamo=False): the dynamo exporter needs
    # onnxscript, which is not installed.  With TrainingMode.EVAL the legacy exporter
    # fuses Conv+BatchNorm itself (eval peephole); PRESERVE on an eval()-mode model keeps
    # BatchNormalization nodes (inference form) so that BN folding is left to irtool.
    training = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    torch.onnx.register_custom_op_symbolic(
        "aten::adaptive_avg_pool2d", _adaptive_avg_pool2d_symbolic, opset_version
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                f,
                dynamo=False,
                opset_version=opset_version,
                do_constant_folding=True,
                input_names=[ONNX_INPUT_NAME],
                output_names=[ONNX_OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                training=training,
                export_params=True,
            )
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::adaptive_avg_pool2d", opset_version)


def onnx_bytes(
    model_or_name: Union[str, ZooModel, nn.Module],
    input_shape: Optional[Sequence[int]] = None,
    *,
    dynamic_batch: bool = False,
    opset_version: int = ONNX_OPSET,
    keep_batchnorm: bool = True,
    example_input: Optional[torch.Tensor] = None,
) -> bytes:
    """Like :func:`export_onnx` but returns the serialized ModelProto.

    Exports of zoo models given by name are deterministic, so they are memoised per process:
    the many test files that need ``resnet18.onnx`` export it once.
    """
    if isinstance(model_or_name, str) and example_input is None:
        entry = get(model_or_name)
        shape = tuple(input_shape) if input_shape is not None else entry.input_shape
        return _cached_export(entry.name, shape, dynamic_batch, opset_version, keep_batchnorm)
    return _export_bytes(model_or_name, input_shape, dynamic_batch, opset_version, keep_batchnorm,
                         example_input)


def _export_bytes(model_or_name, input_shape, dynamic_batch, opset_version, keep_batchnorm,
                  example_input) -> bytes:
    model, x = _resolve(model_or_name, input_shape, example_input)
    buf = io.BytesIO()
    _export(model, x, buf, dynamic_batch=dynamic_batch, opset_version=opset_version,
            keep_batchnorm=keep_batchnorm)
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def _cached_export(name, shape, dynamic_batch, opset_version, keep_batchnorm) -> bytes:
    return _export_bytes(name, shape, dynamic_batch, opset_version, keep_batchnorm, None)


def export_onnx(
    model_or_name: Union[str, ZooModel, nn.Module],
    path: Union[str, os.PathLike],
    input_shape: Optional[Sequence[int]] = None,
    *,
    dynamic_batch: bool = False,
    opset_version: int = ONNX_OPSET,
    keep_batchnorm: bool = True,
    example_input: Optional[torch.Tensor] = None,
) -> Path:
    """Export a zoo model (by name / ZooModel, built fresh) or an eval-mode nn.Module to ONNX.

    * one input named ``"input"`` and one output named ``"output"``; static shapes
      (``input_shape``, default the zoo model's ``input_shape``) unless
      ``dynamic_batch=True``, which makes dim 0 of both symbolic (``"batch"``);
    * opset 17, legacy TorchScript exporter (``dynamo=False``), do_constant_folding=True;
      while exporting, aten::adaptive_avg_pool2d gets a symbolic that also handles
      output sizes that do not divide the input size (two constant MatMuls; only VGG's
      7x7 avgpool at small inputs needs it), otherwise identical to torch's;
    * ``keep_batchnorm=True`` (default) keeps BatchNormalization nodes; ``False`` lets
      the exporter fold BN into the preceding Conv (its default EVAL behaviour);
    * deterministic: the same arguments give byte-identical files.
    Returns the path.
    """
    data = onnx_bytes(model_or_name, input_shape, dynamic_batch=dynamic_batch,
                      opset_version=opset_version, keep_batchnorm=keep_batchnorm,
                      example_input=example_input)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def run_onnxruntime(model: Union[str, os.PathLike, bytes], x: torch.Tensor, *, threads: int = 0):
    """Run an exported model with onnxruntime (CPU) on ``x``; returns the numpy output."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    src = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {ONNX_INPUT_NAME: x.detach().cpu().numpy()})[0]
