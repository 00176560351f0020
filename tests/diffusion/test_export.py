"""`lbdl diffusion export`, `--runtime onnxruntime` and `--quantize int8` (book 8.2) on a
class-conditional denoiser trained here: each format gives the model's predictions on
another batch (null rows included), ONNX Runtime samples the same images and scores the
same as PyTorch, static int8 keeps the samples' Fréchet distance and KID, and the requests
that cannot work are one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lbdl_apps.core.export import OnnxModule
from lbdl_apps.diffusion import load
from tests.cli_helpers import assert_user_error, lbdl
from tests.diffusion.conftest import train_tiny

SCORES_KEPT = 0.05  # int8's Fréchet distance and KID: within 5% of fp32's (same seeds)
EVALUATE = ["--n", "64", "--n-real", "200", "--steps", "10", "--batch-size", "64"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-conditional U-Net (8 px, width 8, T = 50) trained 3 epochs on 512 built-in
    scenes, a class per color (~3 s)."""
    run = tmp_path_factory.mktemp("diffusion_export") / "run"
    return train_tiny(run, scene_label="color", builtin_count=512, epochs=3, lr=3e-3)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _rows(count: int) -> tuple[torch.Tensor, ...]:
    """`count` noisy images, time indices, class labels and null flags (every third row)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(count, 3, 8, 8, generator=generator)
    t = torch.randint(0, 50, (count,), generator=generator)
    labels = torch.randint(0, 8, (count,), generator=generator)
    return x, t, labels, torch.arange(count) % 3 == 2


@pytest.mark.parametrize("format", ["onnx", "torchscript", "exported-program"])
def test_export_gives_the_models_predictions(trained: Path, tmp_path: Path, format: str) -> None:
    result = lbdl("diffusion", "export", trained, "--format", format, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    entry = described["graphs"]["denoiser"]
    assert entry["max_abs_diff_vs_pytorch"] < 1e-4
    names = [(i["name"], i["shape"], i["dtype"]) for i in entry["inputs"]]
    assert names == [("x_t", ["batch", 3, 8, 8], "float32"), ("t", ["batch"], "int64"),
                     ("class_label", ["batch"], "int64"), ("null", ["batch"], "bool")]  # fmt: skip
    assert entry["outputs"][0]["shape"] == ["batch", 3, 8, 8]
    assert described["conditioning"]["labels"] == load(trained).labels
    assert len(described["schedule"]["betas"]) == 50
    path = tmp_path / "out" / entry["file"]
    if format == "onnx":
        exported = OnnxModule(path, ["x_t", "t", "class_label", "null"], ["prediction"])
    elif format == "torchscript":
        exported = torch.jit.load(str(path))
    else:
        exported = torch.export.load(str(path)).module()
    x, t, labels, null = _rows(5)  # another batch than the sample's 2
    with torch.no_grad():
        expected = load(trained).model(x, t, labels, null)  # DiffusionUNet's own call
        torch.testing.assert_close(exported(x, t, labels, null), expected, atol=1e-4, rtol=1e-4)


def test_unconditional_export_takes_images_and_times(unconditional_model: Path) -> None:
    result = lbdl("diffusion", "export", unconditional_model, "--out", "out")
    assert result.exit_code == 0, result.output
    entry = json.loads(Path("out/model.json").read_text())["graphs"]["denoiser"]
    assert [i["name"] for i in entry["inputs"]] == ["x_t", "t"]
    x, t, _, _ = _rows(3)
    with torch.no_grad():
        expected = load(unconditional_model).model(x, t)
    got = OnnxModule(Path("out") / entry["file"], ["x_t", "t"], ["prediction"])(x, t)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_onnx_runtime_samples_the_same_images(trained: Path) -> None:
    for name, extra in [("torch", []), ("ort", ["--runtime", "onnxruntime"])]:
        result = lbdl("diffusion", "sample", trained, "--n", "8", "--steps", "5", "--out", name,
                      "--sampler", "ddim", *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
    pictures = sorted(Path("torch").glob("0*.png"))
    assert len(pictures) == 8
    for picture in pictures:
        ours = np.asarray(Image.open(picture), dtype=int)
        theirs = np.asarray(Image.open(Path("ort") / picture.name), dtype=int)
        assert np.abs(ours - theirs).max() <= 1
    assert (trained.parent / "model.safetensors.exported" / "denoiser.onnx").exists()


def _evaluate(trained: Path, classifier: Path, out: str, *flags: str) -> dict:
    result = lbdl("diffusion", "evaluate", trained, "--classifier", classifier, "--out", out,
                  *EVALUATE, *flags)  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((Path(out) / "metrics.json").read_text())


def test_evaluate_through_onnx_runtime_and_int8(trained: Path, tiny_classifier: Path) -> None:
    """fp32 through ONNX Runtime scores as PyTorch; static int8 (calibrated on the built-in
    scenes, the model's training data) moved the Fréchet distance and KID by 0.1-0.5% when
    measured (64 samples, DDPM 10 steps, 200 real scenes)."""
    fp32 = _evaluate(trained, tiny_classifier, "fp32")
    ort = _evaluate(trained, tiny_classifier, "ort", "--runtime", "onnxruntime")
    int8 = _evaluate(trained, tiny_classifier, "int8", "--quantize", "int8")
    for score in ("fd", "kid", "mean_class_acc"):
        assert ort[score] == pytest.approx(fp32[score], rel=1e-3, abs=1e-6), score
    assert int8["fd"] != fp32["fd"]  # int8 did run
    for score in ("fd", "kid"):
        assert int8[score] == pytest.approx(fp32[score], rel=SCORES_KEPT), (score, int8, fp32)
    assert (trained.parent / "model.safetensors.exported" / "denoiser.int8.onnx").exists()


def test_int8_export_says_what_calibrated_it(trained: Path) -> None:
    result = lbdl("diffusion", "export", trained, "--quantize", "int8", "--out", "int8")
    assert result.exit_code == 0, result.output
    described = json.loads(Path("int8/model.json").read_text())
    assert described["calibration"].startswith("256 images of the built-in scenes")
    entry = described["graphs"]["denoiser"]
    assert entry["int8"] and entry["file"] == "denoiser.int8.onnx"
    x, t, labels, null = _rows(4)
    exported = OnnxModule(Path("int8") / entry["file"], ["x_t", "t", "class_label", "null"],
                          ["prediction"])(x, t, labels, null)  # fmt: skip
    with torch.no_grad():
        expected = load(trained).model(x, t, labels, null)
    # measured at export on the sample rows: 0.051 of predictions up to 2.24
    assert 0 < float((exported - expected).abs().max()) < 0.1 * float(expected.abs().max())


def test_text_model_samples_the_same_through_onnx_runtime(
    clip_checkpoint: Path, tmp_path: Path
) -> None:
    """The CLIP text encoder stays in PyTorch; the graph takes its embeddings."""
    model = train_tiny(tmp_path / "text", clip=str(clip_checkpoint))
    prompts = ["--prompt", "a red circle.", "--prompt", "a blue square."]
    for name, extra in [("torch", []), ("ort", ["--runtime", "onnxruntime"])]:
        result = lbdl("diffusion", "sample", model, "--n", "4", "--steps", "3", *prompts,
                      "--out", name, *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
    for picture in sorted(Path("torch").glob("0*.png")):
        ours = np.asarray(Image.open(picture), dtype=int)
        theirs = np.asarray(Image.open(Path("ort") / picture.name), dtype=int)
        assert np.abs(ours - theirs).max() <= 1
    entry = json.loads((model.parent / "model.safetensors.exported" / "denoiser.onnx.json")
                       .read_text())  # fmt: skip
    assert entry["quantize"] is None


def test_requests_that_cannot_work(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sample = ["sample", trained, "--n", "2", "--steps", "2"]
    cases = [
        ([*sample, "--quantize", "int8", "--runtime", "torch"],
         ["--quantize int8 --runtime torch", "convolutional"]),
        ([*sample, "--calibrate", "nowhere"], ["--calibrate", "--quantize int8"]),
        ([*sample, "--quantize", "int8", "--calibrate", "nowhere"],
         ["--calibrate nowhere", "no such file"]),
        (["export", trained, "--format", "tflite"], ["--format tflite"]),
        (["export", trained, "--format", "torchscript", "--quantize", "int8"], ["--format onnx"]),
        (["export", trained, "--quantize", "int4"], ["--quantize int4"]),
    ]  # fmt: skip
    for args, names in cases:
        assert_user_error(lbdl("diffusion", *args), *names)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [export] extra were missing
    result = lbdl("diffusion", "export", trained, "--out", "elsewhere")
    assert_user_error(result, "onnx is not installed", "lbdl-apps[export]")
    assert not Path("elsewhere").exists()
