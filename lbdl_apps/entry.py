"""The `lbdl` executable. Ctrl-C and SIGTERM are one line and exit 130 from the first moment:
the handlers are set before the apps (and torch) are imported, and a signal that comes while
the commands are being built, outside every verb, ends the same way."""

from __future__ import annotations

import signal
import sys

from lbdl_apps.core.errors import EXIT_INTERRUPTED, report
from lbdl_apps.core.signals import STOP_SIGNALS, interrupt


def main() -> None:
    for stop in STOP_SIGNALS:
        signal.signal(stop, interrupt)
    try:
        from lbdl_apps.cli import app

        app()
    except KeyboardInterrupt:
        report("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    finally:  # the command is over: a late signal no longer cuts its exit short
        for stop in STOP_SIGNALS:
            signal.signal(stop, signal.SIG_IGN)
