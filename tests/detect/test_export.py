"""`lbdl detect export`, `--runtime onnxruntime` and `--quantize int8` (book 8.2) on an SSD
trained here: each format gives PyTorch's boxes and probabilities on another batch, the
`--nms` graph through ONNX Runtime finds what `predict` finds, ONNX Runtime predicts and
evaluates as PyTorch does, int8 keeps the mAP within a few points, and the requests that
cannot work are one-line errors."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lbdl_apps.core.checkpoint import save_checkpoint
from lbdl_apps.core.export import OnnxModule
from lbdl_apps.core.options import Common
from lbdl_apps.detect import load
from lbdl_apps.detect.cli import EvaluateArgs
from lbdl_apps.detect.export import samples
from lbdl_apps.detect.model import build_model, default_config
from lbdl_apps.detect.scenes import SCENE_CLASSES, make_scene
from lbdl_apps.detect.task import evaluate
from tests.cli_helpers import assert_user_error, lbdl
from tests.detect.conftest import scenes, write_voc

COMMON = Common(device="cpu", threads=1, quiet=True, seed=0)


@pytest.fixture
def trained(scenes_detector: Path) -> Path:
    """The detector of conftest.py, trained briefly on the built-in scenes."""
    return scenes_detector


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _photos(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    """Built-in scenes saved at other sizes than the model's input (aspect ratio too)."""
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        picture = Image.fromarray(make_scene(i, 96, seed=11)[0]).resize(size)
        picture.save(folder / f"p{i}.png")
    return folder


