"""Run folders, the metrics log and its plot."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest

from lbdl_apps.core.checkpoint import save_state
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Common, TrainArgs
from lbdl_apps.core.plots import plot_metrics
from lbdl_apps.core.run import start_run
from lbdl_apps.core.runs import MetricsLog, make_run_dir, save_run_config


def test_numbered_run_folders(tmp_path: Path) -> None:
    first = make_run_dir("classify", root=tmp_path)
    assert first == tmp_path / "classify" / "train" and first.is_dir()
    assert make_run_dir("classify", root=tmp_path).name == "train2"
    assert make_run_dir("classify", root=tmp_path).name == "train3"
    assert make_run_dir("classify", name="mine", root=tmp_path).name == "mine"


def test_existing_folder_needs_exist_ok(tmp_path: Path) -> None:
    run = make_run_dir("classify", name="a", root=tmp_path)
    (run / "metrics.csv").write_text("epoch\n1\n")
    with pytest.raises(LbdlError, match=r"already exists.*--exist-ok"):
        make_run_dir("classify", name="a", root=tmp_path)
    assert make_run_dir("classify", name="a", root=tmp_path, exist_ok=True) == run
    assert (run / "metrics.csv").exists()


def test_run_dir_wins(tmp_path: Path) -> None:
    run = make_run_dir("classify", name="ignored", run_dir=tmp_path / "here", root=tmp_path)
    assert run == tmp_path / "here" and run.is_dir()
    assert not (tmp_path / "classify").exists()


def test_metrics_log_grows_its_header(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    log.append({"epoch": 1, "train_loss": 1.0})
    log.append({"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "val_accuracy": 0.8})
    log.append({"epoch": 3, "train_loss": 0.25, "val_loss": 0.6, "val_accuracy": 0.9})
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_accuracy"]
    assert [r["val_loss"] for r in rows] == ["", "0.7", "0.6"]
    assert MetricsLog(tmp_path).rows()[2]["val_accuracy"] == 0.9  # read back from JSONL

    log.keep(2)
    assert [r["epoch"] for r in MetricsLog(tmp_path).rows()] == [1, 2]
    plot_metrics(tmp_path / "metrics.csv", tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@dataclass(kw_only=True)
class _Args(TrainArgs):
    epochs: int = 3
    lr: float = 0.1


def test_resume_restores_the_saved_run(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save_run_config(run, "classify", _Args(epochs=5, lr=0.5), Common(seed=7), {"name": "cnn"})
    save_state(run / "state.pt", {"epoch": 2})
    asked = _Args(resume=run, lr=0.9)  # a flag given with --resume is ignored, with a warning
    args, common, state = start_run(asked, Common(device="cpu", quiet=True), "classify")
    assert state == {"epoch": 2}
    assert (args.epochs, args.lr, args.run_dir, args.exist_ok) == (5, 0.5, run, True)
    assert (common.seed, common.device, common.quiet) == (7, "cpu", True)
    assert "--lr ignored" in capsys.readouterr().err
    with pytest.raises(LbdlError, match="not a detect one"):
        start_run(_Args(resume=run), Common(), "detect")
    save_state(run / "state.pt", {"epoch": 5})
    with pytest.raises(LbdlError, match="finished its 5 epochs"):
        start_run(_Args(resume=run), Common(), "classify")
    with pytest.raises(LbdlError, match=r"no state\.pt"):
        start_run(_Args(resume=tmp_path), Common(), "classify")
