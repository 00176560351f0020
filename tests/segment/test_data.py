"""Segmentation data: palette/index/binary mask reading, classes.txt, --mask-mode, the
bad-record rule, and joint augmentation that keeps image and mask aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.segment.builtin import make_scenes
from lbdl_apps.segment.data import READERS, load_segment_data
from lbdl_apps.segment.masks import IGNORE, VOC_CLASSES, read_mask_array, voc_palette
from lbdl_apps.segment.transforms import apply_pair, build_transform, elastic_deformation


def write_pairs(
    root: Path,
    masks: list[np.ndarray],
    image_dir: str = "images",
    mask_dir: str = "masks",
    palette: bool = False,
) -> list[Path]:
    """Gray images (value = 40 x mask + 20) and their masks, as image_dir/ + mask_dir/."""
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for i, mask in enumerate(masks):
        image = np.clip(mask.astype(np.int32) % 6 * 40 + 20, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / image_dir / f"{i:03d}.png")
        path = root / mask_dir / f"{i:03d}.png"
        out = Image.fromarray(mask, "P" if palette else "L")
        if palette:
            out.putpalette([v for c in voc_palette() for v in c])
        out.save(path)
        paths.append(path)
    return paths


def index_mask(seed: int, size: int = 16, classes: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2] = rng.integers(0, classes)
    mask[size // 2 :, : size // 2] = classes - 1
    return mask


def test_palette_png_reads_class_indices_not_colors(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 15], [20, 255, 3]], np.uint8)
    image = Image.fromarray(mask, "P")
    image.putpalette([v for c in voc_palette() for v in c])
    image.save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    np.testing.assert_array_equal(read_mask_array(tmp_path / "m.png"), mask)


def test_voc_layout_palette_masks_and_ignored_border(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    masks = []
    for i in range(4):
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 15 if i % 2 else 12  # person / horse
        mask[3, 3:13] = IGNORE  # the object border VOC leaves unlabelled
        masks.append(mask)
    write_pairs(root, masks, "JPEGImages", "SegmentationClass", palette=True)
    for path in (root / "JPEGImages").glob("*.png"):  # VOC images are JPEGs
        Image.open(path).convert("RGB").save(path.with_suffix(".jpg"))
        path.unlink()
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("000\n001\n002\n")
    (sets / "val.txt").write_text("003\n")
    lines: list[str] = []
    data = load_segment_data(str(tmp_path), announce=lines.append)
    assert data.mask_mode == "voc" and data.labels == VOC_CLASSES
    assert "voc (detected)" in lines[0]
    assert len(data.train) == 3 and len(data.val) == 1
    image, mask = data.val[0]
    assert image.shape == (3, 16, 16)
    assert mask.dtype == torch.int64
    assert set(mask.unique().tolist()) == {0, 15, IGNORE}
    assert data.preprocessing()["palette"][15] == list(voc_palette()[15])


def test_index_masks_with_classes_txt(tmp_path: Path) -> None:
    write_pairs(tmp_path, [index_mask(i) for i in range(6)])
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")
    data = load_segment_data(str(tmp_path), val_fraction=0.34, seed=1)
    assert data.labels == ["sky", "road", "car"]
    assert data.mask_mode == "index" and data.in_channels == 1
    assert len(data.train) == 4 and len(data.val) == 2
    assert sum(data.class_counts) == 6 * 16 * 16
    _, mask = data.val[0]
    assert mask.max() <= 2


def test_index_masks_without_classes_txt_count_classes_from_values(tmp_path: Path) -> None:
    write_pairs(tmp_path, [index_mask(i, classes=5) for i in range(4)], "image", "label")
    data = load_segment_data(str(tmp_path))
    assert data.labels == [f"class{i}" for i in range(5)]


def test_binary_masks_read_as_classes_0_and_1(tmp_path: Path) -> None:
    masks = [np.where(index_mask(i, classes=2) > 0, 255, 0).astype(np.uint8) for i in range(4)]
    write_pairs(tmp_path, masks, "image", "label")
    lines: list[str] = []
    data = load_segment_data(str(tmp_path), val_fraction=0.25, announce=lines.append)
    assert data.mask_mode == "binary" and "binary (detected)" in lines[0]
    assert len(data.labels) == 2
    _, mask = data.val[0]
    assert set(mask.unique().tolist()) <= {0, 1}
    assert (mask == 1).sum() > 0  # 255 became class 1, nothing ignored


def test_mask_mode_override(tmp_path: Path) -> None:
    masks = [np.where(index_mask(i, classes=2) > 0, 255, 0).astype(np.uint8) for i in range(4)]
    write_pairs(tmp_path, masks)
    lines: list[str] = []
    data = load_segment_data(str(tmp_path), mask_mode="index", announce=lines.append)
    assert data.mask_mode == "index" and "index (--mask-mode)" in lines[0]
    _, mask = data.train[0]
    assert set(mask.unique().tolist()) <= {0, IGNORE}  # 255 is now the ignore value
    with pytest.raises(LbdlError, match="--mask-mode rgb"):
        load_segment_data(str(tmp_path), mask_mode="rgb")


def test_train_and_val_folders(tmp_path: Path) -> None:
    write_pairs(tmp_path / "train", [index_mask(i) for i in range(3)])
    write_pairs(tmp_path / "val", [index_mask(i + 5) for i in range(2)])
    data = load_segment_data(str(tmp_path))
    assert len(data.train) == 3 and len(data.val) == 2 and data.test is None


def test_train_val_and_test_folders(tmp_path: Path) -> None:
    write_pairs(tmp_path / "train", [index_mask(i) for i in range(3)])
    write_pairs(tmp_path / "valid", [index_mask(i + 5) for i in range(2)])
    write_pairs(tmp_path / "test", [index_mask(i + 9) for i in range(4)])
    data = load_segment_data(str(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (3, 2, 4)
    assert "train/ + valid/ + test/" in data.source


def test_a_test_folder_alone_is_the_validation_set(tmp_path: Path) -> None:
    write_pairs(tmp_path / "train", [index_mask(i) for i in range(3)])
    write_pairs(tmp_path / "test", [index_mask(i + 9) for i in range(4)])
    data = load_segment_data(str(tmp_path))
    assert len(data.val) == 4 and data.test is None


def test_no_validation_split_with_val_fraction_0(tmp_path: Path) -> None:
    """What evaluate --data reads: a folder without splits is all training pairs."""
    write_pairs(tmp_path, [index_mask(i) for i in range(3)])
    data = load_segment_data(str(tmp_path), val_fraction=0.0)
    assert len(data.train) == 3 and len(data.val) == 0


def test_the_readers_are_tried_in_order() -> None:
    assert READERS.names == ["voc", "splits", "pairs"]


def test_empty_classes_txt(tmp_path: Path) -> None:
    write_pairs(tmp_path, [index_mask(i) for i in range(3)])
    (tmp_path / "classes.txt").write_text("\n")
    with pytest.raises(LbdlError, match="lists no class names"):
        load_segment_data(str(tmp_path))


def test_mask_size_mismatch_is_a_bad_record(tmp_path: Path) -> None:
    paths = write_pairs(tmp_path, [index_mask(i) for i in range(4)])
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(paths[2])
    with pytest.raises(LbdlError, match=r"1 bad record, first: .*002.png: mask is 16x8"):
        load_segment_data(str(tmp_path))
    data = load_segment_data(str(tmp_path), skip_bad=True, val_fraction=0.34)
    assert len(data.train) + len(data.val) == 3


def test_mask_values_outside_the_classes_are_bad_records(tmp_path: Path) -> None:
    paths = write_pairs(tmp_path, [index_mask(i) for i in range(4)])
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    bad = index_mask(1)
    bad[0, 0] = 7
    Image.fromarray(bad).save(paths[1])
    with pytest.raises(LbdlError, match=r"first: .*001.png: mask values \[7\]"):
        load_segment_data(str(tmp_path))
    # binary mode: anything but 0 and 255
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(LbdlError, match="4 bad records"):
        load_segment_data(str(tmp_path), mask_mode="binary")


def test_corrupt_image_is_a_bad_record(tmp_path: Path) -> None:
    write_pairs(tmp_path, [index_mask(i) for i in range(4)])
    (tmp_path / "images" / "001.png").write_bytes(b"not a png")
    with pytest.raises(LbdlError, match=r"1 bad record, first: .*images/001.png"):
        load_segment_data(str(tmp_path))


def test_image_without_mask_and_empty_folder(tmp_path: Path) -> None:
    write_pairs(tmp_path, [index_mask(i) for i in range(3)])
    (tmp_path / "masks" / "002.png").unlink()
    with pytest.raises(LbdlError, match=r"002\.png: no mask"):
        load_segment_data(str(tmp_path))
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(LbdlError, match="holds no images"):
        load_segment_data(str(empty))
    with pytest.raises(LbdlError, match="expected images/"):
        load_segment_data(str(tmp_path / "images"))


@pytest.mark.parametrize("elastic", [0.0, 3.0])
def test_joint_augmentation_keeps_image_and_mask_aligned(elastic: float) -> None:
    """The image's pixel value encodes the class (value = 50 x class + 10): after random
    scale, crop, elastic deformation, flip, the mask must still equal f(image) wherever
    interpolation leaves a pure value (padding: image 0 and mask ignored)."""
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (12, 12)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    image = torch.from_numpy(mask * 50 + 10)[None]
    transform = build_transform(True, 40, [0.0], [1 / 255], scale=(0.6, 1.4), elastic=elastic)
    transform.transforms = [  # no photometric change: values must stay readable
        t for t in transform.transforms if type(t).__name__ != "ColorJitter"
    ]
    checked = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = apply_pair(transform, image, mask)
        assert out_image.shape == (1, 40, 40) and out_mask.shape == (40, 40)
        values = out_image[0].round().long()
        pure = (values - 10) % 50 == 0
        pure &= values >= 10
        padded = out_mask == IGNORE
        if not elastic:  # a deformed border blends the image with the padding
            assert (values[padded] == 0).all()
        same = (values[pure & ~padded] - 10) // 50 == out_mask[pure & ~padded]
        assert same.float().mean() > 0.97, seed  # bilinear image edges may round onto a class
        checked += int(pure.sum())
    assert checked > 20 * 40 * 40 * 0.5


def test_elastic_deformation_moves_pixels_by_about_the_asked_amount() -> None:
    """An image whose value is its column: after the deformation, value - column is the
    horizontal displacement, whose standard deviation must be about the pixels asked."""
    columns = torch.arange(128.0).expand(1, 128, 128).contiguous()
    for pixels in (1.0, 4.0):
        torch.manual_seed(0)
        deform = elastic_deformation(pixels, {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE})
        moved = [deform(tv_tensors.Image(columns))[0, 24:-24, 24:-24] for _ in range(8)]
        shift = torch.stack(moved) - columns[0, 24:-24, 24:-24]
        assert 0.7 * pixels < shift.std() < 1.4 * pixels


def test_transform_keeps_mask_a_mask() -> None:
    image = tv_tensors.Image(torch.zeros(3, 8, 8, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.full((8, 8), 3, dtype=torch.uint8))
    out_image, out_mask = build_transform(False, 8, [0.5] * 3, [0.25] * 3)(image, mask)
    assert out_image.dtype == torch.float32 and torch.allclose(out_image, torch.tensor(-2.0))
    assert out_mask.dtype == torch.uint8 and (out_mask == 3).all()


def test_builtin_scenes_are_deterministic_with_several_classes() -> None:
    a_images, a_masks = make_scenes(6, 32, seed=3)
    b_images, b_masks = make_scenes(6, 32, seed=3)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_masks, b_masks)
    assert set(np.unique(make_scenes(30, 32, seed=0)[1]).tolist()) == {0, 1, 2, 3}
    assert not np.array_equal(make_scenes(6, 32, seed=4)[0], a_images)
    data = load_segment_data(None, 32, scenes=20, seed=0)
    image, mask = data.train[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
