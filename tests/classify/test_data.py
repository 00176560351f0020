"""classify/data.py: format detection on real files, the built-in shapes, transforms and
MixUp/CutMix collation."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lbdl_apps.classify.builtin import SHAPE_NAMES, make_shapes
from lbdl_apps.classify.data import FASHION_MNIST_LABELS, load_classify_data
from lbdl_apps.classify.transforms import build_transforms, mix_collate, preprocess_for_inference
from lbdl_apps.core.errors import LbdlError

SMALL = (60, 20, 20)  # built-in sizes kept small for speed


def _write_images(folder: Path, count: int, color: tuple[int, int, int], size: int = 12) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        array = np.full((size, size, 3), color, np.uint8)
        array[i % size] = 255 - np.array(color, np.uint8)
        Image.fromarray(array).save(folder / f"img{i:02d}.png")


def _all_paths(dataset) -> set[Path]:
    return {path for path, _ in dataset.records}


def test_make_shapes_is_deterministic_and_varied() -> None:
    images, labels, names = make_shapes(200, 32, seed=5)
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8
    assert names == SHAPE_NAMES and len(names) == 10
    assert set(labels.tolist()) == set(range(10))
    again, labels_again, _ = make_shapes(200, 32, seed=5)
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert not np.array_equal(images, make_shapes(200, 32, seed=6)[0])
    assert images.std() > 40  # colorful, textured, not blank
    assert make_shapes(3, 48, seed=0)[0].shape == (3, 48, 48, 3)


def test_builtin_default() -> None:
    data = load_classify_data(None, None, seed=1, builtin_sizes=SMALL)
    assert data.labels == SHAPE_NAMES and data.in_channels == 3 and data.image_size == 32
    assert (len(data.train), len(data.val), len(data.test)) == SMALL
    image, label = data.val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    assert len(data.mean) == 3 and all(0.2 < s < 0.5 for s in data.std)
    again = load_classify_data(None, None, seed=1, builtin_sizes=SMALL)
    assert torch.equal(again.val[3][0], data.val[3][0]) and data.mean == again.mean
    other = load_classify_data(None, None, seed=2, builtin_sizes=SMALL)
    assert not torch.equal(other.val[3][0], data.val[3][0])
    pre = data.preprocessing()
    assert pre == {
        "image_size": 32, "in_channels": 3, "mean": data.mean, "std": data.std, "resize": 32,
    }  # fmt: skip


def test_image_folder_with_train_and_val(tmp_path: Path) -> None:
    for split, count in (("train", 5), ("val", 2), ("test", 3)):
        _write_images(tmp_path / split / "cat", count, (200, 50, 50))
        _write_images(tmp_path / split / "dog", count, (50, 50, 200))
    data = load_classify_data(str(tmp_path), None)
    assert data.labels == ["cat", "dog"]
    assert (len(data.train), len(data.val), len(data.test)) == (10, 4, 6)
    assert data.image_size == 12 and data.in_channels == 3
    image, label = data.test[0]
    assert image.shape == (3, 12, 12) and label == 0
    assert all(p.parent.parent.name == "val" for p in _all_paths(data.val))
    assert "train/ + val/ + test/" in data.source


def test_class_folders_auto_split_and_classes_txt(tmp_path: Path) -> None:
    for name, color in (("b", (0, 0, 0)), ("a", (255, 255, 255)), ("c", (9, 9, 9))):
        _write_images(tmp_path / name, 10, color)
    data = load_classify_data(str(tmp_path), None, val_fraction=0.2, seed=7)
    assert data.labels == ["a", "b", "c"]
    train, val = _all_paths(data.train), _all_paths(data.val)
    assert len(val) == 6 and len(train) == 24 and not train & val
    assert sorted(data.val.labels) == [0, 0, 1, 1, 2, 2]  # stratified
    assert _all_paths(load_classify_data(str(tmp_path), None, val_fraction=0.2, seed=7).val) == val
    assert _all_paths(load_classify_data(str(tmp_path), None, val_fraction=0.2, seed=8).val) != val
    (tmp_path / "classes.txt").write_text("c\nb\na\n")
    data = load_classify_data(str(tmp_path), None)
    assert data.labels == ["c", "b", "a"]
    path, label = data.train.records[0]
    assert data.labels[label] == path.parent.name
    (tmp_path / "classes.txt").write_text("c\nb\na\nd\n")
    with pytest.raises(LbdlError, match=r"d: no folder for class 'd' of classes\.txt"):
        load_classify_data(str(tmp_path), None)


def test_grayscale_folder_gives_one_channel(tmp_path: Path) -> None:
    for name, value in (("dark", 30), ("light", 220)):
        (tmp_path / name).mkdir()
        for i in range(4):
            array = np.full((40, 50), value, np.uint8)
            array[i] = 255 - value
            Image.fromarray(array).save(tmp_path / name / f"{i}.png")
    data = load_classify_data(str(tmp_path), None, val_fraction=0.25)
    assert data.in_channels == 1 and data.image_size == 40
    assert data.train[0][0].shape == (1, 40, 40) and len(data.mean) == 1
    big = load_classify_data(str(tmp_path), 64, val_fraction=0.25)
    assert big.train[0][0].shape == (1, 64, 64) and big.val[0][0].shape == (1, 64, 64)
    assert big.preprocessing()["resize"] == 73


def test_csv_paths_relative_to_the_csv(tmp_path: Path) -> None:
    _write_images(tmp_path / "pics", 8, (10, 200, 10))
    rows = ["path,label"] + [f"pics/img{i:02d}.png,{'yes' if i % 2 else 'no'}" for i in range(8)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = load_classify_data(str(tmp_path / "labels.csv"), None, val_fraction=0.25)
    assert data.labels == ["no", "yes"] and len(data.train) == 6 and len(data.val) == 2
    assert data.test is None and data.train[0][0].shape == (3, 12, 12)
    (tmp_path / "nohead.csv").write_text("pics/img00.png,no\n")
    with pytest.raises(LbdlError, match=r"nohead\.csv: needs a header with path and label"):
        load_classify_data(str(tmp_path / "nohead.csv"), None)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _write_idx_set(folder: Path, train: int = 40, test: int = 10, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    end = ".gz" if gz else ""
    for prefix, n in (("train", train), ("t10k", test)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{end}", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{end}", np.arange(n) % 10)


def test_idx_folder(tmp_path: Path) -> None:
    _write_idx_set(tmp_path / "digits")
    data = load_classify_data(str(tmp_path / "digits"), None, val_fraction=0.25)
    assert data.labels == [str(d) for d in range(10)] and not data.hflip
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 10)
    assert data.in_channels == 1 and data.image_size == 28
    assert data.train[0][0].shape == (1, 28, 28)
    _write_idx_set(tmp_path / "my-fashion", gz=False)
    fashion = load_classify_data(str(tmp_path / "my-fashion"), None)
    assert fashion.labels == FASHION_MNIST_LABELS and fashion.hflip
    pre = {"image_size": 32, "in_channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3, "resize": 36}
    checkpointed = load_classify_data(str(tmp_path / "digits"), None, preprocessing=pre)
    assert checkpointed.preprocessing() == pre and checkpointed.mean == [0.0] * 3
    image = checkpointed.test[0][0]
    assert image.shape == (3, 32, 32) and image.min() >= 0 and image.max() <= 1
    (tmp_path / "digits" / "classes.txt").write_text("\n".join("abcdefghij"))
    assert load_classify_data(str(tmp_path / "digits"), None).labels == list("abcdefghij")


def test_named_dataset_missing_and_present(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LBDL_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    missing = re.escape(f"fashion-mnist is not in {tmp_path}; add --download")
    with pytest.raises(LbdlError, match=missing):
        load_classify_data("fashion-mnist", None)
    # the layout torchvision.datasets.FashionMNIST reads (as left by --download)
    _write_idx_set(tmp_path / "FashionMNIST" / "raw", train=30, test=10, gz=False)
    data = load_classify_data("fashion-mnist", None)
    assert data.labels == FASHION_MNIST_LABELS and len(data.test) == 10
    assert len(data.train) + len(data.val) == 30 and data.in_channels == 1


def test_real_fashion_mnist(shared_data: Path) -> None:
    folder = shared_data / "fashion-mnist"
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{folder} has no idx files")
    data = load_classify_data(str(folder), None)
    assert len(data.train) + len(data.val) == 60000 and len(data.test) == 10000
    assert len(data.val) == 6000
    assert data.labels == FASHION_MNIST_LABELS and data.in_channels == 1
    assert 0.25 < data.mean[0] < 0.35 and 0.3 < data.std[0] < 0.4  # known: 0.286, 0.353
    image, label = data.test[0]
    assert image.shape == (1, 28, 28) and label == 9  # the first test image is an ankle boot


def test_bad_datasets_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LbdlError, match=r"empty: expected class folders"):
        load_classify_data(str(tmp_path / "empty"), None)
    _write_images(tmp_path / "one" / "only", 4, (1, 2, 3))
    with pytest.raises(LbdlError, match=r"found 1 class"):
        load_classify_data(str(tmp_path / "one"), None)
    _write_images(tmp_path / "hollow" / "a", 4, (1, 2, 3))
    (tmp_path / "hollow" / "b").mkdir()
    with pytest.raises(LbdlError, match=r"b: class folder holds no images"):
        load_classify_data(str(tmp_path / "hollow"), None)
    _write_images(tmp_path / "loose", 3, (1, 2, 3))
    with pytest.raises(LbdlError, match=r"holds images but no class folders"):
        load_classify_data(str(tmp_path / "loose"), None)
    with pytest.raises(LbdlError, match=r"nowhere: no such file or folder"):
        load_classify_data(str(tmp_path / "nowhere"), None)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(LbdlError, match=r"x\.txt: not classification data .*csv: a \.csv"):
        load_classify_data(str(tmp_path / "x.txt"), None)


def test_corrupt_images_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):
        _write_images(tmp_path / name, 6, (100, 100, 100))
    (tmp_path / "a" / "zz_corrupt.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "b" / "zz_empty.jpg").write_bytes(b"")
    with pytest.raises(LbdlError, match=r"2 bad records, first: .*zz_corrupt\.png"):
        load_classify_data(str(tmp_path), None)
    data = load_classify_data(str(tmp_path), None, skip_bad=True, val_fraction=0.25)
    err = capsys.readouterr().err
    assert "zz_corrupt.png" in err and "zz_empty.jpg" in err
    used = _all_paths(data.train) | _all_paths(data.val)
    assert len(used) == 12 and not any(p.name.startswith("zz_") for p in used)


def test_transforms_shapes_stats_and_augment() -> None:
    image = Image.fromarray(np.full((50, 70, 3), (255, 0, 51), np.uint8))
    mean, std = [0.5, 0.25, 0.2], [0.5, 0.5, 0.1]
    out = build_transforms(False, 48, 3, mean, std)(image)
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    assert torch.allclose(out[:, 24, 24], torch.tensor([1.0, -0.5, 0.0]), atol=1e-4)
    gray = build_transforms(False, 48, 1, [0.0], [1.0])(image)
    assert gray.shape == (1, 48, 48)
    torch.manual_seed(0)
    for augment in ("basic", "trivial", "randaugment", "none"):
        for size in (24, 64):
            train = build_transforms(True, size, 3, mean, std, augment=augment)
            assert train(image).shape == (3, size, size)
    tensor = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    assert build_transforms(True, 28, 1, [0.5], [0.5], "trivial", hflip=False)(tensor).shape == (
        1, 28, 28,
    )  # fmt: skip
    with pytest.raises(LbdlError, match=r"--augment fancy"):
        build_transforms(True, 32, 3, mean, std, augment="fancy")


def test_preprocess_for_inference_matches_evaluation(tmp_path: Path) -> None:
    data = load_classify_data(None, None, builtin_sizes=SMALL)
    images, _, _ = make_shapes(2, 32, seed=0)
    pil = [Image.fromarray(a) for a in images]
    pil[1].save(tmp_path / "x.png")
    batch = preprocess_for_inference([pil[0], tmp_path / "x.png"], data.preprocessing())
    assert batch.shape == (2, 3, 32, 32)
    evaluation = data.val.transform
    assert torch.allclose(batch[0], evaluation(pil[0]))
    assert torch.allclose(batch[1], evaluation(torch.from_numpy(images[1]).permute(2, 0, 1)))


def test_mix_collate_soft_labels() -> None:
    batch = [(torch.randn(3, 8, 8), i % 4) for i in range(6)]
    torch.manual_seed(0)
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0), (0.2, 1.0), (0.0, 0.0)):
        images, targets = mix_collate(4, mixup, cutmix)(batch)
        assert images.shape == (6, 3, 8, 8) and targets.shape == (6, 4)
        assert torch.allclose(targets.sum(1), torch.ones(6)) and (targets >= 0).all()
    images, targets = mix_collate(4, 0.0, 0.0)(batch)
    assert targets.argmax(1).tolist() == [0, 1, 2, 3, 0, 1]
    _, mixed = mix_collate(4, 1.0, 0.0)(batch)
    assert (mixed.max(1).values < 1).any()  # actually mixed
