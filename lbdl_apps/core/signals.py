"""Ctrl-C and SIGTERM during a long run (DESIGN.md): both become KeyboardInterrupt, held back
while the run writes its state, so that what is saved is always a consistent state."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class StopSignals:
    """While `installed()`, SIGINT and SIGTERM raise KeyboardInterrupt, except inside a
    `deferred()` block, at whose end they take effect."""

    def __init__(self) -> None:
        self._deferring = False
        self._requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._deferring:
            self._requested = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Finish this block before a Ctrl-C/SIGTERM takes effect."""
        self.begin()
        try:
            yield
        finally:
            self._deferring = False
        self.end()

    def begin(self) -> None:
        """From now until `end`, a signal waits (a training step under way)."""
        self._deferring = True

    def end(self) -> None:
        """The held-back work is done: a signal that came meanwhile takes effect now."""
        self._deferring = False
        if self._requested:
            raise KeyboardInterrupt

    @property
    def requested(self) -> bool:
        """Whether a signal came while held back."""
        return self._requested

    def hold(self) -> None:
        """From now on, hold every signal back (a second Ctrl-C must not cut a save short)."""
        self._deferring = True


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader worker's `worker_init_fn`: Ctrl-C reaches the whole process group, and
    it is the main process that stops the run, after the step under way (a worker that died
    of it would break that step)."""
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
