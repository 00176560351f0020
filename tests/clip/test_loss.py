"""The contrastive loss (book 6.6) against a hand computation, and its symmetry."""

import math

import torch
import torch.nn.functional as F

from lbdl_apps.clip.loss import clip_loss
from lbdl_apps.clip.model import CLIP, MAX_LOGIT_SCALE, default_config


def test_loss_matches_hand_computation() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # similarities: [[0.6, 0.0], [0.8, 1.0]], times scale 2: [[1.2, 0], [1.6, 2]]
    row0 = -math.log(math.exp(1.2) / (math.exp(1.2) + 1))
    row1 = -math.log(math.exp(2.0) / (math.exp(1.6) + math.exp(2.0)))
    col0 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6)))
    col1 = -math.log(math.exp(2.0) / (1 + math.exp(2.0)))
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    assert math.isclose(float(clip_loss(image, text, 2.0)), expected, rel_tol=1e-6)


def test_loss_is_symmetric_in_images_and_texts() -> None:
    torch.manual_seed(0)
    a = F.normalize(torch.randn(5, 8), dim=1)
    b = F.normalize(torch.randn(5, 8), dim=1)
    assert torch.allclose(clip_loss(a, b, 10.0), clip_loss(b, a, 10.0))
    matched = clip_loss(a, a, 50.0)
    assert matched < clip_loss(a, b, 50.0) and matched < 0.1


def test_temperature_is_learned_and_clamped() -> None:
    model = CLIP(default_config("tiny", 16, 40, 8, 3))
    assert math.isclose(float(model.scale().detach()), 1 / 0.07, rel_tol=1e-5)
    assert model.logit_scale.requires_grad
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert math.isclose(float(model.scale().detach()), MAX_LOGIT_SCALE, rel_tol=1e-5)
