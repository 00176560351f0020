"""denoise/degrade.py: each degradation changes the image as specified (measured noise,
Poisson statistics, luminance, bicubic sizes, real JPEG round trips), they compose in order,
and bad specs are one clear user error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.denoise.degrade import (
    READ_NOISE,
    apply_all,
    classical_baseline,
    from_uint8,
    parse_spec,
    parse_specs,
    scale_factor,
    to_uint8,
)


def photo(seed: int = 0, size: tuple[int, int] = (48, 64), channels: int = 3) -> np.ndarray:
    """A smooth random color image with some edges, float (H, W, C) in [0, 1]."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 1, (size[0] // 8, size[1] // 8, channels)).astype(np.float32)
    smooth = np.stack(
        [np.asarray(Image.fromarray(small[:, :, c], "F").resize(size[::-1], Image.BILINEAR))
         for c in range(channels)], axis=2,
    )  # fmt: skip
    edges = (np.indices(size).sum(0) % 16 < 8)[:, :, None] * 0.3
    return np.clip(0.6 * smooth + edges, 0, 1).astype(np.float32)


def test_gaussian_noise_has_the_requested_sigma_and_is_not_clipped() -> None:
    flat = np.full((512, 512, 1), 0.95, np.float32)
    noisy, info = parse_spec("gaussian:25").apply(flat, np.random.default_rng(0))
    residual = (noisy - flat).astype(np.float64) * 255
    assert abs(residual.std() - 25) < 0.5  # within 2 %
    assert abs(residual.mean()) < 0.2
    assert noisy.max() > 1.1  # not clipped (the benchmark protocol)
    assert info == {"kind": "gaussian", "strength": 25.0}


def test_gaussian_follows_the_benchmark_protocol() -> None:
    clean = photo(channels=1)
    noisy, _ = parse_spec("gaussian:25").apply(clean.astype(np.float64), np.random.RandomState(0))
    noise = np.random.RandomState(0).normal(0, 25, clean.shape)
    expected = clean.astype(np.float64) * 255.0 + noise
    np.testing.assert_allclose(noisy * 255.0, expected, atol=1e-6)


def test_blind_range_draws_a_sigma_per_image_inside_the_range() -> None:
    spec = parse_spec("gaussian:5-50")
    assert not spec.fixed
    rng = np.random.default_rng(1)
    flat = np.full((96, 96, 1), 0.5)
    measured = []
    for _ in range(40):
        noisy, info = spec.apply(flat, rng)
        assert 5 <= info["strength"] <= 50
        measured.append((noisy - flat).std() * 255)
        assert abs(measured[-1] - info["strength"]) < 0.06 * info["strength"]
    assert min(measured) < 15 and max(measured) > 40  # the range is used, not one level


def test_lowlight_darkens_with_poisson_noise_growing_with_intensity() -> None:
    spec = parse_spec("lowlight:0.5")
    assert spec.peak == 200
    rng = np.random.default_rng(0)
    stats = {}
    for level in (0.2, 0.8):
        flat = np.full((400, 400, 1), level)
        dark, _ = spec.apply(flat, rng)
        assert dark.min() >= 0 and dark.max() <= 1  # clipped: a sensor reads [0, 1]
        stats[level] = (dark.mean(), dark.var())
        assert abs(dark.mean() - 0.5 * level) < 0.01  # darkened by the factor
        expected = 0.5 * level / spec.peak + READ_NOISE**2  # shot + read noise
        assert abs(dark.var() / expected - 1) < 0.1, (level, dark.var(), expected)
    assert stats[0.8][1] > 2.5 * stats[0.2][1]  # variance grows with intensity
    custom = parse_spec("lowlight:0.1-0.3:50")
    assert (custom.low, custom.high, custom.peak) == (0.1, 0.3, 50)
    assert parse_spec(custom.spec) == custom


