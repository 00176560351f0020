"""`lbdl segment export`, `--runtime onnxruntime` and `--quantize int8` (book 8.2) on a
U-Net trained here on the built-in scenes: each format gives PyTorch's logits on images of
another batch and size, a PSPNet's pyramid pooling exports for any size, predict and
evaluate give the same through ONNX Runtime, static int8 (calibrated on tiles of images)
keeps the pixel accuracy within a point (measured: 0.907 against 0.907) and the requests
that cannot work are one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from lbdl_apps.core.checkpoint import load_model
from lbdl_apps.core.export import OnnxModule
from lbdl_apps.core.options import Common
from lbdl_apps.segment import load
from lbdl_apps.segment.builtin import make_scenes
from lbdl_apps.segment.cli import EvaluateArgs, TrainArgs
from lbdl_apps.segment.export import BinPool, deployment
from lbdl_apps.segment.model import SegmenterConfig, build_model
from lbdl_apps.segment.task import evaluate
from lbdl_apps.segment.task import train as run_training
from tests.cli_helpers import assert_user_error, lbdl
from tests.segment.test_cli import mask_folder

COMMON = {"device": "cpu", "threads": 1, "quiet": True, "seed": 0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A U-Net (width 16, 3 levels) trained four short epochs on 200 scenes (~12 s;
    pixel accuracy 0.91 on the held-out scenes, the constant predictor's mIoU 0.21
    against its 0.41)."""
    folder = tmp_path_factory.mktemp("segment_export")
    common = Common(**COMMON)  # type: ignore[arg-type]
    common.apply()
    args = TrainArgs(width=16, depth=3, blocks=1, epochs=4, scenes=200, batch_size=8, lr=1e-2,
                     warmup=0.3, run_dir=folder / "run")  # fmt: skip
    run_training(args, common)
    return folder / "run" / "model.safetensors"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def exported(path: Path, format: str) -> torch.nn.Module:
    if format == "onnx":
        return OnnxModule(path, ["images"], ["logits"])
    if format == "torchscript":
        return torch.jit.load(str(path))
    return torch.export.load(str(path)).module()


