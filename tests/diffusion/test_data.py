"""The data formats of `lbdl diffusion train` (book 7.2)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.diffusion.data import Captioned, collate_images, load_diffusion_data


def _image(path: Path, color: tuple[int, int, int], size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def test_a_folder_of_images_is_unconditional(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / f"{i}.png", (255, 0, 0))
    data = load_diffusion_data(str(tmp_path), image_size=8)
    assert data.kind == "none" and len(data.train) == 3
    image, _ = data.train[0]
    assert image.shape == (3, 8, 8)
    assert torch.allclose(image[0], torch.ones(8, 8)) and torch.allclose(
        image[1], -torch.ones(8, 8)
    )


def test_class_folders_are_class_conditional(tmp_path: Path) -> None:
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        for i in range(2):
            _image(tmp_path / name / f"{i}.png", color)
    data = load_diffusion_data(str(tmp_path), image_size=8, channels=1)
    assert data.kind == "class" and data.labels == ["blue", "red"] and data.channels == 1
    images, labels = collate_images([data.train[i] for i in range(4)])
    assert images.shape == (4, 1, 8, 8) and sorted(labels.tolist()) == [0, 0, 1, 1]


def test_caption_manifests_and_sidecars_are_text_data(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png", (255, 0, 0))
    _image(tmp_path / "img" / "b.png", (0, 0, 255))
    (tmp_path / "pairs.csv").write_text(
        "image,caption\nimg/a.png,a red square\nimg/b.png,a blue square\n"
    )
    lines = [json.dumps({"image": "img/a.png", "caption": "red"})]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "img" / "a.txt").write_text("a red square\nsomething red\n")
    for source, count in (("pairs.csv", 2), ("pairs.jsonl", 1), ("img", 2)):
        data = load_diffusion_data(str(tmp_path / source), image_size=8)
        assert data.kind == "text" and isinstance(data.train, Captioned)
        assert len(data.train) == count
    images, captions = collate_images([data.train[0], data.train[1]])
    assert captions == ["a red square", "something red"] and images.shape == (2, 3, 8, 8)


def test_builtin_scenes_give_captions_or_classes() -> None:
    text = load_diffusion_data(None, image_size=16, builtin_count=10, captions=True)
    assert text.kind == "text" and text.train[0][0].shape == (3, 16, 16)
    assert "circle" in " ".join(text.train.captions) or len(text.train.captions) == 10
    shapes = load_diffusion_data(None, image_size=16, builtin_count=50, scene_label="shape")
    assert shapes.kind == "class" and "circle" in shapes.labels and len(shapes.labels) <= 6


def test_idx_files_with_their_test_split(shared_data: Path) -> None:
    data = load_diffusion_data(str(shared_data / "fashion-mnist"))
    assert data.kind == "class" and data.channels == 1 and data.image_size == 28
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert data.labels[0] == "T-shirt/top"
    image, _label = data.train[0]
    assert image.shape == (1, 28, 28) and image.min() >= -1 and image.max() <= 1


def test_bad_data_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("image,caption\n")
    cases = [
        (str(tmp_path / "missing"), "no such file"),
        (str(tmp_path / "bad.csv"), "no image-caption pairs"),
    ]
    for data, message in cases:
        with pytest.raises(LbdlError, match=message):
            load_diffusion_data(data)
    with pytest.raises(LbdlError, match="--channels 2"):
        load_diffusion_data(None, channels=2)


def test_every_format_is_a_registry_entry(tmp_path: Path) -> None:
    from lbdl_apps.diffusion.data import READERS

    assert READERS.names == ["captions", "images", "labelled"]
    _image(tmp_path / "loose" / "a.png", (255, 0, 0))
    _image(tmp_path / "classes" / "red" / "a.png", (255, 0, 0))
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    found = [READERS.find(tmp_path / name).name for name in ("pairs.jsonl", "loose", "classes")]
    assert found == READERS.names
