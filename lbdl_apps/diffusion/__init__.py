"""`lbdl diffusion`: denoising diffusion with class, text and CLIP guidance (book 7.2).

`from lbdl_apps.diffusion import load; load("model.safetensors").sample(16, classes=["red"])`
"""

from __future__ import annotations

from lbdl_apps.core.lazy import lazy_api

__all__ = ["Diffuser", "Samples", "load", "save_samples"]
__getattr__ = lazy_api(__name__, __all__)
