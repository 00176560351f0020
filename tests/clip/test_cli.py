"""`lbdl clip` verbs: bad input gives one line and exit 2 (3 for a batch with bad files),
embed and search outputs, and train -> evaluate -> zero-shot in subprocesses."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lbdl_apps.core.checkpoint import save_checkpoint
from tests.cli_helpers import assert_user_error, lbdl, lbdl_subprocess


def test_empty_and_single_label_lists(tiny_run: Path, scene_pngs: Path) -> None:
    result = lbdl("clip", "zero-shot", tiny_run, scene_pngs, "--labels", "")
    assert_user_error(result, "label list is empty")
    result = lbdl("clip", "zero-shot", tiny_run, scene_pngs, "--labels", "red")
    assert_user_error(result, "1 label(s)", "at least 2")
    result = lbdl("clip", "zero-shot", tiny_run, scene_pngs, "--labels", "a,b",
                  "--template", "no placeholder")  # fmt: skip
    assert_user_error(result, "--template", "{}")


def test_labels_file_and_unreadable_image(tiny_run: Path, scene_pngs: Path, tmp_path) -> None:
    (tmp_path / "labels.txt").write_text("red circle\nblue square\n\ngreen star\n")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    args = ("clip", "zero-shot", tiny_run, scene_pngs, broken, "--out", tmp_path / "zs",
            "--labels-file", tmp_path / "labels.txt")  # fmt: skip
    result = lbdl(*args)
    assert result.exit_code == 3, result.output
    assert "broken.png" in result.stderr and "6 images processed, 1 failed" in result.stdout
    with open(tmp_path / "zs" / "zero_shot.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and rows[0]["label"] in ("red circle", "blue square", "green star")
    assert_user_error(lbdl(*args, "--strict", "--exist-ok"), "broken.png")


def test_checkpoint_of_another_task(tmp_path: Path, scene_pngs: Path) -> None:
    other = tmp_path / "classifier.safetensors"
    save_checkpoint(other, {"w": torch.zeros(1)}, {"task": "classify", "config": {}})
    result = lbdl("clip", "zero-shot", other, scene_pngs, "--labels", "a,b")
    assert_user_error(result, "classifier.safetensors", "'classify' checkpoint")
    assert_user_error(lbdl("clip", "embed", tmp_path / "missing.safetensors", "--text", "a"),
                      "missing.safetensors")  # fmt: skip


def test_embed_texts_and_search(tiny_run: Path, scene_pngs: Path, tmp_path: Path) -> None:
    result = lbdl("clip", "embed", tiny_run, "--text", "a red circle.", "--text", "a star.",
                  "--out", tmp_path / "emb")  # fmt: skip
    assert result.exit_code == 0, result.output
    vectors = np.load(tmp_path / "emb" / "embeddings.npy")
    assert vectors.shape == (2, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    items = json.loads((tmp_path / "emb" / "embeddings.json").read_text())["items"]
    assert items[1] == {"index": 1, "text": "a star."}
    assert_user_error(lbdl("clip", "embed", tiny_run, scene_pngs, "--text", "x"), "not both")
    result = lbdl("clip", "search", tiny_run, scene_pngs, "--text", "a red circle",
                  "--top-k", "3", "--out", tmp_path / "s")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "contact_sheet.png").stat().st_size > 1000
    assert len((tmp_path / "s" / "results.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_train_evaluate_zero_shot_subprocess(tmp_path: Path, scene_pngs) -> None:
    run = tmp_path / "run"
    steps = [
        ("train", "--model", "tiny", "--epochs", "1", "--scenes", "100", "--batch-size", "25",
         "--run-dir", run),
        ("evaluate", run / "model.safetensors", "--out", tmp_path / "ev"),
        ("zero-shot", run, scene_pngs, "--labels", "red,green,blue", "--out", tmp_path / "zs"),
    ]  # fmt: skip
    for step in steps:
        result = lbdl_subprocess("clip", *step, cwd=tmp_path, timeout=400)
        assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"i2t_r1", "t2i_r10", "zero_shot_acc"} <= set(metrics)
    assert len((tmp_path / "zs" / "zero_shot.csv").read_text().splitlines()) == 7
