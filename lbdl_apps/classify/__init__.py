"""`lbdl classify`: image classification (book 6.2)."""

from lbdl_apps.classify.api import Classifier, Prediction, load

__all__ = ["Classifier", "Prediction", "load"]
