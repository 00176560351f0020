"""Word timestamps as openai-whisper's timing.py makes them (book 6.5, 4.8): the decoded text
is fed back through the decoder (teacher forcing) and the cross-attention of the alignment
heads (those whose attention follows the timing; the checkpoint names them) is read out:
softmax over the audio frames, normalized per frame over the tokens, median-filtered over
time (width 7), averaged over the heads. Dynamic time warping through that token x frame
matrix gives each token's first frame; a word starts where its first token does. Then
Whisper's fixes: punctuation merged into its word, words at sentence and segment boundaries
no longer than twice the median word, segments' ends moved to their words'."""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lbdl_apps.asr.api import Segment, Word
from lbdl_apps.asr.model import SpeechRecognizer
from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer

TOKENS_PER_SECOND = 50  # encoder positions per second
MEDIAN_WIDTH = 7
SENTENCE_ENDS = ".。!！?？"
UNSPACED = {"zh", "ja", "th", "lo", "my", "yue"}  # words split where characters end


def median_filter(x: Tensor, width: int) -> Tensor:
    """The running median of width `width` (odd) along the last dimension of a 3-D tensor,
    reflect-padded at the ends (as openai-whisper's)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    x = F.pad(x, (pad, pad), mode="reflect")
    return x.unfold(-1, width, 1).sort()[0][..., pad]  # (..., T, width) -> (..., T)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotone path through an (N, M) cost matrix, as (token rows, frame
    columns); ties broken as openai-whisper's dtw_cpu (diagonal, then up, else left). The
    accumulated costs are float32 as there; one anti-diagonal at a time."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    total[0, 0] = 0
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        best = np.choose(step, [c0, c1, c2])
        total[i, j] = (cost[i - 1, j - 1] + best.astype(np.float64)).astype(np.float32)
        trace[i, j] = step
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        move = trace[i, j]
        i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    rows, columns = np.array(path[::-1]).T
    return rows, columns


def split_words(
    tokenizer: WhisperTokenizer, tokens: list[int], language: str | None
) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens (openai-whisper's split_to_word_tokens): pieces that decode to
    whole characters, joined into words at spaces and punctuation, except for languages
    written without spaces."""

    def text(ids: list[int]) -> str:
        return tokenizer.tokenizer.decode(ids, skip_special_tokens=False)

    full, words, pieces, current, offset = text(tokens), [], [], [], 0
    for token in tokens:
        current.append(token)
        decoded = text(current)
        if "\ufffd" not in decoded or full[offset + decoded.index("\ufffd")] == "\ufffd":
            words.append(decoded)
            pieces.append(current)
            current, offset = [], offset + len(decoded)
    if language in UNSPACED:
        return words, pieces
    joined: list[str] = []
    joined_tokens: list[list[int]] = []
    for word, ids in zip(words, pieces, strict=True):
        if ids[0] >= tokenizer.eot or word.startswith(" ") or word.strip() in string.punctuation \
                or not joined:  # fmt: skip
            joined.append(word)
            joined_tokens.append(list(ids))
        else:
            joined[-1] += word
            joined_tokens[-1].extend(ids)
    return joined, joined_tokens


@dataclass
class Timing:
    """A word's place in the window (seconds from its start) and mean token probability."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def cross_attention(
    model: SpeechRecognizer, tokens: Tensor, audio: Tensor, layers: set[int]
) -> tuple[Tensor, dict[int, Tensor]]:
    """Teacher-forced logits (L, vocab) of one window's tokens (L,) on its encoded audio
    (frames, dim), and the scaled query-key scores (heads, L, frames) of the cross-attention
    of `layers` (what Whisper's hooks collect)."""
    decoder = getattr(model.decoder, "original", model.decoder)  # PyTorch's, under a runtime
    scores: dict[int, Tensor] = {}
    hooks = []
    for index in layers:
        attention = decoder.blocks[index].cross_attn

        def keep(module, inputs, output, index=index) -> None:
            x, context = inputs[0], inputs[1]
            q, k = module._split(module.q_proj(x)), module._split(module.k_proj(context))
            scores[index] = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5)[0].float()

        hooks.append(attention.register_forward_hook(keep))
    try:
        with torch.no_grad():
            logits = decoder(tokens[None], audio[None])[0].float()
    finally:
        for hook in hooks:
            hook.remove()
    return logits, scores


