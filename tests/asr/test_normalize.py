"""The English normalisation error rates are scored with gives openai-whisper's
EnglishTextNormalizer's text on the cases that decide spoken-digit and sentence WERs."""

from __future__ import annotations

import pytest

from lbdl_apps.asr.normalize import normalize_english

normalizers = pytest.importorskip("whisper.normalizers")

# fmt: off
CASES = (
    "1.", "One.", "Zero.", "Oh.", "o", "Nine!", "Two, 1.", "it was 1", "I have 1 apple.",
    "No one came.", "ones", "1s and 2s", "Twenty one.", "Twenty-one, 22.", "seven, eight",
    "one two three", "one one", "zero five", "seven oh five", "oh seven", "one oh one",
    "Three hundred and five.", "one hundred", "eleven", "I'm 31 years old", "1,000 people",
    "Oh, no.", "Mr. Smith won't go.", "Hmm, um, it's [music] (laughs) fine.",
    "The old man carried a heavy box in the morning.",
)
# fmt: on


@pytest.mark.parametrize("text", CASES)
def test_normalization_matches_whisper(text: str) -> None:
    assert normalize_english(text) == normalizers.EnglishTextNormalizer()(text)


def test_a_lone_one_and_a_spoken_zero_score_as_their_digits() -> None:
    """The words Whisper writes for FSDD's digits ("1.", "Oh.") match the spoken words."""
    assert normalize_english("1.") == normalize_english("one") == "one"
    assert normalize_english("Oh.") == normalize_english("zero") == "0"
    assert normalize_english("no one") == "no one" and normalize_english("21") == "21"
