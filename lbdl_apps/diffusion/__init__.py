"""`lbdl diffusion`: denoising diffusion with class, text and CLIP guidance (book 7.2).

`from lbdl_apps.diffusion import load; load("model.safetensors").sample(16, classes=["red"])`
"""

from __future__ import annotations

from typing import Any

__all__ = ["Diffuser", "Samples", "load", "save_samples"]


def __getattr__(name: str) -> Any:
    """Import the API (and torch) only when it is used, so `lbdl --help` starts fast."""
    if name in __all__:
        from lbdl_apps.diffusion import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
