"""The one rule for bad input (DESIGN.md): a user error is one line on stderr and exit code 2;
a batch goes on past a bad file and exits 3."""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2
EXIT_BATCH_FAILED = 3
EXIT_INTERRUPTED = 130


class LbdlError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


def report(message: str) -> None:
    """Print one line for the user on stderr."""
    print(f"lbdl: {message}", file=sys.stderr, flush=True)
