"""VGG-16 (Simonyan and Zisserman 2014): the plain convolutional network of book 5.2, 3x3
convolutions with ReLU in five stages separated by 2x2 max-pooling (book 4.4); and the
changes SSD300 makes to it (Liu et al. 2016, the detector of book 6.3's figure):

- the third pooling rounds up (ceil mode), so a 300x300 image gives the 38x38 conv4_3 map;
- conv4_3's map is L2-normalized across channels at each position and rescaled by a
  learned per-channel factor (initially 20), since its activations are much larger than
  those of the deeper maps;
- the fifth pooling becomes 3x3 with stride 1, and the fully connected fc6 and fc7 become
  convolutions: fc6 a 3x3 one dilated by 6 (a wide receptive field at stride 16), fc7 a
  1x1 one, giving the 19x19 map.

The layout is torchvision's: `features` holds the layers of `torchvision.models.vgg16()`'s
`features` with the same indices (through conv5_3, without the last pooling), so its
ImageNet weights load as they are; torchvision's `ssd300_vgg16` spreads these parameters
over `backbone.features` and `backbone.extra.0` (`detect.zoo` maps them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
CONV4_3 = 23  # features[:CONV4_3] ends with conv4_3's ReLU; features[CONV4_3] is pool4


def vgg_features(layout=VGG16_LAYOUT, in_channels: int = 3, ceil_pools=(2,)) -> nn.Sequential:
    """3x3 convolutions (padding 1) each followed by ReLU, "M" a 2x2 max-pooling; the
    pools whose index (from 0) is in `ceil_pools` round their output size up."""
    layers: list[nn.Module] = []
    pools = 0
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=pools in ceil_pools))
            pools += 1
        else:
            layers += [nn.Conv2d(in_channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = int(item)
    return nn.Sequential(*layers)


class SSDVGG16(nn.Module):
    """VGG-16 as SSD300's backbone: `forward_features` gives the two maps SSD's heads read,
    conv4_3 L2-normalized and rescaled (512 channels, stride 8: 38x38 for 300x300 input) and
    fc7 (1024 channels, stride 16: 19x19)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.features = vgg_features(VGG16_LAYOUT, in_channels)
        self.scale_weight = nn.Parameter(torch.full((512,), 20.0))  # conv4_3's rescaling
        self.pool5 = nn.MaxPool2d(3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(512, 1024, 3, padding=6, dilation=6)  # atrous: as wide as 13x13
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        self.out_channels = [512, 1024]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation (He, fan out)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for fc in (self.fc6, self.fc7):  # and its SSD's for the new layers
            nn.init.xavier_uniform_(fc.weight)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """[conv4_3 normalized (B, 512, H/8, W/8), fc7 (B, 1024, H/16, W/16)]."""
        conv4_3 = self.features[:CONV4_3](x)
        # unit length at each position, then scaled per channel: (512,) -> (1, 512, 1, 1)
        normalized = self.scale_weight.view(1, -1, 1, 1) * F.normalize(conv4_3)
        x = self.features[CONV4_3:](conv4_3)
        x = F.relu(self.fc6(self.pool5(x)), inplace=True)
        return [normalized, F.relu(self.fc7(x), inplace=True)]

    def forward(self, x: Tensor) -> Tensor:
        """The last map (fc7)."""
        return self.forward_features(x)[-1]


def from_torchvision_vgg16(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The convolutions of a `torchvision.models.vgg16` state dict (ImageNet weights, or
    VGG16_Weights.IMAGENET1K_FEATURES, those SSD300 was trained from) for `SSDVGG16`: the
    `features` keys are the same; the classifier is dropped (SSD's fc6 and fc7 are new)."""
    return {k: v for k, v in state.items() if k.startswith("features.")}
