"""`lbdl clip`: contrastive image-text model and zero-shot classification (book 6.6).

`from lbdl_apps.clip import load; clip = load("model.safetensors"); clip.encode_text([...])`
"""

from __future__ import annotations

from lbdl_apps.core.lazy import lazy_api

__all__ = ["ClipModel", "ZeroShotPrediction", "load"]
__getattr__ = lazy_api(__name__, __all__)
