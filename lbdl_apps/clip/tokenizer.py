"""Text tokenization for the CLIP text encoder (book 6.6): byte-pair encoding with HF
`tokenizers`, trained on the captions, or OpenAI CLIP's own BPE vocabulary (the one that
ships with `open_clip_torch`) for imported weights. Every text becomes a fixed-length row:
start token, BPE tokens (truncated), end token, padding."""

from __future__ import annotations

import gzip
import importlib.util
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from torch import Tensor

from lbdl_apps.core.errors import LbdlError

PAD, UNK, SOT, EOT = "<pad>", "<unk>", "<start_of_text>", "<end_of_text>"
SPECIALS = [PAD, UNK, SOT, EOT]
SUFFIX = "</w>"  # ends a word's last symbol
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class TextTokenizer:
    """A BPE tokenizer plus the fixed context of the text encoder."""

    def __init__(self, tokenizer: Tokenizer, context_length: int, kind: str = "bpe") -> None:
        if context_length < 3:
            raise ValueError(f"context length {context_length} leaves no room for text")
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.kind = kind  # "bpe" (trained on the captions) or "openai"
        self.sot_id = tokenizer.token_to_id(SOT)
        self.eot_id = tokenizer.token_to_id(EOT)
        pad = tokenizer.token_to_id(PAD)
        self.pad_id = 0 if pad is None else pad  # OpenAI pads with 0 too

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: Sequence[str]) -> Tensor:
        """(N, context_length) token ids: SOT, tokens truncated to fit, EOT, then padding."""
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        room = self.context_length - 2
        for row, encoding in enumerate(self.tokenizer.encode_batch(list(texts))):
            ids = [self.sot_id, *encoding.ids[:room], self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def to_meta(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this tokenizer."""
        meta: dict[str, Any] = {"kind": self.kind, "context_length": self.context_length}
        if self.kind == "bpe":
            meta["json"] = self.tokenizer.to_str()
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TextTokenizer:
        if meta["kind"] == "openai":
            return openai_tokenizer(meta["context_length"])
        return cls(Tokenizer.from_str(meta["json"]), meta["context_length"])


def train_bpe(
    texts: Iterable[str], vocab_size: int = 1000, context_length: int = 32
) -> TextTokenizer:
    """A lower-case BPE tokenizer trained on `texts` (the training captions): the same
    texts give the same tokenizer in every run (HF's BpeTrainer numbers its end-of-word
    tokens in hash-map order, which changes its ties between merges from run to run)."""
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    splitter = pre_tokenizers.Split(Regex(_CLIP_SPLIT), "removed", invert=True)
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)):
            words[(*word[:-1], word[-1] + SUFFIX)] += 1
    symbols = sorted({symbol for word in words for symbol in word})
    merges = learn_merges(words, vocab_size - len(SPECIALS) - len(symbols))
    vocab = {token: i for i, token in enumerate([*SPECIALS, *symbols, *map("".join, merges)])}
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token=UNK, end_of_word_suffix=SUFFIX))
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = splitter
    tokenizer.decoder = decoders.BPEDecoder(suffix=SUFFIX)
    return TextTokenizer(tokenizer, context_length)


def learn_merges(words: Counter[tuple[str, ...]], count: int) -> list[tuple[str, str]]:
    """Up to `count` merges, each of the most frequent neighbouring pair of symbols in the
    counted words (Sennrich et al.'s BPE); a tie goes to the pair first in string order."""
    spelled = [list(word) for word in words]
    times = list(words.values())
    pairs: Counter[tuple[str, str]] = Counter()
    holding: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> words with it

    def tally(w: int, sign: int) -> None:
        for pair in zip(spelled[w], spelled[w][1:], strict=False):
            pairs[pair] += sign * times[w]
            if sign > 0:
                holding[pair].add(w)
            elif not pairs[pair]:
                del pairs[pair]

    for w in range(len(spelled)):
        tally(w, 1)
    merges: list[tuple[str, str]] = []
    while len(merges) < count and pairs:
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for w in sorted(holding.pop(best)):
            tally(w, -1)
            symbols, merged, i = spelled[w], [], 0
            while i < len(symbols):
                if tuple(symbols[i : i + 2]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            spelled[w] = merged
            tally(w, 1)
    return merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def openai_vocab_file() -> Path:
    """OpenAI CLIP's BPE merges, as shipped in the open_clip_torch package."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise LbdlError(
            "OpenAI's BPE vocabulary comes with open_clip_torch: pip install open_clip_torch"
        )
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise LbdlError(f"{path}: OpenAI's BPE vocabulary is missing from open_clip_torch")
    return path


@lru_cache(maxsize=4)
def openai_tokenizer(context_length: int = 77) -> TextTokenizer:
    """OpenAI CLIP's tokenizer (49408 tokens) rebuilt with HF tokenizers: lower case, CLIP's
    word split, byte-level BPE with an end-of-word suffix."""
    with gzip.open(openai_vocab_file(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += [SOT, EOT]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    bpe = models.BPE(vocab, merges, end_of_word_suffix="</w>", fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.add_special_tokens([SOT, EOT])
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), "removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return TextTokenizer(tokenizer, context_length, kind="openai")
