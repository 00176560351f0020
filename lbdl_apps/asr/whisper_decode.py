"""Decoding a Whisper model as openai-whisper's `decode` does (book 6.5, 7.1), on a batch of
30-second windows: the prompt (start of transcript, language, task, no-timestamps), language
detection for multilingual models, the logit filters (blank and Whisper's suppressed tokens),
then greedy or beam search on the core KVCache, ranked as Whisper ranks (sum of
log-probabilities / length). Ties and the order of candidates follow Whisper's code, so the
same weights give the same tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lbdl_apps.asr.model import SpeechRecognizer
from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import KVCache

TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class WhisperOptions:
    """How a window is decoded (the part of openai-whisper's DecodingOptions used here)."""

    language: str | None = None  # None: English (.en models) or detected (multilingual)
    task: str = "transcribe"  # or translate (into English)
    beam_size: int = 1  # 1: greedy
    patience: float = 1.0  # beam search: finished candidates to wait for, x beam_size
    length_penalty: float | None = None  # None: rank by log-probability / length
    sample_len: int | None = None  # most tokens to write (default: half the text context)
    suppress_blank: bool = True  # no space or end of text as the first token
    suppress_tokens: tuple[int, ...] | None = None  # None: the model's (Whisper's "-1")
    without_timestamps: bool = True  # the <|notimestamps|> prompt: text tokens only

    def check(self, tokenizer: WhisperTokenizer) -> None:
        """LbdlErrors for options the model cannot follow."""
        if self.task not in TASKS:
            raise LbdlError(f"--task {self.task}: choose {' or '.join(TASKS)}")
        if not tokenizer.multilingual and (self.language not in (None, "en")
                                           or self.task != "transcribe"):  # fmt: skip
            what = f"--language {self.language}" if self.language else f"--task {self.task}"
            raise LbdlError(f"{what}: an English-only (.en) Whisper model transcribes English")
        if self.language is not None:
            tokenizer.language_token(self.language)  # an unknown language
        if not self.without_timestamps:
            raise LbdlError("timestamp tokens are not decoded yet")  # long-form decoding's


@dataclass
class Decoded:
    """One window's result: the text tokens, their text and scores, the language."""

    tokens: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    language: str | None
    sum_logprob: float


@torch.no_grad()
def detect_language(model: SpeechRecognizer, tokenizer: WhisperTokenizer, audio: Tensor) -> Tensor:
    """The most likely language token after <|startoftranscript|> for each window of
    encoded `audio` (B, frames, dim) (openai-whisper's detect_language): (B,) token ids."""
    start = torch.full((audio.shape[0], 1), tokenizer.sot, dtype=torch.long, device=audio.device)
    logits = model.decoder(start, audio)[:, 0].float()
    first = tokenizer.sot + 1  # language tokens follow <|startoftranscript|>
    languages = logits[:, first : first + len(tokenizer.languages)]
    return languages.argmax(-1) + first


class Filters:
    """Whisper's logit filters, applied in place to (B, vocab) logits before each choice:
    no blank (space or end of text) as the first token, and the suppressed tokens always."""

    def __init__(self, tokenizer: WhisperTokenizer, suppress: list[int], options: WhisperOptions,
                 sample_begin: int) -> None:  # fmt: skip
        self.blank = [*tokenizer.encode(" "), tokenizer.eot] if options.suppress_blank else []
        self.suppress = list(suppress)
        self.sample_begin = sample_begin

    def __call__(self, logits: Tensor, tokens: Tensor) -> None:
        if self.blank and tokens.shape[1] == self.sample_begin:
            logits[:, self.blank] = float("-inf")
        if self.suppress:
            logits[:, self.suppress] = float("-inf")


@dataclass
class Search:
    """What a search needs besides the tokens: the encoded audio, its cache, the filters,
    the end token, how many tokens to write at most and the text context."""

    model: SpeechRecognizer
    audio: Tensor
    filters: Filters
    eot: int
    sample_len: int
    sot_index: int
    no_speech: int

    def __post_init__(self) -> None:
        self.cache = KVCache()
        self.no_speech_probs: list[float] = []

    def logits(self, tokens: Tensor, step: int) -> Tensor:
        """The filtered next-token logits (B, vocab): the prompt on the first step, then the
        last token alone (the cache holds the rest)."""
        logits = self.model.decoder(tokens if step == 0 else tokens[:, -1:], self.audio,
                                    cache=self.cache).float()  # fmt: skip
        if step == 0:
            probs = logits[:, self.sot_index].softmax(-1)
            self.no_speech_probs = probs[:, self.no_speech].tolist()
        logits = logits[:, -1]
        self.filters(logits, tokens)
        return logits

    def done(self, tokens: Tensor) -> bool:
        return tokens.shape[-1] > self.model.decoder.max_len


def greedy(search: Search, tokens: Tensor) -> tuple[list[list[int]], list[float]]:
    """The most likely token at each step (openai-whisper's GreedyDecoder at temperature 0):
    each window's sampled tokens up to its end token, and their summed log-probabilities."""
    eot = search.eot
    sum_logprobs = torch.zeros(tokens.shape[0], device=tokens.device)
    begin = tokens.shape[1]
    for step in range(search.sample_len):
        logits = search.logits(tokens, step)
        chosen = logits.argmax(-1)
        logprobs = logits.log_softmax(-1)
        current = logprobs[torch.arange(logprobs.shape[0]), chosen]
        sum_logprobs += current * (tokens[:, -1] != eot)
        chosen[tokens[:, -1] == eot] = eot
        tokens = torch.cat([tokens, chosen[:, None]], dim=-1)  # (B, t) + (B, 1)
        if (tokens[:, -1] == eot).all() or search.done(tokens):
            break
    rows = [row[begin:] for row in tokens.tolist()]
    return [row[: row.index(eot)] if eot in row else row for row in rows], sum_logprobs.tolist()


def prompt(
    model: SpeechRecognizer, tokenizer: WhisperTokenizer, audio: Tensor, options: WhisperOptions
) -> tuple[Tensor, list[str]]:
    """Each window's prompt (B, L) and language: start of transcript, [language, task,]
    [no timestamps]; the language detected where a multilingual model was not told it."""
    tokens = tokenizer.sot_sequence(options.language, options.task)
    if options.without_timestamps:
        tokens = [*tokens, tokenizer.no_timestamps]
    batch = torch.tensor([tokens] * audio.shape[0], device=audio.device)
    if not tokenizer.multilingual:
        return batch, ["en"] * audio.shape[0]
    if options.language is None:
        batch[:, 1] = detect_language(model, tokenizer, audio)
    return batch, [tokenizer.languages[t - tokenizer.sot - 1] for t in batch[:, 1].tolist()]


def decode(
    model: SpeechRecognizer,
    tokenizer: WhisperTokenizer,
    mel: Tensor,
    suppress: list[int],
    options: WhisperOptions,
) -> list[Decoded]:
    """Decode a batch of (B, n_mels, 3000) log-mel windows as openai-whisper's `decode`:
    the encoder once, the prompt, then greedy or beam search (beam_size > 1)."""
    options.check(tokenizer)
    with torch.no_grad():
        audio = model.encode(mel)[0]
        tokens, languages = prompt(model, tokenizer, audio, options)
        sample_len = options.sample_len or model.decoder.max_len // 2
        suppressed = list(options.suppress_tokens or suppress)
        filters = Filters(tokenizer, suppressed, options, tokens.shape[1])
        k = options.beam_size
        if k > 1:
            audio, tokens = audio.repeat_interleave(k, 0), tokens.repeat_interleave(k, 0)
        search = Search(model, audio, filters, tokenizer.eot, sample_len, 0, tokenizer.no_speech)
        if k > 1:
            from lbdl_apps.asr.whisper_beam import beam_search

            found, sums = beam_search(search, tokens, k, options)
            no_speech = search.no_speech_probs[::k]
        else:
            found, sums = greedy(search, tokens)
            no_speech = search.no_speech_probs
    return [Decoded(t, tokenizer.decode(t).strip(), s / (len(t) + 1), p, lang, s)
            for t, s, p, lang in zip(found, sums, no_speech, languages, strict=True)]  # fmt: skip
