"""Shape drawing for built-in datasets: every shape fills a plausible area where asked."""

from __future__ import annotations

import numpy as np
import pytest

from lbdl_apps.core.shapes import SHAPE_NAMES, draw_shape


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_each_shape_is_drawn_inside_its_radius(name: str) -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    center, radius = np.array([30.0, 34.0]), 16.0
    draw_shape(name, mask, center, radius, 0.0, rng)
    ys, xs = np.nonzero(mask > 127)
    area = len(xs) / (np.pi * radius**2)
    assert 0.3 < area < 1.5, area  # bars are thin; a circle fills its disk, a diamond more
    distance = np.hypot(xs - center[0], ys - center[1])
    assert distance.max() <= radius * np.sqrt(2) + 1  # a diamond's corners reach r * sqrt(2)
    assert np.hypot(xs.mean() - center[0], ys.mean() - center[1]) < 0.5 * radius


def test_unknown_shape() -> None:
    with pytest.raises(ValueError, match="hexagon"):
        draw_shape(
            "hexagon",
            np.zeros((8, 8), np.uint8),
            np.array([4.0, 4.0]),
            3.0,
            0.0,
            np.random.default_rng(0),
        )
