"""Whisper's tokenizer (book 6.5): GPT-2's byte-level BPE (tiktoken's ranks, or the same
vocabulary and merges in a Hugging Face tokenizer.json), run by HF `tokenizers`, followed by
Whisper's special tokens: end of text, start of transcript, one token per language, the
tasks, no-speech, no-timestamps and the 1501 timestamps <|0.00|> ... <|30.00|>. Their ids
follow from the vocabulary size, as in openai-whisper's `get_encoding`."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from functools import cached_property
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from lbdl_apps.core.errors import LbdlError

# Whisper's language codes, in the order of their tokens (openai-whisper's LANGUAGES).
_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no "
    "th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw "
    "gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl "
    "mg as tt haw ln ha ba jw su yue"
)
LANGUAGES = tuple(_CODES.split())
# what Whisper never writes: speaker tags, annotations (openai-whisper's non_speech_tokens)
_SYMBOLS = '"#()*+/:;<=>@[\\]^_`{|}~「」『』'
_SYMBOL_RUNS = "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪"
_MUSIC = "♩♪♫♬♭♮♯"  # one token or more: their first is suppressed
TASK_TOKENS = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>")
NO_SPEECH, NO_TIMESTAMPS = "<|nospeech|>", "<|notimestamps|>"
TIMESTAMPS = 1501  # <|0.00|> to <|30.00|> every 20 ms
MULTILINGUAL_VOCAB = 51865


def is_multilingual(n_vocab: int) -> bool:
    """Whether a Whisper vocabulary of this size has language tokens in use (not a .en one)."""
    return n_vocab >= MULTILINGUAL_VOCAB


def special_tokens(n_vocab: int) -> list[str]:
    """Whisper's special tokens for a vocabulary of `n_vocab` (openai-whisper's rule:
    `num_languages = n_vocab - 51765 - multilingual`)."""
    languages = n_vocab - 51765 - int(is_multilingual(n_vocab))
    if not 0 < languages <= len(LANGUAGES):
        raise LbdlError(f"a vocabulary of {n_vocab} tokens is not a Whisper vocabulary")
    return [
        "<|endoftext|>", "<|startoftranscript|>", *(f"<|{c}|>" for c in LANGUAGES[:languages]),
        *TASK_TOKENS, NO_SPEECH, NO_TIMESTAMPS, *(f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMPS)),
    ]  # fmt: skip


def _byte_symbols() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (what byte-level BPE vocabularies spell)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    symbols = {b: chr(b) for b in kept}
    others = (b for b in range(256) if b not in symbols)
    symbols |= {b: chr(256 + n) for n, b in enumerate(others)}
    return symbols


def read_tiktoken(path: Path) -> dict[bytes, int]:
    """The ranks of a .tiktoken file (one `base64-token rank` per line; multilingual's
    rank 50256 is an empty token, spelled "=")."""
    try:
        lines = path.read_text(encoding="ascii").split("\n")
        return {base64.b64decode(t): int(r)
                for t, r in (line.split() for line in lines if line.strip())}  # fmt: skip
    except (OSError, ValueError, UnicodeDecodeError, binascii.Error):
        raise LbdlError(f"{path}: not a tiktoken vocabulary") from None


def bpe_from_ranks(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken's ranks as BPE vocabulary and merges: each multi-byte token is the merge of
    the two pieces that BPE with the lower ranks alone leaves of it (merges in rank order)."""
    symbols = _byte_symbols()

    def spell(token: bytes) -> str:
        return "".join(symbols[b] for b in token)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) <= 1:
            continue
        parts = [bytes([b]) for b in token]
        while True:
            found = [(ranks[a + b], i) for i, (a, b) in enumerate(itertools.pairwise(parts))
                     if ranks.get(a + b, rank) < rank]  # fmt: skip
            if not found:
                break
            i = min(found)[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise LbdlError(f"tiktoken rank {rank} is not the merge of two tokens")
        merges.append((spell(parts[0]), spell(parts[1])))
    return {spell(t): r for t, r in ranks.items()}, merges


def bpe_from_hf(text: str, source: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges of a Hugging Face tokenizer.json."""
    try:
        model = json.loads(text)["model"]
        if model.get("type") != "BPE":
            raise ValueError
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return dict(model["vocab"]), merges  # type: ignore[return-value]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LbdlError(f"{source}: not a BPE tokenizer.json") from None


class WhisperTokenizer:
    """Text <-> Whisper token ids, and Whisper's special tokens."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.n_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        self.names = special_tokens(self.n_vocab)
        self.eot = self.n_vocab - len(self.names)  # the first special token
        self.specials = {name: self.eot + i for i, name in enumerate(self.names)}
        if tokenizer.token_to_id("<|startoftranscript|>") != self.specials["<|startoftranscript|>"]:
            raise LbdlError("the tokenizer's special tokens are not at Whisper's ids")
        s = self.specials
        self.sot, self.no_speech = s["<|startoftranscript|>"], s[NO_SPEECH]
        self.translate, self.transcribe = s["<|translate|>"], s["<|transcribe|>"]
        self.sot_lm, self.sot_prev = s["<|startoflm|>"], s["<|startofprev|>"]
        self.no_timestamps, self.timestamp_begin = s[NO_TIMESTAMPS], s["<|0.00|>"]
        self.multilingual = is_multilingual(self.n_vocab)
        self.languages = tuple(n[2:-2] for n in self.names[2 : self.translate - self.eot])

    @classmethod
    def from_bpe(
        cls, vocab: dict[str, int], merges: list[tuple[str, str]], n_vocab: int
    ) -> WhisperTokenizer:
        """Whisper's tokenizer from the text tokens' BPE (vocabulary, merges) and the size of
        the model's vocabulary (which says how many special tokens follow)."""
        names = special_tokens(n_vocab)
        text_tokens = n_vocab - len(names)
        vocab = {token: i for token, i in vocab.items() if i < text_tokens}
        if sorted(vocab.values()) != list(range(text_tokens)):
            raise LbdlError(
                f"the BPE vocabulary does not have the {text_tokens} text tokens of a Whisper "
                f"vocabulary of {n_vocab}"
            )
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
        return cls(tokenizer)

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], n_vocab: int) -> WhisperTokenizer:
        """From tiktoken's ranks (openai-whisper's gpt2.tiktoken / multilingual.tiktoken)."""
        return cls.from_bpe(*bpe_from_ranks(ranks), n_vocab)

    @classmethod
    def from_json(cls, text: str) -> WhisperTokenizer:
        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    def check_vocabulary(self, tokens: list[str], source: Path) -> None:
        """An LbdlError unless `tokens` (a CTranslate2 vocabulary: every token by id) spell
        this tokenizer's text tokens and have Whisper's special tokens where they belong
        (some tools name a few differently: <|nocaptions|>, <|iw|> for Hebrew)."""
        if len(tokens) != self.n_vocab:
            raise LbdlError(f"{source}: {len(tokens)} tokens, the model has {self.n_vocab}")
        landmarks = (self.sot, self.no_timestamps, self.timestamp_begin, self.n_vocab - 1)
        for i in (*range(self.eot), *landmarks):
            expected = self.tokenizer.id_to_token(i)
            if tokens[i] != expected:
                raise LbdlError(f"{source}: token {i} is {tokens[i]!r}, Whisper's is {expected!r}")

    def encode(self, text: str) -> list[int]:
        """The token ids of `text` (no special tokens added)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`; timestamp tokens are left out (openai-whisper's `decode`)."""
        kept = [i for i in ids if i < self.timestamp_begin]
        return self.tokenizer.decode(kept, skip_special_tokens=False)

    def language_token(self, language: str) -> int:
        if language not in self.languages:
            raise LbdlError(f"--language {language}: not one of the model's languages")
        return self.sot + 1 + self.languages.index(language)

    def sot_sequence(self, language: str | None, task: str) -> list[int]:
        """The decoder's prompt before the text: start of transcript, then, for multilingual
        models, the language and the task (English-only models have neither)."""
        if not self.multilingual:
            return [self.sot]
        language_token = self.sot + 1 if language is None else self.language_token(language)
        task_token = self.translate if task == "translate" else self.transcribe
        return [self.sot, language_token, task_token]

    @cached_property
    def non_speech_tokens(self) -> list[int]:
        """The tokens of symbols Whisper never writes (speaker tags, annotations, music notes:
        openai-whisper's `non_speech_tokens`), hyphen and quote starting a word included."""
        symbols = list(_SYMBOLS) + _SYMBOL_RUNS.split()
        miscellaneous = set(_MUSIC)
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return sorted(result)

    def suppress_tokens(self) -> list[int]:
        """What Whisper's decoding suppresses at every step (`suppress_tokens="-1"`): the
        non-speech tokens, the task and start tokens, and no-speech."""
        specials = {self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm}
        return sorted({*self.non_speech_tokens, *specials, self.no_speech})
