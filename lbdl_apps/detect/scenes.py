"""The built-in detection data (book 6.3), made on the fly: textured backgrounds with 1 to 6
circles, squares and triangles from ~8% to ~60% of the image side, partly overlapping, among
distractor shapes and clutter; each box is the exact extent of the object's visible pixels."""

from __future__ import annotations

import numpy as np

from lbdl_apps.core.shapes import contrasting_color, draw_clutter, draw_shape, textured_backgrounds

SCENE_CLASSES = ["circle", "square", "triangle"]
DISTRACTORS = ["cross", "horizontal-bar", "vertical-bar"]
MAX_OVERLAP = 0.3  # the IoU an object may have with one drawn before it


def _iou(box: np.ndarray, others: list[np.ndarray]) -> float:
    if not others:
        return 0.0
    o = np.stack(others)
    w = np.clip(np.minimum(box[2], o[:, 2]) - np.maximum(box[0], o[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], o[:, 3]) - np.maximum(box[1], o[:, 1]), 0, None)
    inter = w * h
    areas = (box[2] - box[0]) * (box[3] - box[1]) + (o[:, 2] - o[:, 0]) * (o[:, 3] - o[:, 1])
    return float((inter / (areas - inter)).max())


def _paint(image: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    alpha = mask[..., None].astype(np.float32) / 255.0
    image *= 1.0 - alpha
    image += alpha * color.astype(np.float32)


def make_scene(index: int, size: int = 64, seed: int = 0):
    """Scene `index` of the stream `seed`: an RGB image (size, size, 3) uint8, boxes (M, 4)
    float32 (x1, y1, x2, y2 in pixels) and labels (M,) int64 (indices into SCENE_CLASSES)."""
    rng = np.random.default_rng([seed, index])
    image = textured_backgrounds(1, size, rng)[0]
    unit = size / 64
    for _ in range(rng.integers(0, 4)):  # distractors: shapes of no class, under the objects
        mask = np.zeros((size, size), np.uint8)
        r = rng.uniform(0.04, 0.15) * size
        centre = rng.uniform(r, size - r, 2)
        draw_shape(rng.choice(DISTRACTORS), mask, centre, r, rng.uniform(0, np.pi), rng)
        _paint(image, mask, contrasting_color(image[int(centre[1]), int(centre[0])], rng))
    draw_clutter(image, int(rng.integers(0, 8)), rng, unit)
    masks, labels, rough = [], [], []
    for _ in range(rng.integers(1, 7)):
        for _attempt in range(20):
            r = rng.uniform(0.08, 0.6) * size / 2
            centre = rng.uniform(r, size - r, 2)
            box = np.concatenate([centre - r, centre + r])
            if _iou(box, rough) <= MAX_OVERLAP:
                break
        else:
            continue
        label = int(rng.integers(len(SCENE_CLASSES)))
        mask = np.zeros((size, size), np.uint8)
        draw_shape(SCENE_CLASSES[label], mask, centre, r, rng.uniform(-0.4, 0.4), rng)
        _paint(image, mask, contrasting_color(image[int(centre[1]), int(centre[0])], rng))
        masks.append(mask >= 128)
        labels.append(label)
        rough.append(box)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    boxes, kept = [], []
    covered = np.zeros((size, size), bool)
    for i in reversed(range(len(masks))):  # later objects cover earlier ones
        visible = masks[i] & ~covered
        covered |= masks[i]
        ys, xs = np.nonzero(visible)
        if len(xs) < 4:
            continue
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        kept.append(labels[i])
    return (
        np.clip(image, 0, 255).round().astype(np.uint8),
        np.asarray(boxes[::-1], np.float32).reshape(-1, 4),
        np.asarray(kept[::-1], np.int64),
    )
