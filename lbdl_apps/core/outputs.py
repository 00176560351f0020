"""Where verbs write, so that nothing written before is lost (DESIGN.md): results go to a new
numbered folder (predict, predict2, ... as run folders are numbered), an explicit --out that
already holds results is an error unless --exist-ok, names derived from inputs never
collide, and JSON outputs are strict JSON (no NaN)."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import numbers
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lbdl_apps.core.errors import LbdlError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.
    Temporary files of `path` left by an earlier process that was killed are removed
    first; a write that fails (a full disk, a read-only folder) is an LbdlError naming the
    file, and the previous file, if any, stays as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as error:
        raise write_error(path, error) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise write_error(path, error) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_error(path: Path, error: BaseException) -> LbdlError:
    """The one-line error of a write that failed: what ran out (the disk), or why."""
    code = getattr(error, "errno", None)
    full = code == errno.ENOSPC or "No space left" in str(error) or _nearly_full(path.parent)
    reason = "no space left on the device" if full else getattr(error, "strerror", None)
    kept = "; the previous file is kept" if path.exists() else ""
    return LbdlError(f"{path}: cannot write ({reason or _first_line(error)}){kept}")


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


_MADE: list[Path] = []  # folders this command made, removed again if it fails before using them


def make_folder(path: Path) -> Path:
    """Make `path` (and its missing parents), remembering the ones made so that a command
    that fails leaves no empty folder behind (`remove_unused_folders`)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LbdlError(f"{path}: cannot make the folder ({error.strerror})") from None
    _MADE.extend(reversed(missing))  # parents first
    return path


def forget_made_folders() -> None:
    """Start a command: the folders made so far (by an earlier command) are not its own."""
    _MADE.clear()


def remove_unused_folders() -> None:
    """Remove the folders this command made that are still empty (it failed before writing
    in them), innermost first."""
    while _MADE:
        path = _MADE.pop()
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def numbered(path: Path, exist_ok: bool = False) -> Path:
    """`path` if it does not exist, else the first of path2, path3, ... that does not;
    `path` itself with `exist_ok`."""
    if exist_ok:
        return path
    candidate, number = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}{number}")
        number += 1
    return candidate


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def results_folder(default: Path, out: Path | None, exist_ok: bool = False) -> Path:
    """The folder a verb writes its results into, made before any work: --out as given (an
    error when it is a file, or a folder that already holds files, unless --exist-ok), or
    else a new numbered folder beside `default` (default, default2, ...)."""
    if out is None:
        folder = numbered(default, exist_ok)
    else:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise LbdlError(f"--out {folder}: exists and is not a folder")
        if folder.is_dir() and not exist_ok and not _empty_folder(folder):
            raise LbdlError(
                f"--out {folder}: already holds results; pass --exist-ok to write into it"
            )
    return make_folder(folder)


def batch_folder(task: str, verb: str, out: Path | None, exist_ok: bool = False) -> Path:
    """Where a batch verb writes: --out, else a new runs/<task>/<verb>[N] folder."""
    return results_folder(Path("runs") / task / verb, out, exist_ok)


def output_folder(
    checkpoint: str | Path, out: Path | None, verb: str = "evaluate", exist_ok: bool = False
) -> Path:
    """Where `evaluate` writes: --out, else a new `verb`[N] folder in the checkpoint's run
    folder."""
    from lbdl_apps.core.zoo import looks_like_name

    path = Path(checkpoint)
    if looks_like_name(str(checkpoint)):  # a registry name: runs/coco--ssd300/evaluate
        run = Path("runs") / str(checkpoint).replace(":", "--")
    else:
        run = path if path.is_dir() else path.resolve().parent
    return results_folder(run / verb, out, exist_ok)


class OutputNames:
    """Names for the files a batch writes per input, from the input's stem: a second input
    of the same stem (y.png in another folder) is named y_2, so that no output overwrites
    another; the same input keeps its name (a video's frames)."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._used: set[str] = set()

    def __call__(self, path: str | Path) -> str:
        key = str(path)
        if key not in self._names:
            stem = name = Path(path).stem
            number = 1
            while name in self._used:
                number += 1
                name = f"{stem}_{number}"
            self._used.add(name)
            self._names[key] = name
        return self._names[key]


def finite(value: Any) -> Any:
    """`value` with NaN and infinities replaced by None and NumPy numbers made Python ones,
    so that the JSON is valid."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_text(content: Any, indent: int | None = 2) -> str:
    """Strict JSON (NaN and infinities as null, paths as text)."""
    return json.dumps(finite(content), indent=indent, allow_nan=False, default=str)


def write_json(path: Path, content: Any, indent: int | None = 2) -> Path:
    """Write `content` as strict JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(content, indent) + "\n")
    return path
