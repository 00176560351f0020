"""The architectures of book chapter 5, built from `lbdl_apps.core.layers`."""

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
from lbdl_apps.core.backbones.vit import (
    VisionTransformer,
    from_openai_clip_text_state_dict,
    from_openai_clip_visual_state_dict,
    from_torchvision_state_dict,
)

__all__ = [
    "ResNet",
    "TransformerDecoder",
    "TransformerEncoder",
    "UNet",
    "VisionTransformer",
    "from_openai_clip_text_state_dict",
    "from_openai_clip_visual_state_dict",
    "from_torchvision_state_dict",
    "load_torchvision_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet_small",
]
