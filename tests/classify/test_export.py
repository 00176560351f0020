"""`lbdl classify export`, `--runtime onnxruntime` and `--quantize int8` (book 8.2) on
classifiers trained here to tell four stripe orientations apart: each format gives
PyTorch's logits on another batch, model.json says how to feed the network, predict and
evaluate give the same through ONNX Runtime, int8 keeps the accuracy of each kind of
network within 3 points (a CNN and a ResNet: static int8 calibrated on images; a ViT:
dynamic int8 of its linear layers, torchao and ONNX Runtime; measured: 0 to 1 point), and
the requests that cannot work are one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lbdl_apps.classify import load
from lbdl_apps.classify.cli import EvaluateArgs, TrainArgs
from lbdl_apps.classify.export import deployment
from lbdl_apps.classify.task import evaluate
from lbdl_apps.classify.task import train as run_training
from lbdl_apps.core.export import OnnxModule
from lbdl_apps.core.options import Common
from tests.cli_helpers import assert_user_error, lbdl

ANGLES = {"horizontal": 0, "vertical": 90, "rising": 45, "falling": 135}  # degrees
SIZE = 16
# small networks of each kind: ~5-15 s of training each on one thread
MODELS = {
    "cnn": {"model": "cnn", "width": 8, "depth": 2},
    "resnet": {"model": "resnet-small", "width": 8, "depth": 2},
    "vit": {"model": "vit", "width": 32, "depth": 2, "patch_size": 4},
}


def orientation(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Noisy two-colour stripes at the class's angle (+- 12 degrees), random period."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    angle = np.deg2rad(ANGLES[kind] + rng.uniform(-12, 12))
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * (rows * np.cos(angle) + cols * np.sin(angle)) / rng.uniform(3, 6)
                  + phase)  # fmt: skip
    image = np.where(wave[..., None] > 0, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3))
    image = image + rng.normal(0, 40, (SIZE, SIZE, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_orientations(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for kind in ANGLES:
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(orientation(kind, rng)).save(root / kind / f"{i}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("orientations")
    write_orientations(folder / "train", 150, seed=0)
    write_orientations(folder / "val", 50, seed=1)
    return folder


@pytest.fixture(scope="module")
def trained(data: Path) -> Callable[[str], Path]:
    """A classifier of each kind, trained on first use for eight short epochs (measured
    validation accuracy: CNN 0.715, ResNet 0.55, ViT 0.725; chance 0.25)."""
    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in done:
            common = Common(device="cpu", threads=1, quiet=True, seed=0)
            common.apply()
            run = data.parent / f"run_{kind}"
            args = TrainArgs(data=str(data), epochs=8, batch_size=32, lr=3e-3, warmup=0.2,
                             run_dir=run, **MODELS[kind])  # type: ignore[arg-type] # fmt: skip
            run_training(args, common)
            done[kind] = run / "model.safetensors"
        return done[kind]

    return get


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("kind", ["cnn", "vit"])
@pytest.mark.parametrize("format", ["onnx", "torchscript", "exported-program"])
def test_export_gives_pytorchs_logits(trained, tmp_path: Path, format: str, kind: str) -> None:
    checkpoint = trained(kind)
    result = lbdl("classify", "export", checkpoint, "--format", format, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    entry = described["graphs"]["classifier"]
    assert entry["max_abs_diff_vs_pytorch"] < 1e-4
    assert entry["inputs"][0] == {"name": "images", "shape": ["batch", 3, SIZE, SIZE],
                                  "dtype": "float32"}  # fmt: skip
    assert entry["outputs"][0]["shape"] == ["batch", 4]
    assert described["labels"] == sorted(ANGLES) and described["model"] == MODELS[kind]["model"]
    classifier = load(checkpoint)
    pre = described["preprocessing"]
    assert pre["mean"] == list(classifier.preprocessing["mean"])
    assert f"center {SIZE} x {SIZE}" in pre["crop"]
    path = tmp_path / "out" / entry["file"]
    images = torch.randn(5, 3, SIZE, SIZE)  # another batch
    with torch.no_grad():
        expected = classifier.model(images)
        if format == "onnx":
            got = OnnxModule(path, ["images"], ["logits"])(images)
        elif format == "torchscript":
            got = torch.jit.load(str(path))(images)
        else:
            got = torch.export.load(str(path)).module()(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_predict_and_evaluate_the_same_through_onnx_runtime(
    trained, data: Path, tmp_path: Path
) -> None:
    checkpoint = trained("cnn")
    for name, extra in [("torch", []), ("ort", ["--runtime", "onnxruntime"])]:
        result = lbdl("classify", "predict", checkpoint, data / "val" / "rising", "--out",
                      tmp_path / name / "predict", *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        result = lbdl("classify", "evaluate", checkpoint, "--data", data, "--split", "val",
                      "--out", tmp_path / name / "evaluate", *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
    ours, theirs = (
        json.loads((tmp_path / name / "predict" / "predictions.json").read_text())
        for name in ("torch", "ort")
    )
    assert [p["labels"] for p in ours] == [p["labels"] for p in theirs]
    np.testing.assert_allclose([p["probabilities"] for p in ours],
                               [p["probabilities"] for p in theirs], atol=1e-5)  # fmt: skip
    ours, theirs = (
        json.loads((tmp_path / name / "evaluate" / "metrics.json").read_text())
        for name in ("torch", "ort")
    )
    assert ours["acc"] == theirs["acc"] and ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
    assert (checkpoint.parent / "model.safetensors.exported" / "classifier.onnx").exists()


@pytest.mark.parametrize("kind", ["cnn", "resnet", "vit"])
def test_int8_keeps_the_accuracy(trained, data: Path, tmp_path: Path, kind: str) -> None:
    """The CNN and the ResNet: static int8 in ONNX Runtime (the default for them),
    calibrated on the training images; the ViT: dynamic int8, ONNX Runtime (the default)
    and torchao."""
    checkpoint = trained(kind)
    convolutional = kind != "vit"
    assert deployment(load(checkpoint)).graphs[0].convolutional == convolutional
    common = Common(device="cpu", threads=1, quiet=True, seed=0)
    variants: dict[str, dict[str, str]] = {"fp32": {}}
    if convolutional:
        variants["int8"] = {"quantize": "int8", "calibrate": str(data / "train")}
    else:
        variants["int8"] = {"quantize": "int8"}
        variants["torchao_int8"] = {"quantize": "int8", "runtime": "torch"}
    scores = {}
    for name, extra in variants.items():
        args = EvaluateArgs(checkpoint=str(checkpoint), data=str(data), split="val",
                            out=tmp_path / name, **extra)  # type: ignore[arg-type] # fmt: skip
        scores[name] = evaluate(args, common).scores
    fp32 = scores["fp32"]["acc"]
    assert fp32 > 0.4, scores  # learned (chance: 0.25)
    for name in variants.keys() - {"fp32"}:
        assert abs(scores[name]["acc"] - fp32) <= 0.03, scores
        assert scores[name]["loss"] != scores["fp32"]["loss"]  # int8 did run
    cache = checkpoint.parent / "model.safetensors.exported"
    assert (cache / "classifier.int8.onnx").exists()


def test_int8_predicts_from_the_cli(trained, data: Path, tmp_path: Path) -> None:
    result = lbdl("classify", "predict", trained("cnn"), data / "val" / "vertical", "--quantize",
                  "int8", "--calibrate", data / "train", "--out", tmp_path / "p")  # fmt: skip
    assert result.exit_code == 0, result.output
    predicted = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert sum(p["labels"][0] == "vertical" for p in predicted) >= 0.6 * len(predicted)


def test_calibration_images(trained, data: Path, tmp_path: Path, make_checkpoint) -> None:
    """256 images of --calibrate DATA or of the built-in shapes, prepared as the
    checkpoint's own (a gray model gets gray shapes); model.json says which."""
    graph = deployment(load(trained("cnn"))).graphs[0]
    for source in (str(data / "train"), None):
        batches = graph.calibration(source)
        assert sum(len(b[0]) for b in batches) == 256
        assert batches[0][0].shape[1:] == (3, SIZE, SIZE)
    gray, _ = make_checkpoint("cnn", in_channels=1, image_size=28)
    batches = deployment(load(gray)).graphs[0].calibration(None)
    assert batches[0][0].shape[1:] == (1, 28, 28)
    result = lbdl("classify", "export", trained("cnn"), "--quantize", "int8", "--calibrate",
                  data / "train", "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    assert described["calibration"] == str(data / "train") and described["quantize"] == "int8"
    assert described["graphs"]["classifier"]["file"] == "classifier.int8.onnx"


def test_requests_that_cannot_work(
    trained, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = trained("cnn")
    images = data / "val" / "rising"
    result = lbdl("classify", "predict", checkpoint, images, "--quantize", "int8",
                  "--runtime", "torch")  # fmt: skip
    assert_user_error(result, "--quantize int8 --runtime torch", "convolutional")
    result = lbdl("classify", "evaluate", checkpoint, "--quantize", "int8", "--calibrate",
                  tmp_path / "nowhere")  # fmt: skip
    assert_user_error(result, "nowhere")
    result = lbdl("classify", "predict", checkpoint, images, "--runtime", "tvm")
    assert_user_error(result, "--runtime tvm")
    result = lbdl("classify", "export", checkpoint, "--format", "tflite")
    assert_user_error(result, "--format tflite")
    result = lbdl("classify", "export", checkpoint, "--format", "torchscript", "--quantize", "int8")
    assert_user_error(result, "--format onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [export] extra were missing
    result = lbdl("classify", "export", checkpoint, "--out", "elsewhere")
    assert_user_error(result, "onnx is not installed", "lbdl-apps[export]")
    assert not Path("elsewhere").exists()
