"""openai-whisper's logit filters (book 6.5, 7.1), applied in place to a step's (B, vocab)
logits before each choice: no blank (space or end of text) as the first token, the
suppressed tokens always, and, when timestamps are decoded, Whisper's timestamp rules
(ApplyTimestampRules): timestamps come in pairs (except right before the end of text), never
decrease, the first token is a timestamp no later than max_initial_timestamp, and a
timestamp is forced whenever the timestamps together are likelier than any text token."""

from __future__ import annotations

import torch
from torch import Tensor

from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer

NEG_INF = float("-inf")


class TimestampRules:
    """openai-whisper's ApplyTimestampRules; what depends on each window's sampled tokens is
    read from them row by row, then applied to all rows at once."""

    def __init__(
        self, tokenizer: WhisperTokenizer, sample_begin: int, max_initial_index: int | None
    ) -> None:
        self.no_timestamps = tokenizer.no_timestamps
        self.begin = tokenizer.timestamp_begin
        self.eot = tokenizer.eot
        self.sample_begin = sample_begin
        self.max_initial_index = max_initial_index

    def _rows(self, tokens: Tensor) -> tuple[list[bool], list[bool], list[int]]:
        """Per row: a pair just completed (text next), a segment just opened (its closing
        timestamp next), and the lowest timestamp allowed (`begin`: any)."""
        begin = self.begin
        closed, opened, floors = [], [], []
        for row in tokens[:, self.sample_begin :].tolist():
            last = len(row) >= 1 and row[-1] >= begin
            penultimate = len(row) < 2 or row[-2] >= begin
            closed.append(last and penultimate)
            opened.append(last and not penultimate)
            stamps = [t for t in row if t >= begin]
            # never backwards; a segment of nonzero length
            floors.append(begin if not stamps else stamps[-1] + (0 if opened[-1] else 1))
        return closed, opened, floors

    def __call__(self, logits: Tensor, tokens: Tensor) -> None:
        begin = self.begin
        logits[:, self.no_timestamps] = NEG_INF
        for row, (closed, opened, floor) in enumerate(zip(*self._rows(tokens), strict=True)):
            if closed:
                logits[row, begin:] = NEG_INF
            if opened:
                logits[row, : self.eot] = NEG_INF
            logits[row, begin:floor] = NEG_INF
        if tokens.shape[1] == self.sample_begin:
            logits[:, :begin] = NEG_INF  # a window starts with a timestamp
            if self.max_initial_index is not None:
                logits[:, begin + self.max_initial_index + 1 :] = NEG_INF
        # Whisper compares the log-probabilities logsumexp(timestamps) - lse and
        # max(text) - lse: the same comparison without lse, the normalizer of all 51k
        timestamp = logits[:, begin:].float().logsumexp(-1)
        text = logits[:, :begin].float().amax(-1)
        for row, forced in enumerate((timestamp > text).tolist()):
            if forced:
                logits[row, :begin] = NEG_INF


class Filters:
    """Whisper's filters in Whisper's order: blank, suppressed tokens, timestamp rules."""

    def __init__(
        self,
        tokenizer: WhisperTokenizer,
        suppress: list[int],
        sample_begin: int,
        suppress_blank: bool = True,
        timestamps: TimestampRules | None = None,
    ) -> None:
        self.blank = [*tokenizer.encode(" "), tokenizer.eot] if suppress_blank else []
        self.suppress = torch.tensor(sorted(set(suppress)), dtype=torch.long)
        self.sample_begin = sample_begin
        self.timestamps = timestamps

    def __call__(self, logits: Tensor, tokens: Tensor) -> None:
        if self.blank and tokens.shape[1] == self.sample_begin:
            logits[:, self.blank] = NEG_INF
        if len(self.suppress):
            logits[:, self.suppress.to(logits.device)] = NEG_INF
        if self.timestamps is not None:
            self.timestamps(logits, tokens)
