"""torchvision's ImageNet classifiers by name (issue 26; book 6.2): ResNet-18, -34 and -50
(book 5.2), ViT-B/16 (book 5.3) and MobileNetV3-Large, with the weights torchvision
publishes as IMAGENET1K_V1, converted into lbdl classify checkpoints with the 1000 ImageNet
class names (and their WordNet IDs, the folder names of ImageNet's layout) and torchvision's
preprocessing: the short side resized to 256 (bilinear, antialiased), the center 224 x 224
crop, ImageNet's mean and std. A local torchvision state dict of these models (any number of
classes) is recognised by its keys and shapes."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.state_dicts import load_exactly, read_state_dict, state_dict_format
from lbdl_apps.core.zoo import Pretrained, Source, register, register_format

TASK = "classify"
TORCH_HUB = "~/.cache/torch/hub/checkpoints"
BASE = "https://download.pytorch.org/models/"
LICENSE = "BSD-3-Clause"
MODELS = {  # name -> (architecture, torchvision's file, what it is)
    "imagenet:resnet18": ("resnet18", "resnet18-f37072fd.pth", "ResNet-18, ImageNet-1k"),
    "imagenet:resnet34": ("resnet34", "resnet34-b627a593.pth", "ResNet-34, ImageNet-1k"),
    "imagenet:resnet50": ("resnet50", "resnet50-0676ba61.pth", "ResNet-50, ImageNet-1k"),
    "imagenet:vit_b_16": ("vit", "vit_b_16-c867db91.pth", "ViT-B/16, ImageNet-1k"),
    "imagenet:mobilenet_v3_large": (
        "mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth", "MobileNetV3-Large, ImageNet-1k",
    ),
}  # fmt: skip
VIT_HEADS = {768: 12, 1024: 16, 1280: 16}  # torchvision's ViT-B, -L, -H: width -> heads
RESNETS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
           ("bottleneck", (3, 4, 6, 3)): "resnet50"}  # fmt: skip


def hash_prefix(file: str) -> str:
    """The start of the file's sha256 that torchvision puts in its name (torch.hub checks
    downloads against it the same way)."""
    found = re.search(r"-([0-9a-f]{8,})\.", file)
    assert found is not None, file
    return found.group(1)


def _converter(arch: str):
    def convert(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
        return convert_state(read_state_dict(files[0]), files[0], expect=arch)

    convert.__doc__ = f"torchvision's {arch} IMAGENET1K_V1 file -> an lbdl classify checkpoint."
    return convert


convert_resnet18 = _converter("resnet18")
convert_resnet34 = _converter("resnet34")
convert_resnet50 = _converter("resnet50")
convert_vit = _converter("vit")
convert_mobilenet_v3_large = _converter("mobilenet_v3_large")


def identify(state: dict[str, Any]) -> str | None:
    """Which torchvision classifier a state dict is, by its keys and block counts."""
    if "class_token" in state and "conv_proj.weight" in state:
        return "vit"
    if "features.16.0.weight" in state and "classifier.3.weight" in state:
        return "mobilenet_v3_large"
    if "conv1.weight" in state and "fc.weight" in state:
        block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
        counts = tuple(
            len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)
        )
        return RESNETS.get((block, counts))
    return None


def config_of(arch: str, state: dict[str, Any]) -> Any:
    """Our typed config of a torchvision classifier; its classes from its last layer."""
    from lbdl_apps.classify.model import ClassifierConfig

    if arch == "vit":
        dim, _, patch, _ = state["conv_proj.weight"].shape
        grid = round((state["encoder.pos_embedding"].shape[1] - 1) ** 0.5)
        depth = len({k.split(".")[2] for k in state if k.startswith("encoder.layers.")})
        if dim not in VIT_HEADS or "heads.pre_logits.weight" in state:
            raise LbdlError(f"a torchvision ViT of width {dim}: lbdl knows ViT-B, -L and -H")
        mlp = state["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0] / dim
        return ClassifierConfig(
            "vit", int(state["heads.head.weight"].shape[0]), 3, grid * patch, dropout=0.0,
            width=int(dim), depth=depth, patch_size=int(patch), heads=VIT_HEADS[dim],
            mlp_ratio=float(mlp), conv_stem=0,
        )  # fmt: skip
    if arch == "mobilenet_v3_large":
        classes = int(state["classifier.3.weight"].shape[0])
        return ClassifierConfig(arch, classes, int(state["features.0.0.weight"].shape[1]), 224,
                                dropout=0.2)  # fmt: skip
    classes, channels = int(state["fc.weight"].shape[0]), int(state["conv1.weight"].shape[1])
    return ClassifierConfig(arch, classes, channels, 224, dropout=0.0, stem="imagenet")


def to_lbdl(arch: str, state: dict[str, Any]) -> dict[str, Any]:
    """torchvision's keys -> ours: the ResNets' and MobileNetV3's are the same (core's
    backbones keep torchvision's names), the ViT's are mapped (core/backbones/vit.py)."""
    if arch == "vit":
        from lbdl_apps.core.backbones.vit import from_torchvision_state_dict

        return from_torchvision_state_dict(state)
    return dict(state)


def metadata(config: Any) -> dict[str, Any]:
    """The checkpoint metadata: ImageNet's class names (other class counts are numbered),
    their WordNet IDs, and torchvision's preprocessing of these weights."""
    import torchvision

    from lbdl_apps.classify.imagenet import WNIDS
    from lbdl_apps.core.data import image_preprocessing

    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1  # the five share them
    transform = weights.transforms()
    imagenet = config.num_classes == len(WNIDS)
    labels = list(weights.meta["categories"]) if imagenet else None
    preprocessing = image_preprocessing(
        transform.crop_size[0], config.in_channels, list(transform.mean)[: config.in_channels],
        list(transform.std)[: config.in_channels], resize=transform.resize_size[0],
        interpolation=transform.interpolation.value,
    )  # fmt: skip
    return {"task": TASK, "config": asdict(config),
            "labels": labels or [f"class{i}" for i in range(config.num_classes)],
            "label_folders": list(WNIDS) if imagenet else None,
            "preprocessing": preprocessing, "data": None, "seed": 0,
            "val_fraction": 0.0}  # fmt: skip


def convert_state(
    state: dict[str, Any], path: Path, expect: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A torchvision classifier's state dict -> (our state dict, metadata), checked by
    loading it into our model (every key and shape)."""
    from lbdl_apps.classify.model import build_model

    arch = identify(state)
    if arch is None or (expect is not None and arch != expect):
        found = f"a torchvision {arch}" if arch else "none of them"
        wanted = expect or "resnet18/34/50, vit_b_16 or mobilenet_v3_large"
        raise LbdlError(f"{path}: not a torchvision {wanted} state dict ({found})")
    config = config_of(arch, state)
    model = build_model(config)
    ours = to_lbdl(arch, state)
    load_exactly(model, ours, path)
    return model.state_dict(), metadata(config)


for _name, (_arch, _file, _what) in MODELS.items():
    register(
        Pretrained(
            _name,
            TASK,
            (Source(BASE + _file, hash_prefix(_file), 0, _file),),
            LICENSE,
            f"{_what} (torchvision IMAGENET1K_V1)",
            f"lbdl_apps.classify.zoo:convert_{_arch}",
            look_in=(TORCH_HUB,),
        )
    )
register_format(
    state_dict_format("torchvision classifier state dict", TASK, identify, convert_state)
)
