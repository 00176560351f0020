"""`lbdl classify` from the command line: the real command end to end, learning on the
built-in data and on an image folder, resume, --config, and the one rule for bad input
(DESIGN.md: one line on stderr, exit 2, no traceback)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lbdl_apps.classify.builtin import make_shapes
from lbdl_apps.classify.cli import TrainArgs
from lbdl_apps.classify.task import train as run_training
from lbdl_apps.core.checkpoint import save_checkpoint
from lbdl_apps.core.options import Common
from tests.cli_helpers import assert_user_error, lbdl, lbdl_subprocess

EXIF_ORIENTATION = 0x0112
TINY_MODEL = ["--model", "cnn", "--width", "4", "--depth", "1"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs write relative paths (runs/...) under tmp_path, never in the repo."""
    monkeypatch.chdir(tmp_path)


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------
# Synthetic image folders


def stripes(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """An RGB image of horizontal or vertical stripes (random period, phase, colors), or a
    flat noisy color ("flat")."""
    dark, light = rng.integers(0, 90, 3), rng.integers(166, 256, 3)  # contrast in gray too
    color, other = (dark, light) if rng.random() < 0.5 else (light, dark)
    if kind == "flat":
        image = np.broadcast_to(color, (size, size, 3)).astype(np.float32)
    else:
        period = int(rng.integers(4, 10))
        on = (np.arange(size) + rng.integers(0, period)) % period < period // 2
        rows = np.where(on[:, None], color, other)  # (size, 3): one color per row
        image = np.broadcast_to(rows[:, None, :], (size, size, 3)).astype(np.float32)
        if kind == "vertical":
            image = image.transpose(1, 0, 2)
    image = image + rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def save_image(array: np.ndarray, path: Path, variant: int) -> Path:
    """Save as PNG, as a gray PNG, or as a JPEG whose pixels are stored rotated with an EXIF
    orientation tag that turns them back (a phone photo)."""
    image = Image.fromarray(array)
    if variant == 1:
        path = path.with_suffix(".png")
        image.convert("L").save(path)
    elif variant == 2:
        path = path.with_suffix(".jpg")
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6  # display = stored pixels rotated 90 degrees clockwise
        image.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    else:
        path = path.with_suffix(".png")
        image.save(path)
    return path


def write_folder(root: Path, per_class: int, seed: int, classes=("horizontal", "vertical")):
    """root/<class>/<class>_<i>.{png,jpg}; every 4th image gray, every 3rd an EXIF JPEG."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            variant = 2 if i % 3 == 2 else 1 if i % 4 == 1 else 0
            paths.append(save_image(stripes(name, rng), root / name / f"{name}_{i}", variant))
    return paths


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image, whatever the extension says\n")
    return path


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """Two classes of four 8x8 images: loads in milliseconds."""
    root = tmp_path / "tiny"
    rng = np.random.default_rng(0)
    for name in ("dark", "light"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            value = 40 if name == "dark" else 210
            array = np.clip(rng.normal(value, 10, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(array).save(root / name / f"{i}.png")
    return root


# ----------------------------------------------------------------------------------------------
# End to end, in a real process


@pytest.mark.slow
def test_train_evaluate_predict_end_to_end(tmp_path: Path) -> None:
    common = ["--threads", "1"]
    train = lbdl_subprocess(
        "classify", "train", "--model", "cnn", "--epochs", "1", "--fraction", "0.05",
        "--run-dir", "RUN", "--quiet", *common, cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    run = tmp_path / "RUN"
    for name in ("config.json", "metrics.csv", "model.safetensors", "last.safetensors",
                 "state.pt", "loss.png"):  # fmt: skip
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["args"]["model"] == "cnn"
    assert len(metrics_rows(run)) == 1
    assert "RUN" in train.stdout  # the run folder is printed at the end

    evaluate = lbdl_subprocess(
        "classify", "evaluate", "RUN/model.safetensors", "--out", "EVAL", *common, cwd=tmp_path
    )
    assert evaluate.returncode == 0, evaluate.stderr
    metrics = json.loads((tmp_path / "EVAL" / "metrics.json").read_text())
    assert 0.0 <= metrics["acc"] <= metrics["top5"] <= 1.0
    assert metrics["images"] == 1000 and metrics["split"] == "test"
    assert len(metrics["per_class"]) == 10 and set(metrics["per_class"]["circle"]) == {
        "precision", "recall", "f1",
    }  # fmt: skip
    assert (tmp_path / "EVAL" / "confusion_matrix.png").stat().st_size > 1000

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    images, _, _ = make_shapes(3, 32, seed=7)
    good = []
    for i, array in enumerate(images):
        Image.fromarray(array).save(inputs / f"shape{i}.png")
        good.append(f"shape{i}.png")
    write_corrupt(inputs / "broken.png")
    predict = lbdl_subprocess(
        "classify", "predict", "RUN/model.safetensors", "inputs", "--out", "PRED", *common,
        cwd=tmp_path,
    )  # fmt: skip
    assert predict.returncode == 3, predict.stderr
    assert "broken.png" in predict.stderr and "Traceback" not in predict.stderr
    assert "3 images processed, 1 failed" in predict.stdout
    with (tmp_path / "PRED" / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(r["path"]).name for r in rows) == good
    assert all(r["label"] in metrics["per_class"] for r in rows)
    as_json = json.loads((tmp_path / "PRED" / "predictions.json").read_text())
    assert sorted(Path(p["path"]).name for p in as_json) == good
    assert all(len(p["labels"]) == 5 and p["probabilities"] == sorted(p["probabilities"],
               reverse=True) for p in as_json)  # fmt: skip

    # --strict stops at the bad file (in-process: a fourth interpreter start adds nothing).
    strict = lbdl("classify", "predict", "RUN/model.safetensors", "inputs", "--strict")
    assert_user_error(strict, "broken.png")


# ----------------------------------------------------------------------------------------------
# Learning


@pytest.mark.slow
def test_cnn_learns_the_builtin_shapes(tmp_path: Path) -> None:
    """~20 s on one thread: test accuracy 0.46 measured (chance 0.10)."""
    common = Common(device="cpu", threads=1, quiet=True, seed=0)
    common.apply()
    args = TrainArgs(
        model="cnn", width=16, epochs=4, fraction=0.5, batch_size=64, lr=3e-3, warmup=0.5,
        run_dir=tmp_path / "run",
    )  # fmt: skip
    scores = run_training(args, common)
    assert scores["test_acc"] > 0.3, scores
    assert scores["test_top5"] > 0.7, scores
    losses = [float(row["train_loss"]) for row in metrics_rows(tmp_path / "run")]
    assert len(losses) == 4
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.85 * losses[0], losses
    assert (tmp_path / "run" / "confusion_matrix.png").is_file()


@pytest.mark.slow
def test_image_folder_trains_and_predicts(tmp_path: Path) -> None:
    """Stripes: horizontal vs vertical vs flat, gray PNGs and EXIF-rotated JPEGs among them."""
    classes = ("flat", "horizontal", "vertical")
    write_folder(tmp_path / "data", 20, seed=0, classes=classes)
    result = lbdl(
        "classify", "train", "--data", "data", "--model", "cnn", "--width", "8", "--depth", "2",
        "--epochs", "12", "--batch-size", "16", "--lr", "3e-3", "--val-fraction", "0.2",
        "--run-dir", "run", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["in_channels"] == 3  # gray and color images: color model
    held_out = write_folder(tmp_path / "new", 8, seed=1, classes=classes)
    result = lbdl("classify", "predict", "run/model.safetensors", "new", "--out", "pred", "--quiet")
    assert result.exit_code == 0, result.output
    predictions = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(predictions) == len(held_out) == 24
    right = {p["path"]: p["labels"][0] == Path(p["path"]).parent.name for p in predictions}
    accuracy = sum(right.values()) / len(right)
    assert accuracy >= 0.8, predictions
    # The EXIF JPEGs hold stripes turned by 90 degrees: right only if the tag is applied.
    rotated = [ok for path, ok in right.items() if path.endswith(".jpg")]
    assert len(rotated) == 6 and sum(rotated) >= 5, right


# ----------------------------------------------------------------------------------------------
# Resume and --config


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Ctrl-C after the first epoch, --resume, and the weights of a run never interrupted."""
    write_folder(tmp_path / "data", 60, seed=0)
    train = [
        "classify", "train", "--data", "data", "--model", "cnn", "--width", "8", "--depth", "2",
        "--epochs", "4", "--batch-size", "4", "--threads", "1",
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "lbdl_apps", *train, "--run-dir", "run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.005)  # wait for the end of the first epoch (later ones take ~1 s)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr
    assert (tmp_path / "run" / "state.pt").is_file()
    assert 1 <= len(metrics_rows(tmp_path / "run")) < 4

    # Both runs in fresh processes, as the interrupted one: a user resumes in a new process,
    # and the libraries earlier tests loaded into this one must not change its arithmetic.
    resumed = lbdl_subprocess("classify", "train", "--resume", "run", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [row["epoch"] for row in metrics_rows(tmp_path / "run")] == ["1", "2", "3", "4"]

    straight = lbdl_subprocess(*train, "--run-dir", "straight", "--quiet", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    weights = load_file(tmp_path / "run" / "last.safetensors")
    expected = load_file(tmp_path / "straight" / "last.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name

    # The run is now finished: resuming it again says so.
    again = lbdl("classify", "train", "--resume", "run")
    assert_user_error(again, "--resume run", "finished its 4 epochs")


def test_resume_needs_a_training_state(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_user_error(lbdl("classify", "train", "--resume", "empty"), "empty", "state.pt")
    assert_user_error(lbdl("classify", "train", "--resume", "nowhere"), "nowhere")


def test_config_file_sets_options_and_flags_win(tmp_path: Path, tiny_folder: Path) -> None:
    config = tmp_path / "train.toml"
    config.write_text(
        'model = "cnn"\nepochs = 3\nwidth = 4\ndepth = 1\nbatch-size = 5\ndata = "tiny"\n'
    )
    result = lbdl("classify", "train", "--config", config, "--epochs", "1", "--run-dir", "run",
                  "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["args"]
    assert saved["epochs"] == 1  # the flag wins over the file
    assert (saved["model"], saved["width"], saved["depth"]) == ("cnn", 4, 1)
    assert (saved["batch_size"], saved["data"]) == (5, "tiny")
    assert len(metrics_rows(tmp_path / "run")) == 1

    config.write_text('model = "cnn"\nepoch = 3\n')
    assert_user_error(lbdl("classify", "train", "--config", config), "epoch", "train.toml")
    config.write_text("model = \n")
    assert_user_error(lbdl("classify", "train", "--config", config), "train.toml")


# ----------------------------------------------------------------------------------------------
# Bad input: one line, exit 2


def test_missing_data_path() -> None:
    assert_user_error(lbdl("classify", "train", "--data", "no/such/folder"), "no/such/folder")


def test_empty_data_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_user_error(lbdl("classify", "train", "--data", "empty"), "empty", "class folders")


def test_one_class_is_not_enough(tmp_path: Path) -> None:
    write_folder(tmp_path / "one", 3, seed=0, classes=("horizontal",))
    assert_user_error(lbdl("classify", "train", "--data", "one"), "one", "1 class")


def test_corrupt_training_image_stops_unless_skip_bad(tmp_path: Path, tiny_folder: Path) -> None:
    write_corrupt(tiny_folder / "dark" / "bad1.png")
    write_corrupt(tiny_folder / "light" / "bad2.jpg")
    args = ["classify", "train", "--data", "tiny", *TINY_MODEL, "--epochs", "1", "--quiet"]
    line = assert_user_error(lbdl(*args, "--run-dir", "run"), "bad1.png", "--skip-bad")
    assert "2 bad records" in line
    assert not (tmp_path / "run" / "model.safetensors").exists()

    result = lbdl(*args, "--run-dir", "run2", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "bad1.png" in result.stderr and "bad2.jpg" in result.stderr  # each one warned
    assert (tmp_path / "run2" / "model.safetensors").is_file()


def test_accumulate_and_grad_clip_reach_the_trainer(tmp_path: Path, tiny_folder: Path) -> None:
    """--accumulate N sums N batches per optimizer step; --grad-clip sets the norm clip."""
    args = ["classify", "train", "--data", "tiny", *TINY_MODEL, "--epochs", "2", "--quiet"]
    sizes = ["--batch-size", "2", "--accumulate", "2", "--grad-clip", "0.5"]
    result = lbdl(*args, *sizes, "--run-dir", "run")
    assert result.exit_code == 0, result.output
    # 6 training images (2 held out): 3 batches of 2 an epoch, 2 optimizer steps
    assert [int(row["step"]) for row in metrics_rows(tmp_path / "run")] == [2, 4]
    settings = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (settings["accumulate"], settings["grad_clip"]) == (2, 0.5)
    assert_user_error(lbdl(*args, "--accumulate", "0"), "--accumulate")


@pytest.mark.parametrize("verb", ["evaluate", "predict"])
def test_checkpoint_of_another_task(tmp_path: Path, verb: str) -> None:
    path = tmp_path / "detector.safetensors"
    save_checkpoint(path, {"w": torch.zeros(2)}, {"task": "detect", "config": {}})
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    extra = [image] if verb == "predict" else []
    line = assert_user_error(lbdl("classify", verb, path, *extra), "detector.safetensors")
    assert "detect" in line and "classify" in line


@pytest.mark.parametrize("verb", ["evaluate", "predict"])
def test_truncated_checkpoint(tmp_path: Path, make_checkpoint, verb: str) -> None:
    path, _ = make_checkpoint()
    data = path.read_bytes()
    for cut in (len(data) // 2, 40):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        extra = [path] if verb == "predict" else []
        line = assert_user_error(lbdl("classify", verb, bad, *extra), bad.name)
        assert "truncated" in line or "corrupt" in line


def test_a_png_is_not_a_checkpoint(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "picture.png")
    assert_user_error(lbdl("classify", "evaluate", "picture.png"), "picture.png")
    assert_user_error(lbdl("classify", "predict", "picture.png", "picture.png"), "picture.png")


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--epochs", "abc"], ["--epochs", "integer"]),
        (["--epochs", "0"], ["--epochs", "greater than or equal to 1"]),
        (["--lr", "-1"], ["--lr"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--model", "banana"], ["--model banana", "cnn"]),
        (["--augment", "banana"], ["--augment banana"]),
        (["--device", "banana"], ["--device banana"]),
        (["--no-such-flag"], ["--no-such-flag"]),
    ],
)
def test_bad_flag_values(tiny_folder: Path, flags: list[str], names: list[str]) -> None:
    result = lbdl("classify", "train", "--data", "tiny", "--epochs", "1", *flags, "--quiet")
    assert_user_error(result, *names)


def test_cuda_on_a_machine_without_it(tiny_folder: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = lbdl("classify", "train", "--data", "tiny", "--device", "cuda")
    assert_user_error(result, "--device cuda", "CUDA")
    assert_user_error(lbdl("classify", "predict", "x.safetensors", "x.png", "--device", "cuda:1"),
                      "--device cuda:1")  # fmt: skip


def test_predict_inputs_that_match_nothing(tmp_path: Path, make_checkpoint) -> None:
    path, _ = make_checkpoint()
    result = lbdl("classify", "predict", path, "photos/*.jpg", "--out", "pred")
    assert_user_error(result, "photos/*.jpg", "matches no files")
    assert_user_error(lbdl("classify", "predict", path, "missing.png"), "missing.png")
    (tmp_path / "no_images").mkdir()
    assert_user_error(lbdl("classify", "predict", path, "no_images"), "no_images")
    assert not (tmp_path / "pred").exists()


def test_existing_run_folder_needs_exist_ok(tmp_path: Path, tiny_folder: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    args = ["classify", "train", "--data", "tiny", *TINY_MODEL, "--epochs", "1", "--quiet"]
    assert_user_error(lbdl(*args, "--run-dir", "run"), "run", "--exist-ok")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]
    result = lbdl(*args, "--run-dir", "run", "--exist-ok")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"


def test_predict_of_a_good_checkpoint_in_process(tmp_path: Path, make_checkpoint) -> None:
    """The batch rule in-process: good files predicted, the bad one named, exit 3."""
    path, _ = make_checkpoint()
    (tmp_path / "in").mkdir()
    Image.new("L", (20, 30), 128).save(tmp_path / "in" / "gray.png")
    Image.new("RGBA", (16, 16), (255, 0, 0, 128)).save(tmp_path / "in" / "rgba.png")
    write_corrupt(tmp_path / "in" / "bad.jpg")
    result = lbdl("classify", "predict", path, "in", "--out", "pred", "--top-k", "2")
    assert result.exit_code == 3, result.output
    assert "bad.jpg" in result.stderr and "Traceback" not in result.output
    rows = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert sorted(Path(r["path"]).name for r in rows) == ["gray.png", "rgba.png"]
    assert all(len(r["labels"]) == 2 for r in rows)


def test_debug_shows_the_traceback() -> None:
    result = lbdl("classify", "train", "--data", "no/such/folder", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "LbdlError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("lbdl: error: no/such/folder")


def test_mixup_cutmix_ema_and_trivialaugment_train(tmp_path: Path) -> None:
    """Soft MixUp/CutMix targets in training, plain labels in validation, EMA weights saved."""
    result = lbdl(
        "classify", "train", *TINY_MODEL, "--epochs", "1", "--fraction", "0.03",
        "--mixup", "0.2", "--cutmix", "1.0", "--augment", "trivial", "--ema", "0.9",
        "--label-smoothing", "0.1", "--run-dir", tmp_path / "run", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    row = metrics_rows(tmp_path / "run")[0]
    assert 0.0 <= float(row["val_acc"]) <= 1.0
    raw_and_ema = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in raw_and_ema.values())
