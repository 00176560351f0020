"""`lbdl diffusion` on the command line: bad inputs give one line and exit 2; the real
command trains, samples and repeats itself with the same seed."""

from pathlib import Path

import pytest
from PIL import Image

from tests.cli_helpers import assert_user_error, lbdl, lbdl_subprocess


def test_bad_sampling_inputs_are_one_line_errors(
    class_model: Path, unconditional_model: Path, clip_checkpoint: Path, tmp_path: Path
) -> None:
    out = ["--out", tmp_path / "s", "--n", "1", "--steps", "2"]
    cases = [
        ([unconditional_model, "--prompt", "a red circle"], ["--prompt", "unconditional"]),
        ([class_model, "--class", "magenta"], ["--class magenta", "not a class"]),
        ([class_model, "--steps", "0"], ["--steps 0"]),
        ([unconditional_model, "--guidance", "3"], ["--guidance", "unconditional"]),
        (
            [unconditional_model, "--prompt", "x", "--clip-guide", class_model],
            ["--clip-guide", "not a noised CLIP"],
        ),
        (
            [unconditional_model, "--prompt", "x", "--clip-guide", clip_checkpoint],
            ["'clip' checkpoint", "not a noised CLIP"],
        ),
        (
            [unconditional_model, "--clip-guide", tmp_path / "missing.safetensors"],
            ["missing.safetensors", "no such file"],
        ),
        ([tmp_path / "none.safetensors"], ["none.safetensors", "no such file"]),
        ([clip_checkpoint], ["'clip' checkpoint", "not a 'diffusion'"]),
        ([class_model, "--sampler", "euler"], ["--sampler euler"]),
    ]
    for args, names in cases:
        # the CLI's own arguments go last so that a bad --steps wins over the default
        head, tail = args[:1], args[1:]
        result = lbdl("diffusion", "sample", *head, *out, *tail)
        assert_user_error(result, *names)


def test_bad_training_inputs_are_one_line_errors(tmp_path: Path, clip_checkpoint: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "a.png")
    run = ["--run-dir", tmp_path / "run", "--threads", "1", "--builtin-count", "16"]
    cases = [
        (["--data", tmp_path / "nowhere"], ["nowhere", "no such file"]),
        (["--condition", "text"], ["--condition text", "--clip"]),
        (["--condition", "class", "--data", folder], ["no classes"]),
        (["--clip", clip_checkpoint, "--data", folder], ["no captions"]),
        (["--schedule", "quadratic"], ["--schedule quadratic"]),
        (["--prediction", "x0"], ["--prediction x0"]),
        (["--width", "12"], ["--width 12"]),
        (["--scene-label", "size"], ["--scene-label size"]),
    ]
    for args, names in cases:
        assert_user_error(lbdl("diffusion", "train", *run, *args), *names)


def test_evaluate_rejects_a_classifier_without_the_model_classes(
    class_model: Path, tmp_path: Path
) -> None:
    from lbdl_apps.classify.cli import TrainArgs
    from lbdl_apps.classify.task import train as run_training
    from lbdl_apps.core.options import Common

    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "pets" / name / f"{i}.png")
    run_training(
        TrainArgs(
            data=str(tmp_path / "pets"),
            model="cnn",
            width=4,
            depth=1,
            epochs=1,
            run_dir=tmp_path / "pets_run",
        ),
        Common(quiet=True),
    )
    result = lbdl(
        "diffusion",
        "evaluate",
        class_model,
        "--classifier",
        tmp_path / "pets_run" / "model.safetensors",
        "--n",
        "4",
    )
    assert_user_error(result, "has no class")


@pytest.mark.slow
def test_train_then_sample_end_to_end(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trained = lbdl_subprocess(
        "diffusion",
        "train",
        "--image-size",
        "8",
        "--width",
        "8",
        "--blocks",
        "1",
        "--timesteps",
        "50",
        "--builtin-count",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--preview",
        "4",
        "--scene-label",
        "color",
        "--run-dir",
        run,
        "--threads",
        "1",
        cwd=tmp_path,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr
    assert (run / "model.safetensors").is_file() and (run / "samples" / "grid.png").is_file()
    grids = []
    for name in ("a", "b"):
        sampled = lbdl_subprocess(
            "diffusion",
            "sample",
            run / "model.safetensors",
            "--class",
            "red",
            "--class",
            "green",
            "--n",
            "3",
            "--steps",
            "3",
            "--seed",
            "5",
            "--out",
            tmp_path / name,
            "--sampler",
            "ddpm",
            "--guidance",
            "2",
            "-q",
            cwd=tmp_path,
            timeout=300,
        )
        assert sampled.returncode == 0, sampled.stderr
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        assert files == ["000_red.png", "001_green.png", "002_red.png", "grid.png"]
        grids.append((tmp_path / name / "grid.png").read_bytes())
    assert grids[0] == grids[1]
