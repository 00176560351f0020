"""Readers of the annotation formats detectors are trained on, in one registry (READERS):
Pascal VOC XML folders, YOLO txt label folders with classes.txt and COCO JSON (images +
instances file). Each gives records (image file, pixel boxes x1 y1 x2 y2, class indices) and
the bad records it met (missing image, box outside the image, unknown class, empty or
unreadable annotation)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lbdl_apps.core import data as core_data
from lbdl_apps.core.data import IMAGE_EXTENSIONS, find_images
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.readers import Readers

SLACK = 1.0  # pixels a box may pass the image border by (VOC boxes are 1-based)
Bad = tuple[Path, str]


@dataclass
class Record:
    """One image and its objects: boxes (M, 4) float32 pixels, labels (M,) int64; and the
    crowd regions of COCO (`iscrowd`: K boxes and labels), never trained on, which the
    evaluation ignores as COCO's does (a detection there is neither right nor wrong)."""

    image: Path
    boxes: np.ndarray
    labels: np.ndarray
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    crowd_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class Annotations:
    records: list[Record]
    bad: list[Bad]
    classes: list[str]
    format: str


Reader = Callable[[Path, list[str] | None], Annotations]  # (path, --classes) -> annotations
READERS: Readers[Reader] = Readers("detection data")


def read_classes_txt(folder: Path) -> list[str] | None:
    """The class names of folder/classes.txt (None without the file); a file that lists
    none is an error."""
    names = core_data.read_classes_txt(folder)
    if names == []:
        raise LbdlError(f"{folder / 'classes.txt'}: lists no class names")
    return names


def check_box(box: list[float], width: int, height: int) -> str | None:
    """Why a pixel box cannot be used on a width x height image, or None."""
    x1, y1, x2, y2 = box
    shown = f"({x1:g}, {y1:g}, {x2:g}, {y2:g})"
    if x1 < -SLACK or y1 < -SLACK or x2 > width + SLACK or y2 > height + SLACK:
        return f"box {shown} outside the {width}x{height} image"
    if x2 <= x1 or y2 <= y1:
        return f"box {shown} has no area"
    return None


def _clip(boxes: list[list[float]], width: int, height: int) -> np.ndarray:
    array = np.asarray(boxes, np.float32).reshape(-1, 4)
    array[:, 0::2] = array[:, 0::2].clip(0, width)
    array[:, 1::2] = array[:, 1::2].clip(0, height)
    return array


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; LbdlError naming the file if unreadable."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:
        raise LbdlError(f"{path}: cannot read image ({type(error).__name__})") from None


# ----------------------------------------------------------------------------------------------
# Where each format keeps its files


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def voc_annotation_dir(root: Path) -> Path | None:
    for folder in (root / "Annotations", root / "annotations", root):
        if folder.is_dir() and any(folder.glob("*.xml")):
            return folder
    return None


def coco_file(root: Path) -> Path | None:
    if root.is_file():
        return root
    for folder in (root / "annotations", root):
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if files:
            return next((f for f in files if f.name.startswith("instances")), files[0])
    return None


def _is_voc(path: Path) -> bool:
    return path.is_dir() and voc_annotation_dir(path) is not None


def _is_yolo(path: Path) -> bool:
    return path.is_dir() and ((path / "labels").is_dir() or (path / "classes.txt").is_file())


def _is_coco(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".json"
    return path.is_dir() and coco_file(path) is not None


def read_annotations(path: Path, fmt: str | None, classes: list[str] | None = None) -> Annotations:
    """The records of a dataset in the format named `fmt` (None: recognised, in the order
    voc, yolo, coco)."""
    if not path.exists():
        raise LbdlError(f"{path}: no such file or folder")
    return READERS.find(path, fmt).read(path, classes)


# ----------------------------------------------------------------------------------------------
# Pascal VOC


def _voc_image(root: Path, xml_path: Path, filename: str | None) -> Path | None:
    folders = [
        d for d in (root / "JPEGImages", root / "images", root, xml_path.parent) if d.is_dir()
    ]
    for folder in folders:
        if filename and (folder / filename).is_file():
            return folder / filename
        for ext in IMAGE_EXTENSIONS:
            if (folder / f"{xml_path.stem}{ext}").is_file():
                return folder / f"{xml_path.stem}{ext}"
    return None


def _parse_voc(
    xml_path: Path,
) -> tuple[str | None, tuple[int, int] | None, list[tuple[str, list[float]]]]:
    if xml_path.stat().st_size == 0:
        raise ValueError("empty annotation file")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"not valid XML ({error})") from None
    size = root.find("size")
    dims = None
    if size is not None and size.findtext("width") and size.findtext("height"):
        dims = (int(float(size.findtext("width"))), int(float(size.findtext("height"))))
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError("an object without <bndbox>")
        try:
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ValueError("a <bndbox> without numeric xmin/ymin/xmax/ymax") from None
        objects.append(((obj.findtext("name") or "").strip(), coords))
    return root.findtext("filename"), dims, objects