def find_alignment(
    model: SpeechRecognizer,
    tokenizer: WhisperTokenizer,
    heads: list[tuple[int, int]],
    text_tokens: list[int],
    audio: Tensor,
    frames: int,
    language: str | None,
    task: str = "transcribe",
) -> list[Timing]:
    """Each word of `text_tokens` placed in the window of encoded `audio` (frames of audio
    in it: `frames`), with its mean token probability (openai-whisper's find_alignment)."""
    if not text_tokens:
        return []
    sot = tokenizer.sot_sequence(language, task)
    ids = [*sot, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    tokens = torch.tensor(ids, device=audio.device)
    logits, scores = cross_attention(model, tokens, audio, {layer for layer, _ in heads})
    probs = logits[len(sot) :, : tokenizer.eot].softmax(-1)
    token_probs = probs[torch.arange(len(text_tokens)), torch.tensor(text_tokens)].tolist()
    weights = torch.stack([scores[layer][head] for layer, head in heads])  # (H, L, frames)
    weights = weights[:, :, : frames // 2].softmax(-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std, MEDIAN_WIDTH)
    matrix = weights.mean(0)[len(sot) : -1]  # (text tokens + 1, frames)
    rows, columns = dtw(-matrix.double().cpu().numpy())
    words, word_tokens = split_words(tokenizer, [*text_tokens, tokenizer.eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    times = columns[jumps] / TOKENS_PER_SECOND
    starts, ends = times[boundaries[:-1]], times[boundaries[1:]]
    chances = [float(np.mean(token_probs[i:j])) for i, j in itertools.pairwise(boundaries)]
    fields = zip(words[:-1], word_tokens[:-1], starts, ends, chances, strict=True)  # not eot
    return [Timing(w, t, float(a), float(b), p) for w, t, a, b, p in fields]


def merge_punctuation(alignment: list[Timing], prepended: str, appended: str) -> None:
    """Opening punctuation joins the next word, closing punctuation the previous one (their
    own entries left empty), as openai-whisper's merge_punctuations."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word, following.tokens = previous.word + following.word, \
                previous.tokens + following.tokens  # fmt: skip
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word, previous.tokens = previous.word + following.word, \
                previous.tokens + following.tokens  # fmt: skip
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def _trim_sentence_ends(alignment: list[Timing]) -> float:
    """Words beside a sentence end cut to twice the median word (at most 0.7 s); returns
    that median."""
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in SENTENCE_ENDS:
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in SENTENCE_ENDS:
                    alignment[i].start = alignment[i].end - longest
    return median


def _fix_segment(segment: Segment, words: list[Word], median: float, last_speech: float) -> None:
    """openai-whisper's boundary fixes: the first words after a pause no longer than twice
    the median word; the segment's start and end moved to its words' (or the reverse when
    a word runs far past it)."""
    longest = median * 2
    if words[0].end - last_speech > median * 4 and (
        words[0].end - words[0].start > longest
        or (len(words) > 1 and words[1].end - words[0].start > longest * 2)
    ):
        if len(words) > 1 and words[1].end - words[1].start > longest:
            boundary = max(words[1].end / 2, words[1].end - longest)
            words[0].end = words[1].start = boundary
        words[0].start = max(0, words[0].end - longest)
    if segment.start < words[0].end and segment.start - 0.5 > words[0].start:
        words[0].start = max(0, min(words[0].end - median, segment.start))
    else:
        segment.start = words[0].start
    if segment.end > words[-1].start and segment.end + 0.5 < words[-1].end:
        words[-1].end = max(words[-1].start + median, segment.end)
    else:
        segment.end = words[-1].end


class Aligner:
    """Sets the words of a window's segments (openai-whisper's add_word_timestamps)."""

    def __init__(self, model: SpeechRecognizer, tokenizer: WhisperTokenizer,
                 heads: list[tuple[int, int]], prepend: str, append: str) -> None:  # fmt: skip
        self.model, self.tokenizer, self.heads = model, tokenizer, heads
        self.prepend, self.append = prepend, append

    def __call__(self, segments: list[Segment], audio: Tensor, frames: int, offset: float,
                 last_speech: float, language: str | None, task: str) -> None:  # fmt: skip
        if not segments:
            return
        eot = self.tokenizer.eot
        per_segment = [[t for t in s.tokens if t < eot] for s in segments]
        text_tokens = [t for tokens in per_segment for t in tokens]
        alignment = find_alignment(self.model, self.tokenizer, self.heads, text_tokens, audio,
                                   frames, language, task)  # fmt: skip
        median = _trim_sentence_ends(alignment)
        merge_punctuation(alignment, self.prepend, self.append)
        index = 0
        for segment, tokens in zip(segments, per_segment, strict=True):
            saved, words = 0, []
            while index < len(alignment) and saved < len(tokens):
                timing = alignment[index]
                if timing.word:
                    words.append(
                        Word(
                            timing.word,
                            float(round(offset + timing.start, 2)),
                            float(round(offset + timing.end, 2)),
                            timing.probability,
                        )
                    )
                saved += len(timing.tokens)
                index += 1
            if words:
                _fix_segment(segment, words, median, last_speech)
                last_speech = segment.end
            segment.words = words
