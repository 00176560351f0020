"""`lbdl clip export`, `--runtime onnxruntime` and `--quantize int8` (book 8.2) on a CLIP
trained here to tell four colours apart: each format gives PyTorch's embeddings (images of
another batch, texts of different lengths), model.json has what a user needs to feed it,
every verb gives the same outputs through ONNX Runtime, int8 keeps the zero-shot accuracy
within 3 points (measured: 0 to 1 point), a convolutional image tower gets static int8
calibrated on images, and the requests that cannot work are one-line errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer

from lbdl_apps.clip import load
from lbdl_apps.clip.cli import EvaluateArgs, TrainArgs
from lbdl_apps.clip.export import deployment
from lbdl_apps.clip.task import evaluate
from lbdl_apps.clip.task import train as run_training
from lbdl_apps.core.export import OnnxModule
from lbdl_apps.core.options import Common
from tests.cli_helpers import assert_user_error, lbdl

COLOURS = {"red": (220, 40, 40), "yellow": (225, 215, 40), "green": (50, 170, 60),
           "blue": (40, 70, 210)}  # fmt: skip
TEXTS = ["a photo of a red thing on a noisy gray background, seen from above.",
         "a blue thing", "a"]  # fmt: skip


def write_colours(root: Path, per_class: int, seed: int, size: int = 32) -> None:
    """Class folders of noisy gray images, each with a disc of its class's colour."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.normal(128, 40, (size, size, 3))
            radius = rng.integers(4, 10)
            y, x = rng.integers(radius, size - radius, 2)
            image[(rows - y) ** 2 + (cols - x) ** 2 <= radius**2] = rgb + rng.normal(0, 45, 3)
            picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
            picture.save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("colours")
    write_colours(folder / "train", 80, seed=0)
    write_colours(folder / "val", 40, seed=1)
    return folder


@pytest.fixture(scope="module")
def trained(data: Path) -> Path:
    """A tiny CLIP trained for four short epochs on the colours (~9 s; measured zero-shot
    accuracy on the validation images: 0.65, chance 0.25)."""
    common = Common(device="cpu", threads=1, quiet=True, seed=0)
    common.apply()
    run = data.parent / "run"
    args = TrainArgs(model="tiny", epochs=4, data=str(data), image_size=32, batch_size=40,
                     lr=3e-3, warmup=0.2, context_length=12, vocab_size=200,
                     run_dir=run)  # fmt: skip
    run_training(args, common)
    return run / "model.safetensors"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def exported_module(path: Path, format: str, names: tuple[str, str]):
    if format == "onnx":
        return OnnxModule(path, [names[0]], [names[1]])
    if format == "torchscript":
        return torch.jit.load(str(path))
    return torch.export.load(str(path)).module()