@READERS.register("voc", "Pascal VOC *.xml in Annotations/, annotations/ or here", _is_voc)
def read_voc(root: Path, classes: list[str] | None) -> Annotations:
    folder = voc_annotation_dir(root)
    if folder is None:
        raise LbdlError(f"{root}: no VOC *.xml annotations (in Annotations/, annotations/ or here)")
    if classes is None:
        classes = read_classes_txt(root)
    parsed, bad = [], []
    for xml_path in sorted(folder.glob("*.xml")):
        try:
            filename, dims, objects = _parse_voc(xml_path)
        except ValueError as error:
            bad.append((xml_path, str(error)))
            continue
        image = _voc_image(root, xml_path, filename)
        if image is None:
            bad.append((xml_path, f"image {filename or xml_path.stem + '.*'} not found"))
            continue
        parsed.append((xml_path, image, dims, objects))
    names = classes or sorted({name for *_, objects in parsed for name, _ in objects})
    index = {name: i for i, name in enumerate(names)}
    records = []
    for xml_path, image, dims, objects in parsed:
        try:
            width, height = dims or image_size(image)
        except LbdlError as error:
            bad.append((image, str(error).removeprefix(f"{image}: ")))
            continue
        problem = next(
            (f"unknown class '{name}'" for name, _ in objects if name not in index), None
        ) or next((p for _, box in objects if (p := check_box(box, width, height))), None)
        if problem:
            bad.append((xml_path, problem))
            continue
        boxes = _clip([box for _, box in objects], width, height)
        labels = np.asarray([index[name] for name, _ in objects], np.int64)
        records.append(Record(image, boxes, labels))
    return Annotations(records, sorted(bad, key=lambda b: str(b[0])), names, "voc")


# ----------------------------------------------------------------------------------------------
# YOLO


@READERS.register("yolo", "YOLO images/ + labels/*.txt and classes.txt", _is_yolo)
def read_yolo(root: Path, classes: list[str] | None) -> Annotations:
    image_dir = _first_dir(root, ("images",)) or root
    label_dir = _first_dir(root, ("labels",)) or root
    if classes is None:
        classes = read_classes_txt(root) or read_classes_txt(label_dir)
        if classes is None:
            raise LbdlError(f"{root}: a YOLO dataset needs classes.txt (one class name a line)")
    images = {p.relative_to(image_dir).with_suffix(""): p for p in find_images(image_dir)}
    label_files = {
        p.relative_to(label_dir).with_suffix(""): p
        for p in sorted(label_dir.rglob("*.txt"))
        if p.name != "classes.txt"
    }
    bad: list[Bad] = [
        (label_files[key], "image not found") for key in sorted(label_files.keys() - images.keys())
    ]
    records = []
    for key, image in sorted(images.items()):
        label_file = label_files.get(key)
        rows = label_file.read_text().split("\n") if label_file else []  # no file: no objects
        try:
            width, height = image_size(image)
        except LbdlError as error:
            bad.append((image, str(error).removeprefix(f"{image}: ")))
            continue
        boxes, labels, problem = [], [], None
        for number, line in enumerate(rows, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                cls, cx, cy, w, h = int(fields[0]), *map(float, fields[1:5])
                if len(fields) != 5:
                    raise ValueError
            except ValueError:
                problem = f"line {number}: expected 'class cx cy w h'"
                break
            if not 0 <= cls < len(classes):
                problem = f"line {number}: unknown class index {cls} ({len(classes)} classes)"
                break
            box = [
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            ]
            if problem := check_box(box, width, height):
                problem = f"line {number}: {problem}"
                break
            boxes.append(box)
            labels.append(cls)
        if problem:
            bad.append((label_file or image, problem))
            continue
        records.append(Record(image, _clip(boxes, width, height), np.asarray(labels, np.int64)))
    return Annotations(records, sorted(bad, key=lambda b: str(b[0])), list(classes), "yolo")


# ----------------------------------------------------------------------------------------------
# COCO


def _coco_image_root(json_path: Path) -> Path:
    for folder in (json_path.parent / "images", json_path.parent.parent / "images"):
        if folder.is_dir():
            return folder
    return json_path.parent


@READERS.register("coco", "a COCO instances .json (or annotations/*.json)", _is_coco)
def read_coco(path: Path, classes: list[str] | None) -> Annotations:
    json_path = coco_file(path)
    if json_path is None:
        raise LbdlError(f"{path}: no COCO *.json file")
    if json_path.stat().st_size == 0:
        raise LbdlError(f"{json_path}: empty annotation file")
    try:
        data = json.loads(json_path.read_text())
        images, annotations = data["images"], data.get("annotations", [])
        categories = sorted(data["categories"], key=lambda c: c["id"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LbdlError(f"{json_path}: not valid JSON ({error})") from None
    except (KeyError, TypeError) as error:
        raise LbdlError(f"{json_path}: not a COCO instances file (no {error})") from None
    names = [c["name"] for c in categories]
    if classes is not None and classes != names:
        raise LbdlError(f"{json_path}: its categories {names[:5]} differ from {classes[:5]}")
    index = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict[int, list[dict]] = {}
    for ann in annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    root = _coco_image_root(json_path)
    records, bad = [], []
    for info in images:
        image = root / info["file_name"]
        if not image.is_file():
            bad.append((image, f"image of {json_path.name} id {info['id']} not found"))
            continue
        width, height = info.get("width"), info.get("height")
        if not width or not height:
            width, height = image_size(image)
        anns = [a for a in by_image.get(info["id"], []) if not a.get("iscrowd", 0)]
        crowd = [a for a in by_image.get(info["id"], [])
                 if a.get("iscrowd", 0) and a["category_id"] in index]  # fmt: skip
        problem = next(
            (
                f"unknown category id {a['category_id']}"
                for a in anns
                if a["category_id"] not in index
            ),
            None,
        )
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        problem = problem or next(
            (p for box in boxes if (p := check_box(box, width, height))), None
        )
        if problem:
            bad.append((image, problem))
            continue
        labels = np.asarray([index[a["category_id"]] for a in anns], np.int64)
        crowd_boxes = _clip([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in crowd)],
                            width, height)  # fmt: skip
        crowd_labels = np.asarray([index[a["category_id"]] for a in crowd], np.int64)
        records.append(
            Record(image, _clip(boxes, width, height), labels, crowd_boxes, crowd_labels)
        )
    return Annotations(records, sorted(bad, key=lambda b: str(b[0])), names, "coco")
