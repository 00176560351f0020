"""`python -m lbdl_apps` is `lbdl`."""

from lbdl_apps.cli import run

run()
