"""Sample quality without Inception weights: the Fréchet distance and the kernel inception
distance (KID) computed on the penultimate features of a `lbdl classify` model, and that
classifier's accuracy on samples of each requested class (torchmetrics does the statistics)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lbdl_apps.core.errors import LbdlError


class ClassifierFeatures(nn.Module):
    """Images (N, C, H, W) in [0, 1] -> the classifier's penultimate features (the input of
    its last linear layer), after the classifier's own preprocessing (channels, size,
    mean/std). `logits(images)` gives its class scores."""

    def __init__(self, classifier) -> None:  # a lbdl_apps.classify.api.Classifier
        super().__init__()
        self.model = classifier.model
        self.pre = classifier.preprocessing
        self.device = classifier.device
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise LbdlError("the classifier has no linear layer to read features from")
        self.last = linears[-1]
        self.num_features = self.last.in_features
        self._seen: list[Tensor] = []
        self.last.register_forward_hook(lambda _m, inputs, _o: self._seen.append(inputs[0]))

    def prepare(self, images: Tensor) -> Tensor:
        channels, size = self.pre["in_channels"], self.pre["image_size"]
        images = images.float().to(self.device)
        if images.shape[1] == 3 and channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], device=images.device)
            # (3,) weights as (1, 3, 1, 1): (N, 3, H, W) -> (N, 1, H, W)
            images = (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif images.shape[1] == 1 and channels == 3:
            images = images.expand(-1, 3, -1, -1)  # (N, 1, H, W) -> (N, 3, H, W)
        if tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        # the (C,) statistics viewed as (1, C, 1, 1), to broadcast over (N, C, S, S)
        mean = torch.tensor(self.pre["mean"], device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.pre["std"], device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    @torch.no_grad()
    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self._seen.clear()
        logits = self.model(self.prepare(images))
        features = self._seen[-1].flatten(1)  # (N, F, ...) -> (N, F x ...)
        return features.double().cpu(), logits.float().cpu()

    def forward(self, images: Tensor) -> Tensor:
        return self.features_and_logits(images)[0]


def distribution_scores(
    features: ClassifierFeatures,
    real: Iterable[Tensor],
    fake: Iterable[Tensor],
    kid_subset: int = 100,
) -> dict[str, float]:
    """Fréchet distance and KID (mean, std over subsets) between two image streams in [0, 1]."""
    real, fake = list(real), list(fake)
    n = min(sum(len(b) for b in real), sum(len(b) for b in fake))
    if n < 2:
        raise LbdlError("the Fréchet distance needs at least 2 real and 2 generated images")
    fid = FrechetInceptionDistance(feature=features, normalize=True, sync_on_compute=False)
    with warnings.catch_warnings():  # "will save all extracted features": n is small here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(
            feature=features, subset_size=min(kid_subset, n), normalize=True, sync_on_compute=False
        )
    for metric in (fid, kid):
        for batch in real:
            metric.update(batch, real=True)
        for batch in fake:
            metric.update(batch, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fd": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


def class_accuracy(
    features: ClassifierFeatures, images: Tensor, wanted: Tensor, batch_size: int = 256
) -> Tensor:
    """Per sample: 1.0 where the classifier's top class is the wanted one."""
    hits = []
    for start in range(0, len(images), batch_size):
        _, logits = features.features_and_logits(images[start : start + batch_size])
        hits.append((logits.argmax(1) == wanted[start : start + batch_size]).float())
    return torch.cat(hits)
