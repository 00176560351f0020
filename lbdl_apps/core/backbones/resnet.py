"""Residual networks (book 5.2), with torchvision's parameter names so its weights load."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from lbdl_apps.core.checkpoint import load_tensors
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import BasicBlock, Bottleneck

Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A stem, then 1 to 4 stages of residual blocks, then pooling and a linear head (book 5.2).

    stem "imagenet": 7x7 stride-2 convolution and max-pooling, as torchvision's ResNets.
    stem "small": one 3x3 stride-1 convolution, for 28x28 or 32x32 images.
    Each stage after the first halves the resolution, or keeps it and dilates its
    convolutions instead where `replace_stride_with_dilation` says so (segmentation heads).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        in_channels: int = 3,
        num_classes: int | None = 1000,
        replace_stride_with_dilation: Sequence[bool] = (False, False, False),
    ) -> None:
        super().__init__()
        if not 1 <= len(layers) <= 4 or len(widths) < len(layers):
            raise ValueError(f"need 1 to 4 stages with a width each, got {layers} and {widths}")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        elif stem == "small":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"unknown stem {stem!r}; choose imagenet or small")
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)

        in_ch, dilation = widths[0], 1
        self.out_channels: list[int] = []
        for i, (blocks, width) in enumerate(zip(layers, widths[: len(layers)], strict=True)):
            stride = 1 if i == 0 else 2
            first_dilation = dilation
            if i > 0 and replace_stride_with_dilation[i - 1]:
                dilation, stride = dilation * stride, 1
            stage = [block(in_ch, width, stride, first_dilation)]
            in_ch = width * block.expansion
            stage += [block(in_ch, width, 1, dilation) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            self.out_channels.append(in_ch)
        self.num_stages = len(layers)
        self.num_features = in_ch

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The output map of each stage (strides 4, 8, 16, 32 with the imagenet stem)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            features.append(x)
        return features

    def forward(self, x: Tensor) -> Tensor:
        """Logits, or the pooled features when the model has no head (num_classes None)."""
        x = self.avgpool(self.forward_features(x)[-1]).flatten(1)
        return x if self.fc is None else self.fc(x)


def resnet18(**kw) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], **kw)


def resnet34(**kw) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], **kw)


def resnet50(**kw) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], **kw)


def resnet_small(
    stages: int = 3, width: int = 32, blocks: int = 2, num_classes: int | None = 10, **kw
) -> ResNet:
    """A ResNet for small images: 3x3 stem, `stages` stages of `blocks` basic blocks,
    widths width, 2 width, 4 width..."""
    widths = [width * 2**i for i in range(stages)]
    return ResNet(
        BasicBlock, [blocks] * stages, widths, stem="small", num_classes=num_classes, **kw
    )


def load_torchvision_weights(model: ResNet, name_or_path: str | Path) -> ResNet:
    """Load torchvision ImageNet weights into `model`, in place.

    `name_or_path` is a local .pth state dict, or a torchvision model name ("resnet50")
    whose default weights torchvision downloads. The classifier is skipped when the
    number of classes differs (or the model has none).
    """
    path = Path(name_or_path)
    if path.is_file():
        state = load_tensors(path, "PyTorch weights file")
        if not isinstance(state, dict):
            raise LbdlError(f"{path}: does not hold a state dict")
    else:
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(str(name_or_path)).DEFAULT
        except ValueError as e:
            raise LbdlError(f"{name_or_path}: neither a file nor a torchvision model") from e
        state = weights.get_state_dict(progress=True)

    own = model.state_dict()
    stem = state.get("conv1.weight")
    if stem is not None and own["conv1.weight"].shape[1] == 1 and stem.shape[1] == 3:
        # gray input: a gray image seen as three equal channels gives the same stem response
        state = {**state, "conv1.weight": stem.sum(dim=1, keepdim=True)}
    state = {
        k: v
        for k, v in state.items()
        if not (k.startswith("fc.") and (k not in own or own[k].shape != v.shape))
    }
    for key in own:  # files saved before PyTorch 0.4.1 have no BatchNorm step counters
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    expected = {k for k in own if not k.startswith("fc.") or k in state}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    wrong_shape = [k for k in expected & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
            for what, keys in [
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", sorted(wrong_shape)),
            ]
            if keys
        )
        raise LbdlError(f"{name_or_path}: weights do not fit this ResNet ({detail})")
    model.load_state_dict(state, strict=False)
    return model


def load_pretrained(model: ResNet, pretrained: str, default: str) -> ResNet:
    """The --pretrained rule of every app: "DEFAULT" is the ImageNet weights of `default`
    (the model's own architecture), a torchvision model name ("resnet34") or a registry name
    ("imagenet:resnet34") those of that model, found through lbdl's registry and cache
    (core/zoo.py: $LBDL_HOME/downloads, torch's own cache, or downloaded once with its
    checksum checked); anything else is a local .pth file."""
    from lbdl_apps.core import zoo

    path = Path(pretrained).expanduser()
    if not path.is_file():
        name = default if pretrained == "DEFAULT" else pretrained
        try:
            entry = zoo.find(name if ":" in name else f"imagenet:{name}", task="classify")
        except LbdlError:
            raise LbdlError(
                f"--pretrained {pretrained}: neither a file nor an ImageNet model of lbdl's "
                "registry (imagenet:resnet18, imagenet:resnet34, imagenet:resnet50)"
            ) from None
        path = zoo.fetch(entry, entry.sources[0])
    return load_torchvision_weights(model, path)
