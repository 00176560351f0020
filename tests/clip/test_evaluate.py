"""`lbdl clip evaluate --split` has the one meaning of every app (core.evaluation): the
checkpoint's own test split by default, `all` of it, and with --data a folder without splits
scored whole, a folder with splits its test split; `predict` is zero-shot's other name."""

import json
from pathlib import Path

from PIL import Image

from tests.cli_helpers import assert_user_error, lbdl


def _metrics(result, folder: Path) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads((folder / "metrics.json").read_text())


def test_predict_is_zero_shot() -> None:
    result = lbdl("clip", "predict", "--help")
    assert result.exit_code == 0 and "--labels" in result.output and "zero-shot" in result.output


def test_own_data_splits(tiny_run: Path, tmp_path: Path) -> None:
    """The fixture's run: 200 training scenes, 100 validation and 100 test scenes."""
    expected = {None: ("test", 100), "all": ("all", 400), "train": ("train", 200),
                "val": ("val", 100), "test": ("test", 100)}  # fmt: skip
    for split, (label, pairs) in expected.items():
        out = tmp_path / str(split)
        flags = ["--split", split] if split else []
        metrics = _metrics(lbdl("clip", "evaluate", tiny_run, "--out", out, *flags), out)
        assert (metrics["split"], metrics["pairs"]) == (label, pairs), split
        assert {"i2t_r1", "zero_shot_acc"} <= set(metrics)


def test_data_without_splits_is_scored_whole(tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for i in range(10):
        Image.new("RGB", (8, 8), (i * 25, 0, 0)).save(tmp_path / "img" / f"{i}.png")
    rows = "\n".join(f"img/{i}.png,a shade of red number {i}" for i in range(10))
    (tmp_path / "pairs.csv").write_text("image,caption\n" + rows + "\n")
    out = tmp_path / "ev"
    result = lbdl("clip", "evaluate", tiny_run, "--data", tmp_path / "pairs.csv", "--out", out)
    metrics = _metrics(result, out)  # all of it: the data has no splits of its own
    assert (metrics["split"], metrics["pairs"]) == ("all", 10)
    result = lbdl("clip", "evaluate", tiny_run, "--data", tmp_path / "pairs.csv", "--split", "test")
    assert_user_error(result, "--split test", "no test split")


def test_data_with_splits_is_scored_on_its_test_split(tiny_run: Path, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for split, count in (("train", 4), ("test", 3)):
        for name, color in (("red", (220, 40, 40)), ("blue", (40, 80, 230))):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), color).save(root / split / name / f"{i}.png")
    for split, (label, pairs) in {
        None: ("test", 6),
        "all": ("all", 14),
        "train": ("train", 8),
    }.items():
        out = tmp_path / str(split)
        flags = ["--split", split] if split else []
        metrics = _metrics(
            lbdl("clip", "evaluate", tiny_run, "--data", root, "--out", out, *flags), out
        )
        assert (metrics["split"], metrics["pairs"]) == (label, pairs), split
        assert "zero_shot_acc" in metrics
    assert_user_error(
        lbdl("clip", "evaluate", tiny_run, "--data", root, "--split", "val"), "no val split"
    )
