"""The built-in scenes and the caption formats clip reads (book 6.6)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lbdl_apps.clip.data import (
    CLASS_TEMPLATES,
    is_unseen_pair,
    load_clip_data,
    make_scenes,
    scene_class_names,
)
from lbdl_apps.core.errors import LbdlError


def test_scenes_are_deterministic_and_captioned() -> None:
    a, b = make_scenes(20, 32, seed=3), make_scenes(20, 32, seed=3)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (20, 32, 32, 3) and a.images.dtype == np.uint8
    assert not np.array_equal(a.images, make_scenes(20, 32, seed=4).images)
    for caption, attrs in zip(a.captions, a.attributes, strict=True):
        for value in attrs.values():
            assert value in caption


def test_unseen_pairs_are_held_out_of_the_seen_split() -> None:
    seen = make_scenes(200, 16, seed=0, split="seen").attributes
    unseen = make_scenes(50, 16, seed=0, split="unseen").attributes
    assert not any(is_unseen_pair(a["color"], a["shape"]) for a in seen)
    assert all(is_unseen_pair(a["color"], a["shape"]) for a in unseen)


def test_builtin_data_has_zero_shot_classes() -> None:
    data = load_clip_data(None, 32, scenes=100)
    assert len(data.train) == 100 and data.class_names == scene_class_names()
    assert data.test is not None and data.test.labels is not None


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / name)


def test_csv_and_jsonl_manifests(tmp_path: Path) -> None:
    _images(tmp_path / "img", [f"{i}.png" for i in range(10)])
    rows = [f"img/{i}.png,caption number {i}" for i in range(10)]
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    data = load_clip_data(str(tmp_path / "pairs.csv"), val_fraction=0.2)
    assert len(data.train) == 8 and len(data.val) == 2
    lines = [json.dumps({"image": f"img/{i}.png", "caption": f"c {i}"}) for i in range(10)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    data = load_clip_data(str(tmp_path / "pairs.jsonl"), val_fraction=0.2)
    assert data.train.images[0].parent == tmp_path / "img"


def test_coco_captions_keep_an_images_captions_together(tmp_path: Path) -> None:
    _images(tmp_path / "val2017", [f"{i}.jpg" for i in range(5)])
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(5)],
        "annotations": [{"image_id": i, "caption": f"c{i}-{j}"} for i in range(5) for j in (0, 1)],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2017.json").write_text(json.dumps(coco))
    data = load_clip_data(str(tmp_path / "annotations" / "captions_val2017.json"), val_fraction=0.2)
    assert len(data.train) == 8 and len(data.val) == 2
    assert len(set(data.val.image_keys)) == 1


def test_sidecar_captions_and_class_folders(tmp_path: Path) -> None:
    _images(tmp_path / "side", ["a.png", "b.png", "c.png"])
    for name in "abc":
        (tmp_path / "side" / f"{name}.txt").write_text(f"picture {name}\nanother caption\n")
    data = load_clip_data(str(tmp_path / "side"), val_fraction=0.34)
    assert data.train.captions[0] == [f"picture {data.train.images[0].stem}", "another caption"]
    _images(tmp_path / "tree" / "red_car", ["1.png", "2.png", "3.png"])
    _images(tmp_path / "tree" / "dog", ["1.png", "2.png", "3.png"])
    data = load_clip_data(str(tmp_path / "tree"), val_fraction=0.34)
    assert data.class_names == ["dog", "red car"]
    assert data.train.captions[0] == [t.format("dog") for t in CLASS_TEMPLATES]


def test_bad_manifest_and_bad_image(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("path,label\na.png,1\n")
    with pytest.raises(LbdlError, match="'image' and 'caption'"):
        load_clip_data(str(tmp_path / "x.csv"))
    _images(tmp_path, [f"{i}.png" for i in range(4)])
    (tmp_path / "broken.png").write_text("not an image")
    rows = [f"{i}.png,c{i}" for i in range(4)] + ["broken.png,c"] * 6
    (tmp_path / "y.csv").write_text("image,caption\n" + "\n".join(rows))
    with pytest.raises(LbdlError, match=r"broken\.png"):
        load_clip_data(str(tmp_path / "y.csv"), val_fraction=0.2)


def _write_idx(path: Path, array: np.ndarray) -> None:
    codes = {np.dtype("uint8"): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    dims = np.array(array.shape, ">u4").tobytes()
    path.write_bytes(header + dims + array.tobytes())


def test_idx_files_are_templated_class_pairs(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-tiny"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 6)):
        _write_idx(
            folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 8, 8), np.uint8)
        )
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    data = load_clip_data(str(folder), val_fraction=0.5)
    assert data.class_names[0] == "T-shirt/top" and len(data.test) == 6
    assert len(data.train) + len(data.val) == 20 and data.train.images.shape[1:] == (1, 8, 8)
    assert data.train.captions[0] == [t.format(data.class_names[data.train.labels[0]])
                                      for t in CLASS_TEMPLATES]  # fmt: skip


def test_every_format_is_a_registry_entry() -> None:
    from lbdl_apps.clip.formats import READERS

    assert READERS.names == ["csv", "jsonl", "coco", "idx", "sidecars", "folders"]
