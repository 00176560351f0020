"""bench/gpu.py runs the same code on a CPU: lbdl's network by name and the peer's own, the
train step and inference, their ratio (the GPU figures come from a GPU machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_runs_on_a_cpu(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--quick",
         "--only", "dqn", "--batch", "2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("dqn:"))
    assert "x CleanRL QNetwork" in line and "inference" in line
    assert "wrote" not in done.stdout  # a CPU run writes no GPU figures
