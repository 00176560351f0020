"""The single-shot multibox detector (book 6.3): a backbone from the core, extra layers
that halve the resolution down to 1x1, and on each map Z_s a convolutional head that
predicts, for every position and every default box, 4 box offsets and C + 1 class logits
(the extra class meaning "no object").

The same SSD holds torchvision's two COCO detectors (`detect.zoo` converts their weights):
SSD300, the detector of the book's figure (VGG-16 with SSD's changes, the extra layers
conv8_2 to conv11_2, aspect ratios chosen per map and default boxes placed by pixel steps),
and SSDLite320 (MobileNetV3-Large, depthwise separable extra layers and heads)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lbdl_apps.core.backbones.mobilenet import MobileNetV3, conv_bn
from lbdl_apps.core.backbones.resnet import resnet18, resnet34, resnet50, resnet_small
from lbdl_apps.core.backbones.vgg import SSDVGG16
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.detect.boxes import (
    boxes_per_location,
    decode,
    default_boxes,
    default_scales,
    per_map,
)

BACKBONES = ("resnet-small", "resnet18", "resnet34", "resnet50")  # the choices of --backbone
PRETRAINABLE = ("resnet18", "resnet34", "resnet50")
EXTRAS = ("bottleneck", "ssd300", "ssdlite")
HEADS = ("conv", "separable")
# (middle, out, stride, padding) of SSD300's conv8_2 to conv11_2
SSD300_EXTRAS = ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0))
SSDLITE_EXTRAS = (512, 256, 256, 128)  # the widths of SSDLite's four extra layers
SSDLITE_BN_MOMENTUM = 0.03
SSDLITE_C4 = 13  # MobileNetV3's block whose expansion SSDLite reads (stride 16)


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
    # torchvision's layouts; the defaults are lbdl's own SSD (as older checkpoints have it)
    map_aspect_ratios: list[list[float]] | None = None  # per map, instead of aspect_ratios
    steps: list[float] | None = None  # pixels between default-box centres, per map
    extras: str = "bottleneck"  # the extra layers: bottleneck (lbdl's), ssd300 or ssdlite
    head: str = "conv"  # conv (3x3) or separable (SSDLite's depthwise 3x3, BN, ReLU6, 1x1)
    head_labels: list[int] | None = None  # per column of a publisher's class head (below)
    reduced_tail: bool = False  # MobileNetV3: the last stage at half width (SSDLite's)


def default_config(
    num_classes: int, backbone: str = "resnet-small", image_size: int = 64
) -> SSDConfig:
    """The config of a backbone: the small ResNet narrower than the ImageNet ones."""
    config = SSDConfig(num_classes, backbone, image_size)
    if backbone == "resnet-small":
        return config
    return replace(config, width=64, extra_width=256)


def build_backbone(name: str, width: int, in_channels: int, reduced_tail: bool = False):
    """A headless backbone and the indices of its `forward_features` maps that feed the
    heads: the last two stages of the small ResNet (3x3 stem, strides 1, 2, 4, 8: for small
    images), the last three of the ImageNet ResNets (strides 8, 16, 32, as SSD300's 38, 19
    and 10 maps); VGG-16's conv4_3 and fc7 (SSD300); MobileNetV3's C4 expansion and last
    layer (SSDLite, strides 16 and 32)."""
    if name == "resnet-small":
        net = resnet_small(
            stages=4, width=width, blocks=1, num_classes=None, in_channels=in_channels
        )
        return net, [2, 3]
    if name == "vgg16":
        return SSDVGG16(in_channels), [0, 1]
    if name == "mobilenet_v3_large":
        taps = (f"{SSDLITE_C4}.expand", 16)
        net = MobileNetV3(None, reduced_tail, taps=taps, in_channels=in_channels,
                          bn_momentum=SSDLITE_BN_MOMENTUM)  # fmt: skip
        return net, [0, 1]
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


def ssd300_extras(in_ch: int) -> nn.ModuleList:
    """SSD300's conv8_2 to conv11_2: a 1x1 bottleneck then a 3x3 convolution, with ReLU
    (19 -> 10 -> 5 with stride 2, then 5 -> 3 -> 1 unpadded); Xavier-initialised."""
    layers = nn.ModuleList()
    for mid, out, stride, padding in SSD300_EXTRAS:
        layers.append(
            nn.Sequential(nn.Conv2d(in_ch, mid, 1), nn.ReLU(inplace=True),
                          nn.Conv2d(mid, out, 3, stride, padding), nn.ReLU(inplace=True))
        )  # fmt: skip
        in_ch = out
    _init(layers, "xavier")
    return layers


class SmallMapBatchNorm(nn.BatchNorm2d):
    """Batch normalization (book 4.6) that, in training, normalizes a batch holding one
    value per channel (one image's 1x1 map: SSDLite's last maps) with the running
    statistics, which such a batch cannot estimate; the same parameters otherwise."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)  # fmt: skip
        return super().forward(x)


