"""What every benchmark records beside its figures (DESIGN.md, "Tests and benchmarks on 2 cores"):
torch and Python versions, the torch thread count, the load average, the date and the exact
command; and how results are written to bench/results/<name>.json."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def now() -> str:
    """The current UTC date and time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def command() -> str:
    """The command line that started this benchmark, e.g. `python bench/x.py --quick`."""
    return " ".join([Path(sys.executable).name, *sys.argv])


def environment() -> dict[str, Any]:
    """Threads, load average (1, 5, 15 min), versions, date and command, as of now."""
    return {
        "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": now(),
        "command": command(),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json and return its path."""
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def read_result(name: str) -> dict[str, Any] | None:
    """bench/results/<name>.json as written before, or None when there is none (or it is bad)."""
    path = RESULTS_DIR / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
