"""`lbdl diffusion evaluate --split` picks the real images with the one meaning of every app
(core.evaluation): a folder without splits is used whole, a folder with a test split its
test split; for the built-in scenes, fresh scenes (test) or those trained on (train).
`predict` is sample's other name."""

import json
from pathlib import Path

from PIL import Image

from tests.cli_helpers import assert_user_error, lbdl

FAST = ["--n", "4", "--steps", "2", "--n-real", "50", "--threads", "1"]


def _evaluate(model: Path, classifier: Path, out: Path, *flags) -> dict:
    result = lbdl("diffusion", "evaluate", model, "--classifier", classifier, "--out", out,
                  *FAST, *flags)  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_predict_is_sample() -> None:
    result = lbdl("diffusion", "predict", "--help")
    assert result.exit_code == 0 and "--clip-guide" in result.output and "sample" in result.output


def test_builtin_scenes_splits(
    unconditional_model: Path, tiny_classifier: Path, tmp_path: Path
) -> None:
    """The model trained on 64 scenes; --n-real 50 caps what is drawn from a split."""
    expected = {None: ("test", "(test), 50 images"), "train": ("train", "(train), 50 images"),
                "all": ("all", "(train+test), 50 images")}  # fmt: skip
    for split, (label, real) in expected.items():
        flags = ["--split", split] if split else []
        metrics = _evaluate(unconditional_model, tiny_classifier, tmp_path / str(split), *flags)
        assert metrics["split"] == label and metrics["real"].endswith(real), metrics["real"]
        assert metrics["fd"] >= 0 and metrics["samples"] == 4
    result = lbdl("diffusion", "evaluate", unconditional_model, "--classifier", tiny_classifier,
                  *FAST, "--split", "val")  # fmt: skip
    assert_user_error(result, "--split val", "no val split")


def test_data_with_and_without_splits(
    unconditional_model: Path, tiny_classifier: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(plain / f"{i}.png")
    metrics = _evaluate(unconditional_model, tiny_classifier, tmp_path / "a", "--data", plain)
    assert metrics["split"] == "all" and metrics["real"].endswith("(train), 6 images")
    tree = tmp_path / "tree"
    for split, count in (("train", 5), ("test", 3)):
        for name in ("red", "blue"):
            (tree / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (200, 0, 0) if name == "red" else (0, 0, 200)).save(
                    tree / split / name / f"{i}.png"
                )
    metrics = _evaluate(unconditional_model, tiny_classifier, tmp_path / "b", "--data", tree)
    assert metrics["split"] == "test" and metrics["real"].endswith("(test), 6 images")
    metrics = _evaluate(
        unconditional_model, tiny_classifier, tmp_path / "c", "--data", tree, "--split", "all"
    )
    assert metrics["split"] == "all" and metrics["real"].endswith("(train+test), 16 images")
