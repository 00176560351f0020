"""`lbdl denoise`: image restoration (book 6.1): denoising, low light, colorization,
super-resolution and JPEG artefact removal.

`from lbdl_apps.denoise import load; load("model.safetensors").restore("photo.png")`
"""

from __future__ import annotations

from lbdl_apps.core.lazy import lazy_api

__all__ = ["Restored", "Restorer", "load"]
__getattr__ = lazy_api(__name__, __all__)
