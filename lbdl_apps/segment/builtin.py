"""The built-in segmentation data (book 6.4): scenes of shapes on textured backgrounds, made
on the fly and deterministic given the seed, so `lbdl segment train` runs anywhere."""

from __future__ import annotations

import numpy as np

SCENE_CLASSES = ["background", "disk", "square", "triangle"]


def make_scenes(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` RGB scenes (n, size, size, 3) uint8 and their index masks (n, size, size) uint8:
    a smooth textured, noisy grayish background and 2-4 shapes of random saturated color
    (classes 1-3: disk, square, triangle; only their geometry tells them apart)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for k in range(n):
        fx, fy = rng.uniform(0.05, 0.4, 2)
        phase = rng.uniform(0, 2 * np.pi, 3)
        base = rng.uniform(70, 180) + rng.uniform(-12, 12, 3)  # a grayish, tinted background
        texture = np.sin(fx * xx + phase[0])[..., None] * np.cos(fy * yy + phase[1])[..., None]
        image = base + 35 * texture * rng.uniform(0.3, 1.0, 3)
        mask = masks[k]
        for _ in range(rng.integers(2, 5)):
            cls = int(rng.integers(1, 4))
            r = rng.uniform(0.09, 0.2) * size
            cy, cx = rng.uniform(r, size - r, 2)
            if cls == 1:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            elif cls == 2:
                inside = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
            else:
                top, left, right = (cy - r, cx), (cy + r * 0.8, cx - r), (cy + r * 0.8, cx + r)
                inside = _in_triangle(yy, xx, top, left, right)
            color = rng.permutation(
                [rng.uniform(180, 255), rng.uniform(0, 70), rng.uniform(0, 255)]
            )  # a saturated color
            image[inside] = color + 20 * texture[inside] * rng.uniform(-1, 1)
            mask[inside] = cls
        image += rng.normal(0, 10, image.shape)
        images[k] = np.clip(image, 0, 255).astype(np.uint8)
    return images, masks


def _in_triangle(yy: np.ndarray, xx: np.ndarray, *corners: tuple[float, float]) -> np.ndarray:
    (y1, x1), (y2, x2), (y3, x3) = corners

    def side(ya: float, xa: float, yb: float, xb: float) -> np.ndarray:
        return (xx - xb) * (ya - yb) - (xa - xb) * (yy - yb)

    d1, d2, d3 = side(y1, x1, y2, x2), side(y2, x2, y3, x3), side(y3, x3, y1, x1)
    negative = (d1 < 0) | (d2 < 0) | (d3 < 0)
    positive = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(negative & positive)
