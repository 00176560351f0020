"""Segmentation models (book 6.4): a U-Net (down-scaling and up-scaling with skip
connections, from the core) and PSPNet, a pyramid pooling head on a ResNet whose last
stages are dilated instead of strided (output stride 8), upsampled to the input size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.core.backbones.resnet import ResNet, resnet18, resnet34, resnet50
from lbdl_apps.core.backbones.unet import UNet
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import BasicBlock, ConvNormAct

MODELS = ("unet", "unet-res", "pspnet")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet-small")
DILATED = (False, True, True)  # stages 3 and 4 dilated: output stride 8


@dataclass
class SegmenterConfig:
    """Everything `build_model` needs, stored in the checkpoint. U-Nets: base `width`,
    `depth` levels of `blocks` convolutions (or residual blocks); PSPNet: its `backbone`,
    head `width` and the pyramid's `bins`."""

    name: str
    num_classes: int
    in_channels: int
    width: int
    depth: int | None = None  # unet, unet-res
    blocks: int | None = None  # unet, unet-res
    backbone: str | None = None  # pspnet
    bins: list[int] | None = None  # pspnet


def build_backbone(name: str, in_channels: int) -> ResNet:
    """A headless ResNet with dilated last two stages (output stride 8)."""
    kw: dict[str, Any] = {
        "in_channels": in_channels,
        "num_classes": None,
        "replace_stride_with_dilation": DILATED,
    }
    if name == "resnet18":
        return resnet18(**kw)
    if name == "resnet34":
        return resnet34(**kw)
    if name == "resnet50":
        return resnet50(**kw)
    if name == "resnet-small":  # resnet18 at half width
        return ResNet(BasicBlock, [2, 2, 2, 2], widths=(32, 64, 128, 256), **kw)
    raise LbdlError(f"--backbone {name}: choose one of {', '.join(BACKBONES)}")


class PyramidPooling(nn.Module):
    """PSPNet's head: the feature map average-pooled to bins x bins for each bin size,
    projected, upsampled back and concatenated with the map (context at several scales)."""

    def __init__(self, in_ch: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        branch = max(in_ch // len(bins), 8)
        # no BatchNorm on the 1x1 branch: its statistics would come from one value per map
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_ch, branch, 1), nn.ReLU(True))
            for b in bins
        )
        self.out_channels = in_ch + branch * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(b(x), size=size, mode="bilinear", align_corners=False)
            for b in self.branches
        ]
        return torch.cat([x, *pooled], dim=1)  # (B, C, h, w) -> (B, C + bins * branch, h, w)


class PSPNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet18",
        width: int = 128,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels)
        self.ppm = PyramidPooling(self.backbone.num_features, tuple(bins))
        self.head = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
            nn.Dropout2d(dropout),
            nn.Conv2d(width, num_classes, 1),
        )

    def features(self, x: Tensor) -> Tensor:
        """The backbone's last map (stride 8)."""
        return self.backbone.forward_features(x)[-1]

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.ppm(self.features(x)))  # (B, K, H / 8, W / 8)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class UNet2015(nn.Module):
    """The classic U-Net (Ronneberger et al. 2015; book 6.4): at each level `blocks` 3x3
    conv-BatchNorm-ReLU, max-pooling down, transposed convolutions up, and the decoder
    concatenates the encoder's map of the same resolution (skip connections). Every
    operation is local at inference (BatchNorm uses its running statistics), so a sliding
    window gives the whole-image result away from tile borders."""

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        levels, blocks, in_channels = config.depth or 4, config.blocks or 2, config.in_channels
        widths = [(config.width or 32) * 2**i for i in range(levels)]

        def stage(in_ch: int, out_ch: int) -> nn.Sequential:
            return nn.Sequential(
                *(ConvNormAct(in_ch if i == 0 else out_ch, out_ch) for i in range(blocks))
            )

        self.down = nn.ModuleList(
            stage(in_channels if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)
        )
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(levels - 1)
        )
        self.up = nn.ModuleList(stage(2 * widths[i], widths[i]) for i in range(levels - 1))
        self.head = nn.Conv2d(widths[0], config.num_classes, 1)
        self.factor = 2 ** (levels - 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} must be divisible by "
                f"{self.factor} (2 ** (levels - 1))"
            )
        skips = []
        for i, stage in enumerate(self.down):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.up[i](torch.cat([self.upsample[i](x), skips[i]], dim=1))
        return self.head(x)


class SegUNet(nn.Module):
    """The core residual U-Net (GroupNorm, self-attention at the lowest resolution) without
    time conditioning, mapping an image to class logits. GroupNorm statistics are taken
    over the whole input, so tiled inference differs slightly from whole-image inference."""

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self.net = UNet(
            config.in_channels,
            config.num_classes,
            base=config.width or 32,
            multipliers=tuple(2**i for i in range(config.depth or 4)),
            blocks_per_level=config.blocks or 2,
            attention_levels=(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def default_config(name: str, num_classes: int, in_channels: int) -> SegmenterConfig:
    """The full config of a model name."""
    if name in ("unet", "unet-res"):
        return SegmenterConfig(name, num_classes, in_channels, width=32, depth=4, blocks=2)
    if name == "pspnet":
        return SegmenterConfig(
            name, num_classes, in_channels, width=128, backbone="resnet18", bins=[1, 2, 3, 6]
        )
    raise LbdlError(f"--model {name}: choose one of {', '.join(MODELS)}")


def build_model(config: SegmenterConfig) -> nn.Module:
    """Instantiate a segmentation model from its config (as stored in a checkpoint)."""
    c = config
    if c.name in ("unet", "unet-res"):
        if c.depth is None or not 1 <= c.depth <= 6:
            raise LbdlError(f"--depth {c.depth}: the U-Net takes 1 to 6 levels")
        if c.name == "unet":
            return UNet2015(c)
        if c.width % 8:
            raise LbdlError(f"--width {c.width}: unet-res needs a multiple of 8")
        return SegUNet(c)
    if c.name == "pspnet":
        bins = tuple(c.bins or (1, 2, 3, 6))
        return PSPNet(c.num_classes, c.in_channels, c.backbone or "resnet18", c.width, bins)
    raise LbdlError(f"--model {c.name}: choose one of {', '.join(MODELS)}")


def size_multiple(config: SegmenterConfig) -> int:
    """Input sides must be multiples of this (the U-Net halves its maps depth - 1 times)."""
    return 2 ** ((config.depth or 1) - 1) if config.name.startswith("unet") else 8
