"""core/data.py on real files written to disk: images in the forms users have them, input
expansion, idx files, splits and the bad-record rule."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lbdl_apps.core.data import (
    ImageRecords,
    TensorImageDataset,
    check_records,
    expand_inputs,
    find_images,
    load_image,
    read_idx,
    split_indices,
)
from lbdl_apps.core.errors import LbdlError


def _rgb(width: int = 6, height: int = 4) -> np.ndarray:
    """A picture whose orientation is visible: a red left column, green elsewhere."""
    array = np.zeros((height, width, 3), np.uint8)
    array[..., 1] = 200
    array[:, 0] = (255, 0, 0)
    return array


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise to display
    array = _rgb(16, 8)
    array[:, :4] = (255, 0, 0)  # a band wide enough to survive JPEG coding
    Image.fromarray(array).save(path, quality=95, exif=exif)
    image = load_image(path)
    assert image.size == (8, 16)  # width and height swapped
    array = np.asarray(image).astype(int)
    # the red left band of the stored image becomes the top rows once rotated clockwise
    assert array[0, :, 0].mean() > 200 and array[0, :, 1].mean() < 80
    assert array[-1, :, 0].mean() < 80 and array[-1, :, 1].mean() > 150


def test_16_bit_png_is_scaled_to_8_bit(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100], [65535, 257 * 200]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    gray = np.asarray(load_image(path, "L"))
    assert gray.tolist() == [[0, 100], [255, 200]]
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (2, 2, 3) and (rgb[..., 0] == gray).all()


def test_16_bit_tiff(tmp_path: Path) -> None:
    path = tmp_path / "scan.tif"
    Image.fromarray(np.full((3, 5), 257 * 77, np.uint16)).save(path)
    image = load_image(path, "L")
    assert image.size == (5, 3) and (np.asarray(image) == 77).all()


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    array = np.zeros((2, 2, 4), np.uint8)
    array[0, 0] = (0, 0, 255, 255)  # opaque blue
    array[0, 1] = (0, 0, 0, 0)  # fully transparent
    array[1, :] = (0, 0, 0, 128)  # half-transparent black
    path = tmp_path / "alpha.png"
    Image.fromarray(array, "RGBA").save(path)
    rgb = np.asarray(load_image(path)).astype(int)
    assert rgb[0, 0].tolist() == [0, 0, 255]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert abs(rgb[1, 0, 0] - 127) <= 2


def test_palette_and_gray_la(tmp_path: Path) -> None:
    palette = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.save(tmp_path / "palette.gif")
    rgb = np.asarray(load_image(tmp_path / "palette.gif"))
    assert rgb.shape == (4, 6, 3) and rgb[0, 0, 0] > 200 and rgb[0, 3, 1] > 150
    la = Image.fromarray(np.dstack([np.full((2, 2), 10, np.uint8), np.zeros((2, 2), np.uint8)]))
    la.save(tmp_path / "la.png")
    assert (np.asarray(load_image(tmp_path / "la.png", "L")) == 255).all()


def test_gray_to_rgb_and_rgb_to_gray(tmp_path: Path) -> None:
    Image.fromarray(np.full((3, 4), 90, np.uint8)).save(tmp_path / "gray.png")
    rgb = load_image(tmp_path / "gray.png", "RGB")
    assert rgb.mode == "RGB" and (np.asarray(rgb) == 90).all()
    Image.fromarray(_rgb()).save(tmp_path / "color.png")
    gray = load_image(tmp_path / "color.png", "L")
    assert gray.mode == "L" and gray.size == (6, 4)
    assert np.asarray(gray)[0, 0] == round(0.299 * 255)  # the red column, ITU-R 601 luma


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "print.jpg")
    red = np.asarray(load_image(tmp_path / "print.jpg")).astype(int)
    assert red[..., 0].min() > 200 and red[..., 1].max() < 60


def test_unreadable_image_is_one_line_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(LbdlError, match=r"broken\.png: cannot read image") as info:
        load_image(bad)
    assert "\n" not in str(info.value)
    truncated = tmp_path / "cut.png"
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "whole.png")
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:80])
    with pytest.raises(LbdlError, match=r"cut\.png"):
        load_image(truncated)
    with pytest.raises(LbdlError, match=r"missing\.jpg: cannot read image \(no such file"):
        load_image(tmp_path / "missing.jpg")


def test_find_images_and_expand_inputs(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for name in ("a/x.png", "a/deep/y.JPG", "a/.hidden/z.png", "a/notes.txt", "b.jpg", "c.png"):
        (tmp_path / name).write_bytes(b"")
    assert find_images(tmp_path / "a") == [tmp_path / "a/deep/y.JPG", tmp_path / "a/x.png"]
    got = expand_inputs(
        [str(tmp_path / "a"), str(tmp_path / "*.jpg"), str(tmp_path / "a/notes.txt"),
         str(tmp_path / "a/x.png")]
    )  # fmt: skip
    assert got == [
        tmp_path / "a/deep/y.JPG",
        tmp_path / "a/x.png",
        tmp_path / "b.jpg",
        tmp_path / "a/notes.txt",  # an explicit file is kept, whatever its extension
    ]
    assert expand_inputs([str(tmp_path / "**" / "y.*")]) == [tmp_path / "a/deep/y.JPG"]
    with pytest.raises(LbdlError, match=r"nothing\*\.gif: pattern matches no files"):
        expand_inputs([str(tmp_path / "c.png"), str(tmp_path / "nothing*.gif")])
    with pytest.raises(LbdlError, match=r"absent\.png: no such file or folder"):
        expand_inputs([str(tmp_path / "absent.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LbdlError, match=r"empty: folder holds no images"):
        expand_inputs([str(tmp_path / "empty")])


def test_expand_inputs_with_other_extensions(tmp_path: Path) -> None:
    """Batch verbs on audio: folders and globs give the files with the asked extensions."""
    (tmp_path / "clips" / "deep").mkdir(parents=True)
    for name in ("clips/a.wav", "clips/deep/b.FLAC", "clips/c.png", "clips/d.txt"):
        (tmp_path / name).write_bytes(b"")
    audio = (".wav", ".flac")
    assert find_images(tmp_path / "clips", audio) == [
        tmp_path / "clips/a.wav",
        tmp_path / "clips/deep/b.FLAC",
    ]
    assert expand_inputs([str(tmp_path / "clips" / "*")], audio, "audio files") == [
        tmp_path / "clips/a.wav",
        tmp_path / "clips/c.png",  # a glob keeps the files it names, whatever their extension
        tmp_path / "clips/d.txt",
        tmp_path / "clips/deep/b.FLAC",
    ]
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "x.png").write_bytes(b"")
    with pytest.raises(LbdlError, match=r"pictures: folder holds no audio files \(\.wav"):
        expand_inputs([str(tmp_path / "pictures")], audio, "audio files")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_read_idx_plain_and_gzip(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "images-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    for name in ("images-idx3-ubyte", "images-idx3-ubyte.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8 and np.array_equal(got, images)
    floats = np.array([1.5, -2.0], np.float32)
    header = struct.pack(">BBBBI", 0, 0, 0x0D, 1, 2)
    (tmp_path / "f-idx1").write_bytes(header + floats.astype(">f4").tobytes())
    assert read_idx(tmp_path / "f-idx1").tolist() == [1.5, -2.0]


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "magic").write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(LbdlError, match=r"magic: not an idx file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((4, 2), np.uint8))[:-3])
    with pytest.raises(LbdlError, match=r"short: idx file holds 5 data bytes"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(LbdlError, match=r"bad\.gz: cannot read idx file"):
        read_idx(tmp_path / "bad.gz")


def test_split_indices_seeded_disjoint_stratified() -> None:
    train, val = split_indices(100, 0.2, seed=3)
    assert len(val) == 20 and sorted(train + val) == list(range(100))
    assert split_indices(100, 0.2, seed=3) == (train, val)
    assert split_indices(100, 0.2, seed=4)[1] != val
    labels = [0] * 90 + [1] * 10
    train, val = split_indices(100, 0.1, seed=0, stratify=labels)
    assert sum(labels[i] for i in val) == 1 and len(val) == 10
    assert split_indices(5, 0.0, seed=0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(LbdlError, match=r"fraction"):
        split_indices(10, 1.0, seed=0)


def test_check_records_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = []
    for i in range(3):
        Image.fromarray(_rgb()).save(tmp_path / f"ok{i}.png")
        good.append((tmp_path / f"ok{i}.png", i % 2))
    (tmp_path / "bad1.jpg").write_bytes(b"\xff\xd8 not really")
    records = [*good[:1], (tmp_path / "bad1.jpg", 0), *good[1:], (tmp_path / "gone.png", 1)]
    with pytest.raises(LbdlError, match=r"^2 bad records, first: .*bad1.jpg: "):
        check_records(records)
    assert check_records(records, skip_bad=True) == good
    err = capsys.readouterr().err
    assert "bad1.jpg" in err and "gone.png: no such file" in err and "skipped 2 bad" in err
    assert check_records(good) == good


def test_datasets_read_records_and_arrays(tmp_path: Path) -> None:
    Image.fromarray(_rgb()).save(tmp_path / "one.png")
    records = ImageRecords([(tmp_path / "one.png", 1)], mode="L", transform=np.asarray)
    image, label = records[0]
    assert image.shape == (4, 6) and label == 1 and records.labels == [1]
    gray = TensorImageDataset(np.zeros((5, 7, 8), np.uint8), [0, 1, 2, 3, 4])
    image, label = gray[2]
    assert image.shape == (1, 7, 8) and image.dtype == torch.uint8 and label == 2
    color = TensorImageDataset(np.zeros((2, 7, 8, 3), np.uint8), np.array([1, 0]))
    assert color[0][0].shape == (3, 7, 8) and color.labels == [1, 0] and len(color) == 2


def test_tensor_image_round_trip_and_atomic_save(tmp_path: Path) -> None:
    from lbdl_apps.core.data import image_to_tensor, save_image

    color = torch.rand(3, 20, 30)
    path = save_image(color, tmp_path / "out" / "color.png")
    back = image_to_tensor(load_image(path))
    assert back.shape == (3, 20, 30)
    assert (back - color).abs().max() <= 0.5 / 255 + 1e-6  # rounded to 8 bits, nothing else
    gray = save_image(torch.rand(1, 8, 9), tmp_path / "gray.png")
    assert image_to_tensor(load_image(gray, "L")).shape == (1, 8, 9)
    jpeg = save_image(np.full((6, 6, 3), 200, np.uint8), tmp_path / "flat.jpg")
    assert jpeg.read_bytes()[:2] == b"\xff\xd8"  # the extension chose the format
    written = sorted(p.name for p in tmp_path.rglob("*"))
    assert written == ["color.png", "flat.jpg", "gray.png", "out"]  # no temporary files left
