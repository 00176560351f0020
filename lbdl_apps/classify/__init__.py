"""`lbdl classify`: image classification (book 6.2).

`from lbdl_apps.classify import load; load("model.safetensors").predict(paths)`
"""

from __future__ import annotations

from lbdl_apps.core.lazy import lazy_api

__all__ = ["Classifier", "LabelledImages", "Prediction", "labelled_images", "load"]
__getattr__ = lazy_api(__name__, __all__)
