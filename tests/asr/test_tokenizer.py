"""The byte-level BPE tokenizer of `lbdl asr` and its special tokens (book 6.5)."""

from __future__ import annotations

from lbdl_apps.asr.tokenizer import TextTokenizer

TEXTS = ["turn on the light", "three one four one five", "good morning", "nine nine nine"]


def test_round_trip_of_seen_and_unseen_text() -> None:
    tokenizer = TextTokenizer.train(TEXTS * 20, vocab_size=300)
    assert (tokenizer.pad, tokenizer.sot, tokenizer.eot, tokenizer.no_speech) == (0, 1, 2, 3)
    for text in [*TEXTS, "Unseen wörds, punctuation! and digits 42"]:
        ids = tokenizer.encode(text)
        assert min(ids) >= 4  # text never produces special tokens
        assert tokenizer.decode(ids) == text
    # merges learned: a frequent word is one token, far fewer tokens than bytes
    assert len(tokenizer.encode("three one four one five")) <= 5
    restored = TextTokenizer.from_json(tokenizer.to_json())
    assert restored.encode("good morning") == tokenizer.encode("good morning")


def test_targets_end_with_the_end_token_and_silence_is_no_speech() -> None:
    tokenizer = TextTokenizer.train(TEXTS, vocab_size=300)
    ids = tokenizer.target("good morning")
    assert ids[-1] == tokenizer.eot and ids[:-1] == tokenizer.encode("good morning")
    assert tokenizer.target("") == [tokenizer.no_speech, tokenizer.eot]
    assert tokenizer.decode([tokenizer.sot, *tokenizer.encode("nine"), tokenizer.eot]) == "nine"
