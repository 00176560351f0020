"""`lbdl denoise`: image restoration (book 6.1): denoising, low light, colorization,
super-resolution and JPEG artefact removal.

`from lbdl_apps.denoise import load; load("model.safetensors").restore("photo.png")`
"""

from __future__ import annotations

from typing import Any

__all__ = ["Restored", "Restorer", "load"]


def __getattr__(name: str) -> Any:
    """Import the API (and torch) only when it is used, so `lbdl --help` starts fast."""
    if name in __all__:
        from lbdl_apps.denoise import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
