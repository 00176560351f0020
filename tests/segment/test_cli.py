"""`lbdl segment` from the command line: the real command end to end (train -> evaluate ->
predict with a corrupt file in the batch), and the one rule for bad input (DESIGN.md: one
line on stderr, exit 2, no traceback) via the root app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lbdl_apps.core.checkpoint import read_checkpoint, save_checkpoint
from lbdl_apps.segment.builtin import make_scenes
from lbdl_apps.segment.masks import palette_for
from lbdl_apps.segment.model import build_model, default_config
from tests.cli_helpers import assert_user_error, lbdl

TINY = ["--width", "8", "--depth", "2", "--blocks", "1"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def mask_folder(root: Path, n: int = 4, size: int = 16) -> list[Path]:
    """images/ + masks/ of n gray scenes with index masks (classes 0-2)."""
    images, masks = make_scenes(n, size, seed=1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    paths = []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(np.minimum(mask, 2)).save(root / "masks" / f"{i}.png")
        paths.append(root / "masks" / f"{i}.png")
    return paths


def test_end_to_end_in_a_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lbdl_apps", "segment", *map(str, args), "--threads", "1"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    train = run(
        "train",
        "--epochs",
        "1",
        "--scenes",
        "24",
        "--image-size",
        "32",
        *TINY,
        "--run-dir",
        "run",
        "--quiet",
    )
    assert train.returncode == 0, train.stderr
    assert "run folder: run" in train.stdout
    run_dir = tmp_path / "run"
    for name in (
        "model.safetensors",
        "last.safetensors",
        "state.pt",
        "config.json",
        "metrics.csv",
        "loss.png",
    ):
        assert (run_dir / name).is_file(), name
    assert "val_miou" in (run_dir / "metrics.csv").read_text()

    evaluate = run("evaluate", run_dir / "model.safetensors", "--out", "eval")
    assert evaluate.returncode == 0, evaluate.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["pixel_acc"] <= 1
    assert set(metrics["iou"]) == {"background", "disk", "square", "triangle"}
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()
    assert "miou" in evaluate.stdout

    images, _ = make_scenes(2, 72, seed=9)  # larger than the 32-pixel training crops
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(inputs / f"scene{i}.png")
    (inputs / "broken.png").write_bytes(b"\x89PNG not really")
    predict = run("predict", run_dir / "model.safetensors", inputs, "--out", "pred", "--raw")
    assert predict.returncode == 3, predict.stderr
    assert "broken.png" in predict.stderr
    assert "2 images processed, 1 failed" in predict.stdout
    out = tmp_path / "pred"
    for i in range(2):
        colored = Image.open(out / f"scene{i}_mask.png")
        assert colored.size == (72, 72) and colored.mode == "RGB"
        assert Image.open(out / f"scene{i}_overlay.png").size == (72, 72)
        raw = Image.open(out / f"scene{i}_raw.png")
        assert raw.mode == "P" and np.asarray(raw).max() <= 3
    assert not list(out.glob("broken*"))


def test_train_on_a_mask_folder_and_evaluate_it(tmp_path: Path) -> None:
    mask_folder(tmp_path / "data", n=4)
    (tmp_path / "data" / "classes.txt").write_text("ground\nleft\nright\n")
    result = lbdl(
        "segment",
        "train",
        "--data",
        "data",
        "--epochs",
        "1",
        *TINY,
        "--image-size",
        "16",
        "--run-dir",
        "run",
        "--class-weights",
        "auto",
        "--dice",
        "0.5",
        "--threads",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert "masks: index (detected); classes: ground, left, right" in result.stdout
    result = lbdl("segment", "evaluate", "run/model.safetensors", "--split", "all", "--out", "e")
    assert result.exit_code == 0, result.output
    assert json.loads(Path("e/metrics.json").read_text())["images"] == 4


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    config = replace(default_config("unet", 3, 3), width=8, depth=2, blocks=1)
    path = tmp_path / "seg.safetensors"
    meta = {
        "task": "segment",
        "config": asdict(config),
        "labels": ["a", "b", "c"],
        "data": None,
        "preprocessing": {
            "image_size": 16,
            "in_channels": 3,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "mask_mode": "index",
            "palette": palette_for("index", 3),
        },
    }
    save_checkpoint(path, build_model(config).state_dict(), meta)
    return path


def test_bad_training_data(tmp_path: Path) -> None:
    train = ["segment", "train", "--data", "data", "--epochs", "1", *TINY]
    masks = mask_folder(tmp_path / "data")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(masks[1])
    assert_user_error(lbdl(*train), "1 bad record", "masks/1.png", "mask is 16x8")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(masks[1])
    (tmp_path / "data" / "classes.txt").write_text("a\nb\n")  # masks hold class 2
    assert_user_error(lbdl(*train), "bad record", "mask values [2]")
    (tmp_path / "data" / "classes.txt").unlink()
    (tmp_path / "data" / "images" / "2.png").write_bytes(b"garbage")
    assert_user_error(lbdl(*train), "1 bad record", "images/2.png")
    result = lbdl(*train, "--skip-bad", "--run-dir", "skip", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "warning: skipping bad record" in result.stderr


def test_bad_requests(tmp_path: Path, checkpoint: Path) -> None:
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    assert_user_error(lbdl("segment", "train", "--data", "empty"), "empty", "no images")
    assert_user_error(lbdl("segment", "train", "--data", "nowhere"), "nowhere", "no such")
    mask_folder(tmp_path / "data")
    assert_user_error(
        lbdl("segment", "train", "--data", "data", "--mask-mode", "rgb"), "--mask-mode rgb"
    )
    assert_user_error(lbdl("segment", "train", "--model", "deeplab"), "--model deeplab")
    assert_user_error(
        lbdl("segment", "train", "--model", "pspnet", "--backbone", "vgg"), "--backbone vgg"
    )
    assert_user_error(lbdl("segment", "train", "--class-weights", "1,2"), "--class-weights")
    assert_user_error(
        lbdl("segment", "train", "--model", "pspnet", "--depth", "3", "--scenes", "8"),
        "--depth: not an option of --model pspnet",
    )
    # a checkpoint of another task
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, {"w": torch.zeros(1)}, {"task": "classify", "config": {}})
    assert_user_error(lbdl("segment", "predict", other, "data/images"), "classify")
    assert_user_error(lbdl("segment", "evaluate", other), "'classify' checkpoint")
    assert_user_error(lbdl("segment", "predict", checkpoint, "missing.png"), "missing.png")
    # evaluate on data whose masks hold values outside the checkpoint's classes
    masks = mask_folder(tmp_path / "four")
    bad = np.full((16, 16), 3, np.uint8)
    Image.fromarray(bad).save(masks[0])
    assert_user_error(lbdl("segment", "evaluate", checkpoint, "--data", "four"), "mask values")


def test_predict_strict_and_api(tmp_path: Path, checkpoint: Path) -> None:
    from lbdl_apps.segment import load

    images, _ = make_scenes(1, 40, seed=2)
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"nope")
    result = lbdl("segment", "predict", checkpoint, "a.png", "b.png", "--strict")
    assert_user_error(result, "b.png")
    segmenter = load(checkpoint)
    mask = segmenter.segment(tmp_path / "a.png")
    assert mask.shape == (40, 40) and mask.max() < 3
    np.testing.assert_array_equal(mask, segmenter.segment(Image.open(tmp_path / "a.png")))
    assert [r.path for r in segmenter.predict([tmp_path / "a.png"])] == [str(tmp_path / "a.png")]


# ----------------------------------------------------------------------------------------------
# The verbs every app has, and evaluate --split (core.evaluation.split_names)


def test_predict_help() -> None:
    result = lbdl("segment", "predict", "--help")
    assert result.exit_code == 0, result.output
    assert "--raw" in result.stdout and "--tta" in result.stdout


def _evaluated(checkpoint: Path, *flags: str) -> dict:
    result = lbdl("segment", "evaluate", checkpoint, *flags, "--out", "ev")
    assert result.exit_code == 0, result.output
    return json.loads(Path("ev/metrics.json").read_text())


@pytest.mark.parametrize(
    ("split", "images", "label"),
    [(None, 2, "val"), ("val", 2, "val"), ("train", 3, "train"), ("all", 5, "all")],
)
def test_evaluate_split_of_the_checkpoints_own_data(
    tmp_path: Path, checkpoint: Path, split: str | None, images: int, label: str
) -> None:
    """Without --data: the checkpoint's held-out pairs by default (its data has no test
    split), its training pairs with --split train, both with --split all."""
    mask_folder(tmp_path / "data", n=5)
    state, meta = read_checkpoint(checkpoint)
    save_checkpoint(checkpoint, state, {**meta, "data": "data", "val_fraction": 0.4, "seed": 0})
    metrics = _evaluated(checkpoint, *(["--split", split] if split else []))
    assert metrics["images"] == images and metrics["split"] == label
    assert set(metrics["iou"]) == {"a", "b", "c"}


@pytest.mark.parametrize("split", [None, "all"])
def test_evaluate_with_data_scores_a_folder_without_splits_whole(
    tmp_path: Path, checkpoint: Path, split: str | None
) -> None:
    mask_folder(tmp_path / "data", n=5)
    metrics = _evaluated(checkpoint, "--data", "data", *(["--split", split] if split else []))
    assert metrics["images"] == 5  # all of it: --data without splits lands in "train"
    line = assert_user_error(
        lbdl("segment", "evaluate", checkpoint, "--data", "data", "--split", "val"), "--split val"
    )
    assert "no val split" in line


@pytest.mark.parametrize(
    ("split", "images", "label"),
    [(None, 2, "test"), ("test", 2, "test"), ("val", 1, "val"), ("all", 6, "all")],
)
def test_evaluate_with_data_that_has_splits(
    tmp_path: Path, checkpoint: Path, split: str | None, images: int, label: str
) -> None:
    """train/ + val/ + test/: the test split by default, each split on request."""
    for name, n in (("train", 3), ("val", 1), ("test", 2)):
        mask_folder(tmp_path / "data" / name, n=n)
    metrics = _evaluated(checkpoint, "--data", "data", *(["--split", split] if split else []))
    assert metrics["images"] == images and metrics["split"] == label


def test_evaluate_builtin_scenes_have_no_test_split(tmp_path: Path) -> None:
    config = replace(default_config("unet", 4, 3), width=8, depth=2, blocks=1)
    meta = {"task": "segment", "config": asdict(config), "data": None, "scenes": 10,
            "labels": ["background", "disk", "square", "triangle"],
            "preprocessing": {"image_size": 16, "in_channels": 3, "mean": [0.5] * 3,
                              "std": [0.25] * 3, "mask_mode": "index",
                              "palette": palette_for("index", 4)}}  # fmt: skip
    save_checkpoint(tmp_path / "m.safetensors", build_model(config).state_dict(), meta)
    assert _evaluated(tmp_path / "m.safetensors")["images"] == 2  # 20% of the 10 scenes
    line = assert_user_error(
        lbdl("segment", "evaluate", tmp_path / "m.safetensors", "--split", "test"), "--split test"
    )
    assert "no test split" in line
