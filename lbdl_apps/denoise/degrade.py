"""Degradations (book 6.1): what turns a clean image into the one a restoration model sees.

Each is real and they compose in order: additive Gaussian noise, Poisson-Gaussian low light,
grayscale (colorization), bicubic downscaling (super-resolution) and lossy JPEG encoded for
real with Pillow. Images are float arrays (H, W, C) in [0, 1]; strengths given as a range
`a-b` are drawn per image from the random generator passed in (a blind model learns them all).

    gaussian:25        sigma 25 on the 0-255 scale (not clipped: the benchmark protocol)
    gaussian:5-50      sigma drawn uniformly per image
    lowlight:0.2-0.5   darken by a factor, Poisson shot noise (PEAK photons at full white, 200
                       by default: lowlight:0.2-0.5:100) plus Gaussian read noise; clipped
    gray               the luminance, replicated to 3 channels (the model colorizes)
    downscale:2|3|4    bicubic down by the factor and back up to the original size
    jpeg:10-40         Pillow JPEG encode/decode at a quality drawn from the range
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from lbdl_apps.core.errors import LbdlError

KINDS = ("gaussian", "lowlight", "gray", "downscale", "jpeg")
EXAMPLES = "gaussian:25, gaussian:5-50, lowlight:0.2-0.5, gray, downscale:2|3|4, jpeg:10-40"
READ_NOISE = 2.0 / 255  # sensor read noise of `lowlight` (std, [0, 1] scale)
DEFAULT_PEAK = 200.0  # photons collected at full white before darkening
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, what PIL's convert("L") uses

Rng = np.random.Generator | np.random.RandomState


@dataclass(frozen=True)
class Degradation:
    """One degradation: its kind and strength range (low == high for a fixed level)."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    peak: float = DEFAULT_PEAK  # lowlight only

    @property
    def spec(self) -> str:
        """The text form, as given on the command line (and stored in checkpoints)."""
        if self.kind == "gray":
            return "gray"
        value = f"{self.low:g}" if self.low == self.high else f"{self.low:g}-{self.high:g}"
        if self.kind == "lowlight" and self.peak != DEFAULT_PEAK:
            value += f":{self.peak:g}"
        return f"{self.kind}:{value}"

    @property
    def fixed(self) -> bool:
        return self.low == self.high

    def draw(self, rng: Rng) -> float:
        """The strength for one image (the range's only value when fixed)."""
        if self.fixed:
            return self.low
        if self.kind == "jpeg":
            draw = rng.integers if isinstance(rng, np.random.Generator) else rng.randint
            return float(draw(int(self.low), int(self.high) + 1))
        return float(rng.uniform(self.low, self.high))

    def apply(self, image: np.ndarray, rng: Rng) -> tuple[np.ndarray, dict[str, Any]]:
        """Degrade a float (H, W, C) image in [0, 1]; returns the result and what was drawn."""
        if self.kind == "gray":
            return to_gray3(image), {"kind": "gray"}
        strength = self.draw(rng)
        info: dict[str, Any] = {"kind": self.kind, "strength": strength}
        if self.kind == "gaussian":
            # drawn on the 0-255 scale so that a RandomState(0) gives the benchmark's noise
            noise = rng.normal(0.0, strength, image.shape) / 255.0
            return (image + noise).astype(image.dtype), info
        if self.kind == "lowlight":
            photons = np.clip(image, 0, 1) * strength * self.peak
            shot = rng.poisson(photons).astype(np.float64) / self.peak
            read = rng.normal(0.0, READ_NOISE, image.shape)
            return np.clip(shot + read, 0, 1).astype(image.dtype), info
        if self.kind == "downscale":
            return bicubic_down_up(image, int(strength)), info
        if self.kind == "jpeg":
            return jpeg_round_trip(image, int(strength)), info
        raise AssertionError(self.kind)