def _lite_conv(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1):
    """SSDLite's convolution, batch norm (momentum 0.03) and ReLU6."""
    return conv_bn(in_ch, out_ch, kernel, stride, groups, act="relu6",
                   momentum=SSDLITE_BN_MOMENTUM, norm=SmallMapBatchNorm)  # fmt: skip


def ssdlite_extras(in_ch: int) -> nn.ModuleList:
    """SSDLite's extra layers (MobileNetV2 paper, 6.2): a 1x1 projection to half the width,
    a 3x3 stride-2 depthwise convolution and a 1x1 projection, each with BN and ReLU6."""
    layers = nn.ModuleList()
    for out in SSDLITE_EXTRAS:
        mid = out // 2
        layers.append(
            nn.Sequential(
                _lite_conv(in_ch, mid), _lite_conv(mid, mid, 3, 2, mid), _lite_conv(mid, out)
            )
        )
        in_ch = out
    _init(layers, "normal")
    return layers


def head_layer(kind: str, in_ch: int, out_ch: int) -> nn.Module:
    """A 3x3 convolution, or SSDLite's separable one: a 3x3 depthwise convolution with BN
    and ReLU6, then a 1x1 convolution."""
    if kind == "conv":
        return nn.Conv2d(in_ch, out_ch, 3, padding=1)
    return nn.Sequential(_lite_conv(in_ch, in_ch, 3, groups=in_ch), nn.Conv2d(in_ch, out_ch, 1))


def _init(module: nn.Module, kind: str) -> None:
    """torchvision's initialisation of its SSD layers: Xavier (SSD300) or N(0, 0.03)
    (SSDLite) weights, zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            if kind == "xavier":
                nn.init.xavier_uniform_(layer.weight)
            else:
                nn.init.normal_(layer.weight, 0.0, 0.03)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class _Probe(nn.Module):
    """The maps a backbone's taps and a stack of extra layers give (for `map_sizes`)."""

    def __init__(self, backbone: nn.Module, taps: list[int], extras: nn.ModuleList) -> None:
        super().__init__()
        self.backbone, self.taps, self.extras = backbone, taps, extras

    def forward(self, x: Tensor) -> list[Tensor]:
        stages = self.backbone.forward_features(x)
        maps = [stages[i] for i in self.taps]
        for layer in self.extras:
            maps.append(layer(maps[-1]))
        return maps


@torch.no_grad()
def map_sizes(
    backbone: nn.Module, taps: list[int], extras: nn.ModuleList, image_size: int, channels: int
) -> list[int]:
    """The side of each map for a square input, from shapes alone: the layers run on the
    meta device (in eval mode), which computes no values."""
    probe = _Probe(backbone, taps, extras)
    was_training = probe.training
    probe.eval()
    meta = {k: torch.empty_like(v, device="meta") for k, v in probe.state_dict().items()}
    image = torch.zeros(1, channels, image_size, image_size, device="meta")
    try:
        maps = functional_call(probe, meta, (image,))
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise LbdlError(f"image size {image_size}: too small for this SSD ({first})") from None
    finally:
        probe.train(was_training)
    return [m.shape[-1] for m in maps]


