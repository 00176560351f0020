"""Checkpoints written before the apps shared one contract still load and give the same
outputs: tests/data/legacy holds one small checkpoint per app, trained by the commit before
it (e6f69aa), and expected.json what that code computed with it on input.png / input.wav."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

LEGACY = Path(__file__).parent / "data" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
IMAGE = LEGACY / "input.png"


def close(actual, expected, atol: float = 1e-4) -> None:
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, atol=atol, rtol=0)


def test_classify() -> None:
    from lbdl_apps.classify import load

    found = load(LEGACY / "classify.safetensors").predict([IMAGE], top_k=3)[0]
    assert found.labels == EXPECTED["classify"]["labels"]
    close(found.probabilities, EXPECTED["classify"]["probabilities"], 1e-5)


def test_denoise() -> None:
    from lbdl_apps.denoise import load

    restored = np.asarray(load(LEGACY / "denoise.safetensors").restore(IMAGE), np.float64)
    close(restored.mean(), EXPECTED["denoise"]["mean"], 1e-6)
    close(restored[0, :8].ravel(), EXPECTED["denoise"]["row0"], 0)


def test_segment() -> None:
    from lbdl_apps.segment import load

    segmenter = load(LEGACY / "segment.safetensors")
    mask = next(iter(segmenter.iter_predict([IMAGE]))).mask
    counts = np.bincount(mask.ravel(), minlength=len(segmenter.labels))
    assert counts.tolist() == EXPECTED["segment"]["counts"]


def test_detect() -> None:
    from PIL import Image

    from lbdl_apps.detect import load

    found = load(LEGACY / "detect.safetensors").detect(
        np.asarray(Image.open(IMAGE)), conf=0.01, max_det=5
    )
    assert found.classes.tolist() == EXPECTED["detect"]["classes"]
    close(found.scores, EXPECTED["detect"]["scores"], 1e-4)
    close(found.boxes, EXPECTED["detect"]["boxes"], 1e-2)


def test_asr() -> None:
    from lbdl_apps.asr import load

    transcript = load(LEGACY / "asr.safetensors").transcribe([LEGACY / "input.wav"])[0]
    assert transcript.text == EXPECTED["asr"]["text"]
    close(transcript.segments[0].avg_logprob, EXPECTED["asr"]["avg_logprob"], 1e-4)


def test_clip() -> None:
    from lbdl_apps.clip import load

    clip = load(LEGACY / "clip.safetensors")
    _, images = clip.embed_images([IMAGE])
    close(images[0], EXPECTED["clip"]["image"], 1e-5)
    close(clip.encode_text(["a red circle."])[0], EXPECTED["clip"]["text"], 1e-5)


def test_dqn() -> None:
    from lbdl_apps.dqn import load

    agent = load(LEGACY / "dqn.safetensors")
    q = agent.q_values(np.array(EXPECTED["dqn"]["obs"], np.float32))
    close(q, EXPECTED["dqn"]["q"], 1e-6)


def test_diffusion() -> None:
    from lbdl_apps.diffusion import load

    expected = EXPECTED["diffusion"]
    samples = load(LEGACY / "diffusion.safetensors").sample(
        2, steps=3, seed=0, classes=[expected["class"]]
    )
    close(samples.images.mean(), expected["mean"], 1e-5)
    close(samples.images[0, :, 0, :4].ravel(), expected["first"], 1e-5)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