@pytest.mark.parametrize("format", ["onnx", "torchscript", "exported-program"])
def test_export_gives_pytorchs_outputs(trained: Path, tmp_path: Path, format: str) -> None:
    result = lbdl("detect", "export", trained, "--format", format, "--out", "out")
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    entry = described["graphs"]["model"]
    assert entry["max_abs_diff_vs_pytorch"] < 1e-4
    assert entry["inputs"][0]["shape"] == ["batch", 3, 64, 64]
    assert [o["name"] for o in entry["outputs"]] == ["boxes", "probs"]
    assert described["labels"] == list(SCENE_CLASSES) and described["format"] == format
    assert described["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    path = tmp_path / "out" / entry["file"]
    detector = load(trained)
    images = samples(detector, 3)  # another batch than the sample of 2
    with torch.no_grad():
        expected = detector.network(images)
        if format == "onnx":
            got = OnnxModule(path, ["images"], ["boxes", "probs"])(images)
        elif format == "torchscript":
            got = torch.jit.load(str(path))(images)
        else:
            got = torch.export.load(str(path)).module()(images)
    for ours, theirs in zip(expected, got, strict=True):
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_nms_graph_finds_what_predict_finds(trained: Path, tmp_path: Path) -> None:
    """The --nms ONNX file run by ONNX Runtime on images prepared as model.json says: the
    detections of `lbdl detect predict` (boxes, scores and classes, in order)."""
    _photos(tmp_path / "in", [(96, 96), (120, 80), (70, 100)])
    result = lbdl("detect", "predict", trained, "in", "--out", "pred", "--conf", "0.1")
    assert result.exit_code == 0, result.output
    result = lbdl("detect", "export", trained, "--nms", "--conf", "0.1", "--out", "nms")
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "nms" / "model.json").read_text())
    assert described["selection"]["conf"] == 0.1 and described["selection"]["max_det"] == 100
    names = [o["name"] for o in described["graphs"]["model_nms"]["outputs"]]
    assert names == ["boxes", "scores", "labels", "count"]
    found = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    files = sorted((tmp_path / "in").glob("*.png"))
    detector = load(trained)
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    images = torch.stack([detector.preprocessing(torch.tensor(a).permute(2, 0, 1))
                          for a in arrays])  # fmt: skip
    graph = OnnxModule(tmp_path / "nms" / "model_nms.onnx", ["images"], names)
    boxes, scores, labels, count = graph(images)
    assert len(found) == int(count.sum()) > 0
    for i, array in enumerate(arrays):
        rows = [r for r in found if r["file_name"] == str(Path("in") / files[i].name)]
        n = int(count[i])
        assert len(rows) == n and (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all()
        height, width = array.shape[:2]
        pixels = boxes[i, :n] * torch.tensor([width, height, width, height])
        xywh = torch.cat([pixels[:, :2], pixels[:, 2:] - pixels[:, :2]], 1)
        torch.testing.assert_close(xywh, torch.tensor([r["bbox"] for r in rows]), atol=0.02,
                                   rtol=0)  # fmt: skip
        assert labels[i, :n].tolist() == [r["category_id"] for r in rows]
        assert np.allclose(scores[i, :n].numpy(), [r["score"] for r in rows], atol=1e-4)


def test_nms_graph_with_candidates_per_class(tmp_path: Path) -> None:
    """torchvision's selection (the best `pre_nms` boxes of each class, as the COCO SSDs'
    checkpoints say) in the --nms graph, on an untrained tiny SSD whose many candidates fill
    the padded rows: the file through ONNX Runtime gives `detect_arrays`' detections."""
    torch.manual_seed(0)
    config = replace(default_config(3, "resnet-small", 32), width=4, extra_width=16)
    meta = {"task": "detect", "config": asdict(config), "labels": list(SCENE_CLASSES),
            "postprocessing": {"pre_nms": 20, "per_class": True}}  # fmt: skip
    save_checkpoint(tmp_path / "tiny.safetensors", build_model(config).state_dict(), meta)
    result = lbdl("detect", "export", "tiny.safetensors", "--nms", "--conf", "0.2",
                  "--max-det", "30", "--out", "nms")  # fmt: skip
    assert result.exit_code == 0, result.output
    selection = json.loads((tmp_path / "nms" / "model.json").read_text())["selection"]
    assert selection == {"conf": 0.2, "iou": 0.45, "max_det": 30, "pre_nms": 20,
                         "per_class": True}  # fmt: skip
    detector = load(tmp_path / "tiny.safetensors")
    arrays = [make_scene(i, 32, seed=5)[0] for i in range(3)]
    images = torch.stack([detector._input(a) for a in arrays])
    names = ["boxes", "scores", "labels", "count"]
    boxes, scores, labels, count = OnnxModule(tmp_path / "nms" / "model_nms.onnx", ["images"],
                                              names)(images)  # fmt: skip
    for i, (ours, probs, classes) in enumerate(detector.detect_arrays(arrays, 0.2, 0.45, 30)):
        n = int(count[i])
        assert n == len(ours) > 3 and labels[i, :n].tolist() == classes.tolist()
        np.testing.assert_allclose(boxes[i, :n].numpy() * 32, ours, atol=1e-3)
        np.testing.assert_allclose(scores[i, :n].numpy(), probs, atol=1e-5)


def test_onnx_runtime_predicts_and_evaluates_as_torch(trained: Path, tmp_path: Path) -> None:
    _photos(tmp_path / "in", [(96, 96), (120, 80)])
    for name, extra in [("torch", []), ("ort", ["--runtime", "onnxruntime"])]:
        result = lbdl("detect", "predict", trained, "in", "--out", f"pred_{name}", "--conf",
                      "0.1", *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        result = lbdl("detect", "evaluate", trained, "--out", f"eval_{name}", *extra)
        assert result.exit_code == 0, result.output
    ours = json.loads((tmp_path / "pred_torch" / "predictions.json").read_text())
    theirs = json.loads((tmp_path / "pred_ort" / "predictions.json").read_text())
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) < 1e-4
        assert np.allclose(a["bbox"], b["bbox"], atol=0.02)
    metrics = [json.loads((tmp_path / f"eval_{n}" / "metrics.json").read_text())
               for n in ("torch", "ort")]  # fmt: skip
    for key in ("map", "map_50", "map_75"):
        assert abs(metrics[0][key] - metrics[1][key]) < 1e-4, key
    assert (trained.parent / "model.safetensors.exported" / "model.onnx").exists()


def test_int8_keeps_the_map_within_a_few_points(trained: Path, tmp_path: Path) -> None:
    """Static int8 calibrated on the built-in scenes: mAP@.5 on the held-out scenes within
    0.03 of fp32 (measured: 0.096 fp32, 0.098 int8); int8 predicts; calibrated on a VOC
    folder too."""
    scores = {}
    for name, quantize in [("fp32", None), ("int8", "int8")]:
        args = EvaluateArgs(checkpoint=str(trained), out=tmp_path / name, quantize=quantize)
        scores[name] = evaluate(args, COMMON).scores["map_50"]
    assert scores["int8"] != scores["fp32"]  # int8 did run
    assert abs(scores["int8"] - scores["fp32"]) < 0.03, scores
    assert (trained.parent / "model.safetensors.exported" / "model.int8.onnx").exists()
    _photos(tmp_path / "in", [(96, 96)])
    result = lbdl("detect", "predict", trained, "in", "--quantize", "int8", "--out", "pred")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "p0.jpg").is_file()
    write_voc(tmp_path / "voc", scenes(20, size=80))
    result = lbdl("detect", "export", trained, "--quantize", "int8", "--calibrate", "voc",
                  "--out", "q")  # fmt: skip
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "q" / "model.json").read_text())
    assert described["calibration"] == "voc" and described["graphs"]["model"]["int8"]
    assert (tmp_path / "q" / "model.int8.onnx").is_file()


def test_requests_that_cannot_work(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = lbdl("detect", "predict", trained, "x.png", "--quantize", "int8", "--runtime", "torch")
    assert_user_error(result, "--quantize int8 --runtime torch", "convolutional")
    assert_user_error(lbdl("detect", "evaluate", trained, "--runtime", "tvm"), "--runtime tvm")
    assert_user_error(lbdl("detect", "export", trained, "--format", "tflite"), "--format tflite")
    result = lbdl("detect", "export", trained, "--format", "torchscript", "--quantize", "int8")
    assert_user_error(result, "--format onnx")
    result = lbdl("detect", "export", trained, "--quantize", "int4")
    assert_user_error(result, "--quantize int4")
    result = lbdl("detect", "export", trained, "--quantize", "int8", "--calibrate", "nowhere")
    assert_user_error(result, "nowhere")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [export] extra were missing
    result = lbdl("detect", "export", trained, "--out", "elsewhere")
    assert_user_error(result, "onnx is not installed", "lbdl-apps[export]")
    assert not Path("elsewhere").exists()
