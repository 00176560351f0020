"""Tiled inference: the same result as one pass, for any image size, in bounded pieces."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lbdl_apps.core.tiles import blend_window, tile_starts, tiled_apply


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))


@pytest.mark.parametrize("length", [100, 128, 129, 300, 517, 4000])
def test_tiles_cover_with_the_overlap(length: int) -> None:
    tile, overlap = 128, 32
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] == max(0, length - tile)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(tile - gap >= overlap for gap in gaps)  # neighbours overlap enough
    fewer = len(starts) - 1  # one tile less could not cover the length with that overlap
    assert fewer == 0 or (fewer - 1) * (tile - overlap) + tile < length


def test_window_is_positive_and_one_inside() -> None:
    window = blend_window(64, 16)
    assert window.min() > 0
    assert window[16:48, 16:48].eq(1).all()
    assert window[0, 32] < 1e-3  # the outer margin hardly counts


def test_tiled_equals_one_pass_away_from_padding_effects() -> None:
    net = small_net()
    image = torch.rand(3, 300, 517)
    with torch.no_grad():
        whole = net(image[None])[0]
    tiled = tiled_apply(net, image, tile=128, overlap=32, batch_size=3)
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=0)


def test_image_that_fits_one_tile_is_one_pass() -> None:
    net = small_net()
    image = torch.rand(3, 96, 80)
    with torch.no_grad():
        whole = net(image[None])[0]
    torch.testing.assert_close(tiled_apply(net, image, tile=128, overlap=32), whole)
    # padded to a multiple of 16 for a U-Net: only the last rows/columns may differ
    padded = tiled_apply(net, image, tile=128, overlap=32, multiple=16)
    torch.testing.assert_close(padded[:, :-2, :-2], whole[:, :-2, :-2])


def test_bad_tiling_arguments() -> None:
    with pytest.raises(ValueError, match="multiple"):
        tiled_apply(small_net(), torch.rand(3, 8, 8), tile=100, multiple=16)
    with pytest.raises(ValueError, match="overlap"):
        tiled_apply(small_net(), torch.rand(3, 8, 8), tile=64, overlap=40)
