"""Image classifiers (book 6.2): a small CNN (book 5.1), ResNets (book 5.2) and a ViT (book 5.3),
all built from the core's layers and backbones and described by one plain config dict."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lbdl_apps.core.backbones.resnet import ResNet, resnet18, resnet34, resnet50
from lbdl_apps.core.backbones.vit import VisionTransformer
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import BasicBlock, ConvNormAct

MODELS = ("cnn", "resnet-small", "resnet18", "resnet34", "resnet50", "vit")


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


def default_config(
    name: str, num_classes: int, in_channels: int, image_size: int
) -> dict[str, Any]:
    """The full config of a model name, with widths and depths suited to the image size."""
    if name not in MODELS:
        raise LbdlError(f"--model {name}: unknown model; choose one of {', '.join(MODELS)}")
    config: dict[str, Any] = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "dropout": 0.1,
    }
    if name == "cnn":
        config.update(width=32, depth=3)
    elif name == "resnet-small":
        config.update(width=32, depth=3, blocks=2)
    elif name.startswith("resnet"):
        config.update(stem="small" if image_size <= 64 else "imagenet")
    else:
        patch = 4 if image_size <= 32 else 16
        config.update(patch_size=patch, width=128, depth=6, heads=4, mlp_ratio=2.0, conv_stem=0)
    return config


def build_model(config: dict[str, Any]) -> nn.Module:
    """Instantiate a classifier from its config (as stored in a checkpoint)."""
    name, classes, channels = config["name"], config["num_classes"], config["in_channels"]
    if name == "cnn":
        return SmallCNN(channels, classes, config["width"], config["depth"], config["dropout"])
    if name == "resnet-small":
        widths = [config["width"] * 2**i for i in range(config["depth"])]
        return ResNet(
            BasicBlock,
            [config["blocks"]] * config["depth"],
            widths=widths,
            stem="small",
            in_channels=channels,
            num_classes=classes,
        )
    if name in ("resnet18", "resnet34", "resnet50"):
        factory = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}[name]
        return factory(stem=config["stem"], in_channels=channels, num_classes=classes)
    if name == "vit":
        if config["image_size"] % config["patch_size"]:
            raise LbdlError(
                f"--patch-size {config['patch_size']}: does not divide the image size "
                f"{config['image_size']}"
            )
        return VisionTransformer(
            image_size=config["image_size"],
            patch_size=config["patch_size"],
            in_channels=channels,
            dim=config["width"],
            depth=config["depth"],
            heads=config["heads"],
            mlp_ratio=config["mlp_ratio"],
            num_classes=classes,
            dropout=config["dropout"],
            stem_channels=config.get("conv_stem", 0),
        )
    raise LbdlError(f"unknown model '{name}' in the checkpoint config")
