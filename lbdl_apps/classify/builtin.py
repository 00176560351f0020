"""The built-in classification data (book 6.2): geometric shapes of ten kinds, in random
colors, sizes, positions and small rotations, on cluttered, textured, noisy backgrounds.
Made on the fly, deterministic given the seed, so `lbdl classify train` runs anywhere."""

from __future__ import annotations

import numpy as np

from lbdl_apps.core.shapes import (
    SHAPE_NAMES,
    contrasting_color,
    draw_clutter,
    draw_shape,
    textured_backgrounds,
)


def _make_shapes_chunk(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    labels = rng.integers(0, len(SHAPE_NAMES), n)
    background = np.clip(textured_backgrounds(n, size, rng), 0, 255).astype(np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    colors = np.empty((n, 3), np.float32)
    unit = size / 32.0
    for i in range(n):
        draw_clutter(background[i], int(rng.integers(0, 4)), rng, unit)
        radius = rng.uniform(0.15, 0.4) * size
        center = rng.uniform(0.6 * radius, size - 0.6 * radius, 2)
        angle = np.deg2rad(rng.uniform(-15, 15))
        draw_shape(SHAPE_NAMES[labels[i]], masks[i], center, radius, angle, rng)
        inside = masks[i] > 127
        local = background[i][inside] if inside.any() else background[i].reshape(-1, 3)
        colors[i] = contrasting_color(local.mean(0), rng)
    alpha = masks.astype(np.float32)[..., None] / 255.0
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)[None, :, None, None]
    shade = rng.uniform(-40, 40, (n, 1, 1, 1)).astype(np.float32) * ramp
    image = background * (1 - alpha) + (colors[:, None, None, :] + shade) * alpha
    for i in np.flatnonzero(rng.random(n) < 0.3):  # some clutter over the shape
        over = image[i].astype(np.uint8)
        draw_clutter(over, 1, rng, unit)
        image[i] = over
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    image += noise * rng.uniform(3, 20, (n, 1, 1, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def make_shapes(
    n: int, image_size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The built-in dataset: n RGB images (n, S, S, 3) uint8 of one of 10 geometric shapes
    (random color, size, position, small rotation) on textured, noisy backgrounds with
    clutter; labels (n,) int64 and the label names. Deterministic given the seed."""
    rng = np.random.default_rng(seed)
    chunks = [_make_shapes_chunk(min(1024, n - i), image_size, rng) for i in range(0, n, 1024)]
    if not chunks:
        return np.zeros((0, image_size, image_size, 3), np.uint8), np.zeros(0, np.int64), []
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks]).astype(np.int64)
    return images, labels, list(SHAPE_NAMES)
