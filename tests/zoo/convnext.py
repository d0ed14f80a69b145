"""ConvNeXt-Tiny, torchvision layout (``features.N.M.block.K``, ``layer_scale``):
depthwise 7x7, LayerNorm over channels via permute to NHWC (and back), Linear
pointwise, GELU, layer scale.  depths (3, 3, 9, 3), dims 96..768."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ._common import Conv2dNormActivation, LayerNorm2d, Permute, StochasticDepth, seeded_factory

__all__ = ["CNBlock", "CNBlockConfig", "ConvNeXt", "convnext_tiny"]


class CNBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float, stochastic_depth_prob: float, norm_layer=None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            norm_layer(dim),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.layer_scale * self.block(x)
        result = self.stochastic_depth(result)
        result += x
        return result


class CNBlockConfig:
    def __init__(self, input_channels: int, out_channels: int | None, num_layers: int) -> None:
        self.input_channels = input_channels
        self.out_channels = out_channels
        self.num_layers = num_layers


class ConvNeXt(nn.Module):
    def __init__(self, block_setting: list[CNBlockConfig], stochastic_depth_prob: float = 0.0,
                 layer_scale: float = 1e-6, num_classes: int = 1000) -> None:
        super().__init__()
        norm_layer = partial(LayerNorm2d, eps=1e-6)
        layers: list[nn.Module] = []
        first = block_setting[0].input_channels
        layers.append(Conv2dNormActivation(3, first, kernel_size=4, stride=4, padding=0,
                                           norm_layer=norm_layer, activation_layer=None, bias=True))
        total_stage_blocks = sum(c.num_layers for c in block_setting)
        stage_block_id = 0
        for cnf in block_setting:
            stage: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                sd_prob = stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)
                stage.append(CNBlock(cnf.input_channels, layer_scale, sd_prob))
                stage_block_id += 1
            layers.append(nn.Sequential(*stage))
            if cnf.out_channels is not None:
                layers.append(nn.Sequential(
                    norm_layer(cnf.input_channels),
                    nn.Conv2d(cnf.input_channels, cnf.out_channels, kernel_size=2, stride=2),
                ))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = block_setting[-1]
        last_ch = last.out_channels if last.out_channels is not None else last.input_channels
        self.classifier = nn.Sequential(norm_layer(last_ch), nn.Flatten(1), nn.Linear(last_ch, num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = self.classifier(x)
        return x


@seeded_factory
def convnext_tiny(num_classes: int = 1000, layer_scale: float | None = None) -> ConvNeXt:
    """``layer_scale=None`` (default) draws each block's layer scale from U[0.1, 0.5] so the
    residual branches matter numerically (torchvision's 1e-6 init would make every block
    ~identity); pass a float for a constant torchvision-style init."""
    setting = [
        CNBlockConfig(96, 192, 3),
        CNBlockConfig(192, 384, 3),
        CNBlockConfig(384, 768, 9),
        CNBlockConfig(768, None, 3),
    ]
    model = ConvNeXt(setting, stochastic_depth_prob=0.1,
                     layer_scale=1e-6 if layer_scale is None else layer_scale, num_classes=num_classes)
    if layer_scale is None:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, CNBlock):
                    m.layer_scale.uniform_(0.1, 0.5)
    return model
