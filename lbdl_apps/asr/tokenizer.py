"""Byte-level BPE tokenizer of the transcripts (book 6.5, 5.3), trained with HF `tokenizers`
and stored as JSON inside the checkpoint, plus the special tokens of the decoder."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from lbdl_apps.asr.decode import Specials

PAD, SOT, EOT, NO_SPEECH = "<|pad|>", "<|startoftranscript|>", "<|endoftext|>", "<|nospeech|>"
SPECIAL_TOKENS = (PAD, SOT, EOT, NO_SPEECH)


class TextTokenizer:
    """Text <-> token ids. Ids 0-3 are the special tokens: pad, start, end, no-speech."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad, self.sot, self.eot, self.no_speech = (
            tokenizer.token_to_id(t) for t in SPECIAL_TOKENS
        )

    @property
    def specials(self) -> Specials:
        """The decoder's special tokens."""
        from lbdl_apps.asr.decode import Specials

        return Specials(self.sot, self.eot, self.no_speech)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512) -> TextTokenizer:
        """Learn byte-level BPE merges on `texts` (at most `vocab_size` tokens in all)."""
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(list(texts), trainer)
        return cls(tokenizer)

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens); an empty text gives []."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens dropped, surrounding spaces stripped."""
        kept = [i for i in ids if i >= len(SPECIAL_TOKENS)]
        return self.tokenizer.decode(kept).strip()

    def target(self, text: str) -> list[int]:
        """What the decoder learns to produce after the start token: the text and the end
        token, or no-speech and the end token for an empty transcript."""
        ids = self.encode(text)
        return [*(ids or [self.no_speech]), self.eot]
