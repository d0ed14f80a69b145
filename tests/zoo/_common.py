"""Shared building blocks for the zoo models (torchvision-compatible layouts)."""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import nn

__all__ = [
    "make_divisible",
    "Conv2dNormActivation",
    "SqueezeExcitation",
    "StochasticDepth",
    "Permute",
    "LayerNorm2d",
    "randomize_norms",
    "seeded_factory",
]


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """torchvision's ``_make_divisible`` (from the original TF MobileNet repo)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # do not round down by more than 10%
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.misc.Conv2dNormActivation: Sequential(conv, [norm], [act])."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: Optional[int] = None,
        groups: int = 1,
        norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
        activation_layer: Optional[Callable[..., nn.Module]] = nn.ReLU,
        dilation: int = 1,
        inplace: Optional[bool] = True,
        bias: Optional[bool] = None,
    ) -> None:
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=bias,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            params = {} if inplace is None else {"inplace": inplace}
            layers.append(activation_layer(**params))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """torchvision.ops.misc.SqueezeExcitation: ``input * sigmoid(fc2(act(fc1(avgpool(input)))))``."""

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        activation: Callable[..., nn.Module] = nn.ReLU,
        scale_activation: Callable[..., nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._scale(x) * x


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth; identity in eval mode."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        shape = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(survival)
        return x * noise.div_(survival)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d: LayerNorm over C of an NCHW tensor
    via permute to NHWC and back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial (but tame) statistics and affine params, and
    LayerNorm non-trivial affine params, so that BN folding / LN lowering are actually
    exercised.  Uses a private generator: deterministic, no global RNG side effects.

    BatchNorm: running_var ~ U[0.5, 1.5], running_mean ~ U[-0.1, 0.1],
               weight ~ U[0.5, 1.5], bias ~ U[-0.1, 0.1].
    LayerNorm: weight ~ U[0.75, 1.25], bias ~ U[-0.1, 0.1].
    """
    g = torch.Generator().manual_seed(10_000 + seed)

    def u(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo)

    for m in model.modules():
        if isinstance(m, _NORM_TYPES):
            if m.track_running_stats:
                u(m.running_mean, -0.1, 0.1)
                u(m.running_var, 0.5, 1.5)
            if m.affine:
                u(m.weight, 0.5, 1.5)
                u(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            u(m.weight, 0.75, 1.25)
            if m.bias is not None:
                u(m.bias, -0.1, 0.1)
    return model


def seeded_factory(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Wrap a model constructor: ``torch.manual_seed(seed)`` inside a forked RNG (so the
    caller's global RNG state is untouched), build, randomize norms, return in eval()."""

    @functools.wraps(fn)
    def wrapper(*args, seed: int = 0, **kwargs) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = fn(*args, **kwargs)
        randomize_norms(model, seed)
        return model.eval()

    return wrapper
