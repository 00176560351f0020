"""`lbdl detect` from the command line: the real command end to end (train -> evaluate ->
predict on images, a video and a corrupt file -> export), and the one rule for bad input
(DESIGN.md) via the root app."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import pytest
import torch
from PIL import Image

from lbdl_apps.core.checkpoint import save_checkpoint
from lbdl_apps.detect.model import build_model, default_config
from lbdl_apps.detect.scenes import make_scene
from tests.cli_helpers import assert_user_error, lbdl, lbdl_subprocess
from tests.detect.conftest import scenes, write_voc

TINY = ["--width", "4", "--image-size", "32", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """An untrained tiny detector checkpoint of the three scene classes."""
    torch.manual_seed(0)
    config = replace(default_config(3, "resnet-small", 32), width=4, extra_width=16)
    path = tmp_path / "tiny.safetensors"
    labels = ["circle", "square", "triangle"]
    meta = {"task": "detect", "config": asdict(config), "labels": labels}
    save_checkpoint(path, build_model(config).state_dict(), meta)
    return path


def _video(path: Path, frames: int = 3) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (48, 40))
    for i in range(frames):
        writer.write(cv2.resize(make_scene(i, 48, seed=8)[0], (48, 40))[:, :, ::-1].copy())
    writer.release()
    return path


@pytest.mark.slow
def test_end_to_end_in_a_subprocess(tmp_path: Path) -> None:
    write_voc(tmp_path / "voc", scenes(10, size=48))
    train = lbdl_subprocess(
        "detect", "train", "--data", "voc", "--epochs", "1", "--batch-size", "4",
        "--run-dir", "run", *TINY, cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert "run folder: run" in train.stdout
    for name in ("model.safetensors", "last.safetensors", "state.pt", "config.json", "loss.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert "val_map_50" in (tmp_path / "run" / "metrics.csv").read_text()

    evaluate = lbdl_subprocess("detect", "evaluate", "run", "--out", "eval", cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["ap_per_class"]) == {"circle", "square", "triangle"}
    assert all(0 <= (metrics[k] or 0) <= 1 for k in ("map", "map_50", "map_75"))
    assert (tmp_path / "eval" / "pr_curve.png").is_file() and "map_50" in evaluate.stdout

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(make_scene(0, 50, seed=9)[0]).save(inputs / "a.png")
    Image.fromarray(make_scene(1, 70, seed=9)[0]).save(inputs / "b.jpg")
    (inputs / "broken.png").write_bytes(b"\x89PNG not really")
    _video(tmp_path / "clip.mp4")
    predict = lbdl_subprocess(
        "detect", "predict", "run", "inputs", "clip.mp4", "--out", "pred", "--save-txt",
        "--conf", "0.01", "--max-det", "5", cwd=tmp_path,
    )  # fmt: skip
    assert predict.returncode == 3, predict.stderr
    assert "broken.png" in predict.stderr and "3 files processed, 1 failed" in predict.stdout
    out = tmp_path / "pred"
    assert Image.open(out / "a.jpg").size == (50, 50) and Image.open(out / "b.jpg").size == (70, 70)
    assert cv2.VideoCapture(str(out / "clip.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 3
    results = json.loads((out / "predictions.json").read_text())
    index = json.loads((out / "images.json").read_text())
    assert len(index["images"]) == 5  # two images and three frames
    assert {r["image_id"] for r in results} <= {i["id"] for i in index["images"]}
    assert all(len(r["bbox"]) == 4 and 0 <= r["category_id"] < 3 for r in results)
    per_image = {}
    for r in results:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) <= 5
    lines = (out / "labels" / "clip_2.txt").read_text().splitlines()
    assert all(len(line.split()) == 6 for line in lines)

    export = lbdl_subprocess(
        "detect", "export", "run", "--format", "torchscript", "--out", "exp", cwd=tmp_path
    )
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "exp" / "model.pt").is_file() and (tmp_path / "exp" / "model.json").is_file()


def test_predict_filters_classes_and_writes_yolo_txt(checkpoint: Path, tmp_path: Path) -> None:
    Image.fromarray(make_scene(0, 40, seed=1)[0]).save(tmp_path / "a.png")
    args = ["detect", "predict", checkpoint, "a.png", "--conf", "0.0", "--threads", "1"]
    result = lbdl(*args, "--classes", "square", "--out", "sq", "--save-txt", "--max-det", "7")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "sq" / "predictions.json").read_text())
    assert len(rows) == 7 and {r["category_id"] for r in rows} == {1}
    assert len((tmp_path / "sq" / "labels" / "a.txt").read_text().splitlines()) == 7
    assert_user_error(lbdl(*args, "--classes", "hexagon"), "--classes hexagon", "not a class")


def test_bad_records_exit_2_naming_the_first_and_the_count(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "voc", scenes(6, size=40))
    xml = root / "annotations" / "s1.xml"
    xml.write_text(xml.read_text().replace("<xmax>", "<xmax>9"))  # 9xx: outside the image
    (root / "annotations" / "s4.xml").write_text("")
    result = lbdl("detect", "train", "--data", "voc", "--epochs", "1", *TINY)
    assert_user_error(result, "2 bad records", "s1.xml", "outside the 40x40 image", "--skip-bad")
    skipped = lbdl(
        "detect", "train", "--data", "voc", "--epochs", "1", "--skip-bad", "--run-dir", "r",
        *TINY,
    )  # fmt: skip
    assert skipped.exit_code == 0, skipped.output
    assert "warning: skipping bad record" in skipped.stderr and "s4.xml" in skipped.stderr
    assert "skipped 2 bad records of 6" in skipped.stderr


def test_user_errors_are_one_line(checkpoint: Path, tmp_path: Path) -> None:
    assert_user_error(lbdl("detect", "train", "--data", "nowhere"), "nowhere", "no such")
    assert_user_error(
        lbdl("detect", "train", "--backbone", "vgg", "--epochs", "1", *TINY), "--backbone vgg"
    )
    assert_user_error(
        lbdl("detect", "train", "--backbone", "resnet-small", "--pretrained", "DEFAULT"),
        "--pretrained",
    )
    assert_user_error(lbdl("detect", "train", "--scales", "0.1,x", *TINY), "--scales 0.1,x")
    write_voc(tmp_path / "voc", scenes(2, size=40))
    assert_user_error(lbdl("detect", "train", "--data", "voc", "--format", "kitti"), "kitti")
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, {"w": torch.zeros(1)}, {"task": "segment", "config": {}})
    assert_user_error(lbdl("detect", "evaluate", other), "other.safetensors", "segment")
    assert_user_error(lbdl("detect", "predict", checkpoint, "missing.png"), "missing.png")
    assert_user_error(
        lbdl("detect", "evaluate", checkpoint, "--split", "test"),
        "--split test",
        "the built-in scenes has no test split",
    )
    assert_user_error(lbdl("detect", "export", checkpoint, "--format", "tflite"), "--format tflite")


@pytest.mark.parametrize("verb", ["train", "evaluate", "predict", "export"])
def test_every_verb_has_its_help(verb: str) -> None:
    result = lbdl("detect", verb, "--help")
    assert result.exit_code == 0, result.output
    assert "--threads" in result.output and "Usage" in result.output


@pytest.fixture
def voc_checkpoint(checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny detector as if trained on a VOC folder of 6 images, half of them held out."""
    from lbdl_apps.core.checkpoint import read_checkpoint

    write_voc(tmp_path / "voc", scenes(6, size=40))
    state, meta = read_checkpoint(checkpoint)
    meta = {**meta, "data": "voc", "format": "voc", "seed": 0, "val_fraction": 0.5}
    path = tmp_path / "voc.safetensors"
    save_checkpoint(path, state, meta)
    return path