def test_gray_gives_equal_channels_of_the_luminance() -> None:
    color = photo()
    gray, _ = parse_spec("gray").apply(color, np.random.default_rng(0))
    assert gray.shape == color.shape
    assert np.array_equal(gray[:, :, 0], gray[:, :, 1])
    assert np.array_equal(gray[:, :, 1], gray[:, :, 2])
    reference = np.asarray(Image.fromarray(to_uint8(color)).convert("L")) / 255.0
    assert np.abs(gray[:, :, 0] - reference).max() < 1.5 / 255  # PIL's luminance
    one = color[:, :, :1]
    assert np.array_equal(parse_spec("gray").apply(one, None)[0], np.repeat(one, 3, axis=2))


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_downscale_is_bicubic_down_then_up_to_the_same_size(factor: int) -> None:
    clean = photo(size=(60, 84))
    out, _ = parse_spec(f"downscale:{factor}").apply(clean, np.random.default_rng(0))
    assert out.shape == clean.shape
    # Reference: Pillow's bicubic on the 8-bit image, down then up.
    image = Image.fromarray(to_uint8(clean))
    small = image.resize((84 // factor, 60 // factor), Image.Resampling.BICUBIC)
    reference = from_uint8(np.asarray(small.resize((84, 60), Image.Resampling.BICUBIC)))
    difference = np.abs(out - reference) * 255  # in 8-bit levels; the reference rounds twice
    assert difference.mean() < 0.5 and np.percentile(difference, 99) < 2 and difference.max() < 6
    assert np.abs(out - clean).mean() > 0.01  # detail is lost
    assert scale_factor([parse_spec(f"downscale:{factor}")]) == factor


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_is_a_real_pillow_round_trip(channels: int) -> None:
    clean = photo(channels=channels)
    out, info = parse_spec("jpeg:20").apply(clean, np.random.default_rng(0))
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(clean)).save(buffer, format="JPEG", quality=20)
    expected = from_uint8(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
    assert out.shape == clean.shape
    np.testing.assert_array_equal(out, expected)
    assert np.abs(out - clean).mean() > 0.005
    assert info["strength"] == 20


def test_jpeg_quality_is_drawn_from_the_range() -> None:
    spec = parse_spec("jpeg:10-40")
    qualities = {spec.apply(photo(), np.random.default_rng(s))[1]["strength"] for s in range(30)}
    assert qualities <= set(range(10, 41)) and len(qualities) > 10


def test_degradations_compose_in_order() -> None:
    clean = photo()
    specs = parse_specs(["gaussian:15", "jpeg:30"])
    out, infos = apply_all(clean, specs, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    step, _ = specs[0].apply(clean, rng)
    step, _ = specs[1].apply(step, rng)
    np.testing.assert_array_equal(out, step)
    assert [i["kind"] for i in infos] == ["gaussian", "jpeg"]
    reversed_order, _ = apply_all(clean, specs[::-1], np.random.default_rng(3))
    assert not np.allclose(out, reversed_order)


def test_baseline_is_nlm_for_noise_and_the_input_otherwise() -> None:
    clean = photo(channels=1, size=(64, 64)).astype(np.float64)
    noisy, infos = apply_all(clean, parse_specs(["gaussian:25"]), np.random.RandomState(0))
    name, out = classical_baseline(noisy, infos)
    assert name == "opencv-nlm"
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
    blurred, infos = apply_all(clean, parse_specs(["downscale:2"]), np.random.RandomState(0))
    assert classical_baseline(blurred, infos)[0] == "bicubic"


@pytest.mark.parametrize(
    "spec",
    ["blur:3", "gaussian", "gaussian:abc", "gaussian:50-5", "gaussian:300", "gaussian:1-2-3",
     "downscale:5", "downscale:2-3", "jpeg:0", "jpeg:10.5", "gray:2", "lowlight:2",
     "lowlight:0.5:0", "gaussian:nan"],
)  # fmt: skip
def test_bad_specs_are_user_errors_naming_the_spec(spec: str) -> None:
    with pytest.raises(LbdlError) as error:
        parse_spec(spec)
    assert f"--degrade {spec}" in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(LbdlError, match=r"gaussian:25.*downscale.*jpeg"):
        parse_spec("blur:3")
    with pytest.raises(LbdlError, match="at least one"):
        parse_specs([])


@pytest.mark.parametrize(
    "text", ["gaussian:25", "gaussian:5-50", "lowlight:0.2-0.5", "gray", "downscale:3",
             "jpeg:10-40"],
)  # fmt: skip
def test_specs_round_trip_through_their_text(text: str) -> None:
    assert parse_spec(text).spec == text
    assert parse_spec(parse_spec(text).spec) == parse_spec(text)
