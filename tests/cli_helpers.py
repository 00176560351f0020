"""Running `lbdl` in tests: in-process on the root app, or as a real subprocess, and the
check of DESIGN.md's rule for user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from lbdl_apps.cli import app


def lbdl(*args: str | Path) -> object:
    """`lbdl ARGS` in-process, on the root app."""
    return CliRunner().invoke(app, [str(a) for a in args])


def lbdl_subprocess(
    *args: str | Path, cwd: Path, timeout: int = 120
) -> subprocess.CompletedProcess:
    """The real `lbdl` command in a fresh process, one torch thread."""
    return subprocess.run(
        [sys.executable, "-m", "lbdl_apps", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def assert_user_error(result, *names: str) -> str:
    """Exit 2, no traceback, one line on stderr that contains each of `names`."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]
