"""Synthetic scenes for built-in datasets: geometric shapes drawn anti-aliased with OpenCV,
textured backgrounds and clutter (classify, and any app that needs shapes with exact extents)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

SHAPE_NAMES = [
    "circle", "square", "triangle", "cross", "ring",
    "star", "diamond", "horizontal-bar", "vertical-bar", "crescent",
]  # fmt: skip

_SHIFT = 4  # OpenCV fixed-point drawing: coordinates in 1/16 pixel
_ONE = 1 << _SHIFT


def _fixed(point: np.ndarray) -> tuple[int, int]:
    return round(float(point[0]) * _ONE), round(float(point[1]) * _ONE)


def _fill_polygon(mask: np.ndarray, points: np.ndarray, value: int = 255) -> None:
    cv2.fillPoly(mask, [np.round(points * _ONE).astype(np.int32)], value, cv2.LINE_AA, _SHIFT)


def _fill_disk(mask: np.ndarray, center: np.ndarray, radius: float, value: int = 255) -> None:
    cv2.circle(mask, _fixed(center), round(float(radius) * _ONE), value, -1, cv2.LINE_AA, _SHIFT)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _box(half_w: float, half_h: float) -> np.ndarray:
    return np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])


def draw_shape(
    name: str, mask: np.ndarray, c: np.ndarray, r: float, angle: float, rng: np.random.Generator
) -> None:
    """Draw shape `name` (one of SHAPE_NAMES), centre c, radius r, into a uint8 mask (255)."""
    if name not in SHAPE_NAMES:
        raise ValueError(f"unknown shape {name!r}")
    if name == "circle":
        _fill_disk(mask, c, r)
    elif name == "ring":
        _fill_disk(mask, c, r)
        _fill_disk(mask, c, r * rng.uniform(0.45, 0.65), 0)
    elif name == "crescent":
        _fill_disk(mask, c, r)
        theta = rng.uniform(0, 2 * np.pi)
        offset = r * rng.uniform(0.35, 0.55) * np.array([np.cos(theta), np.sin(theta)])
        _fill_disk(mask, c + offset, r * rng.uniform(0.8, 0.95), 0)
    elif name in ("square", "diamond"):
        half = r * 0.8 if name == "square" else r
        turn = 0.0 if name == "square" else np.pi / 4
        _fill_polygon(mask, _rotate(_box(half, half), angle + turn) + c)
    elif name == "triangle":
        t = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        _fill_polygon(mask, _rotate(np.stack([np.cos(t), np.sin(t)], 1) * r, angle) + c)
    elif name == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.38, 0.5))
        points = np.stack([np.cos(t) * radii, np.sin(t) * radii], 1)
        _fill_polygon(mask, _rotate(points, angle) + c)
    elif name == "cross":
        w = r * rng.uniform(0.25, 0.4)
        _fill_polygon(mask, _rotate(_box(r, w), angle) + c)
        _fill_polygon(mask, _rotate(_box(w, r), angle) + c)
    else:  # horizontal-bar, vertical-bar
        w = r * rng.uniform(0.2, 0.33)
        half = (r, w) if name == "horizontal-bar" else (w, r)
        _fill_polygon(mask, _rotate(_box(*half), angle) + c)


def draw_clutter(image: np.ndarray, count: int, rng: np.random.Generator, unit: float) -> None:
    """Thin lines and small dots of random colors, drawn in place."""
    size = image.shape[0]
    for _ in range(count):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        start = rng.uniform(0, size, 2)
        if rng.random() < 0.6:
            end = start + rng.normal(0, 7 * unit, 2)
            cv2.line(image, _fixed(start), _fixed(end), color, 1, cv2.LINE_AA, _SHIFT)
        else:
            radius = int(rng.uniform(0.8, 1.8) * unit * _ONE)
            cv2.circle(image, _fixed(start), radius, color, -1, cv2.LINE_AA, _SHIFT)


def textured_backgrounds(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Textured color backgrounds (n, size, size, 3) float32: a base color, a smooth random
    color field and, on some, stripes."""
    base = rng.uniform(0, 255, (n, 3, 1, 1)).astype(np.float32)
    coarse = torch.from_numpy(rng.standard_normal((n, 3, 4, 4), dtype=np.float32))
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    field = base + rng.uniform(10, 60, (n, 1, 1, 1)).astype(np.float32) * smooth.numpy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (32.0 / size)
    theta = rng.uniform(0, np.pi, (n, 1, 1)).astype(np.float32)
    freq = rng.uniform(0.3, 1.2, (n, 1, 1)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    amplitude = (rng.uniform(0, 30, (n, 1, 1)) * (rng.random((n, 1, 1)) < 0.4)).astype(np.float32)
    stripes = amplitude * np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    return np.ascontiguousarray(field.transpose(0, 2, 3, 1)) + stripes[..., None]


def contrasting_color(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random color that stands out (in brightness or hue) from `background`, mostly."""
    color = rng.uniform(0, 255, 3)
    for _ in range(10):
        if np.abs(color - background).sum() > 120 or abs(color.mean() - background.mean()) > 50:
            break
        color = rng.uniform(0, 255, 3)
    return color