@pytest.mark.parametrize("format", ["onnx", "torchscript", "exported-program"])
def test_export_gives_pytorchs_embeddings(trained: Path, tmp_path: Path, format: str) -> None:
    result = lbdl("clip", "export", trained, "--format", format, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    image, text = described["graphs"]["image_encoder"], described["graphs"]["text_encoder"]
    assert image["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert text["inputs"][0] == {"name": "tokens", "shape": ["batch", 12], "dtype": "int64"}
    assert max(image["max_abs_diff_vs_pytorch"], text["max_abs_diff_vs_pytorch"]) < 1e-4
    clip = load(trained)
    images = torch.randn(3, 3, 32, 32)  # another batch
    tokens = clip.tokenize(TEXTS)  # three lengths: the end-of-text token at three places
    assert len(set((tokens == clip.tokenizer.eot_id).int().argmax(1).tolist())) == 3
    for entry, names, inputs, expected in [
        (image, ("images", "embeddings"), images, clip.encode_image(images)),
        (text, ("tokens", "embeddings"), tokens, clip.encode_text(TEXTS)),
    ]:
        module = exported_module(tmp_path / "out" / entry["file"], format, names)
        with torch.no_grad():
            got = module(inputs)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_model_json_says_how_to_feed_the_towers(trained: Path, tmp_path: Path) -> None:
    assert lbdl("clip", "export", trained, "--out", tmp_path / "out").exit_code == 0
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    clip = load(trained)
    facts = described["tokenizer"]
    assert facts["context_length"] == 12 and facts["file"] == "tokenizer.json"
    assert (facts["sot_id"], facts["eot_id"]) == (clip.tokenizer.sot_id, clip.tokenizer.eot_id)
    bpe = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    for row, caption in zip(clip.tokenize(TEXTS), TEXTS, strict=True):  # the stated id rule
        ids = [facts["sot_id"], *bpe.encode(caption).ids[: 12 - 2], facts["eot_id"]]
        assert row.tolist() == ids + [facts["pad_id"]] * (12 - len(ids))
    pre = described["image_preprocessing"]
    assert pre["mean"] == clip.preprocessing["mean"] and "bicubic" in pre["resize"]
    assert sorted(described["class_names"]) == sorted(COLOURS)
    assert described["logit_scale"] == pytest.approx(clip.logit_scale)


def test_every_verb_gives_the_same_through_onnx_runtime(
    trained: Path, data: Path, tmp_path: Path
) -> None:
    images = data / "val" / "blue"
    for name, extra in [("torch", []), ("ort", ["--runtime", "onnxruntime"])]:
        for verb, *args in [
            ("zero-shot", images, "--labels", ",".join(COLOURS)),
            ("embed", images),
            ("embed", "--text", TEXTS[0], "--text", TEXTS[2]),
            ("search", images, "--text", "a blue thing", "--top-k", "5"),
            ("evaluate", "--data", data, "--split", "val"),
        ]:
            out = tmp_path / name / f"{verb}{len(args)}"
            result = lbdl("clip", verb, trained, *args, "--out", out, *extra)
            assert result.exit_code == 0, result.output
    for folder in sorted((tmp_path / "torch").iterdir()):
        other = tmp_path / "ort" / folder.name
        if (folder / "embeddings.npy").exists():
            ours, theirs = np.load(folder / "embeddings.npy"), np.load(other / "embeddings.npy")
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
        for table in folder.glob("*.json"):
            ours, theirs = (
                json.loads(table.read_text()),
                json.loads((other / table.name).read_text()),
            )
            if table.name == "zero_shot.json":
                assert [p["labels"] for p in ours] == [p["labels"] for p in theirs]
                assert np.allclose([p["probabilities"] for p in ours],
                                   [p["probabilities"] for p in theirs], atol=1e-4)  # fmt: skip
            elif table.name == "metrics.json":
                assert ours["zero_shot_acc"] == theirs["zero_shot_acc"]
                assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-4)
        if (folder / "results.csv").exists():
            with open(folder / "results.csv") as a, open(other / "results.csv") as b:
                ranks = [[row[:2] for row in csv.reader(f)] for f in (a, b)]
            assert ranks[0] == ranks[1]
    cache = trained.parent / "model.safetensors.exported"
    assert {p.name for p in cache.glob("*.onnx")} >= {"image_encoder.onnx", "text_encoder.onnx"}


def test_int8_keeps_the_zero_shot_accuracy(trained: Path, data: Path, tmp_path: Path) -> None:
    common = Common(device="cpu", threads=1, quiet=True, seed=0)
    scores = {}
    # int8 runs in ONNX Runtime unless --runtime torch asks for torchao's
    variants = {"fp32": {}, "torchao": {"quantize": "int8", "runtime": "torch"},
                "onnxruntime": {"quantize": "int8"}}  # fmt: skip
    for name, extra in variants.items():
        args = EvaluateArgs(checkpoint=str(trained), data=str(data), split="val",
                            out=tmp_path / name, **extra)  # fmt: skip
        scores[name] = evaluate(args, common).scores
    fp32 = scores["fp32"]["zero_shot_acc"]
    assert fp32 > 0.5, scores  # the model learned the colours (chance: 0.25)
    for name in ("onnxruntime", "torchao"):
        assert abs(scores[name]["zero_shot_acc"] - fp32) <= 0.03, scores
        assert scores[name]["loss"] != scores["fp32"]["loss"]  # int8 did run
    cache = trained.parent / "model.safetensors.exported"
    assert (cache / "image_encoder.int8.onnx").exists() and (
        cache / "text_encoder.int8.onnx"
    ).exists()
    predicted = {}  # the CLI's int8 gives fp32's labels
    for name, extra in {"fp32": (), "int8": ("--quantize", "int8")}.items():
        result = lbdl("clip", "zero-shot", trained, data / "val" / "red", "--labels",
                      ",".join(COLOURS), *extra, "--out", tmp_path / f"zs_{name}")  # fmt: skip
        assert result.exit_code == 0, result.output
        predicted[name] = json.loads((tmp_path / f"zs_{name}" / "zero_shot.json").read_text())
    fp32_labels, int8_labels = ([p["labels"][0] for p in predicted[name]] for name in predicted)
    assert sum(a == b for a, b in zip(fp32_labels, int8_labels, strict=True)) >= 0.9 * 40
    assert [p["probabilities"] for p in predicted["fp32"]] != [
        p["probabilities"] for p in predicted["int8"]
    ]


def test_a_convolutional_image_tower_gets_static_int8(data: Path, tmp_path: Path) -> None:
    """Patches of 32 on a width of 16: the patch convolution holds most of the image tower's
    weights, so core calibrates static int8 on images (here --calibrate's class folders)."""
    args = TrainArgs(model="tiny", epochs=1, data=str(data), image_size=32, patch_size=32,
                     width=16, depth=1, batch_size=40, context_length=12, vocab_size=200,
                     run_dir=tmp_path / "run")  # fmt: skip
    run_training(args, Common(device="cpu", threads=1, quiet=True, seed=0))
    checkpoint = tmp_path / "run" / "model.safetensors"
    clip = load(checkpoint)
    image, text = deployment(clip).graphs
    assert image.convolutional and not text.convolutional
    batches = image.calibration(str(data / "train"))
    assert sum(len(b[0]) for b in batches) == 256 and batches[0][0].shape[1:] == (3, 32, 32)
    assert sum(len(b[0]) for b in image.calibration(None)) == 256  # built-in scenes
    result = lbdl("clip", "export", checkpoint, "--quantize", "int8", "--calibrate",
                  data / "train", "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    assert described["calibration"] == str(data / "train")
    assert described["graphs"]["image_encoder"]["file"] == "image_encoder.int8.onnx"
    images = torch.stack([b for batch in batches[:2] for b in batch[0]])
    int8 = OnnxModule(tmp_path / "out" / "image_encoder.int8.onnx", ["images"], ["embeddings"])
    cosine = (int8(images) * clip.encode_image(images)).sum(dim=1)
    assert cosine.min() > 0.95, cosine.min()


def test_another_activation_is_cached_apart(trained: Path) -> None:
    from lbdl_apps.core.options import Inference

    clip = load(trained, inference=Inference(runtime="onnxruntime"), act="quick_gelu")
    cache = trained.parent / "model.safetensors.exported"
    assert (cache / "image_encoder.quick_gelu.onnx").exists()
    reference = load(trained, act="quick_gelu")
    torch.testing.assert_close(clip.encode_text(TEXTS), reference.encode_text(TEXTS),
                               atol=1e-5, rtol=1e-5)  # fmt: skip


def test_requests_that_cannot_work(
    trained: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = data / "val" / "red"
    result = lbdl("clip", "zero-shot", trained, images, "--labels", "a,b", "--runtime", "tvm")
    assert_user_error(result, "--runtime tvm")
    result = lbdl("clip", "embed", trained, "--text", "a", "--quantize", "int4")
    assert_user_error(result, "--quantize int4")
    result = lbdl("clip", "search", trained, images, "--text", "a", "--compile",
                  "--runtime", "onnxruntime")  # fmt: skip
    assert_user_error(result, "--compile")
    result = lbdl("clip", "export", trained, "--format", "tflite")
    assert_user_error(result, "--format tflite")
    result = lbdl("clip", "export", trained, "--format", "torchscript", "--quantize", "int8")
    assert_user_error(result, "--format onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [export] extra were missing
    result = lbdl("clip", "export", trained, "--out", "elsewhere")
    assert_user_error(result, "onnx is not installed", "lbdl-apps[export]")
    assert not Path("elsewhere").exists()
