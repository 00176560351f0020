"""The single-shot multibox detector (book 6.3): a ResNet backbone from the core, extra
layers that halve the resolution down to 1x1, and on each map Z_s a convolutional head that
predicts, for every position and every default box, 4 box offsets and C + 1 class logits
(the extra class meaning "no object")."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from lbdl_apps.core.backbones.resnet import ResNet, resnet18, resnet34, resnet50, resnet_small
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.detect.boxes import boxes_per_location, default_boxes, default_scales

BACKBONES = ("resnet-small", "resnet18", "resnet34", "resnet50")
PRETRAINABLE = ("resnet18", "resnet34", "resnet50")


@dataclass
class SSDConfig:
    """Everything `build_model` needs, stored in the checkpoint (the keys of the dict that
    checkpoints held before, so that they still load)."""

    num_classes: int
    backbone: str = "resnet-small"
    image_size: int = 64  # the square input side
    width: int = 16  # the backbone's base width
    extra_width: int = 128  # channels of the extra layers
    scales: list[float] | None = None  # None: default_scales(maps, 0.1, 0.9)
    aspect_ratios: list[float] = field(default_factory=lambda: [2.0])
    in_channels: int = 3


def default_config(
    num_classes: int, backbone: str = "resnet-small", image_size: int = 64
) -> SSDConfig:
    """The config of a backbone: the small ResNet narrower than the ImageNet ones."""
    config = SSDConfig(num_classes, backbone, image_size)
    if backbone == "resnet-small":
        return config
    return replace(config, width=64, extra_width=256)


def build_backbone(name: str, width: int, in_channels: int) -> tuple[ResNet, list[int]]:
    """A headless ResNet and the stages whose maps feed the heads: the last two stages of the
    small variant (3x3 stem, strides 1, 2, 4, 8: for small images), the last three of the
    ImageNet ResNets (strides 8, 16, 32, as SSD300's 38, 19 and 10 maps)."""
    if name == "resnet-small":
        net = resnet_small(
            stages=4, width=width, blocks=1, num_classes=None, in_channels=in_channels
        )
        return net, [2, 3]
    builders = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
    if name not in builders:
        raise LbdlError(f"--backbone {name}: choose one of {', '.join(BACKBONES)}")
    return builders[name](num_classes=None, in_channels=in_channels), [1, 2, 3]


def extra_layer(in_ch: int, out_ch: int, size: int) -> tuple[nn.Module, int]:
    """1x1 bottleneck then a 3x3 stride-2 convolution (size -> ceil(size / 2)); a map of 2 or
    3 becomes 1x1 with a convolution as large as the map (no normalisation on a 1x1 map)."""
    mid = out_ch // 2
    squeeze = [nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)]
    if size > 3:
        reduce = [
            nn.Conv2d(mid, out_ch, 3, 2, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        ]
        return nn.Sequential(*squeeze, *reduce), (size + 1) // 2
    return nn.Sequential(*squeeze, nn.Conv2d(mid, out_ch, size), nn.ReLU(inplace=True)), 1


class SSD(nn.Module):
    """The detector of a config: backbone maps and extra maps down to 1x1, a box head and a
    class head on each, and the default boxes of the maps (`priors`, N x (cx, cy, w, h))."""

    def __init__(self, config: SSDConfig) -> None:
        super().__init__()
        c = config
        self.num_classes = c.num_classes
        self.backbone, self.taps = build_backbone(c.backbone, c.width, c.in_channels)
        channels = [self.backbone.out_channels[i] for i in self.taps]
        sizes = self._backbone_sizes(c.image_size, c.in_channels)
        size = sizes[-1]
        self.extras = nn.ModuleList()
        in_ch = channels[-1]
        while size > 1:
            layer, size = extra_layer(in_ch, c.extra_width, size)
            self.extras.append(layer)
            channels.append(c.extra_width)
            sizes.append(size)
            in_ch = c.extra_width
        self.feature_sizes = sizes
        ratios = list(c.aspect_ratios) if c.aspect_ratios is not None else [2.0]
        scales = list(c.scales) if c.scales is not None else default_scales(len(sizes))
        if len(scales) == 2 and len(sizes) > 1:
            scales = default_scales(len(sizes), scales[0], scales[1])
        if len(scales) != len(sizes) + 1:
            raise LbdlError(
                f"scales: {len(sizes)} maps ({', '.join(map(str, sizes))}) need 2 values "
                f"(smallest, largest) or {len(sizes) + 1}, got {len(scales)}"
            )
        anchors = boxes_per_location(ratios)
        self.loc_heads = nn.ModuleList(nn.Conv2d(n, anchors * 4, 3, padding=1) for n in channels)
        self.cls_heads = nn.ModuleList(
            nn.Conv2d(n, anchors * (c.num_classes + 1), 3, padding=1) for n in channels
        )
        priors = default_boxes(sizes, scales, ratios)
        self.register_buffer("priors", priors, persistent=False)
        self.backbone_frozen = False

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Fine-tuning's first phase (book 6.3): the pretrained backbone neither learns nor
        updates its batch-norm statistics while the new layers find their footing."""
        self.backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> SSD:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    @torch.no_grad()
    def _backbone_sizes(self, image_size: int, in_channels: int) -> list[int]:
        x = torch.zeros(1, in_channels, image_size, image_size)
        was_training = self.backbone.training
        self.backbone.eval()
        features = self.backbone.forward_features(x)
        self.backbone.train(was_training)
        return [features[i].shape[-1] for i in self.taps]

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The maps Z_s, from the finest (backbone) to the 1x1 one (extras)."""
        stages = self.backbone.forward_features(x)
        maps = [stages[i] for i in self.taps]
        for layer in self.extras:
            maps.append(layer(maps[-1]))
        return maps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Box offsets (B, N, 4) and class logits (B, N, C + 1) for the N default boxes."""
        batch, classes = x.shape[0], self.num_classes + 1
        offsets, logits = [], []
        for z, loc, cls in zip(self.feature_maps(x), self.loc_heads, self.cls_heads, strict=True):
            # (B, A*4, H, W) -> (B, H, W, A*4) -> (B, H*W*A, 4): cell by cell, A boxes each
            offsets.append(loc(z).permute(0, 2, 3, 1).reshape(batch, -1, 4))
            # (B, A*(C+1), H, W) -> (B, H, W, A*(C+1)) -> (B, H*W*A, C+1)
            logits.append(cls(z).permute(0, 2, 3, 1).reshape(batch, -1, classes))
        return torch.cat(offsets, 1), torch.cat(logits, 1)  # (B, N, 4), (B, N, C+1)


def build_model(config: SSDConfig) -> SSD:
    """Instantiate a detector from its config (as stored in a checkpoint)."""
    return SSD(config)
