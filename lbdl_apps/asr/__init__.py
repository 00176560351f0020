"""`lbdl asr`: Whisper-style speech recognition (book 6.5).

`from lbdl_apps.asr import load; load("model.safetensors").transcribe(paths)`
"""

from __future__ import annotations

from lbdl_apps.core.lazy import lazy_api

__all__ = ["Recognizer", "Transcript", "load"]
__getattr__ = lazy_api(__name__, __all__)
