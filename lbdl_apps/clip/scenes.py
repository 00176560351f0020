"""Built-in captioned scenes for contrastive training (book 6.6): one shape per image, with a
caption naming its color, shape, size and position. Some color-shape pairs are held out of the
"seen" split, so that zero-shot prompts can name combinations never shown together."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lbdl_apps.core.shapes import draw_shape

SCENE_SHAPES = ["circle", "square", "triangle", "cross", "ring", "star"]
SCENE_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}
SCENE_SIZES = {"small": 0.13, "large": 0.24}  # radius as a fraction of the image side
# (row, column) cells of a 3 x 3 grid and how captions name them
SCENE_POSITIONS = {
    (0, 0): "in the top left corner",
    (0, 1): "at the top",
    (0, 2): "in the top right corner",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "in the bottom left corner",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right corner",
}
_CELL_CENTERS = (0.25, 0.5, 0.75)
_TEMPLATES = (
    "a {size} {color} {shape} {position}.",
    "a {color} {shape}, {size}, {position}.",
    "{position} there is a {size} {color} {shape}.",
    "a photo of a {size} {color} {shape} {position}.",
)
SPLITS = ("all", "seen", "unseen")


class Scenes(NamedTuple):
    """Images (N, H, W, 3) uint8, one caption per image, and each image's attributes
    (dicts with keys color, shape, size, position)."""

    images: np.ndarray
    captions: list[str]
    attributes: list[dict[str, str]]


def is_unseen_pair(color: str, shape: str) -> bool:
    """Whether (color, shape) is held out of the "seen" split: one shape per color."""
    colors, shapes = list(SCENE_COLORS), SCENE_SHAPES
    return shapes.index(shape) == colors.index(color) % len(shapes)


def caption_for(attributes: dict[str, str], template: int = 0) -> str:
    """The caption of a scene with these attributes, in one of the caption templates."""
    return _TEMPLATES[template % len(_TEMPLATES)].format(**attributes)


def _pick_attributes(rng: np.random.Generator, split: str) -> tuple[str, str, str, tuple]:
    while True:
        color = str(rng.choice(list(SCENE_COLORS)))
        shape = str(rng.choice(SCENE_SHAPES))
        unseen = is_unseen_pair(color, shape)
        if split == "all" or unseen == (split == "unseen"):
            break
    size = str(rng.choice(list(SCENE_SIZES)))
    cell = tuple(int(v) for v in rng.integers(0, 3, 2))
    return color, shape, size, cell


def make_scenes(n: int, image_size: int = 32, seed: int = 0, split: str = "all") -> Scenes:
    """`n` captioned shape scenes, deterministic for a given seed (book 6.6).

    `split`: "all" pairs, only the "seen" color-shape pairs (training), or only the held-out
    "unseen" ones (zero-shot tests of new combinations).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    rng = np.random.default_rng(seed)
    size = image_size
    images = np.empty((n, size, size, 3), np.uint8)
    captions, attributes = [], []
    xx = np.linspace(0, 1, size, endpoint=False, dtype=np.float32)[None, :]
    for i in range(n):
        color, shape, size_name, cell = _pick_attributes(rng, split)
        base = rng.uniform(70, 110, 3)
        tilt = rng.uniform(-20, 20, 3)
        background = base + tilt * (xx[..., None] - 0.5) + rng.normal(0, 4, (size, size, 3))
        radius = SCENE_SIZES[size_name] * size * rng.uniform(0.9, 1.1)
        center = np.array([_CELL_CENTERS[cell[1]], _CELL_CENTERS[cell[0]]]) * size
        center = center + rng.uniform(-0.04, 0.04, 2) * size
        mask = np.zeros((size, size), np.uint8)
        draw_shape(shape, mask, center, radius, np.deg2rad(rng.uniform(-10, 10)), rng)
        alpha = mask.astype(np.float32)[..., None] / 255.0
        paint = np.array(SCENE_COLORS[color], np.float32) + rng.normal(0, 8, 3)
        image = background * (1 - alpha) + paint * alpha
        images[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        attrs = {"color": color, "shape": shape, "size": size_name,
                 "position": SCENE_POSITIONS[cell]}  # fmt: skip
        attributes.append(attrs)
        captions.append(caption_for(attrs, int(rng.integers(0, len(_TEMPLATES)))))
    return Scenes(images, captions, attributes)