class SSD(nn.Module):
    """The detector of a config: backbone maps and extra maps down to 1x1, a box head and a
    class head on each, and the default boxes of the maps (`priors`, N x (cx, cy, w, h)).

    A publisher's class head may score more columns than the model has classes
    (`head_labels`: torchvision's COCO heads score 91 ids, 80 of them used): the logits are
    then folded to C + 1, each class its own column and "no object" the log-sum-exp of the
    others, so that the softmax gives every class the probability the publisher's
    softmax gives it."""

    def __init__(self, config: SSDConfig) -> None:
        super().__init__()
        c = config
        for name, value, known in (("extras", c.extras, EXTRAS), ("head", c.head, HEADS)):
            if value not in known:
                raise LbdlError(f"{name} {value}: choose one of {', '.join(known)}")
        self.num_classes = c.num_classes
        self.backbone, self.taps = build_backbone(
            c.backbone, c.width, c.in_channels, c.reduced_tail
        )
        channels = [self.backbone.out_channels[i] for i in self.taps]
        self.extras, channels = self._extras(c, channels)
        sizes = map_sizes(self.backbone, self.taps, self.extras, c.image_size, c.in_channels)
        self.feature_sizes = sizes
        ratios = per_map(c.map_aspect_ratios or c.aspect_ratios or [2.0], len(sizes))
        scales = self._scales(c, sizes)
        anchors = [boxes_per_location(r) for r in ratios]
        columns = len(c.head_labels) if c.head_labels else c.num_classes + 1
        pairs = list(zip(channels, anchors, strict=True))
        self.loc_heads = nn.ModuleList(head_layer(c.head, n, a * 4) for n, a in pairs)
        self.cls_heads = nn.ModuleList(head_layer(c.head, n, a * columns) for n, a in pairs)
        if c.extras != "bottleneck":
            _init(self.loc_heads, "xavier" if c.extras == "ssd300" else "normal")
            _init(self.cls_heads, "xavier" if c.extras == "ssd300" else "normal")
        self.columns = columns
        self._fold_columns(c)
        priors = default_boxes(sizes, scales, ratios, c.steps, c.image_size)
        self.register_buffer("priors", priors, persistent=False)
        self.frozen: list[nn.Module] = []

    def _extras(self, c: SSDConfig, channels: list[int]) -> tuple[nn.ModuleList, list[int]]:
        """The extra layers after the backbone, and the channels of every map."""
        if c.extras == "ssd300":
            return ssd300_extras(channels[-1]), channels + [out for _, out, _, _ in SSD300_EXTRAS]
        if c.extras == "ssdlite":
            return ssdlite_extras(channels[-1]), channels + list(SSDLITE_EXTRAS)
        size = map_sizes(self.backbone, self.taps, nn.ModuleList(), c.image_size, c.in_channels)[-1]
        extras, in_ch = nn.ModuleList(), channels[-1]
        while size > 1:
            layer, size = extra_layer(in_ch, c.extra_width, size)
            extras.append(layer)
            channels = [*channels, c.extra_width]
            in_ch = c.extra_width
        return extras, channels

    @staticmethod
    def _scales(c: SSDConfig, sizes: list[int]) -> list[float]:
        scales = list(c.scales) if c.scales is not None else default_scales(len(sizes))
        if len(scales) == 2 and len(sizes) > 1:
            scales = default_scales(len(sizes), scales[0], scales[1])
        if len(scales) != len(sizes) + 1:
            raise LbdlError(
                f"scales: {len(sizes)} maps ({', '.join(map(str, sizes))}) need 2 values "
                f"(smallest, largest) or {len(sizes) + 1}, got {len(scales)}"
            )
        return scales

    def _fold_columns(self, c: SSDConfig) -> None:
        """The columns of each class and of "no object" when the head has more (buffers)."""
        self.folded = bool(c.head_labels)
        if not c.head_labels:
            return
        used = sorted(label for label in c.head_labels if label != 0)
        if used != list(range(1, c.num_classes + 1)):
            raise LbdlError(f"head_labels: must name each of the {c.num_classes} classes once")
        labels = torch.tensor(c.head_labels)
        order = labels.argsort(stable=True)  # "no object" columns first, then class 1, 2, ...
        none_count = int((labels == 0).sum())
        self.register_buffer("none_columns", order[:none_count], persistent=False)
        self.register_buffer("class_columns", order[none_count:], persistent=False)

    def freeze_backbone(self, frozen: bool = True, extras: bool = False) -> None:
        """Fine-tuning's first phase (book 6.3): the pretrained backbone (and with `extras`
        its pretrained extra layers) neither learns nor updates its batch-norm statistics
        while the new layers find their footing."""
        parts = [self.backbone, *([self.extras] if extras else [])]
        self.frozen = parts if frozen else []
        for part in (self.backbone, self.extras):
            part.requires_grad_(not (frozen and any(part is p for p in parts)))
        self.train(self.training)

    @property
    def backbone_frozen(self) -> bool:
        return any(part is self.backbone for part in self.frozen)

    def train(self, mode: bool = True) -> SSD:
        super().train(mode)
        for part in self.frozen:
            part.eval()
        return self

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The maps Z_s, from the finest (backbone) to the coarsest (extras)."""
        stages = self.backbone.forward_features(x)
        maps = [stages[i] for i in self.taps]
        for layer in self.extras:
            maps.append(layer(maps[-1]))
        return maps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Box offsets (B, N, 4) and class logits (B, N, C + 1) for the N default boxes."""
        batch = x.shape[0]
        offsets, logits = [], []
        for z, loc, cls in zip(self.feature_maps(x), self.loc_heads, self.cls_heads, strict=True):
            # (B, A*4, H, W) -> (B, H, W, A*4) -> (B, H*W*A, 4): cell by cell, A boxes each
            offsets.append(loc(z).permute(0, 2, 3, 1).reshape(batch, -1, 4))
            # (B, A*K, H, W) -> (B, H, W, A*K) -> (B, H*W*A, K), K = C + 1 or the head's
            logits.append(cls(z).permute(0, 2, 3, 1).reshape(batch, -1, self.columns))
        scores = torch.cat(logits, 1)  # (B, N, K)
        if self.folded:
            none = scores.index_select(-1, self.none_columns).logsumexp(-1, keepdim=True)
            scores = torch.cat([none, scores.index_select(-1, self.class_columns)], -1)
        return torch.cat(offsets, 1), scores  # (B, N, 4), (B, N, C+1)


class DecodedSSD(nn.Module):
    """The SSD with its default boxes inside, as the app runs it at inference (book 6.3):
    images (B, 3, S, S) -> boxes (B, N, 4) x1 y1 x2 y2 clamped to [0, 1] and class
    probabilities (B, N, C), the softmax without its "no object" column."""

    def __init__(self, model: SSD) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("priors", model.priors, persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        offsets, logits = self.model(images)
        boxes = decode(offsets, self.priors).clamp(0.0, 1.0)
        return boxes, logits.float().softmax(-1)[..., 1:]


def build_model(config: SSDConfig) -> SSD:
    """Instantiate a detector from its config (as stored in a checkpoint)."""
    return SSD(config)