def test_evaluate_splits_mean_the_same_as_in_every_app(voc_checkpoint: Path) -> None:
    """core.evaluation.split_names: without --data the checkpoint's own held-out split (or
    the split asked for, or all of them); with --data a folder without splits is scored
    whole; a split the data lacks is an error."""

    def scored(*extra: str) -> tuple[str, int]:
        args = ["--out", "ev", "--exist-ok", "--threads", "1", "--quiet", *extra]
        result = lbdl("detect", "evaluate", voc_checkpoint, *args)
        assert result.exit_code == 0, result.output
        metrics = json.loads(Path("ev/metrics.json").read_text())
        return metrics["split"], metrics["images"]

    assert scored() == ("val", 3)
    assert scored("--split", "val") == ("val", 3)
    assert scored("--split", "train") == ("train", 3)
    assert scored("--split", "all") == ("all", 6)
    assert scored("--data", "voc") == ("all", 6)  # no splits of its own: all of it
    assert scored("--data", "voc", "--split", "all") == ("all", 6)
    assert scored("--data", "voc", "--format", "voc", "--split", "train") == ("all", 6)
    assert_user_error(
        lbdl("detect", "evaluate", voc_checkpoint, "--split", "test"), "--split test", "no test"
    )
    assert_user_error(
        lbdl("detect", "evaluate", voc_checkpoint, "--data", "voc", "--split", "val"),
        "--split val",
        "voc has no val split",
    )


def test_evaluate_all_of_the_built_in_scenes() -> None:
    """A checkpoint trained on 16 built-in scenes: --split all scores them and the 8 held-out
    scenes of the other stream."""
    legacy = Path(__file__).parents[1] / "data" / "legacy" / "detect.safetensors"
    result = lbdl("detect", "evaluate", legacy, "--split", "all", "--out", "ev", "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads(Path("ev/metrics.json").read_text())
    assert metrics["split"] == "all" and metrics["images"] == 16 + 8
    assert metrics["data"] is None and set(metrics["ap_per_class"]) == {
        "circle",
        "square",
        "triangle",
    }


def test_folders_give_their_images_and_videos(tmp_path: Path) -> None:
    from lbdl_apps.detect.predict import expand_media

    (tmp_path / "mixed").mkdir()
    (tmp_path / "clips").mkdir()
    Image.fromarray(make_scene(0, 32, seed=1)[0]).save(tmp_path / "mixed" / "a.png")
    _video(tmp_path / "mixed" / "b.mp4", frames=1)
    _video(tmp_path / "clips" / "c.avi", frames=1)
    found = expand_media(["mixed", "clips"])
    assert [p.name for p in found] == ["a.png", "b.mp4", "c.avi"]
