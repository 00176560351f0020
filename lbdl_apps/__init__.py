"""lbdl: the applications of The Little Book of Deep Learning as command-line tools."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lbdl-apps")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
