"""torchvision's COCO detectors by name (issue 26), held by lbdl's SSD (book 6.3):

- coco:ssd300: `ssd300_vgg16`, COCO_V1 weights: VGG-16 with SSD's changes, 300x300 input,
  COCO val2017 box mAP 25.1 as torchvision reports it;
- coco:ssdlite320: `ssdlite320_mobilenet_v3_large`, COCO_V1 weights: MobileNetV3-Large with
  the reduced tail, separable extra layers and heads, 320x320 input, box mAP 21.3.

Each converter renames torchvision's parameters into the SSD's (`SSD300_KEYS`,
`SSDLITE_KEYS`) and describes the rest in the checkpoint: the layout (SSDConfig: backbone,
extra layers, heads, default boxes: scales, per-map aspect ratios, steps), the 80 class
names (torchvision's weights meta; its class head scores 91 COCO ids, folded by
`head_labels`), the preprocessing (torchvision's transform: bilinear resize without
antialiasing, its mean and std) and the candidate selection (its score threshold, NMS IoU,
detections per image, candidates per class). A torchvision state dict of either model given
as a local file is recognised by its keys and shapes and converted the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.state_dicts import file_kind, read_state_dict
from lbdl_apps.core.zoo import Pretrained, PublisherFormat, Source, register, register_format

TORCH_HUB = "~/.cache/torch/hub/checkpoints"
LICENSE = "BSD-3-Clause"
TORCHVISION_MODELS = "https://download.pytorch.org/models/"
SSD300_FILE = "ssd300_vgg16_coco-b556d3b4.pth"  # the name holds the sha256's first digits
SSDLITE_FILE = "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
SSD300_SCALES = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
SSD300_RATIOS = [[2.0], [2.0, 3.0], [2.0, 3.0], [2.0, 3.0], [2.0], [2.0]]
SSD300_STEPS = [8.0, 16.0, 32.0, 64.0, 100.0, 300.0]
SSDLITE_MAPS = 6  # torchvision: DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
SSDLITE_SCALES = [round(0.2 + 0.75 * k / (SSDLITE_MAPS - 1), 4) for k in range(SSDLITE_MAPS)]
SSDLITE_SCALES.append(1.0)

# torchvision's transform and post-processing of each model (SSD(...) defaults and kwargs)
PREPROCESSING = {
    "ssd300": {"image_size": 300, "resize": "bilinear", "mean": [0.48235, 0.45882, 0.40784],
               "std": [1.0 / 255.0] * 3},
    "ssdlite": {"image_size": 320, "resize": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3},
}  # fmt: skip
POSTPROCESSING = {
    "ssd300": {"conf": 0.01, "iou": 0.45, "max_det": 200, "pre_nms": 400, "per_class": True},
    "ssdlite": {"conf": 0.001, "iou": 0.55, "max_det": 300, "pre_nms": 300, "per_class": True},
}
PUBLISHER = {
    "ssd300": "torchvision ssd300_vgg16 (SSD300_VGG16_Weights.COCO_V1)",
    "ssdlite": "torchvision ssdlite320_mobilenet_v3_large "
    "(SSDLite320_MobileNet_V3_Large_Weights.COCO_V1)",
}
Rule = tuple[str, str | Callable[[re.Match], str]]
HEAD_KEYS: list[Rule] = [
    (r"^head\.regression_head\.module_list\.", "loc_heads."),
    (r"^head\.classification_head\.module_list\.", "cls_heads."),
]
SSD300_KEYS: list[Rule] = [  # torchvision's extra.0 holds VGG's pool4 to conv5_3, then fc
    (r"^backbone\.extra\.0\.7\.1\.", "backbone.fc6."),
    (r"^backbone\.extra\.0\.7\.3\.", "backbone.fc7."),
    (r"^backbone\.extra\.0\.(\d+)\.", lambda m: f"backbone.features.{23 + int(m[1])}."),
    (r"^backbone\.extra\.(\d+)\.", lambda m: f"extras.{int(m[1]) - 1}."),
    (r"^backbone\.(features\.\d+\.|scale_weight$)", r"backbone.\1"),
    *HEAD_KEYS,
]
SSDLITE_C4 = 13  # torchvision splits MobileNetV3 inside block 13 (model.SSDLITE_C4)
SSDLITE_KEYS: list[Rule] = [
    (rf"^backbone\.features\.0\.{SSDLITE_C4}\.", f"backbone.features.{SSDLITE_C4}.block.0."),
    (r"^backbone\.features\.0\.(\d+)\.", r"backbone.features.\1."),
    (r"^backbone\.features\.1\.0\.", f"backbone.features.{SSDLITE_C4}.block."),  # block[1:]
    (r"^backbone\.features\.1\.(\d+)\.", lambda m: f"backbone.features.{SSDLITE_C4 + int(m[1])}."),
    (r"^backbone\.extra\.", "extras."),
    *HEAD_KEYS,
]  # fmt: skip


def coco_categories() -> list[str]:
    """torchvision's 91 COCO category names ("__background__", then the ids 1 to 90, "N/A"
    for the 10 ids COCO never used), from its weights' meta."""
    from torchvision.models.detection import SSD300_VGG16_Weights

    return list(SSD300_VGG16_Weights.COCO_V1.meta["categories"])


def head_labels(categories: list[str]) -> tuple[list[str], list[int]]:
    """The used class names, and for each column of the class head the class it scores
    (0: no object, and the unused "N/A" ids)."""
    names = [name for name in categories[1:] if name != "N/A"]
    labels = [0 if i == 0 or name == "N/A" else names.index(name) + 1
              for i, name in enumerate(categories)]  # fmt: skip
    return names, labels


