"""`lbdl classify train` under torchrun with 2 Gloo processes (DESIGN.md: data-parallel)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbdl_apps.core.checkpoint import read_checkpoint


@pytest.mark.slow
def test_classify_train_under_torchrun(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "lbdl_apps",
            "classify",
            "train",
            "--model",
            "cnn",
            "--epochs",
            "1",
            "--fraction",
            "0.05",
            "--run-dir",
            str(run),
            "--threads",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run folder:") == 1  # rank 0 alone reports and writes
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 2  # header + 1 epoch
    _, meta = read_checkpoint(run / "model.safetensors", task="classify")
    assert meta["labels"][0] == "circle"
    assert (run / "confusion_matrix.png").is_file()