def _number(spec: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LbdlError(f"--degrade {spec}: '{text}' is not a number; valid: {EXAMPLES}") from None
    if not np.isfinite(value):
        raise LbdlError(f"--degrade {spec}: '{text}' is not a finite number; valid: {EXAMPLES}")
    return value


def _range(spec: str, text: str) -> tuple[float, float]:
    parts = text.split("-")
    if len(parts) == 1:
        value = _number(spec, parts[0])
        return value, value
    if len(parts) == 2 and parts[0] and parts[1]:
        low, high = _number(spec, parts[0]), _number(spec, parts[1])
        if low > high:
            raise LbdlError(f"--degrade {spec}: the range {text} goes down; write it low-high")
        return low, high
    raise LbdlError(f"--degrade {spec}: '{text}' is not a value or a low-high range")


def parse_spec(spec: str) -> Degradation:
    """`gaussian:25` -> Degradation; LbdlError naming the spec and the valid forms."""
    text = spec.strip().lower()
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise LbdlError(f"--degrade {spec}: unknown degradation; valid: {EXAMPLES}")
    if kind == "gray":
        if rest:
            raise LbdlError(f"--degrade {spec}: gray takes no value; valid: {EXAMPLES}")
        return Degradation("gray")
    if not rest:
        raise LbdlError(f"--degrade {spec}: {kind} needs a value; valid: {EXAMPLES}")
    peak = DEFAULT_PEAK
    if kind == "lowlight" and ":" in rest:
        rest, _, peak_text = rest.partition(":")
        peak = _number(spec, peak_text)
        if peak <= 0:
            raise LbdlError(f"--degrade {spec}: the photon count must be positive")
    low, high = _range(spec, rest)
    if kind == "gaussian" and not (low >= 0 and high <= 255):
        raise LbdlError(f"--degrade {spec}: sigma must be in [0, 255] (0-255 scale)")
    if kind == "lowlight" and not (low > 0 and high <= 1):
        raise LbdlError(f"--degrade {spec}: the darkening factor must be in (0, 1]")
    if kind == "downscale" and (low != high or low not in (2, 3, 4)):
        raise LbdlError(f"--degrade {spec}: the factor must be 2, 3 or 4")
    if kind == "jpeg" and not (low >= 1 and high <= 95 and low == int(low) and high == int(high)):
        raise LbdlError(f"--degrade {spec}: JPEG quality must be whole numbers in 1-95")
    return Degradation(kind, low, high, peak)


def parse_specs(specs: Sequence[str] | None) -> list[Degradation]:
    """The degradations of repeated --degrade options (in order); at least one."""
    if not specs:
        raise LbdlError(f"--degrade: give at least one degradation; valid: {EXAMPLES}")
    return [parse_spec(s) for s in specs]


def apply_all(
    image: np.ndarray, degradations: Sequence[Degradation], rng: Rng
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Apply the degradations in order to a float (H, W, C) image in [0, 1]."""
    infos = []
    for degradation in degradations:
        image, info = degradation.apply(image, rng)
        infos.append(info)
    return image, infos


def needs_color(degradations: Sequence[Degradation]) -> bool:
    return any(d.kind == "gray" for d in degradations)


def scale_factor(degradations: Sequence[Degradation]) -> int:
    """The super-resolution factor (1 when there is no downscaling)."""
    factor = 1
    for d in degradations:
        if d.kind == "downscale":
            factor *= int(d.low)
    return factor


# ----------------------------------------------------------------------------------------------
# The operations


def to_gray3(image: np.ndarray) -> np.ndarray:
    """The luminance of an RGB image replicated to 3 channels (a gray image: replicated)."""
    gray = image[:, :, 0] if image.shape[2] == 1 else image[:, :, :3] @ LUMA.astype(image.dtype)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _resize_float(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic resize of a float (H, W, C) image, channel by channel with PIL's float mode
    (antialiased when shrinking, like MATLAB's imresize)."""
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32), "F").resize(
                (width, height), Image.Resampling.BICUBIC
            )
        )
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=2)


def bicubic_down_up(image: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic downscaling by `factor` then bicubic upscaling back to the original size."""
    height, width = image.shape[:2]
    small = _resize_float(image, max(1, round(width / factor)), max(1, round(height / factor)))
    small = np.clip(small, 0, 1)  # a real low-resolution image is in range too
    return np.clip(_resize_float(small, width, height), 0, 1).astype(image.dtype)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float (H, W, C) image in [0, 1] as uint8 (H, W) or (H, W, 3), rounded and clipped."""
    array = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return array[:, :, 0] if array.shape[2] == 1 else array


def from_uint8(array: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) as float (H, W, C) in [0, 1]."""
    if array.ndim == 2:
        array = array[:, :, None]
    return array.astype(dtype) / 255.0


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG with Pillow at `quality` and decode again (gray stays gray)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return from_uint8(np.asarray(decoded), image.dtype)


def nlm_denoise(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """OpenCV non-local means (the classical baseline): gray with h = 0.9 sigma (0-255 scale,
    the benchmark protocol); color with h = hColor = 0.45 sigma (the colored variant filters in
    CIELAB, where 0.9 sigma over-smooths: measured on dead leaves at sigma 15-50, 0.45 sigma is
    within 0.3 dB of the best factor and 0.9 sigma is 4 dB below it)."""
    array = to_uint8(noisy)
    if array.ndim == 2:
        out = cv2.fastNlMeansDenoising(array, None, max(0.9 * sigma, 1e-3), 7, 21)
    else:
        h = max(0.45 * sigma, 1e-3)
        out = cv2.fastNlMeansDenoisingColored(array, None, h, h, 7, 21)
    return from_uint8(out, noisy.dtype)


def classical_baseline(
    degraded: np.ndarray, infos: Sequence[dict[str, Any]]
) -> tuple[str, np.ndarray]:
    """The classical restoration measured beside the model: NLM when there is Gaussian noise
    (h = 0.9 of the largest sigma), otherwise the input itself (for downscaling it already is
    the bicubic upscale)."""
    sigmas = [i["strength"] for i in infos if i["kind"] == "gaussian"]
    if sigmas and max(sigmas) > 0:
        return "opencv-nlm", nlm_denoise(degraded, max(sigmas))
    if any(i["kind"] == "downscale" for i in infos):
        return "bicubic", degraded
    return "input", degraded
