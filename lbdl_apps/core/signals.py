"""Ctrl-C and SIGTERM (DESIGN.md): both become KeyboardInterrupt, held back while a run
writes its state, so that what is saved is always a consistent state."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, as lbdl raises it. A subclass on purpose: CPython remembers a plain
    KeyboardInterrupt that passes through a nested evaluation (`PyRun_String`, which C
    extensions call) and, under `python -m`, ends the process by SIGINT at exit, even after
    lbdl caught it and chose exit 130."""


class _Received:
    """Whether a Ctrl-C/SIGTERM came that the command has not yet acted on. Raising from a
    handler is not enough: C code that calls Python and clears the error it gets back (a C
    module's import, for one) swallows the KeyboardInterrupt, so lbdl checks this at every
    training step's end and when a verb returns."""

    pending = False
    depth = 0  # how many `StopSignals.installed()` blocks are open


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY_S = 0.05  # how soon a signal that came during an import is looked at again


def _importing(frame: Any) -> bool:
    """Whether the interrupted code runs inside an import: an exception raised there can
    cross C/C++ frames (pybind11 aborts the process, `__set_name__` wraps it in an error)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _again(signum: int, frame: Any) -> None:
    """SIGALRM: hand the pending stop to the SIGTERM handler now in place."""
    handler = signal.getsignal(signal.SIGTERM)
    if _Received.pending and callable(handler):
        handler(signal.SIGTERM, frame)


def _stop(frame: Any) -> None:
    """Raise Interrupted, or, inside an import, look again in RETRY_S."""
    if _importing(frame) and hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, _again)
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    raise Interrupted


def interrupt(signum: int, frame: Any) -> None:
    """A signal handler: stop the command where it is (after the import under way)."""
    _Received.pending = True
    _stop(frame)


def raise_if_received() -> None:
    """Stop now if a signal came whose KeyboardInterrupt was swallowed on its way up."""
    if _Received.pending:
        raise Interrupted


class StopSignals:
    """While `installed()`, SIGINT and SIGTERM raise KeyboardInterrupt, except inside a
    `deferred()` block, at whose end they take effect."""

    def __init__(self) -> None:
        self._deferring = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Set the handlers; once the outermost block ends, the command is over and a signal
        it received is forgotten (an in-process caller may run the next command)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        old = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        _Received.depth += 1
        try:
            yield
        finally:
            _Received.depth -= 1
            if _Received.depth == 0:
                _Received.pending = False
            for s, handler in old.items():
                signal.signal(s, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._deferring:
            _Received.pending = True
        else:
            interrupt(signum, frame)

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
        raise_if_received()

    def hold(self) -> None:
        """From now on, hold every signal back (a second Ctrl-C must not cut a save short)."""
        self._deferring = True


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader worker's `worker_init_fn`: Ctrl-C reaches the whole process group, and
    it is the main process that stops the run, after the step under way (a worker that died
    of it would break that step)."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
