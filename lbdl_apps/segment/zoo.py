"""torchvision's semantic segmentation models by name (issue 26; book 6.4): FCN and DeepLabV3
on a dilated ResNet-50, LR-ASPP on a dilated MobileNetV3-Large, with the weights torchvision
publishes as COCO_WITH_VOC_LABELS_V1 (trained on COCO's images with the 20 Pascal VOC
classes and background), converted into lbdl segment checkpoints with the VOC class names
and palette and torchvision's preprocessing (the short side resized to 520, ImageNet mean
and std). The auxiliary FCN head on layer3, which only helps training, is dropped. A local
torchvision state dict of these models is recognised by its keys and shapes."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.state_dicts import load_exactly, read_state_dict, state_dict_format
from lbdl_apps.core.zoo import Pretrained, Source, register, register_format

TASK = "segment"
TORCH_HUB = "~/.cache/torch/hub/checkpoints"
BASE = "https://download.pytorch.org/models/"
LICENSE = "BSD-3-Clause"
RESIZE = 520  # torchvision's SemanticSegmentation(resize_size=520) of these weights
MODELS = {  # name -> (our model, torchvision's file, what it is, torchvision's weights enum)
    "voc:fcn_resnet50": (
        "fcn", "fcn_resnet50_coco-1167a1af.pth",
        "FCN on a dilated ResNet-50, 21 VOC classes (torchvision)", "FCN_ResNet50_Weights",
    ),
    "voc:deeplabv3": (
        "deeplabv3", "deeplabv3_resnet50_coco-cd0a2569.pth",
        "DeepLabV3 (ASPP) on a dilated ResNet-50, 21 VOC classes (torchvision)",
        "DeepLabV3_ResNet50_Weights",
    ),
    "voc:lraspp": (
        "lraspp", "lraspp_mobilenet_v3_large-d234d4ea.pth",
        "LR-ASPP on MobileNetV3-Large, 21 VOC classes (torchvision)",
        "LRASPP_MobileNet_V3_Large_Weights",
    ),
}  # fmt: skip


def hash_prefix(file: str) -> str:
    """The start of the file's sha256 that torchvision puts in its name (torch.hub checks
    it the same way)."""
    found = re.search(r"-([0-9a-f]{8,})\.", file)
    assert found is not None, file
    return found.group(1)


def convert_fcn(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    return convert_file(files[0], expect="fcn")


def convert_deeplabv3(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    return convert_file(files[0], expect="deeplabv3")


def convert_lraspp(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    return convert_file(files[0], expect="lraspp")


CONVERTERS = {"fcn": "convert_fcn", "deeplabv3": "convert_deeplabv3", "lraspp": "convert_lraspp"}


def identify(state: dict[str, Any]) -> str | None:
    """Which torchvision segmentation model a state dict is, by its keys (None: none)."""
    if "classifier.0.convs.0.0.weight" in state:
        return "deeplabv3"
    if "classifier.cbr.0.weight" in state:
        return "lraspp"
    if "classifier.4.weight" in state and "classifier.0.weight" in state:
        return "fcn"
    return None


def _backbone(arch: str, state: dict[str, Any], path: Path) -> None:
    """The backbone of an FCN or DeepLabV3 must be ResNet-50 (torchvision also publishes
    ResNet-101 and MobileNetV3 ones, which lbdl does not build); LR-ASPP's MobileNetV3."""
    if arch == "lraspp":
        ok = "backbone.16.0.weight" in state
    else:
        blocks = {k.split(".")[2] for k in state if k.startswith("backbone.layer3.")}
        ok = "backbone.layer1.0.conv3.weight" in state and len(blocks) == 6
    if not ok:
        raise LbdlError(
            f"{path}: a torchvision {arch} whose backbone is not the one lbdl builds "
            f"({'MobileNetV3-Large' if arch == 'lraspp' else 'ResNet-50'})"
        )


