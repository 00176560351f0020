"""`lbdl segment`: semantic segmentation (book 6.4).

`from lbdl_apps.segment import load; mask = load("model.safetensors").segment("image.png")`
"""

from __future__ import annotations

from typing import Any

__all__ = ["Segmentation", "Segmenter", "load"]


def __getattr__(name: str) -> Any:
    """Import the API (and torch) only when it is used, so `lbdl --help` starts fast."""
    if name in __all__:
        from lbdl_apps.segment import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
