"""The one meaning of `evaluate --split`, the output folder and strict JSON outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.evaluation import split_label, split_names
from lbdl_apps.core.outputs import output_folder, write_json

OWN = {"train": [1, 2, 3], "val": [4], "test": [5, 6]}


def test_without_data_the_checkpoint_s_held_out_split() -> None:
    assert split_names(None, False, OWN, "own") == ["test"]
    assert split_names(None, False, {**OWN, "test": None}, "own") == ["val"]
    with pytest.raises(LbdlError, match=r"own: has no held-out split .*--split all"):
        split_names(None, False, {"train": [1], "val": [], "test": None}, "own")


def test_with_data_a_folder_without_splits_is_evaluated_whole() -> None:
    whole = {"train": [1, 2], "val": [], "test": None}
    assert split_names(None, True, whole, "new/") == ["train"]
    assert split_names(None, True, {"train": [1], "val": [2], "test": None}, "new/") == ["val"]
    assert split_names(None, True, OWN, "new/") == ["test"]


def test_explicit_splits() -> None:
    assert split_names("all", False, OWN, "own") == ["train", "val", "test"]
    assert split_names("train", True, OWN, "own") == ["train"]
    assert split_label(["train", "val", "test"], OWN) == "all"
    assert split_label(["val"], OWN) == "val"
    assert split_label(["train"], {"train": [1], "val": [], "test": None}) == "all"  # whole
    with pytest.raises(LbdlError, match=r"--split test: new/ has no test split \(it has train\)"):
        split_names("test", True, {"train": [1], "val": [], "test": None}, "new/")
    with pytest.raises(LbdlError, match=r"empty/: has nothing to evaluate"):
        split_names("all", True, {"train": [], "val": None}, "empty/")


def test_output_folder_beside_the_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"")
    assert output_folder(run / "model.safetensors", None) == run / "evaluate"
    assert output_folder(run, None, "predict") == run / "predict"
    assert output_folder(run, tmp_path / "x") == tmp_path / "x" and (tmp_path / "x").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(LbdlError, match="exists and is not a folder"):
        output_folder(run, tmp_path / "file")


def test_json_outputs_are_strict(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")], "p": tmp_path}
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "p": str(tmp_path)}
