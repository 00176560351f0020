"""The SSD loss (book 6.3) against a value computed by hand, and hard-negative mining."""

from __future__ import annotations

import math

import torch

from lbdl_apps.detect.loss import hard_negatives, ssd_loss


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def _smooth_l1(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


def test_loss_matches_a_hand_computed_value() -> None:
    # 6 default boxes, 2 classes + "no object"; boxes 0 and 3 are matched (classes 1 and 2)
    logits = [
        [0.2, 1.5, -0.3],  # matched, class 1
        [2.0, 0.1, 0.0],  # easy negative
        [-1.0, 2.0, 0.5],  # hard negative (confident class 1)
        [0.0, 0.3, 0.4],  # matched, class 2
        [0.1, 0.2, 1.9],  # hard negative
        [0.5, 0.6, 0.4],  # medium negative
    ]
    labels = [1, 0, 0, 2, 0, 0]
    offsets = torch.zeros(1, 6, 4)
    target = torch.zeros(1, 6, 4)
    target[0, 0] = torch.tensor([0.5, -2.0, 0.0, 0.1])
    target[0, 3] = torch.tensor([1.5, 0.0, -0.2, 0.0])
    target[0, 1] = torch.tensor([9.0, 9.0, 9.0, 9.0])  # unmatched: never in the box loss
    # by hand: 2 positives -> 3 x 2 = 6 wanted negatives, but only 4 exist: all 4 count
    ce = [_ce(row, y) for row, y in zip(logits, labels, strict=True)]
    classification = sum(ce)
    box = sum(_smooth_l1(d) for d in (0.5, -2.0, 0.0, 0.1, 1.5, 0.0, -0.2, 0.0))
    expected = (classification + box) / 2
    loss, parts = ssd_loss(offsets, torch.tensor([logits]), target, torch.tensor([labels]))
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    assert math.isclose(float(parts["box_loss"]), box / 2, rel_tol=1e-5)

    # with a ratio of 1, only the 2 hardest negatives (boxes 2 and 4) count
    loss1, _ = ssd_loss(offsets, torch.tensor([logits]), target, torch.tensor([labels]), 1.0)
    expected1 = (ce[0] + ce[3] + ce[2] + ce[4] + box) / 2
    assert math.isclose(float(loss1), expected1, rel_tol=1e-5)


def test_hard_negative_mining_keeps_three_negatives_per_positive() -> None:
    torch.manual_seed(0)
    ce = torch.rand(3, 200)
    positive = torch.zeros(3, 200, dtype=torch.bool)
    positive[0, :5] = True  # 5 positives -> 15 negatives
    positive[1, :100] = True  # 100 positives, 100 negatives left -> all 100
    negative = hard_negatives(ce, positive, 3.0)
    assert negative.sum(1).tolist() == [15, 100, 0]  # image 2 has no object: no negative
    assert not (negative & positive).any()
    chosen, rest = ce[0][negative[0]], ce[0][~negative[0] & ~positive[0]]
    assert chosen.min() > rest.max()  # the hardest ones
