"""MobileNetV3-Small, torchvision layout (``features.N.block.M...``, ``classifier.0/3``):
hardswish, squeeze-excite with hardsigmoid."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ._common import Conv2dNormActivation, SqueezeExcitation, make_divisible, seeded_factory

__all__ = ["InvertedResidualConfig", "InvertedResidual", "MobileNetV3", "mobilenet_v3_small"]


class InvertedResidualConfig:
    def __init__(self, input_channels: int, kernel: int, expanded_channels: int, out_channels: int,
                 use_se: bool, activation: str, stride: int, dilation: int, width_mult: float) -> None:
        self.input_channels = make_divisible(input_channels * width_mult, 8)
        self.kernel = kernel
        self.expanded_channels = make_divisible(expanded_channels * width_mult, 8)
        self.out_channels = make_divisible(out_channels * width_mult, 8)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride
        self.dilation = dilation


class InvertedResidual(nn.Module):
    def __init__(self, cnf: InvertedResidualConfig, norm_layer) -> None:
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        activation_layer = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, cnf.expanded_channels, kernel_size=1,
                                               norm_layer=norm_layer, activation_layer=activation_layer))
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.expanded_channels,
                                           kernel_size=cnf.kernel, stride=stride, dilation=cnf.dilation,
                                           groups=cnf.expanded_channels, norm_layer=norm_layer,
                                           activation_layer=activation_layer))
        if cnf.use_se:
            squeeze_channels = make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(cnf.expanded_channels, squeeze_channels,
                                            scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.out_channels, kernel_size=1,
                                           norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3(nn.Module):
    def __init__(self, setting: list[InvertedResidualConfig], last_channel: int,
                 num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        layers: list[nn.Module] = []
        first_out = setting[0].input_channels
        layers.append(Conv2dNormActivation(3, first_out, kernel_size=3, stride=2, norm_layer=norm_layer,
                                           activation_layer=nn.Hardswish))
        for cnf in setting:
            layers.append(InvertedResidual(cnf, norm_layer))
        last_in = setting[-1].out_channels
        last_out = 6 * last_in
        layers.append(Conv2dNormActivation(last_in, last_out, kernel_size=1, norm_layer=norm_layer,
                                           activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_out, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def _small_config(width_mult: float = 1.0) -> tuple[list[InvertedResidualConfig], int]:
    c = partial(InvertedResidualConfig, width_mult=width_mult)
    setting = [
        c(16, 3, 16, 16, True, "RE", 2, 1),
        c(16, 3, 72, 24, False, "RE", 2, 1),
        c(24, 3, 88, 24, False, "RE", 1, 1),
        c(24, 5, 96, 40, True, "HS", 2, 1),
        c(40, 5, 240, 40, True, "HS", 1, 1),
        c(40, 5, 240, 40, True, "HS", 1, 1),
        c(40, 5, 120, 48, True, "HS", 1, 1),
        c(48, 5, 144, 48, True, "HS", 1, 1),
        c(48, 5, 288, 96, True, "HS", 2, 1),
        c(96, 5, 576, 96, True, "HS", 1, 1),
        c(96, 5, 576, 96, True, "HS", 1, 1),
    ]
    last_channel = make_divisible(1024 * width_mult, 8)
    return setting, last_channel


@seeded_factory
def mobilenet_v3_small(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV3:
    setting, last_channel = _small_config(width_mult)
    return MobileNetV3(setting, last_channel, num_classes=num_classes)