@pytest.mark.parametrize("format", ["onnx", "torchscript", "exported-program"])
def test_export_gives_pytorchs_logits(trained: Path, tmp_path: Path, format: str) -> None:
    result = lbdl("segment", "export", trained, "--format", format, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    entry = described["graphs"]["segmenter"]
    assert entry["max_abs_diff_vs_pytorch"] < 1e-4
    assert entry["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert entry["outputs"][0]["shape"] == ["batch", 4, "height", "width"]
    segmenter = load(trained)
    assert described["labels"] == segmenter.labels and "multiples of 4" in described["input"]
    assert described["preprocessing"]["mean"] == list(segmenter.preprocessing["mean"])
    assert "tiles of 64" in described["tiles"]
    images = torch.randn(3, 3, 40, 72)  # another batch, another size
    with torch.no_grad():
        expected = segmenter.model(images)
        got = exported(tmp_path / "out" / entry["file"], format)(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_pspnet_pools_any_size_once_exported(tmp_path: Path) -> None:
    """ONNX's exporter cannot export adaptive pooling to 2, 3 and 6 bins for inputs of any
    size; the graph pools with BinPool, equal to nn.AdaptiveAvgPool2d."""
    for side, bins in [(5, 6), (9, 2), (13, 3), (8, 6)]:
        maps = torch.randn(2, 3, side, side + 3)
        torch.testing.assert_close(
            BinPool(bins)(maps), torch.nn.functional.adaptive_avg_pool2d(maps, bins)
        )
    args = TrainArgs(model="pspnet", backbone="resnet-small", width=16, epochs=1, scenes=8,
                     batch_size=4, run_dir=tmp_path / "run")  # fmt: skip
    run_training(args, Common(**COMMON))  # type: ignore[arg-type]
    checkpoint = tmp_path / "run" / "model.safetensors"
    result = lbdl("segment", "export", checkpoint, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    original, _ = load_model(checkpoint, "segment", build_model, SegmenterConfig)
    images = torch.randn(3, 3, 40, 72)  # another batch and size than the sample's 64 x 64
    with torch.no_grad():
        expected = original.eval()(images)
    got = OnnxModule(tmp_path / "out" / "segmenter.onnx", ["images"], ["logits"])(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_predict_and_evaluate_the_same_through_onnx_runtime(trained: Path, tmp_path: Path) -> None:
    images, _ = make_scenes(3, 96, seed=5)  # larger than the tile: a sliding window
    (tmp_path / "in").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "in" / f"{i}.png")
    for name, extra in [("torch", []), ("ort", ["--runtime", "onnxruntime"])]:
        result = lbdl("segment", "predict", trained, tmp_path / "in", "--raw", "--out",
                      tmp_path / name / "predict", *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        result = lbdl("segment", "evaluate", trained, "--out", tmp_path / name / "evaluate",
                      *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
    for mask in sorted((tmp_path / "torch" / "predict").glob("*_raw.png")):
        ours = np.asarray(Image.open(mask))
        theirs = np.asarray(Image.open(tmp_path / "ort" / "predict" / mask.name))
        assert (ours == theirs).mean() > 0.999
    ours, theirs = (
        json.loads((tmp_path / name / "evaluate" / "metrics.json").read_text())
        for name in ("torch", "ort")
    )
    assert ours["pixel_acc"] == pytest.approx(theirs["pixel_acc"], abs=1e-4)
    assert ours["miou"] == pytest.approx(theirs["miou"], abs=1e-3)
    assert (trained.parent / "model.safetensors.exported" / "segmenter.onnx").exists()


def test_int8_keeps_the_pixel_accuracy(trained: Path, tmp_path: Path) -> None:
    common = Common(**COMMON)  # type: ignore[arg-type]
    scores = {}
    for name, quantize in [("fp32", None), ("int8", "int8")]:
        args = EvaluateArgs(checkpoint=str(trained), out=tmp_path / name, quantize=quantize)
        scores[name] = evaluate(args, common).scores
    assert scores["fp32"]["miou"] > scores["fp32"]["constant_miou"] + 0.1, scores  # learned
    assert abs(scores["int8"]["pixel_acc"] - scores["fp32"]["pixel_acc"]) < 0.01, scores
    assert abs(scores["int8"]["miou"] - scores["fp32"]["miou"]) < 0.02, scores
    int8 = trained.parent / "model.safetensors.exported" / "segmenter.int8.onnx"
    operations = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= operations  # static QDQ int8
    result = lbdl("segment", "predict", trained, *map(str, mask_folder(tmp_path / "d")[:1]),
                  "--quantize", "int8", "--out", tmp_path / "p")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "0_mask.png").exists()


def test_calibration_tiles(trained: Path, tmp_path: Path) -> None:
    """Tiles of the sliding window's size from --calibrate DATA or the built-in scenes;
    model.json says which data calibrated the export."""
    graph = deployment(load(trained)).graphs[0]
    assert graph.convolutional
    mask_folder(tmp_path / "data", n=6, size=80)
    for source in (str(tmp_path / "data"), None):
        batches = graph.calibration(source)
        assert sum(len(b[0]) for b in batches) == 256
        assert batches[0][0].shape[1:] == (3, 64, 64)
    result = lbdl("segment", "export", trained, "--quantize", "int8", "--calibrate",
                  tmp_path / "data", "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    assert described["calibration"] == str(tmp_path / "data")
    assert described["graphs"]["segmenter"]["file"] == "segmenter.int8.onnx"


def test_requests_that_cannot_work(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = mask_folder(tmp_path / "d")[0].parent.parent / "images" / "0.png"
    result = lbdl("segment", "predict", trained, image, "--quantize", "int8", "--runtime", "torch")
    assert_user_error(result, "--quantize int8 --runtime torch", "convolutional")
    result = lbdl("segment", "evaluate", trained, "--runtime", "tvm")
    assert_user_error(result, "--runtime tvm")
    result = lbdl("segment", "export", trained, "--format", "tflite")
    assert_user_error(result, "--format tflite")
    result = lbdl("segment", "export", trained, "--format", "torchscript", "--quantize", "int8")
    assert_user_error(result, "--format onnx")
    result = lbdl("segment", "export", trained, "--quantize", "int8", "--calibrate", "nowhere")
    assert_user_error(result, "nowhere")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [export] extra were missing
    result = lbdl("segment", "export", trained, "--out", "elsewhere")
    assert_user_error(result, "onnx is not installed", "lbdl-apps[export]")
    assert not Path("elsewhere").exists()
