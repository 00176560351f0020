"""`python -m lbdl_apps` is `lbdl`."""

from lbdl_apps.entry import main

main()
