"""The one rule for bad input (DESIGN.md): a user error is one line on stderr and exit code 2;
a batch goes on past a bad file and exits 3."""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_BATCH_FAILED = 3
EXIT_INTERRUPTED = 130


class LbdlError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


def report(message: str) -> None:
    """Print one line for the user on stderr."""
    print(f"lbdl: {message}", file=sys.stderr, flush=True)


class BatchReport:
    """Counts the good and bad inputs of a batch verb (predict, transcribe, embed...).

    A bad file is named on stderr and skipped; `finish` prints a summary and gives the exit
    code: 3 if any file failed, 0 otherwise. With `strict`, the first bad file is an error.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.done = 0
        self.failures: list[tuple[str, str]] = []

    def ok(self, count: int = 1) -> None:
        self.done += count

    def failed(self, path: str | Path, reason: str) -> None:
        if self.strict:
            raise LbdlError(f"{path}: {reason}")
        self.failures.append((str(path), reason))
        report(f"skipped {path}: {reason}")

    @property
    def exit_code(self) -> int:
        return EXIT_BATCH_FAILED if self.failures else 0

    def summary(self, what: str = "files") -> str:
        return f"{self.done} {what} processed, {len(self.failures)} failed"
