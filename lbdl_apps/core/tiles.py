"""Image-to-image inference on images of any size: overlapping tiles, blended with a smooth
window so that no seam shows, in bounded memory (denoise, segment)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def blend_window(size: int, overlap: int, floor: float = 1e-4) -> Tensor:
    """A (size, size) weight for blending overlapping tiles.

    Over `overlap` pixels at each border it is `floor` for the outer quarter (where the
    network sees its own zero padding) and then rises along a cosine ramp to 1. It is never 0,
    so the image's own borders, which one tile covers alone, keep their value.
    """
    ramp = torch.ones(size)
    if overlap > 0:
        margin = overlap // 4
        t = (torch.arange(overlap - margin, dtype=torch.float32) + 0.5) / (overlap - margin)
        edge = torch.cat([torch.zeros(margin), 0.5 - 0.5 * torch.cos(torch.pi * t)]).clamp(floor)
        ramp[:overlap] = edge
        ramp[-overlap:] = torch.minimum(ramp[-overlap:], edge.flip(0))
    return ramp[:, None] * ramp[None, :]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest `tile`-pixel tiles that cover `length` with neighbours
    overlapping by at least `overlap` pixels, spread evenly (the last flush with the end)."""
    if length <= tile:
        return [0]
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def pad_to(image: Tensor, height: int, width: int) -> Tensor:
    """Reflect-pad (C, H, W) at the bottom/right to at least height x width (replicate where the
    image is too small to reflect)."""
    pad_h, pad_w = max(0, height - image.shape[-2]), max(0, width - image.shape[-1])
    if pad_h == 0 and pad_w == 0:
        return image
    small = pad_h >= image.shape[-2] or pad_w >= image.shape[-1]
    return F.pad(image[None], (0, pad_w, 0, pad_h), mode="replicate" if small else "reflect")[0]


@torch.no_grad()
def tiled_apply(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    tile: int = 256,
    overlap: int = 32,
    multiple: int = 1,
    batch_size: int = 4,
) -> Tensor:
    """Apply `fn` ((N, C, t, t) -> (N, K, t, t)) to a (C, H, W) image of any size.

    Images smaller than a tile are padded to a multiple of `multiple` and processed whole;
    larger ones are cut into `tile`-sized tiles overlapping by `overlap`, whose outputs are
    blended. Memory is bounded by the tile batch plus two (K, H, W) float accumulators.
    """
    if tile % multiple:
        raise ValueError(f"tile {tile} must be a multiple of {multiple}")
    if not 0 <= overlap < tile // 2 + 1:
        raise ValueError(f"overlap {overlap} must be below half the tile ({tile})")
    _, height, width = image.shape
    if height <= tile and width <= tile:
        round_up = lambda n: -(-n // multiple) * multiple  # noqa: E731
        padded = pad_to(image, round_up(height), round_up(width))
        return fn(padded[None])[0, :, :height, :width].float()
    padded = pad_to(image, max(height, tile), max(width, tile))
    full_h, full_w = padded.shape[-2:]
    window = blend_window(tile, overlap)
    corners = [
        (top, left)
        for top in tile_starts(full_h, tile, overlap)
        for left in tile_starts(full_w, tile, overlap)
    ]
    output: Tensor | None = None
    weight = torch.zeros(1, full_h, full_w)
    for i in range(0, len(corners), batch_size):
        group = corners[i : i + batch_size]
        tiles = torch.stack([padded[:, t : t + tile, s : s + tile] for t, s in group])
        result = fn(tiles).float().cpu()
        if output is None:
            output = torch.zeros(result.shape[1], full_h, full_w)
        for (top, left), piece in zip(group, result, strict=True):
            output[:, top : top + tile, left : left + tile] += piece * window
            weight[:, top : top + tile, left : left + tile] += window
    assert output is not None
    return (output / weight)[:, :height, :width]
