"""The root `lbdl` command: --version, --help, doctor, and the one tour test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import lbdl_apps
from lbdl_apps.cli import app, discover_apps


def lbdl(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_version() -> None:
    result = lbdl("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lbdl {version('lbdl-apps')}"
    assert lbdl_apps.__version__ == version("lbdl-apps")


def test_help_lists_the_apps_and_commands() -> None:
    result = lbdl("--help")
    assert result.exit_code == 0
    for name in ("classify", "doctor", "tour"):
        assert name in result.stdout
    assert "classify" in discover_apps()


def test_no_arguments_shows_the_usage() -> None:
    result = lbdl()
    assert result.exit_code == 2
    assert "Usage" in result.output and "Traceback" not in result.output


def test_unknown_command_is_one_line() -> None:
    result = lbdl("clasify", "train")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "clasify" in lines[0], result.stderr


def test_doctor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBDL_SHARED_DATA", str(tmp_path))
    (tmp_path / "fsdd").mkdir()
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "torch" in out and torch.__version__ in out
    assert "python" in out and lbdl_apps.__version__ in out
    assert "torch threads" in out
    apps_line = next(line for line in out.splitlines() if "apps" in line)
    assert all(name in apps_line for name in discover_apps())
    assert str(tmp_path / "fsdd") in out  # a data folder that is there is shown by its path
    assert "absent" in out  # and the missing ones as absent


@pytest.mark.slow
def test_quick_tour(tmp_path: Path) -> None:
    """`lbdl tour --quick`: every app's train -> evaluate -> predict, one HTML report."""
    tour = ["tour", "--quick", "--out", "tour", "--threads", "1", "--quiet"]
    result = subprocess.run(
        [sys.executable, "-m", "lbdl_apps", *tour],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = tmp_path / "tour"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Image classification" in page
    assert page.count("data:image/png;base64,") >= 3  # predictions, loss, confusion matrix
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == set(discover_apps())
    assert 0.0 <= summary["classify"]["test_acc"] <= 1.0
    assert summary["classify"]["chance"] == pytest.approx(0.1)
    assert (out / "classify" / "train" / "model.safetensors").is_file()
    assert not (tmp_path / "runs").exists()  # everything went under --out
