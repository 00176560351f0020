"""`lbdl detect`: single-shot multibox object detection (book 6.3).

`from lbdl_apps.detect import load; found = load("model.safetensors").detect("image.jpg")`
"""

from __future__ import annotations

from lbdl_apps.core.lazy import lazy_api

__all__ = ["Detections", "Detector", "load"]
__getattr__ = lazy_api(__name__, __all__)
