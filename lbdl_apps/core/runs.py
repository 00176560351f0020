"""Run folders (runs/<task>/train, train2, ...), their config.json, resuming them, and the
metrics log."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from lbdl_apps.core.checkpoint import load_state
from lbdl_apps.core.distributed import is_main_process
from lbdl_apps.core.errors import LbdlError, report
from lbdl_apps.core.options import Common, RunArgs
from lbdl_apps.core.outputs import atomic_path, json_text, make_folder, numbered

A = TypeVar("A", bound=RunArgs)  # an app's TrainArgs


def make_run_dir(
    task: str,
    name: str | None = None,
    run_dir: str | Path | None = None,
    exist_ok: bool = False,
    root: str | Path = "runs",
) -> Path:
    """Create and return the run folder: `run_dir` if given, else root/task/name.

    Without a name the first free of train, train2, train3... is used (train itself with
    `exist_ok`). An existing non-empty folder is an error unless `exist_ok`. Under torchrun
    only rank 0 chooses and creates it (the other ranks write nothing there)."""
    if run_dir is not None:
        path = Path(run_dir)
    elif name is not None:
        path = Path(root) / task / name
    else:
        path = Path(root) / task / "train"
        if is_main_process():
            path = numbered(path, exist_ok)
    if not is_main_process():
        return path
    if path.exists() and not path.is_dir():
        raise LbdlError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not exist_ok:
        raise LbdlError(f"{path}: run folder already exists; pass --exist-ok to reuse it")
    return make_folder(path)


def run_folder(task: str, args: RunArgs) -> Path:
    """The run folder of a training run's arguments (a resumed run's own folder)."""
    return make_run_dir(task, args.name, args.run_dir, args.exist_ok or args.resume is not None)


def resume_settings(args: A, common: Common, task: str) -> tuple[A, Common, dict[str, Any]]:
    """`train --resume RUN_DIR`: the arguments and options the run was started with (its
    config.json), keeping this command's device, threads and quiet, and its saved state.
    Other flags given with --resume are named in a warning, since the run goes on as saved.
    A folder without a saved state, or a run of another task, is an error."""
    resume = Path(args.resume)  # type: ignore[arg-type]
    ignored = [flag for flag in args.changed() if flag != "--resume"]
    if ignored:
        report(f"warning: {', '.join(ignored)} ignored: --resume continues the run as saved")
    config_file = resume / "config.json"
    if not (resume / "state.pt").is_file() or not config_file.is_file():
        raise LbdlError(
            f"--resume {resume}: not an interrupted {task} run (no state.pt/config.json)"
        )
    saved = json.loads(config_file.read_text())
    if saved.get("task", task) != task:
        raise LbdlError(f"--resume {resume}: is a {saved['task']} run, not a {task} one")
    known = {f.name for f in fields(args)}
    stored = {k: v for k, v in saved["args"].items() if k in known}
    resumed = type(args)(**{**stored, "run_dir": resume, "exist_ok": True, "resume": resume})
    options = Common(**saved["common"])
    options.device, options.quiet, options.threads = common.device, common.quiet, common.threads
    return resumed, options, load_state(resume / "state.pt")


def save_run_config(run_dir: Path, task: str, args: Any, common: Common, model_config: Any) -> None:
    """config.json: what `train` was asked for, so that --resume can start it again
    (written by rank 0 only under torchrun)."""
    if not is_main_process():
        return
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()}
    model = asdict(model_config) if is_dataclass(model_config) else model_config
    saved = {"task": task, "args": plain, "common": asdict(common), "model": model}
    with atomic_path(run_dir / "config.json") as tmp:
        tmp.write_text(json_text(saved))


class MetricsLog:
    """metrics.csv and metrics.jsonl in a run folder, one row per epoch.

    The CSV header is the union of the keys seen; it is rewritten when a new key appears.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.csv_path = Path(run_dir) / "metrics.csv"
        self.jsonl_path = Path(run_dir) / "metrics.jsonl"
        self._rows = self._read()
        self._header = _union_keys(self._rows)

    def _read(self) -> list[dict[str, Any]]:
        if not self.jsonl_path.exists():
            return []
        lines = self.jsonl_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def rows(self) -> list[dict[str, Any]]:
        """All rows logged so far (including those of earlier sessions of a resumed run)."""
        return [dict(row) for row in self._rows]

    def append(self, row: dict[str, Any]) -> None:
        """Add one row to both files."""
        self._rows.append(dict(row))
        with self.jsonl_path.open("a") as f:
            f.write(json_text(row, indent=None) + "\n")
        if set(row) <= set(self._header) and self.csv_path.exists():
            with self.csv_path.open("a", newline="") as f:
                csv.DictWriter(f, self._header).writerow(row)
        else:
            self._header = _union_keys(self._rows)
            self._rewrite_csv()

    def keep(self, last_epoch: int) -> None:
        """Drop the rows after `last_epoch` (a resumed run repeats what its state had not saved)."""
        self._rows = [row for row in self._rows if row.get("epoch", 0) <= last_epoch]
        self._header = _union_keys(self._rows)
        if not self._rows:
            self.csv_path.unlink(missing_ok=True)
            self.jsonl_path.unlink(missing_ok=True)
            return
        with atomic_path(self.jsonl_path) as tmp:
            tmp.write_text("".join(json_text(row, indent=None) + "\n" for row in self._rows))
        self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        with atomic_path(self.csv_path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self._header)
            writer.writeheader()
            writer.writerows(self._rows)


def _union_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return list(keys)
