"""`lbdl clip`: contrastive image-text model and zero-shot classification (book 6.6).

`from lbdl_apps.clip import load; clip = load("model.safetensors"); clip.encode_text([...])`
"""

from __future__ import annotations

from typing import Any

__all__ = ["ClipModel", "ZeroShotPrediction", "load"]


def __getattr__(name: str) -> Any:
    """Import the API (and torch) only when it is used, so `lbdl --help` starts fast."""
    if name in __all__:
        from lbdl_apps.clip import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
