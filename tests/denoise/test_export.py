"""`lbdl denoise export`, `--runtime onnxruntime` and `--quantize int8` (book 8.2) on a
restorer trained here: each format gives PyTorch's outputs on an image of another size,
ONNX Runtime restores the same pictures as PyTorch, int8 stays within 0.2 dB of fp32, and
the requests that cannot work are one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lbdl_apps.core.export import OnnxModule
from lbdl_apps.core.options import Common
from lbdl_apps.denoise import load
from lbdl_apps.denoise.cli import EvaluateArgs, TrainArgs
from lbdl_apps.denoise.task import evaluate
from lbdl_apps.denoise.task import train as run_training
from tests.cli_helpers import assert_user_error, lbdl
from tests.denoise.test_cli import write_leaves


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DnCNN trained for two short epochs on gray dead leaves (~5 s)."""
    folder = tmp_path_factory.mktemp("denoise_export")
    common = Common(device="cpu", threads=1, quiet=True, seed=0)
    common.apply()
    args = TrainArgs(
        model="dncnn", width=16, depth=5, channels=1, epochs=2, patches_per_epoch=256,
        patch_size=40, batch_size=32, lr=3e-3, warmup=0.2, run_dir=folder / "run",
    )  # fmt: skip
    run_training(args, common)
    return folder / "run" / "model.safetensors"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("format", ["onnx", "torchscript", "exported-program"])
def test_export_gives_pytorchs_outputs(trained: Path, tmp_path: Path, format: str) -> None:
    result = lbdl("denoise", "export", trained, "--format", format, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    entry = described["graphs"]["denoiser"]
    assert entry["max_abs_diff_vs_pytorch"] < 1e-4
    assert entry["inputs"][0]["shape"] == ["batch", 1, "height", "width"]
    path = tmp_path / "out" / entry["file"]
    image = torch.rand(3, 1, 37, 52)  # another batch, another size
    expected = load(trained).model(image)
    if format == "onnx":
        got = OnnxModule(path, ["degraded"], ["restored"])(image)
    elif format == "torchscript":
        got = torch.jit.load(str(path))(image)
    else:
        got = torch.export.load(str(path)).module()(image)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_onnx_runtime_restores_the_same_pictures(trained: Path, tmp_path: Path) -> None:
    write_leaves(tmp_path / "in", 3, size=60)
    for name, extra in [("torch", []), ("ort", ["--runtime", "onnxruntime"])]:
        result = lbdl("denoise", "predict", trained, tmp_path / "in", "--out", name, *extra,
                      "--degrade", "gaussian:25")  # fmt: skip
        assert result.exit_code == 0, result.output
    for picture in sorted((tmp_path / "torch").glob("*_restored.png")):
        ours = np.asarray(Image.open(picture), dtype=int)
        theirs = np.asarray(Image.open(tmp_path / "ort" / picture.name), dtype=int)
        assert np.abs(ours - theirs).max() <= 1
    assert (trained.parent / "model.safetensors.exported" / "denoiser.onnx").exists()


def test_int8_stays_within_a_fifth_of_a_db(trained: Path, tmp_path: Path) -> None:
    common = Common(device="cpu", threads=1, quiet=True, seed=0)
    scores = {}
    for name, quantize in [("fp32", None), ("int8", "int8")]:
        args = EvaluateArgs(checkpoint=str(trained), out=tmp_path / name, baseline=False,
                            quantize=quantize)  # fmt: skip
        scores[name] = evaluate(args, common).scores["model"]["psnr"]
    assert scores["int8"] != scores["fp32"]  # int8 did run
    assert abs(scores["int8"] - scores["fp32"]) < 0.2, scores
    assert (trained.parent / "model.safetensors.exported" / "denoiser.int8.onnx").exists()


def test_requests_that_cannot_work(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = lbdl(
        "denoise", "predict", trained, "x.png", "--quantize", "int8", "--runtime", "torch"
    )
    assert_user_error(result, "--quantize int8 --runtime torch", "convolutional")
    result = lbdl("denoise", "export", trained, "--format", "tflite")
    assert_user_error(result, "--format tflite")
    result = lbdl("denoise", "export", trained, "--format", "torchscript", "--quantize", "int8")
    assert_user_error(result, "--format onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [export] extra were missing
    result = lbdl("denoise", "export", trained, "--out", "elsewhere")
    assert_user_error(result, "onnx is not installed", "lbdl-apps[export]")
    assert not Path("elsewhere").exists()
