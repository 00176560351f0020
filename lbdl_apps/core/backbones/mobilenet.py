"""MobileNetV3-Large (Howard et al. 2019, "Searching for MobileNetV3"): a convolutional
network (book 5.2) made cheap by depthwise convolutions (book 4.2, a convolution with one
group per channel), built from inverted residual blocks (a skip connection, book 4.7, around
a 1x1 expansion, a depthwise convolution and a 1x1 projection), squeeze-excitation (a
channel gate computed from the pooled map) and the hard-swish activation (book 4.3).

The modules are laid out as torchvision's `mobilenet_v3_large`, so that
`torchvision.models.mobilenet_v3_large(weights=...).state_dict()` loads key for key:
`features.0` is the stem, `features.1` to `features.15` the 15 blocks of the paper's table 1
(each `features.i.block`), `features.16` the last 1x1 convolution, `classifier` the head.
`forward_features` reads the maps that detection and segmentation heads need (`taps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import Tensor, nn

Tap = int | str  # i: the output of features[i]; "i.expand": the expansion inside block i


@dataclass(frozen=True)
class BlockSpec:
    """One row of table 1 of the paper: kernel, expanded and output channels, whether the
    block has squeeze-excitation, its activation, its stride (and the dilation that replaces
    the stride in a dilated network)."""

    kernel: int
    expanded: int
    out: int
    se: bool
    act: str  # "relu" or "hardswish"
    stride: int
    dilation: int = 1


LARGE = (  # input 16 channels from the stem
    BlockSpec(3, 16, 16, False, "relu", 1),
    BlockSpec(3, 64, 24, False, "relu", 2),  # C1: stride 4
    BlockSpec(3, 72, 24, False, "relu", 1),
    BlockSpec(5, 72, 40, True, "relu", 2),  # C2: stride 8
    BlockSpec(5, 120, 40, True, "relu", 1),
    BlockSpec(5, 120, 40, True, "relu", 1),
    BlockSpec(3, 240, 80, False, "hardswish", 2),  # C3: stride 16
    BlockSpec(3, 200, 80, False, "hardswish", 1),
    BlockSpec(3, 184, 80, False, "hardswish", 1),
    BlockSpec(3, 184, 80, False, "hardswish", 1),
    BlockSpec(3, 480, 112, True, "hardswish", 1),
    BlockSpec(3, 672, 112, True, "hardswish", 1),
    BlockSpec(5, 672, 160, True, "hardswish", 2),  # C4: stride 32
    BlockSpec(5, 960, 160, True, "hardswish", 1),
    BlockSpec(5, 960, 160, True, "hardswish", 1),
)
STEM_CHANNELS = 16
LAST_CHANNELS = 1280  # the hidden layer of the classifier
STAGE_ENDS = (1, 3, 6, 12, 16)  # the last layer at strides 2, 4, 8, 16 and 32


def make_divisible(value: float, divisor: int = 8) -> int:
    """The channel count nearest `value` that `divisor` divides, never 10% below it (the
    rounding of MobileNet's width multipliers)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def large_specs(reduced_tail: bool = False, dilated: bool = False) -> list[BlockSpec]:
    """The blocks of MobileNetV3-Large; `reduced_tail` halves the channels of the last
    stage (the paper's table 6, as SSDLite uses it), `dilated` keeps the last stage at stride
    16 with dilation 2 instead (segmentation, as LR-ASPP uses it)."""
    specs = list(LARGE)
    for i in range(12, 15):
        spec = specs[i]
        if reduced_tail:
            out = spec.out // 2
            spec = replace(spec, expanded=spec.expanded // 2, out=out)
            if i == 12:
                spec = replace(spec, expanded=672)  # its input is still 112 wide
        if dilated:
            spec = replace(spec, dilation=2)
        specs[i] = spec
    return specs


def conv_bn(
    in_ch: int,
    out_ch: int,
    kernel: int = 1,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    act: str | None = "relu",
    eps: float = 1e-3,
    momentum: float = 0.01,
    norm: type[nn.BatchNorm2d] = nn.BatchNorm2d,
) -> nn.Sequential:
    """Convolution (no bias), batch normalization (`norm`), activation: children 0, 1 and
    2 as in torchvision's Conv2dNormActivation."""
    padding = (kernel - 1) // 2 * dilation
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups, bias=False),
        norm(out_ch, eps=eps, momentum=momentum),
    ]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "hardswish":
        layers.append(nn.Hardswish(inplace=True))
    elif act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    elif act is not None:
        raise ValueError(f"unknown activation {act!r}")
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """x times a per-channel gate in [0, 1]: global average pooling, a 1x1 bottleneck with
    ReLU, a 1x1 expansion and the hard sigmoid (Hu et al. 2018, as MobileNetV3 uses it)."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(self.activation(self.fc1(self.avgpool(x))))  # (B, C, 1, 1)
        return self.scale_activation(gate) * x


class InvertedResidual(nn.Module):
    """The MobileNet block: a 1x1 expansion to `expanded` channels (absent when it would not
    widen), a depthwise k x k convolution (strided, or dilated), squeeze-excitation, and a
    1x1 linear projection; the input is added back when the shape is kept (book 4.7)."""

    def __init__(self, in_ch: int, spec: BlockSpec, momentum: float = 0.01) -> None:
        super().__init__()
        self.use_res_connect = spec.stride == 1 and in_ch == spec.out
        self.has_expansion = spec.expanded != in_ch
        layers: list[nn.Module] = []
        if self.has_expansion:
            layers.append(conv_bn(in_ch, spec.expanded, act=spec.act, momentum=momentum))
        stride = 1 if spec.dilation > 1 else spec.stride  # dilation replaces the stride
        layers.append(
            conv_bn(spec.expanded, spec.expanded, spec.kernel, stride, spec.expanded,
                    spec.dilation, spec.act, momentum=momentum)
        )  # fmt: skip
        if spec.se:
            layers.append(SqueezeExcitation(spec.expanded, make_divisible(spec.expanded // 4)))
        layers.append(conv_bn(spec.expanded, spec.out, act=None, momentum=momentum))
        self.block = nn.Sequential(*layers)
        self.out_channels = spec.out
        self.expanded_channels = spec.expanded

    def forward_expanded(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The expansion's output (SSDLite reads its C4 map there) and the block's output."""
        if not self.has_expansion:
            raise ValueError("this block has no expansion layer")
        expanded = self.block[0](x)
        out = self.block[1:](expanded)
        return expanded, out + x if self.use_res_connect else out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """MobileNetV3-Large: a 3x3 stride-2 stem (hard-swish), the 15 inverted residual blocks,
    a 1x1 convolution to 6x the last width, then (with `num_classes`) global pooling and the
    classifier Linear, hard-swish, dropout, Linear.

    `taps` say where `forward_features` reads its maps: an integer i is the output of
    `features[i]`, "i.expand" the output of the 1x1 expansion inside block `features[i]`.
    The default is the last layer at each stride (2, 4, 8, 16, 32). torchvision's SSDLite
    reads ("13.expand", 16) of the reduced-tail network (strides 16 and 32), its LR-ASPP
    (4, 16) of the dilated one (strides 8 and 16)."""

    def __init__(
        self,
        num_classes: int | None = 1000,
        reduced_tail: bool = False,
        dilated: bool = False,
        taps: Sequence[Tap] = STAGE_ENDS,
        dropout: float = 0.2,
        in_channels: int = 3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        specs = large_specs(reduced_tail, dilated)
        layers: list[nn.Module] = [
            conv_bn(in_channels, STEM_CHANNELS, 3, 2, act="hardswish", momentum=bn_momentum)
        ]
        width = STEM_CHANNELS
        for spec in specs:
            layers.append(InvertedResidual(width, spec, bn_momentum))
            width = spec.out
        layers.append(conv_bn(width, 6 * width, act="hardswish", momentum=bn_momentum))
        self.features = nn.Sequential(*layers)
        self.num_features = 6 * width
        self.taps = [self._parse_tap(tap) for tap in taps]
        self.out_channels = [self._tap_channels(i, expand) for i, expand in self.taps]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier: nn.Sequential | None = None
        if num_classes:
            hidden = make_divisible(LAST_CHANNELS // (2 if reduced_tail else 1))
            self.classifier = nn.Sequential(
                nn.Linear(self.num_features, hidden),
                nn.Hardswish(inplace=True),
                nn.Dropout(p=dropout, inplace=True),
                nn.Linear(hidden, num_classes),
            )
        self._init_weights()

    def _parse_tap(self, tap: Tap) -> tuple[int, bool]:
        index, _, part = str(tap).partition(".")
        i = int(index)
        if not 0 <= i < len(self.features) or part not in ("", "expand"):
            raise ValueError(f"unknown tap {tap!r}: give 0..{len(self.features) - 1} or 'i.expand'")
        if part and not getattr(self.features[i], "has_expansion", False):
            raise ValueError(f"tap {tap!r}: features[{i}] has no expansion layer")
        return i, bool(part)

    def _tap_channels(self, index: int, expand: bool) -> int:
        layer = self.features[index]
        if expand:
            return layer.expanded_channels  # type: ignore[return-value]
        if isinstance(layer, InvertedResidual):
            return layer.out_channels
        return layer[0].out_channels  # type: ignore[index, return-value]

    def _init_weights(self) -> None:
        """torchvision's initialisation: He (fan out) convolutions, small normal linears."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The maps at `taps`, in their order (the layers after the last tap do not run)."""
        found: dict[tuple[int, bool], Tensor] = {}
        last = max(i for i, _ in self.taps)
        expanded_at = {i for i, expand in self.taps if expand}
        for i, layer in enumerate(self.features[: last + 1]):
            if i in expanded_at:
                found[i, True], x = layer.forward_expanded(x)
            else:
                x = layer(x)
            found[i, False] = x
        return [found[tap] for tap in self.taps]

    def forward(self, x: Tensor) -> Tensor:
        """Logits, or the pooled features when the model has no classifier."""
        x = self.avgpool(self.features(x)).flatten(1)  # (B, C, 1, 1) -> (B, C)
        return x if self.classifier is None else self.classifier(x)


def mobilenet_v3_large(**kw) -> MobileNetV3:
    """MobileNetV3-Large with torchvision's parameter names (see MobileNetV3)."""
    return MobileNetV3(**kw)
