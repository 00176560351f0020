"""Shared helpers of the detect tests: one scene written in each annotation format, and a
detector trained briefly on the built-in scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lbdl_apps.core.options import Common
from lbdl_apps.detect.scenes import SCENE_CLASSES, make_scene


@pytest.fixture(scope="session")
def scenes_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SSD (small ResNet of width 8, 64 px) trained 4 short epochs on 256 built-in scenes
    (~25 s of CPU; mAP@.5 about 0.1 on the held-out scenes, ten times an untrained one's)."""
    from lbdl_apps.detect.cli import TrainArgs
    from lbdl_apps.detect.task import train

    folder = tmp_path_factory.mktemp("scenes_detector")
    common = Common(device="cpu", threads=1, quiet=True, seed=0)
    common.apply()
    args = TrainArgs(width=8, scenes=256, epochs=4, batch_size=16, lr=4e-3, warmup=0.2,
                     run_dir=folder / "run")  # fmt: skip
    train(args, common)
    return folder / "run" / "model.safetensors"


def scenes(
    n: int, size: int = 64, seed: int = 3
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [make_scene(i, size, seed) for i in range(n)]


def write_voc(root: Path, items, classes_txt: bool = False) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for i, (image, boxes, labels) in enumerate(items):
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        objects = "".join(
            f"<object><name>{SCENE_CLASSES[c]}</name><bndbox><xmin>{b[0]:g}</xmin>"
            f"<ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>"
            for b, c in zip(boxes, labels, strict=True)
        )
        h, w = image.shape[:2]
        (root / "annotations" / f"s{i}.xml").write_text(
            f"<annotation><filename>s{i}.png</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objects}</annotation>"
        )
    if classes_txt:
        (root / "classes.txt").write_text("\n".join(SCENE_CLASSES) + "\n")
    return root


def write_coco(root: Path, items) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (image, boxes, labels) in enumerate(items):
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        h, w = image.shape[:2]
        images.append({"id": i + 1, "file_name": f"s{i}.png", "width": w, "height": h})
        for b, c in zip(boxes.tolist(), labels.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": c + 10,  # ids need not start at 0
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 10, "name": n} for i, n in enumerate(SCENE_CLASSES)]
    path = root / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def write_yolo(root: Path, items) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for i, (image, boxes, labels) in enumerate(items):
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        h, w = image.shape[:2]
        lines = [
            f"{c} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
            f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
            for b, c in zip(boxes.tolist(), labels.tolist(), strict=True)
        ]
        (root / "labels" / f"s{i}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(SCENE_CLASSES) + "\n")
    return root
