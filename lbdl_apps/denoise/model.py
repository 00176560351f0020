"""Restoration models (book 6.1): a U-Net with self-attention at its lowest resolution and a
DnCNN-style baseline, both predicting the residual: output = input + net(input).

The last convolution of each starts at zero, so an untrained model is the identity and
training learns only the correction (the noise, the lost detail).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lbdl_apps.core.backbones.unet import UNet
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import ConvNormAct

MODELS = ("unet", "dncnn")


class ResidualUNet(nn.Module):
    """The core U-Net (levels of width base * 2**i, attention at the lowest level and in the
    middle) wrapped so that it predicts the residual."""

    def __init__(self, channels: int, width: int = 32, depth: int = 3, blocks: int = 1) -> None:
        super().__init__()
        multipliers = [min(2**i, 8) for i in range(depth)]
        self.net = UNet(
            channels,
            channels,
            base=width,
            multipliers=multipliers,
            blocks_per_level=blocks,
            attention_levels=(depth - 1,),
            norm_groups=8 if width % 8 == 0 else 1,
            heads=4 if width % 4 == 0 else 1,
        )
        last = self.net.out[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.factor = self.net.factor

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)  # (B, C, H, W), H and W multiples of self.factor


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017): conv+ReLU, (depth - 2) x conv+BN+ReLU, conv; residual."""

    def __init__(self, channels: int, width: int = 64, depth: int = 17) -> None:
        super().__init__()
        if depth < 3:
            raise LbdlError(f"--depth {depth}: DnCNN needs at least 3 layers")
        layers: list[nn.Module] = [ConvNormAct(channels, width, norm="none")]
        layers += [ConvNormAct(width, width) for _ in range(depth - 2)]
        last = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.factor = 1

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)  # (B, C, H, W) -> (B, C, H, W)


@dataclass
class RestorerConfig:
    """Everything `build_model` needs, stored in the checkpoint: the model, its input and
    output channels (1 gray, 3 color), its base width and depth (U-Net levels or DnCNN
    layers), and the U-Net's residual blocks per level."""

    name: str
    channels: int
    width: int
    depth: int
    blocks: int | None = None  # unet only


def default_config(name: str, channels: int) -> RestorerConfig:
    """The full config of a model name."""
    if name not in MODELS:
        raise LbdlError(f"--model {name}: unknown model; choose one of {', '.join(MODELS)}")
    if name == "unet":
        return RestorerConfig(name, channels, width=32, depth=3, blocks=1)
    return RestorerConfig(name, channels, width=64, depth=17)


def size_multiple(config: RestorerConfig) -> int:
    """Input sides must be multiples of this (the U-Net halves its maps depth - 1 times)."""
    return 2 ** (config.depth - 1) if config.name == "unet" else 1


def build_model(config: RestorerConfig) -> nn.Module:
    """Instantiate a restoration model from its config (as stored in a checkpoint)."""
    if config.name == "unet":
        if config.depth < 1:
            raise LbdlError(f"--depth {config.depth}: the U-Net needs at least 1 level")
        return ResidualUNet(config.channels, config.width, config.depth, config.blocks or 1)
    if config.name == "dncnn":
        return DnCNN(config.channels, config.width, config.depth)
    raise LbdlError(f"unknown model '{config.name}' in the checkpoint config")
