"""The architectures of book chapter 5, built from `lbdl_apps.core.layers`."""

from lbdl_apps.core.backbones.mobilenet import MobileNetV3, mobilenet_v3_large
from lbdl_apps.core.backbones.resnet import (
    ResNet,
    load_torchvision_weights,
    resnet18,
    resnet34,
    resnet50,
    resnet_small,
)
from lbdl_apps.core.backbones.transformer import TransformerDecoder, TransformerEncoder
from lbdl_apps.core.backbones.unet import UNet
from lbdl_apps.core.backbones.vgg import SSDVGG16, from_torchvision_vgg16
from lbdl_apps.core.backbones.vit import (
    VisionTransformer,
    from_openai_clip_text_state_dict,
    from_openai_clip_visual_state_dict,
    from_torchvision_state_dict,
)

__all__ = [
    "SSDVGG16",
    "MobileNetV3",
    "ResNet",
    "TransformerDecoder",
    "TransformerEncoder",
    "UNet",
    "VisionTransformer",
    "from_openai_clip_text_state_dict",
    "from_openai_clip_visual_state_dict",
    "from_torchvision_state_dict",
    "from_torchvision_vgg16",
    "load_torchvision_weights",
    "mobilenet_v3_large",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet_small",
]