def to_lbdl(arch: str, state: dict[str, Any]) -> dict[str, Any]:
    """torchvision's keys -> ours (segment/model.py): the backbone's as they are (LR-ASPP's
    under `features.`), `classifier.*` -> `head.*` (DeepLabV3: its ASPP -> `aspp.*`, the
    rest of the head shifted by one); the auxiliary classifier is dropped."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith("aux_classifier."):
            continue
        if key.startswith("backbone."):
            rest = key.removeprefix("backbone.")
            out[f"backbone.features.{rest}" if arch == "lraspp" else key] = value
            continue
        rest = key.removeprefix("classifier.")
        if arch == "deeplabv3":
            index, inner = rest.split(".", 1)
            rest = f"aspp.{inner}" if index == "0" else f"head.{int(index) - 1}.{inner}"
            out[rest] = value
        else:
            out[f"head.{rest}"] = value
    return out


def config_of(arch: str, state: dict[str, Any]) -> Any:
    """Our typed config of a torchvision model (its number of classes from its last conv)."""
    from lbdl_apps.segment.model import SegmenterConfig, default_config, with_backbone

    last = {"fcn": "classifier.4.weight", "deeplabv3": "classifier.4.weight",
            "lraspp": "classifier.low_classifier.weight"}[arch]  # fmt: skip
    num_classes = int(state[last].shape[0])
    config: SegmenterConfig = default_config(arch, num_classes, 3)
    return with_backbone(config, "resnet50")


def metadata(config: Any, weights_enum: str = "DeepLabV3_ResNet50_Weights") -> dict[str, Any]:
    """The checkpoint metadata: the VOC classes and palette (21 classes; other counts are
    numbered), torchvision's preprocessing (short side to RESIZE, whole image, ImageNet
    normalization)."""
    import torchvision.models.segmentation as segmentation

    from lbdl_apps.core.data import image_preprocessing
    from lbdl_apps.segment.masks import VOC_CLASSES, palette_for

    weights = getattr(segmentation, weights_enum).COCO_WITH_VOC_LABELS_V1
    transform = weights.transforms()
    voc = config.num_classes == len(VOC_CLASSES)
    labels = list(VOC_CLASSES) if voc else [f"class{i}" for i in range(config.num_classes)]
    mode = "voc" if voc else "index"
    preprocessing = image_preprocessing(
        RESIZE, 3, list(transform.mean), list(transform.std), mask_mode=mode,
        palette=palette_for(mode, config.num_classes), resize=RESIZE,
    )  # fmt: skip
    return {"task": TASK, "config": asdict(config), "labels": labels,
            "preprocessing": preprocessing, "data": None, "seed": 0,
            "val_fraction": 0.0, "scenes": 400}  # fmt: skip


def convert_state(
    state: dict[str, Any], path: Path, expect: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A torchvision segmentation state dict -> (our state dict, metadata), checked by
    loading it into our model (every key and shape)."""
    from lbdl_apps.segment.model import build_model

    arch = identify(state)
    if arch is None or (expect is not None and arch != expect):
        found = f"a torchvision {arch}" if arch else "none of them"
        raise LbdlError(
            f"{path}: not a torchvision {expect or 'fcn, deeplabv3 or lraspp'} state dict ({found})"
        )
    _backbone(arch, state, path)
    config = config_of(arch, state)
    model = build_model(config)
    ours = to_lbdl(arch, state)
    load_exactly(model, ours, path)
    enum = next(e for n, f, _, e in MODELS.values() if n == arch)
    return model.state_dict(), metadata(config, enum)


def convert_file(path: Path, expect: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    return convert_state(read_state_dict(path), path, expect)


for _name, (_arch, _file, _what, _) in MODELS.items():
    register(
        Pretrained(
            _name,
            TASK,
            (Source(BASE + _file, hash_prefix(_file), 0, _file),),
            LICENSE,
            _what,
            f"lbdl_apps.segment.zoo:{CONVERTERS[_arch]}",
            look_in=(TORCH_HUB,),
        )
    )
register_format(
    state_dict_format("torchvision segmentation state dict", TASK, identify, convert_state)
)
