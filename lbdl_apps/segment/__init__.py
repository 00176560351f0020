"""`lbdl segment`: semantic segmentation (book 6.4).

`from lbdl_apps.segment import load; mask = load("model.safetensors").segment("image.png")`
"""

from __future__ import annotations

from lbdl_apps.core.lazy import lazy_api

__all__ = ["Segmentation", "Segmenter", "load"]
__getattr__ = lazy_api(__name__, __all__)