def torchvision_config(kind: str, columns: int, reduced_tail: bool = True):
    """The SSDConfig of torchvision's SSD300 or SSDLite320 with a class head of `columns`
    (91 for COCO: folded into the 80 classes), and the class names."""
    from lbdl_apps.detect.model import SSDConfig

    if columns == 91:
        names, labels = head_labels(coco_categories())
    else:  # a torchvision SSD trained on other classes: no names of its own
        names, labels = [f"class{i}" for i in range(1, columns)], None
    common = {"num_classes": len(names), "head_labels": labels, "aspect_ratios": [2.0]}
    if kind == "ssd300":
        config = SSDConfig(backbone="vgg16", image_size=300, scales=list(SSD300_SCALES),
                           map_aspect_ratios=SSD300_RATIOS, steps=list(SSD300_STEPS),
                           extras="ssd300", **common)  # fmt: skip
    else:
        config = SSDConfig(backbone="mobilenet_v3_large", image_size=320,
                           scales=list(SSDLITE_SCALES), map_aspect_ratios=[[2.0, 3.0]] * 6,
                           extras="ssdlite", head="separable", reduced_tail=reduced_tail,
                           **common)  # fmt: skip
    return config, names


def rename(state: dict[str, Any], rules: list[Rule], what: str) -> dict[str, Any]:
    """`state` with each key renamed by the first rule whose pattern it matches."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            new, count = re.subn(pattern, replacement, key, count=1)
            if count:
                renamed[new] = value
                break
        else:
            raise LbdlError(f"{what}: unexpected parameter {key} for this layout")
    return renamed


def kind_of(state: Any) -> str | None:
    """The kind, "ssd300" or "ssdlite", of a torchvision state dict of that model (by its keys and
    shapes), else None."""
    if not isinstance(state, dict):
        return None
    head = state.get("head.classification_head.module_list.0.weight")
    lite = state.get("head.classification_head.module_list.0.1.weight")
    scale = state.get("backbone.scale_weight")
    if head is not None and scale is not None and tuple(scale.shape) == (512,):
        return "ssd300" if "backbone.extra.0.7.1.weight" in state else None
    if lite is not None and f"backbone.features.0.{SSDLITE_C4}.0.weight" in state:
        return "ssdlite" if "backbone.features.1.0.1.0.weight" in state else None
    return None


def convert_state(state: dict[str, Any], what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An lbdl checkpoint's weights and metadata from a torchvision SSD300 or SSDLite320
    state dict, checked against the SSD they build."""
    from lbdl_apps.detect.model import build_model

    kind = kind_of(state)
    if kind is None:
        raise LbdlError(f"{what}: not a torchvision ssd300_vgg16 or ssdlite320 state dict")
    anchors = 4  # the boxes per location of the first map (aspect ratio 2 only, or 2 and 3)
    if kind == "ssd300":
        columns = state["head.classification_head.module_list.0.weight"].shape[0] // anchors
        config, names = torchvision_config(kind, columns)
        weights = rename(state, SSD300_KEYS, what)
    else:
        columns = state["head.classification_head.module_list.0.1.weight"].shape[0] // 6
        # features.1: the rest of block 13, blocks 14 and 15, then the last 1x1 convolution
        last = state[f"backbone.features.1.{16 - SSDLITE_C4}.0.weight"].shape[0]
        config, names = torchvision_config(kind, columns, reduced_tail=last != 960)
        weights = rename(state, SSDLITE_KEYS, what)
    try:
        build_model(config).load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise LbdlError(f"{what}: weights do not fit torchvision's {kind} ({first})") from None
    meta = {"task": "detect", "config": asdict(config), "labels": names, "data": None,
            "format": "coco", "scenes": None, "preprocessing": dict(PREPROCESSING[kind]),
            "postprocessing": dict(POSTPROCESSING[kind]), "publisher": PUBLISHER[kind]}  # fmt: skip
    return weights, meta


def convert_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return convert_state(read_state_dict(path), str(path))


def convert_ssd300(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """coco:ssd300 from torchvision's ssd300_vgg16_coco-b556d3b4.pth."""
    return convert_file(files[0])


def convert_ssdlite320(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """coco:ssdlite320 from torchvision's ssdlite320_mobilenet_v3_large_coco-a79551df.pth."""
    return convert_file(files[0])


def _matches(kind: str) -> Callable[[Path], bool]:
    def matches(path: Path) -> bool:
        return file_kind(path) is not None and kind_of(read_state_dict(path)) == kind

    return matches


register(
    Pretrained(
        "coco:ssd300",
        "detect",
        (Source(TORCHVISION_MODELS + SSD300_FILE, "b556d3b4", 0, SSD300_FILE),),
        LICENSE,
        "SSD300, VGG-16 (torchvision ssd300_vgg16, COCO_V1): 80 COCO classes, 300x300",
        "lbdl_apps.detect.zoo:convert_ssd300",
        (TORCH_HUB,),
    )
)
register(
    Pretrained(
        "coco:ssdlite320",
        "detect",
        (Source(TORCHVISION_MODELS + SSDLITE_FILE, "a79551df", 0, SSDLITE_FILE),),
        LICENSE,
        "SSDLite320, MobileNetV3-Large (torchvision, COCO_V1): 80 COCO classes, 320x320",
        "lbdl_apps.detect.zoo:convert_ssdlite320",
        (TORCH_HUB,),
    )
)
for _kind, _name in (("ssd300", "torchvision ssd300_vgg16"), ("ssdlite", "torchvision ssdlite")):
    register_format(PublisherFormat(_name, "detect", _matches(_kind), convert_file))
