"""`lbdl classify`: image classification (book 6.2).

`from lbdl_apps.classify import load; load("model.safetensors").predict(paths)`
"""

from __future__ import annotations

from typing import Any

__all__ = ["Classifier", "Prediction", "load"]


def __getattr__(name: str) -> Any:
    """Import the API (and torch) only when it is used, so `lbdl --help` starts fast."""
    if name in __all__:
        from lbdl_apps.classify import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
