"""The batch rule's shared loop: unreadable files are named and skipped, readable ones are
batched, --strict stops at the first bad one, and the summary gives the exit code."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lbdl_apps.core.batch import BatchReport, read_batches, read_each
from lbdl_apps.core.data import load_image
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.outputs import batch_folder


def files(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        if i == 2:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(np.full((4, 6, 3), i * 40, np.uint8)).save(path)
        paths.append(path)
    return paths


def test_bad_files_are_reported_and_skipped(tmp_path: Path, capsys) -> None:
    report = BatchReport()
    read = partial(load_image, mode="L")
    batches = list(read_batches(files(tmp_path), read, 2, report))
    assert [[p.name for p in names] for names, _ in batches] == [
        ["0.png", "1.png"],
        ["3.png", "4.png"],
    ]
    assert np.asarray(batches[1][1][0]).shape == (4, 6)
    assert report.failures[0][0].endswith("2.png")
    assert "skipped" in capsys.readouterr().err
    report.ok(4)
    assert report.finish("images", tmp_path) == 3
    assert "4 images processed, 1 failed" in capsys.readouterr().out


def test_strict_stops_and_no_report_raises(tmp_path: Path) -> None:
    paths = files(tmp_path)
    with pytest.raises(LbdlError, match=r"2\.png: cannot read image"):
        list(read_each(paths, load_image, BatchReport(strict=True)))
    with pytest.raises(LbdlError, match=r"2\.png"):
        list(read_each(paths, load_image, None))
    assert BatchReport().exit_code == 0


def test_batch_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert batch_folder("classify", "predict", None) == Path("runs/classify/predict")
    assert (tmp_path / "runs" / "classify" / "predict").is_dir()
    (tmp_path / "f").write_text("")
    with pytest.raises(LbdlError, match=r"--out f: exists and is not a folder"):
        batch_folder("classify", "predict", Path("f"))
