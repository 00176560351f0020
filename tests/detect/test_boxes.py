"""Default boxes, matching, encoding and decoding (book 6.3)."""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou

from lbdl_apps.detect.boxes import (
    boxes_per_location,
    decode,
    default_boxes,
    default_scales,
    encode,
    match,
    postprocess,
    select,
)


def test_default_boxes_follow_the_maps_scales_and_ratios() -> None:
    priors = default_boxes([4, 2, 1], [0.2, 0.4, 0.6, 0.8], [2.0])
    assert boxes_per_location([2.0]) == 4
    assert priors.shape == ((16 + 4 + 1) * 4, 4)
    first = priors[:4]  # cell (0, 0) of the 4x4 map, scale 0.2, next scale 0.4
    assert torch.allclose(first[:, :2], torch.tensor([0.125, 0.125]).expand(4, 2))
    r = 2**0.5
    sizes = torch.tensor([[0.2, 0.2], [0.08**0.5] * 2, [0.2 * r, 0.2 / r], [0.2 / r, 0.2 * r]])
    assert torch.allclose(first[:, 2:], sizes)
    assert torch.allclose(priors[-4:, :2], torch.tensor([0.5, 0.5]).expand(4, 2))
    assert default_scales(4, 0.1, 0.9) == [0.1, 0.3, 0.5, 0.7, 0.9]


def test_encoding_round_trip() -> None:
    torch.manual_seed(0)
    priors = default_boxes([5, 3], [0.2, 0.5, 0.8], [2.0, 3.0])
    corners = torch.rand(len(priors), 2) * 0.5
    boxes = torch.cat([corners, corners + 0.05 + torch.rand(len(priors), 2) * 0.4], 1)
    offsets = encode(boxes, priors)
    assert torch.allclose(decode(offsets, priors), boxes, atol=1e-5)
    same = box_convert(priors, "cxcywh", "xyxy")  # a prior encodes to zero offsets
    assert torch.allclose(encode(same, priors), torch.zeros_like(priors), atol=1e-5)
    # variances: a shift of 10% of the prior's width is an offset of 1
    shifted = same + torch.tensor([1.0, 0.0, 1.0, 0.0]) * priors[:, 2:3] * 0.1
    assert torch.allclose(encode(shifted, priors)[:, 0], torch.ones(len(priors)), atol=1e-4)


def test_matching_gives_every_object_a_default_box() -> None:
    priors = default_boxes([4, 2, 1], [0.2, 0.45, 0.7, 0.9], [2.0])
    gt = torch.tensor(
        [
            [0.1, 0.1, 0.3, 0.3],  # fits a 4x4-map prior well
            [0.0, 0.6, 0.02, 0.62],  # tiny: no prior reaches IoU 0.5
            [0.2, 0.2, 0.95, 0.9],  # large
            [0.11, 0.1, 0.31, 0.3],  # near the first: competes for the same priors
        ]
    )
    labels = torch.tensor([0, 1, 2, 1])
    classes, matched = match(gt, labels, priors, threshold=0.5)
    iou = box_iou(gt, box_convert(priors, "cxcywh", "xyxy"))
    for j in range(len(gt)):
        assigned = (classes > 0) & (matched == gt[j]).all(1)
        assert assigned.any(), f"object {j} has no default box"
        assert (classes[assigned] == labels[j] + 1).all()
    assert iou[1].max() < 0.5  # the tiny one got its best box anyway
    background = classes == 0
    assert (iou[:, background].max(0).values < 0.5).all()
    matched_pairs = iou.max(0).values[~background]
    assert (matched_pairs > 0).all()
    empty_classes, _ = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), priors)
    assert (empty_classes == 0).all()


def test_postprocess_thresholds_suppresses_per_class_and_keeps_the_best() -> None:
    priors = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    offsets = torch.zeros(1, 3, 4)
    big = 6.0  # logits: "no object", class 0, class 1
    logits = torch.tensor([[[0.0, big, 0.0], [0.0, big - 1, big - 1.2], [0.0, 0.0, big]]])
    found = postprocess(offsets, logits, priors, conf=0.25, iou=0.45)[0]
    # box 1 is suppressed as class 0 by box 0, but stays as class 1 (per-class NMS)
    assert found["labels"].tolist() == [0, 1, 1]
    assert torch.allclose(found["boxes"][0], torch.tensor([0.2, 0.2, 0.4, 0.4]))
    assert (found["scores"][:-1] >= found["scores"][1:]).all()
    assert len(postprocess(offsets, logits, priors, conf=0.25, max_det=2)[0]["labels"]) == 2
    only = postprocess(offsets, logits, priors, conf=0.25, classes=[1])[0]
    assert only["labels"].tolist() == [1, 1]
    assert len(select(torch.zeros(1, 3, 4), torch.full((1, 3, 2), 0.1), conf=0.25)[0]["boxes"]) == 0
