"""`lbdl denoise` from the command line: the real command end to end, learning on the built-in
dead leaves, the benchmark protocol on Set12, and the one rule for bad input (DESIGN.md: one
line on stderr, exit 2, no traceback)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lbdl_apps.core.checkpoint import read_checkpoint, save_checkpoint
from lbdl_apps.core.options import Common
from lbdl_apps.denoise import load
from lbdl_apps.denoise.cli import EvaluateArgs, TrainArgs
from lbdl_apps.denoise.data import dead_leaves
from lbdl_apps.denoise.task import evaluate
from lbdl_apps.denoise.task import train as run_training
from tests.cli_helpers import assert_user_error, lbdl, lbdl_subprocess
from tests.denoise.test_model import small_model, write_checkpoint

TINY = ["--model", "dncnn", "--width", "8", "--depth", "4", "--patch-size", "32",
        "--patches-per-epoch", "64", "--batch-size", "16"]  # fmt: skip


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs write relative paths (runs/...) under tmp_path, never in the repo."""
    monkeypatch.chdir(tmp_path)


def write_leaves(folder: Path, n: int, size: int = 48, seed: int = 0, color: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, array in enumerate(dead_leaves(n, size, seed=seed, color=color)):
        paths.append(folder / f"leaves{i}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image, whatever the extension says\n")
    return path


# ----------------------------------------------------------------------------------------------
# End to end, in a real process


@pytest.mark.slow
def test_train_evaluate_predict_end_to_end(tmp_path: Path) -> None:
    common = ["--threads", "1"]
    train = lbdl_subprocess(
        "denoise", "train", *TINY, "--channels", "1", "--epochs", "1", "--run-dir", "RUN",
        "--quiet", *common, cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    run = tmp_path / "RUN"
    for name in ("config.json", "metrics.csv", "model.safetensors", "last.safetensors",
                 "state.pt", "loss.png"):  # fmt: skip
        assert (run / name).is_file(), name
    saved = json.loads((run / "config.json").read_text())
    assert saved["args"]["degrade"] == ["gaussian:25"] and saved["model"]["name"] == "dncnn"
    with (run / "metrics.csv").open(newline="") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["val_psnr"]) > 15 and 0 < float(row["val_ssim"]) <= 1

    evaluate = lbdl_subprocess(
        "denoise", "evaluate", "RUN/model.safetensors", "--out", "EVAL", *common, cwd=tmp_path
    )
    assert evaluate.returncode == 0, evaluate.stderr
    metrics = json.loads((tmp_path / "EVAL" / "metrics.json").read_text())
    assert metrics["images"] == 24 and metrics["baseline"] == "opencv-nlm"
    assert set(metrics["psnr"]) == {"input", "opencv-nlm", "model"}
    assert 19.5 < metrics["psnr"]["input"] < 21  # sigma 25, not clipped
    assert metrics["psnr"]["opencv-nlm"] > metrics["psnr"]["input"] + 1
    with (tmp_path / "EVAL" / "per_image.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 24

    write_leaves(tmp_path / "inputs", 2, size=70)
    write_corrupt(tmp_path / "inputs" / "broken.png")
    predict = lbdl_subprocess(
        "denoise", "predict", "RUN/model.safetensors", "inputs", "--out", "PRED",
        "--degrade", "gaussian:25", "--compare", *common, cwd=tmp_path,
    )  # fmt: skip
    assert predict.returncode == 3, predict.stderr
    assert "broken.png" in predict.stderr and "Traceback" not in predict.stderr
    assert "2 images processed, 1 failed" in predict.stdout
    written = sorted(p.name for p in (tmp_path / "PRED").iterdir())
    assert written == ["leaves0_compare.png", "leaves0_restored.png", "leaves1_compare.png",
                       "leaves1_restored.png"]  # fmt: skip
    assert Image.open(tmp_path / "PRED" / "leaves0_restored.png").size == (70, 70)
    assert Image.open(tmp_path / "PRED" / "leaves0_compare.png").size == (148, 70)


# ----------------------------------------------------------------------------------------------
# Learning


@pytest.mark.slow
def test_unet_learns_to_denoise_the_builtin_dead_leaves(tmp_path: Path) -> None:
    """~10 s on one thread: a small U-Net, 2 x 192 patches; on the 24 held-out full images
    the PSNR gain over the noisy input was measured at 4.5 dB (SSIM 0.58 -> 0.75)."""
    common = Common(device="cpu", threads=1, quiet=True, seed=0)
    common.apply()
    args = TrainArgs(
        model="unet", width=16, depth=3, channels=1, epochs=2, patches_per_epoch=192,
        patch_size=48, lr=2e-3, warmup=0.2, run_dir=tmp_path / "run",
    )  # fmt: skip
    best = run_training(args, common)
    assert best["val_psnr"] > best["val_input_psnr"] + 2.5, best
    checkpoint = str(tmp_path / "run" / "model.safetensors")
    result = evaluate(EvaluateArgs(checkpoint=checkpoint, out=tmp_path / "eval", baseline=False),
                      common)  # fmt: skip
    gain = result.scores["model"]["psnr"] - result.scores["input"]["psnr"]
    assert gain > 3.0, result.scores
    assert result.scores["model"]["ssim"] > result.scores["input"]["ssim"] + 0.1


def test_super_resolution_model_enlarges_in_predict(tmp_path: Path) -> None:
    model = small_model("dncnn", 3)
    path = write_checkpoint(tmp_path / "sr.safetensors", model, specs=("downscale:2",))
    write_leaves(tmp_path / "in", 1, size=30, color=True)
    result = lbdl("denoise", "predict", path, "in", "--out", "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "leaves0_restored.png").size == (60, 60)
    result = lbdl("denoise", "predict", path, "in", "--out", "same", "--degrade", "downscale:2")
    assert Image.open(tmp_path / "same" / "leaves0_restored.png").size == (30, 30)


def test_evaluate_on_a_folder_with_another_degradation(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "m.safetensors", small_model("dncnn", 1))
    write_leaves(tmp_path / "photos", 3, size=40)
    result = lbdl("denoise", "evaluate", path, "--data", "photos", "--degrade", "jpeg:10",
                  "--out", "ev")  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["degradations"] == ["jpeg:10"] and metrics["images"] == 3
    assert metrics["baseline"] == "input"
    assert metrics["psnr"]["input"] < 35  # quality 10 does damage


def test_set12_protocol_matches_the_published_figures(shared_data: Path) -> None:
    """An untrained (identity) model on Set12 at sigma 25: the noisy input gives 20.17-20.20 dB
    and OpenCV NLM ~27.9 dB, as in BENCHMARKS.md."""
    set12 = shared_data / "denoise" / "set12"
    if not set12.is_dir():
        pytest.skip(f"{set12} is absent")
    model = small_model("dncnn", 1, perturb=False)
    path = write_checkpoint(Path("id.safetensors"), model)
    common = Common(device="cpu", threads=1, quiet=True, seed=0)
    args = EvaluateArgs(checkpoint=str(path), data=str(set12), out=Path("ev"),
                        degrade=["gaussian:25"])  # fmt: skip
    result = evaluate(args, common)
    assert result.images == 12
    assert abs(result.scores["input"]["psnr"] - 20.18) < 0.05, result.scores
    assert abs(result.scores["opencv-nlm"]["psnr"] - 27.91) < 0.15, result.scores


# ----------------------------------------------------------------------------------------------
# Bad input: one line, exit 2


def test_unknown_degradation() -> None:
    line = assert_user_error(lbdl("denoise", "train", "--degrade", "blur:3"), "blur:3")
    assert "gaussian" in line and "jpeg" in line  # lists the valid ones


def test_colorization_needs_color_data(tmp_path: Path) -> None:
    write_leaves(tmp_path / "gray", 3)
    result = lbdl("denoise", "train", "--data", "gray", "--degrade", "gray", *TINY)
    assert_user_error(result, "--degrade gray", "gray")


def test_corrupt_training_image_stops_unless_skip_bad(tmp_path: Path) -> None:
    write_leaves(tmp_path / "data", 4)
    write_corrupt(tmp_path / "data" / "sub" / "bad.png")
    args = ["denoise", "train", "--data", "data", *TINY, "--epochs", "1", "--quiet"]
    line = assert_user_error(lbdl(*args, "--run-dir", "run"), "bad.png", "--skip-bad")
    assert "1 bad record" in line
    assert not (tmp_path / "run" / "model.safetensors").exists()
    result = lbdl(*args, "--run-dir", "run2", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "bad.png" in result.stderr
    saved = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert saved["model"]["channels"] == 1  # all gray PNGs: a gray model


def test_empty_and_missing_data_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_user_error(lbdl("denoise", "train", "--data", "empty"), "empty", "no images")
    assert_user_error(lbdl("denoise", "train", "--data", "no/such"), "no/such")


@pytest.mark.parametrize("verb", ["evaluate", "predict"])
def test_checkpoint_of_another_task(tmp_path: Path, verb: str) -> None:
    path = tmp_path / "classifier.safetensors"
    save_checkpoint(path, {"w": torch.zeros(2)}, {"task": "classify", "config": {}})
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    extra = ["x.png"] if verb == "predict" else []
    line = assert_user_error(lbdl("denoise", verb, path, *extra), "classifier.safetensors")
    assert "classify" in line and "denoise" in line


def test_missing_paths(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "m.safetensors", small_model("dncnn", 1))
    assert_user_error(lbdl("denoise", "evaluate", "nothing.safetensors"), "nothing.safetensors")
    assert_user_error(lbdl("denoise", "predict", path, "missing.png"), "missing.png")
    assert_user_error(lbdl("denoise", "evaluate", path, "--data", "nowhere"), "nowhere")


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--model", "banana"], ["--model banana", "unet"]),
        (["--loss", "banana"], ["--loss banana"]),
        (["--channels", "2"], ["--channels 2"]),
        (["--model", "unet", "--patch-size", "30"], ["--patch-size 30", "multiple of 4"]),
        (["--epochs", "0"], ["--epochs"]),
    ],
)
def test_bad_flag_values(flags: list[str], names: list[str]) -> None:
    assert_user_error(lbdl("denoise", "train", *flags, "--quiet"), *names)


def test_predict_batch_rule_in_process(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "m.safetensors", small_model("dncnn", 3))
    write_leaves(tmp_path / "in", 1, size=20, color=True)
    Image.new("RGBA", (16, 24), (255, 0, 0, 128)).save(tmp_path / "in" / "rgba.png")
    write_corrupt(tmp_path / "in" / "bad.jpg")
    result = lbdl("denoise", "predict", path, "in", "--out", "pred")
    assert result.exit_code == 3, result.output
    assert "bad.jpg" in result.stderr
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "leaves0_restored.png", "rgba_restored.png",
    ]  # fmt: skip
    strict = lbdl("denoise", "predict", path, "in", "--out", "pred2", "--strict")
    assert_user_error(strict, "bad.jpg")


def test_resume_of_a_finished_run(tmp_path: Path) -> None:
    args = ["denoise", "train", *TINY, "--channels", "1", "--epochs", "1", "--quiet"]
    assert lbdl(*args, "--run-dir", "run").exit_code == 0
    assert_user_error(lbdl("denoise", "train", "--resume", "run"), "finished its 1 epochs")
    assert_user_error(lbdl("denoise", "train", "--resume", "nothing"), "nothing")


def test_config_file_and_repeated_degrade_options(tmp_path: Path) -> None:
    config = tmp_path / "train.toml"
    config.write_text('degrade = ["gaussian:5-30", "jpeg:30-60"]\nepochs = 1\nchannels = 1\n')
    result = lbdl("denoise", "train", "--config", config, *TINY, "--run-dir", "run", "--quiet")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["args"]
    assert saved["degrade"] == ["gaussian:5-30", "jpeg:30-60"]
    result = lbdl(
        "denoise", "train", *TINY, "--channels", "1", "--epochs", "1", "--degrade",
        "downscale:2", "--degrade", "gaussian:5", "--run-dir", "run2", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    restorer = load(tmp_path / "run2")
    assert [d.spec for d in restorer.degradations] == ["downscale:2", "gaussian:5"]


# ----------------------------------------------------------------------------------------------
# The verbs every app has, and evaluate --split (core.evaluation.split_names)


def test_predict_help() -> None:
    result = lbdl("denoise", "predict", "--help")
    assert result.exit_code == 0, result.output
    assert "--compare" in result.stdout and "--tile" in result.stdout


def _checkpoint_of_a_folder(tmp_path: Path, images: int = 10) -> Path:
    """A gray model whose checkpoint says it was trained on folder/ with 20% held out."""
    write_leaves(tmp_path / "folder", images, size=32)
    model = small_model("dncnn", 1)
    path = write_checkpoint(tmp_path / "m.safetensors", model)
    state, meta = read_checkpoint(path)
    meta.update(data=str(tmp_path / "folder"), val_fraction=0.2, seed=0)
    save_checkpoint(path, state, meta)
    return path


@pytest.mark.parametrize(
    ("split", "images", "label"),
    [(None, 2, "val"), ("val", 2, "val"), ("train", 8, "train"), ("all", 10, "all")],
)
def test_evaluate_split_of_the_checkpoints_own_data(
    tmp_path: Path, split: str | None, images: int, label: str
) -> None:
    """Without --data: the checkpoint's held-out images by default (its data has no test
    split), its training images with --split train, both with --split all."""
    path = _checkpoint_of_a_folder(tmp_path)
    flags = ["--split", split] if split else []
    result = lbdl("denoise", "evaluate", path, *flags, "--no-baseline", "--out", "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == images and metrics["split"] == label


@pytest.mark.parametrize("split", [None, "all"])
def test_evaluate_with_data_scores_the_whole_folder(tmp_path: Path, split: str | None) -> None:
    """--data on a folder without splits: all of it, whatever the checkpoint held out."""
    path = _checkpoint_of_a_folder(tmp_path)
    flags = ["--split", split] if split else []
    result = lbdl("denoise", "evaluate", path, "--data", "folder", *flags, "--out", "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == 10 and metrics["data"] == "folder"
    with (tmp_path / "ev" / "per_image.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 10


def test_evaluate_splits_the_data_lacks(tmp_path: Path) -> None:
    path = _checkpoint_of_a_folder(tmp_path)
    line = assert_user_error(
        lbdl("denoise", "evaluate", path, "--data", "folder", "--split", "val"), "--split val"
    )
    assert "no val split" in line
    assert_user_error(lbdl("denoise", "evaluate", path, "--split", "test"), "--split test")
    assert_user_error(lbdl("denoise", "evaluate", path, "--split", "banana"), "--split banana")


def test_evaluate_one_image_file(tmp_path: Path) -> None:
    """The "file" reader: --data may name a single image."""
    path = write_checkpoint(tmp_path / "m.safetensors", small_model("dncnn", 1))
    write_leaves(tmp_path / "photos", 2, size=40)
    result = lbdl("denoise", "evaluate", path, "--data", "photos/leaves1.png", "--out", "ev")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["images"] == 1


@pytest.mark.parametrize("verb", ["evaluate", "predict"])
def test_overlap_must_stay_below_half_the_tile(tmp_path: Path, verb: str) -> None:
    path = write_checkpoint(tmp_path / "m.safetensors", small_model("dncnn", 1))
    write_leaves(tmp_path / "in", 1)
    extra = ["in"] if verb == "predict" else []
    flags = ["--tile", "64", "--overlap", "32"]
    assert_user_error(lbdl("denoise", verb, path, *extra, *flags), "--overlap 32", "64")
