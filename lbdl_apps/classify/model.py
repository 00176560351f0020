"""Image classifiers (book 6.2): a small CNN (book 5.1), ResNets (book 5.2), a ViT (book 5.3)
and MobileNetV3-Large, all built from the core's layers and backbones and described by one
typed config (torchvision's ImageNet weights of the ResNets, the ViT and MobileNetV3 load
into them: classify/zoo.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from lbdl_apps.core.backbones.mobilenet import MobileNetV3
from lbdl_apps.core.backbones.resnet import ResNet, resnet18, resnet34, resnet50
from lbdl_apps.core.backbones.vit import VisionTransformer
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import BasicBlock, ConvNormAct

MODELS = ("cnn", "resnet-small", "resnet18", "resnet34", "resnet50", "vit", "mobilenet_v3_large")


class SmallCNN(nn.Module):
    """A LeNet-like stack (book 5.1): stages of two conv-norm-ReLU layers and a 2x2 max-pool,
    then global average pooling and a linear classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        depth: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(depth):
            out = width * 2**stage
            layers += [ConvNormAct(channels, out), ConvNormAct(out, out), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class ClassifierConfig:
    """Everything `build_model` needs, stored in the checkpoint. `width`/`depth` are the
    CNN's and ResNet's base width and stages, or the ViT's embedding size and blocks."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    dropout: float = 0.1
    width: int | None = None
    depth: int | None = None
    blocks: int | None = None  # resnet-small: residual blocks per stage
    stem: str | None = None  # resnet18/34/50: "small" (3x3) or "imagenet" (7x7 + pool)
    patch_size: int | None = None  # vit
    heads: int | None = None
    mlp_ratio: float | None = None
    conv_stem: int | None = None  # vit: channels of two 3x3 convolutions before the patches


def default_config(
    name: str, num_classes: int, in_channels: int, image_size: int
) -> ClassifierConfig:
    """The full config of a model name, with widths and depths suited to the image size."""
    if name not in MODELS:
        raise LbdlError(f"--model {name}: unknown model; choose one of {', '.join(MODELS)}")
    config = ClassifierConfig(name, num_classes, in_channels, image_size)
    if name == "cnn":
        return replace(config, width=32, depth=3)
    if name == "resnet-small":
        return replace(config, width=32, depth=3, blocks=2)
    if name.startswith("resnet"):
        return replace(config, stem="small" if image_size <= 64 else "imagenet")
    if name == "mobilenet_v3_large":
        return replace(config, dropout=0.2)
    patch = 4 if image_size <= 32 else 16
    return replace(
        config, patch_size=patch, width=128, depth=6, heads=4, mlp_ratio=2.0, conv_stem=0
    )


def build_model(config: ClassifierConfig) -> nn.Module:
    """Instantiate a classifier from its config (as stored in a checkpoint)."""
    c = config
    if c.name == "cnn":
        return SmallCNN(c.in_channels, c.num_classes, c.width, c.depth, c.dropout)
    if c.name == "resnet-small":
        widths = [c.width * 2**i for i in range(c.depth)]
        return ResNet(
            BasicBlock,
            [c.blocks] * c.depth,
            widths=widths,
            stem="small",
            in_channels=c.in_channels,
            num_classes=c.num_classes,
        )
    if c.name in ("resnet18", "resnet34", "resnet50"):
        factory = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}[c.name]
        return factory(stem=c.stem, in_channels=c.in_channels, num_classes=c.num_classes)
    if c.name == "vit":
        if c.image_size % c.patch_size:
            raise LbdlError(
                f"--patch-size {c.patch_size}: does not divide the image size {c.image_size}"
            )
        return VisionTransformer(
            image_size=c.image_size,
            patch_size=c.patch_size,
            in_channels=c.in_channels,
            dim=c.width,
            depth=c.depth,
            heads=c.heads,
            mlp_ratio=c.mlp_ratio,
            num_classes=c.num_classes,
            dropout=c.dropout,
            stem_channels=c.conv_stem or 0,
        )
    if c.name == "mobilenet_v3_large":
        return MobileNetV3(c.num_classes, dropout=c.dropout, in_channels=c.in_channels)
    raise LbdlError(f"unknown model '{c.name}' in the checkpoint config")


def final_layers(config: ClassifierConfig) -> tuple[str, ...]:
    """The modules that map features to class logits: a fine-tuned model (--init) gets new
    ones for its own classes and keeps every other weight."""
    if config.name == "cnn":
        return ("head.3",)
    return {"vit": ("head",), "mobilenet_v3_large": ("classifier.3",)}.get(config.name, ("fc",))
