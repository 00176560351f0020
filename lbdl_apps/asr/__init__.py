"""`lbdl asr`: Whisper-style speech recognition (book 6.5).

`from lbdl_apps.asr import load; load("model.safetensors").transcribe(paths)`
"""

from __future__ import annotations

from typing import Any

__all__ = ["Recognizer", "Transcript", "load"]


def __getattr__(name: str) -> Any:
    """Import the API (and torch) only when it is used, so `lbdl --help` starts fast."""
    if name in __all__:
        from lbdl_apps.asr import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
