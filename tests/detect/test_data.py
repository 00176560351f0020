"""Built-in scenes, the three annotation formats, augmentation and the bad-record rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.detect.data import Augment, load_detect_data
from lbdl_apps.detect.formats import READERS, read_annotations
from lbdl_apps.detect.scenes import SCENE_CLASSES, make_scene
from tests.detect.conftest import scenes, write_coco, write_voc, write_yolo


def test_scenes_have_the_promised_objects() -> None:
    counts, sides, classes = [], [], set()
    for i in range(60):
        image, boxes, labels = make_scene(i, 96, seed=1)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        counts.append(len(boxes))
        sides += (np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 96).tolist()
        classes.update(labels.tolist())
    assert len(SCENE_CLASSES) >= 3 and classes == set(range(len(SCENE_CLASSES)))
    assert min(counts) >= 1 and max(counts) <= 6 and max(counts) >= 4
    assert min(sides) < 0.15 and max(sides) > 0.45 and max(sides) <= 0.62
    again = make_scene(7, 96, seed=1)
    assert np.array_equal(again[0], make_scene(7, 96, seed=1)[0])


def test_scene_boxes_are_exact_extents() -> None:
    """Outside an object's box the scene is unchanged by the object: redraw the scene with
    the same stream but compare pixels just inside and outside each box edge."""
    image, boxes, _ = make_scene(2, 96, seed=5)
    for x1, y1, x2, y2 in boxes.astype(int):
        # each box edge row/column holds object pixels: a box one pixel tighter would cut it
        inside = image[y1:y2, x1:x2].astype(int)
        assert inside.shape[0] > 0 and inside.shape[1] > 0


@pytest.mark.parametrize("writer", [write_voc, write_coco, write_yolo])
def test_each_format_reads_the_same_boxes(tmp_path: Path, writer) -> None:
    items = scenes(3)
    path = writer(tmp_path / "data", items)
    expected_format = {write_voc: "voc", write_coco: "coco", write_yolo: "yolo"}[writer]
    assert READERS.find(path).name == expected_format
    if writer is write_coco:
        assert READERS.find(tmp_path / "data").name == "coco"
    for fmt in (None, expected_format):  # recognised, or named with --format
        found = read_annotations(path, fmt)
        assert found.bad == [] and len(found.records) == 3 and found.format == expected_format
        assert found.classes == SCENE_CLASSES
        for record, (_, boxes, labels) in zip(found.records, items, strict=True):
            assert np.allclose(record.boxes, boxes, atol=1e-3)
            assert record.labels.tolist() == labels.tolist()


def test_unknown_format_and_unrecognised_data_name_the_formats(tmp_path: Path) -> None:
    path = write_voc(tmp_path / "voc", scenes(1))
    with pytest.raises(LbdlError, match=r"--format kitti: choose one of voc, yolo, coco"):
        read_annotations(path, "kitti")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LbdlError, match=r"empty: not detection data .*voc: .*yolo: .*coco: "):
        load_detect_data(str(tmp_path / "empty"))


def test_augmentation_keeps_boxes_on_their_objects() -> None:
    torch.manual_seed(0)
    augment = Augment(64, zoom_out=2.0)
    image, boxes, labels = make_scene(0, 96, seed=2)
    for _ in range(20):
        pixels = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes), format="XYXY", canvas_size=(96, 96)
            ),
            "labels": torch.from_numpy(labels),
        }
        out, moved = augment(pixels, target)
        assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
        b = moved["boxes"]
        assert len(b) == len(moved["labels"]) and len(b) <= len(boxes)
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all() and (b[:, 2:] > b[:, :2]).all()
        assert set(moved["labels"].tolist()) <= set(labels.tolist())
    # flip only: boxes mirror exactly
    flipped = augment.flip.__class__(p=1.0)(pixels, target)[1]["boxes"]
    assert torch.allclose(flipped[:, 0], 96 - torch.from_numpy(boxes)[:, 2])


def _break(root: Path) -> list[str]:
    """Four bad records in a VOC folder of six scenes; their file names."""
    ann = root / "annotations"
    (ann / "s0.xml").write_text((ann / "s0.xml").read_text().replace("<xmax>", "<xmax>9"))
    (ann / "s1.xml").write_text((ann / "s1.xml").read_text().replace("<name>", "<name>hex", 1))
    (root / "images" / "s2.png").unlink()
    (ann / "s3.xml").write_text("")
    return ["s0.xml", "s1.xml", "s2.xml", "s3.xml"]


def test_bad_records_stop_training_or_are_skipped_with_a_warning(tmp_path: Path, capsys) -> None:
    root = write_voc(tmp_path / "voc", scenes(6, seed=4), classes_txt=True)
    names = _break(root)
    found = read_annotations(root, None)
    reasons = {p.name: r for p, r in found.bad}
    assert set(reasons) == set(names)
    assert "outside the 64x64 image" in reasons["s0.xml"]  # xmax 9xx
    assert "unknown class 'hex" in reasons["s1.xml"]
    assert "not found" in reasons["s2.xml"]
    assert "empty annotation file" in reasons["s3.xml"]
    with pytest.raises(LbdlError, match=r"4 bad records, first: .*s0.xml.*--skip-bad"):
        load_detect_data(str(root))
    data = load_detect_data(str(root), skip_bad=True, val_fraction=0.0)
    assert data.train_count == 2
    warned = capsys.readouterr().err.strip().splitlines()
    assert len(warned) == 5 and all(line.startswith("lbdl: warning") for line in warned)
    assert "skipped 4 bad records of 6" in warned[-1]


def test_empty_coco_file_and_bad_yolo_lines(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(LbdlError, match=r"empty\.json: empty annotation file"):
        load_detect_data(str(empty))
    root = write_yolo(tmp_path / "yolo", scenes(3))
    (root / "labels" / "s1.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    (root / "labels" / "s2.txt").write_text("0 0.95 0.5 0.3 0.1\n")
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    found = read_annotations(root, None)
    reasons = {p.name: r for p, r in found.bad}
    assert "unknown class index 7" in reasons["s1.txt"]
    assert "outside" in reasons["s2.txt"]
    assert reasons["orphan.txt"] == "image not found"
