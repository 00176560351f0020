"""The batch rule (DESIGN.md) for verbs that work through the user's files (predict,
transcribe, zero-shot, embed, search): an unreadable file is named on stderr and skipped,
the rest are processed, a summary line counts them, and the exit code is 3 if any failed;
`--strict` stops at the first bad file with exit 2."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from lbdl_apps.core.errors import EXIT_BATCH_FAILED, LbdlError, report

T = TypeVar("T")


class BatchReport:
    """Counts the good and bad inputs of a batch verb.

    A bad file is named on stderr and skipped; `finish` prints a summary and gives the exit
    code: 3 if any file failed, 0 otherwise. With `strict`, the first bad file is an error;
    with `quiet`, bad files are counted but not named (a first pass over files that are read
    again, and reported, later).
    """

    def __init__(self, strict: bool = False, quiet: bool = False) -> None:
        self.strict = strict
        self.quiet = quiet
        self.done = 0
        self.failures: list[tuple[str, str]] = []

    def ok(self, count: int = 1) -> None:
        self.done += count

    def failed(self, path: str | Path, reason: str) -> None:
        if self.strict:
            raise LbdlError(f"{path}: {reason}")
        self.failures.append((str(path), reason))
        if not self.quiet:
            report(f"skipped {path}: {reason}")

    @property
    def exit_code(self) -> int:
        return EXIT_BATCH_FAILED if self.failures else 0

    def summary(self, what: str = "files") -> str:
        return f"{self.done} {what} processed, {len(self.failures)} failed"

    def finish(self, what: str, folder: Path | str) -> int:
        """Print the summary line with the output folder; return the exit code."""
        print(f"{self.summary(what)}; results: {folder}")
        return self.exit_code


def read_each(
    paths: Iterable[str | Path], read: Callable[[Path], T], report: BatchReport | None
) -> Iterator[tuple[Path, T]]:
    """(path, read(path)) for each file that can be read; a file whose `read` raises an
    LbdlError goes to `report` (or the error is raised when there is no report)."""
    for path in map(Path, paths):
        try:
            item = read(path)
        except LbdlError as error:
            if report is None:
                raise
            report.failed(path, str(error).removeprefix(f"{path}: "))
            continue
        yield path, item


def read_batches(
    paths: Iterable[str | Path],
    read: Callable[[Path], T],
    batch_size: int,
    report: BatchReport | None,
) -> Iterator[tuple[list[Path], list[T]]]:
    """`read_each` in batches of `batch_size` readable files (the last one smaller)."""
    names: list[Path] = []
    items: list[T] = []
    for path, item in read_each(paths, read, report):
        names.append(path)
        items.append(item)
        if len(items) == batch_size:
            yield names, items
            names, items = [], []
    if items:
        yield names, items
