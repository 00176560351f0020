"""`lbdl detect`: single-shot multibox object detection (book 6.3).

`from lbdl_apps.detect import load; found = load("model.safetensors").detect("image.jpg")`
"""

from __future__ import annotations

from typing import Any

__all__ = ["Detections", "Detector", "load"]


def __getattr__(name: str) -> Any:
    """Import the API (and torch) only when it is used, so `lbdl --help` starts fast."""
    if name in __all__:
        from lbdl_apps.detect import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
