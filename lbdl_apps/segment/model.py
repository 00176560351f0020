"""Segmentation models (book 6.4): a U-Net (down-scaling and up-scaling with skip
connections, from the core), and heads on a ResNet whose last stages are dilated instead of
strided (output stride 8), upsampled to the input size: PSPNet's pyramid pooling, FCN's
convolution and DeepLabV3's atrous spatial pyramid pooling (ASPP); and LR-ASPP on a dilated
MobileNetV3-Large. FCN, DeepLabV3 and LR-ASPP are laid out as torchvision's, whose
pretrained weights (segment/zoo.py) they load."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.core.backbones.mobilenet import MobileNetV3
from lbdl_apps.core.backbones.resnet import ResNet, resnet18, resnet34, resnet50
from lbdl_apps.core.backbones.unet import UNet
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import BasicBlock, ConvNormAct

MODELS = ("unet", "unet-res", "pspnet", "fcn", "deeplabv3", "lraspp")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet-small")  # pspnet, fcn, deeplabv3
RESNET_HEADS = ("pspnet", "fcn", "deeplabv3")
ASPP_RATES = [12, 24, 36]  # DeepLabV3's atrous rates at output stride 8
DILATED = (False, True, True)  # stages 3 and 4 dilated: output stride 8


@dataclass
class SegmenterConfig:
    """Everything `build_model` needs, stored in the checkpoint. U-Nets: base `width`,
    `depth` levels of `blocks` convolutions (or residual blocks); PSPNet, FCN and DeepLabV3:
    their `backbone` and head `width`, the pyramid's `bins` (PSPNet) and the atrous `rates`
    (DeepLabV3); LR-ASPP: its MobileNetV3-Large backbone and head `width`."""

    name: str
    num_classes: int
    in_channels: int
    width: int
    depth: int | None = None  # unet, unet-res
    blocks: int | None = None  # unet, unet-res
    backbone: str | None = None  # pspnet
    bins: list[int] | None = None  # pspnet
    rates: list[int] | None = None  # deeplabv3


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


def upsampled(logits: Tensor, x: Tensor) -> Tensor:
    """Logits (B, K, h, w) bilinearly upsampled to the input's (H, W)."""
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class FCN(nn.Module):
    """A fully convolutional network (Long et al. 2015) as torchvision builds it: a dilated
    ResNet, a 3x3 conv-BN-ReLU head of `width` channels with dropout, a 1x1 classifier."""

    def __init__(
        self, num_classes: int, in_channels: int = 3, backbone: str = "resnet50", width: int = 512
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels)
        self.head = nn.Sequential(
            nn.Conv2d(self.backbone.num_features, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
            nn.Dropout(0.1),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return upsampled(self.head(self.backbone.forward_features(x)[-1]), x)


class PooledBatchNorm(nn.BatchNorm2d):
    """Batch normalization of the image-level branch, whose (B, C, 1, 1) map has B values
    per channel: with a batch of one (the last batch of an epoch) it uses its running
    statistics, where nn.BatchNorm2d would raise."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                self.eps,
            )  # fmt: skip
        return super().forward(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al. 2017, DeepLabV3): in parallel a 1x1
    convolution, 3x3 convolutions dilated by each of `rates` (context at several scales
    without losing resolution) and the image-level average, each conv-BN-ReLU to `width`
    channels; concatenated, projected back to `width` by a 1x1 conv-BN-ReLU, dropout."""

    def __init__(self, in_ch: int, rates: Sequence[int] = (12, 24, 36), width: int = 256):
        super().__init__()

        def cbr(kernel: int, dilation: int = 1) -> list[nn.Module]:
            padding = dilation if kernel == 3 else 0
            conv = nn.Conv2d(in_ch, width, kernel, padding=padding, dilation=dilation, bias=False)
            return [conv, nn.BatchNorm2d(width), nn.ReLU()]

        pooled = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_ch, width, 1, bias=False),
            PooledBatchNorm(width),
            nn.ReLU(),
        )
        self.convs = nn.ModuleList(
            [nn.Sequential(*cbr(1)), *(nn.Sequential(*cbr(3, r)) for r in rates), pooled]
        )
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: Tensor) -> Tensor:
        *local, pooled = self.convs
        image = F.interpolate(pooled(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([*(conv(x) for conv in local), image], dim=1))


class DeepLabV3(nn.Module):
    """DeepLabV3 (Chen et al. 2017) as torchvision builds it: a dilated ResNet, ASPP, a 3x3
    conv-BN-ReLU and a 1x1 classifier."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        width: int = 256,
        rates: Sequence[int] = (12, 24, 36),
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels)
        self.aspp = ASPP(self.backbone.num_features, rates, width)
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return upsampled(self.head(self.aspp(self.backbone.forward_features(x)[-1])), x)


class LRASPPHead(nn.Module):
    """Lite R-ASPP (Howard et al. 2019): the stride-16 map through a 1x1 conv-BN-ReLU, gated
    per channel by a sigmoid of its pooled projection, upsampled to the stride-8 map; one
    1x1 classifier on each, summed."""

    def __init__(self, low: int, high: int, num_classes: int, width: int = 128) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(high, width, 1, bias=False), nn.Sigmoid()
        )
        self.low_classifier = nn.Conv2d(low, num_classes, 1)
        self.high_classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        x = self.cbr(high) * self.scale(high)  # (B, width, h, w) * (B, width, 1, 1)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    """LR-ASPP on MobileNetV3-Large whose last stage is dilated (output stride 16), reading
    features[4] (stride 8) and features[16] (stride 16), as torchvision's
    lraspp_mobilenet_v3_large."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 128) -> None:
        super().__init__()
        self.backbone = MobileNetV3(None, dilated=True, taps=(4, 16), in_channels=in_channels)
        self.head = LRASPPHead(*self.backbone.out_channels, num_classes, width)

    def forward(self, x: Tensor) -> Tensor:
        return upsampled(self.head(*self.backbone.forward_features(x)), x)


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
    """The full config of a model name (the ResNet heads on resnet18; `with_backbone` sets
    another)."""
    if name in ("unet", "unet-res"):
        return SegmenterConfig(name, num_classes, in_channels, width=32, depth=4, blocks=2)
    if name == "pspnet":
        return SegmenterConfig(
            name, num_classes, in_channels, width=128, backbone="resnet18", bins=[1, 2, 3, 6]
        )
    if name in ("fcn", "deeplabv3"):
        return with_backbone(SegmenterConfig(name, num_classes, in_channels, 0), "resnet18")
    if name == "lraspp":
        return SegmenterConfig(name, num_classes, in_channels, 128, backbone="mobilenet_v3_large")
    raise LbdlError(f"--model {name}: choose one of {', '.join(MODELS)}")


def with_backbone(config: SegmenterConfig, backbone: str) -> SegmenterConfig:
    """A ResNet head's config on `backbone`: FCN's head is a quarter of the backbone's
    width (512 on ResNet-50), DeepLabV3's ASPP 256 wide with rates 12, 24, 36."""
    if config.name not in RESNET_HEADS:
        return config
    if backbone not in BACKBONES:
        raise LbdlError(f"--backbone {backbone}: choose one of {', '.join(BACKBONES)}")
    if config.name == "fcn":
        features = 2048 if backbone == "resnet50" else 256 if backbone == "resnet-small" else 512
        return replace(config, backbone=backbone, width=features // 4)
    if config.name == "deeplabv3":
        return replace(config, backbone=backbone, width=256, rates=list(ASPP_RATES))
    return replace(config, backbone=backbone)


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
    if c.name == "fcn":
        return FCN(c.num_classes, c.in_channels, c.backbone or "resnet50", c.width)
    if c.name == "deeplabv3":
        rates = tuple(c.rates or ASPP_RATES)
        return DeepLabV3(c.num_classes, c.in_channels, c.backbone or "resnet50", c.width, rates)
    if c.name == "lraspp":
        return LRASPP(c.num_classes, c.in_channels, c.width)
    raise LbdlError(f"--model {c.name}: choose one of {', '.join(MODELS)}")


def size_multiple(config: SegmenterConfig) -> int:
    """Input sides must be multiples of this (the U-Net halves its maps depth - 1 times;
    FCN, DeepLabV3 and LR-ASPP upsample to any input size, as torchvision's)."""
    if config.name.startswith("unet"):
        return 2 ** ((config.depth or 1) - 1)
    return 8 if config.name == "pspnet" else 1


def final_layers(config: SegmenterConfig) -> tuple[str, ...]:
    """The modules that map features to class logits: a fine-tuned model (--init) gets new
    ones for its own classes and keeps every other weight."""
    return {
        "unet": ("head",),
        "unet-res": ("net.out.2",),
        "pspnet": ("head.4",),
        "fcn": ("head.4",),
        "deeplabv3": ("head.3",),
        "lraspp": ("head.low_classifier", "head.high_classifier"),
    }[config.name]
