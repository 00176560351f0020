"""Decoding a Whisper model as openai-whisper's `decode` does (book 6.5, 7.1), on a batch of
30-second windows: the prompt (the previous text after <|startofprev|>, start of transcript,
language, task, no-timestamps), language detection for multilingual models, the logit
filters (whisper_filters.py: blank, suppressed tokens, timestamp rules), then greedy
decoding, sampling at a temperature (best of N), or beam search on the core KVCache, ranked
as Whisper ranks (sum of log-probabilities / length). Ties and the order of candidates follow
Whisper's code, so the same weights give the same tokens."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lbdl_apps.asr.model import SpeechRecognizer
from lbdl_apps.asr.whisper_filters import Filters, TimestampRules
from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.layers import KVCache

TASKS = ("transcribe", "translate")
SEED = 0  # of the sampling at temperatures above 0
CHUNK_S = 30.0  # a window's seconds: timestamps are in steps of CHUNK_S / encoder positions


@dataclass(frozen=True)
class WhisperOptions:
    """How a window is decoded (openai-whisper's DecodingOptions, less its prefix)."""

    language: str | None = None  # None: English (.en models) or detected (multilingual)
    task: str = "transcribe"  # or translate (into English)
    temperature: float = 0.0  # 0: the likeliest token; above: sampled at this temperature
    best_of: int | None = None  # temperature > 0: samples per window, the likeliest kept
    beam_size: int = 1  # temperature 0: 1 is greedy, more a beam search
    patience: float = 1.0  # beam search: finished candidates to wait for, x beam_size
    length_penalty: float | None = None  # None: rank by log-probability / length
    sample_len: int | None = None  # most tokens to write (default: half the text context)
    prompt: tuple[int, ...] = ()  # the previous text's tokens, after <|startofprev|>
    suppress_blank: bool = True  # no space or end of text as the first token
    suppress_tokens: tuple[int, ...] | None = None  # None: the model's (Whisper's "-1")
    without_timestamps: bool = True  # the <|notimestamps|> prompt: text tokens only
    max_initial_timestamp: float | None = 1.0  # the first timestamp at most this (seconds)

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
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 1:
            raise LbdlError(f"--length-penalty {self.length_penalty}: between 0 and 1")
        if self.temperature < 0:
            raise LbdlError(f"temperature {self.temperature}: at least 0")

    @property
    def group(self) -> int:
        """Candidates per window: beams at temperature 0, samples above (Whisper's n_group)."""
        return self.beam_size if self.temperature == 0 else (self.best_of or 1)


@dataclass
class Decoded:
    """One window's result: the sampled tokens (timestamps included), their text and
    scores, the language, the temperature; `audio` is the window's encoded audio."""

    tokens: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    language: str | None
    sum_logprob: float
    temperature: float = 0.0
    audio: Tensor | None = field(default=None, repr=False)

    @property
    def compression_ratio(self) -> float:
        """The text's bytes over its zlib-compressed bytes (Whisper's repetition test)."""
        raw = self.text.encode("utf-8")
        return len(raw) / len(zlib.compress(raw))


@torch.no_grad()
def detect_language(model: SpeechRecognizer, tokenizer: WhisperTokenizer, audio: Tensor) -> Tensor:
    """The most likely language token after <|startoftranscript|> for each window of
    encoded `audio` (B, frames, dim) (openai-whisper's detect_language): (B,) token ids."""
    start = torch.full((audio.shape[0], 1), tokenizer.sot, dtype=torch.long, device=audio.device)
    logits = model.decoder(start, audio)[:, 0].float()
    first = tokenizer.sot + 1  # language tokens follow <|startoftranscript|>
    languages = logits[:, first : first + len(tokenizer.languages)]
    return languages.argmax(-1) + first


@dataclass
class Search:
    """What a search needs besides the tokens: the encoded audio, its cache, the filters,
    the end token, how many tokens to write at most, where <|startoftranscript|> is (its
    next-token distribution gives the no-speech probability) and the no-speech token."""

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
        """The filtered next-token logits (B, vocab): the prompt on the first step (its
        logits after <|startoftranscript|> and after its last token alone), then the last
        token alone (the cache holds the rest)."""
        prompt = step == 0
        ends = [self.sot_index, tokens.shape[1] - 1]
        at = torch.tensor(ends, device=tokens.device) if prompt else None
        logits = self.model.decoder(tokens if prompt else tokens[:, -1:], self.audio,
                                    cache=self.cache, at=at).float()  # fmt: skip
        if prompt:
            probs = logits[:, 0].softmax(-1)
            self.no_speech_probs = probs[:, self.no_speech].tolist()
        logits = logits[:, -1]
        self.filters(logits, tokens)
        return logits

    def done(self, tokens: Tensor) -> bool:
        return tokens.shape[-1] > self.model.decoder.max_len

    def keep(self, rows: Tensor) -> None:
        """Go on with the batch rows `rows` (B',) alone: their audio and cache."""
        self.audio = self.audio[rows]
        self.cache.reorder(rows)


def sample(
    search: Search, tokens: Tensor, temperature: float = 0.0
) -> tuple[list[list[int]], list[float]]:
    """The most likely token at each step, or one sampled at `temperature` (openai-whisper's
    GreedyDecoder): each row's sampled tokens up to its end token, and their summed
    log-probabilities. A row that writes its end token leaves the batch (`Search.keep`), so
    one long window costs the steps of its own row, not of the whole batch. Samples are
    drawn by the Gumbel-max trick (the argmax of the logits / temperature plus Gumbel noise:
    the same distribution as Whisper's Categorical, without its slow multinomial over 51k
    tokens) from a generator seeded with `SEED`, so that the same audio gives the same text."""
    eot, begin, batch = search.eot, tokens.shape[1], tokens.shape[0]
    sum_logprobs = torch.zeros(batch, device=tokens.device)
    rows = torch.arange(batch, device=tokens.device)  # the batch rows still writing
    written: dict[int, list[int]] = {}
    generator = torch.Generator(tokens.device).manual_seed(SEED) if temperature > 0 else None
    for step in range(search.sample_len):
        logits = search.logits(tokens, step)
        if temperature == 0:
            chosen = logits.argmax(-1)
        else:
            uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
            gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))
            chosen = (logits / temperature + gumbel).argmax(-1)
        logprobs = logits.log_softmax(-1)
        sum_logprobs[rows] += logprobs[torch.arange(len(rows)), chosen]
        tokens = torch.cat([tokens, chosen[:, None]], dim=-1)  # (B', t) + (B', 1)
        ended = chosen == eot
        last = bool(ended.all()) or search.done(tokens) or step == search.sample_len - 1
        for i in range(len(rows)) if last else ended.nonzero()[:, 0].tolist():
            row = tokens[i, begin:].tolist()
            written[int(rows[i])] = row[: row.index(eot)] if eot in row else row
        if last:
            break
        if ended.any():
            keep = (~ended).nonzero()[:, 0]
            tokens, rows = tokens[keep], rows[keep]
            search.keep(keep)
    return [written.get(i, []) for i in range(batch)], sum_logprobs.tolist()


def initial_tokens(
    tokenizer: WhisperTokenizer, options: WhisperOptions, n_ctx: int
) -> tuple[list[int], int]:
    """Whisper's initial tokens: [<|startofprev|>, the last n_ctx / 2 - 1 previous tokens,]
    the start-of-transcript sequence [, <|notimestamps|>]; and where <|startoftranscript|> is."""
    tokens = tokenizer.sot_sequence(options.language, options.task)
    if options.without_timestamps:
        tokens = [*tokens, tokenizer.no_timestamps]
    if options.prompt:
        tokens = [tokenizer.sot_prev, *list(options.prompt)[-(n_ctx // 2 - 1) :], *tokens]
    return tokens, tokens.index(tokenizer.sot)


def prompt(
    model: SpeechRecognizer, tokenizer: WhisperTokenizer, audio: Tensor, options: WhisperOptions
) -> tuple[Tensor, list[str], int]:
    """Each window's initial tokens (B, L), its language, and the index of
    <|startoftranscript|>; the language detected where a multilingual model was not told it."""
    tokens, sot_index = initial_tokens(tokenizer, options, model.decoder.max_len)
    batch = torch.tensor([tokens] * audio.shape[0], device=audio.device)
    if not tokenizer.multilingual:
        return batch, ["en"] * audio.shape[0], sot_index
    if options.language is None:
        batch[:, sot_index + 1] = detect_language(model, tokenizer, audio)
    codes = batch[:, sot_index + 1].tolist()
    return batch, [tokenizer.languages[t - tokenizer.sot - 1] for t in codes], sot_index


def filters_for(
    tokenizer: WhisperTokenizer, suppress: list[int], options: WhisperOptions, begin: int, ctx: int
) -> Filters:
    """The filters of `options` for windows whose sampling begins at token `begin`, with an
    encoder of `ctx` positions (timestamps every CHUNK_S / ctx seconds)."""
    rules = None
    if not options.without_timestamps:
        latest = options.max_initial_timestamp
        index = round(latest / (CHUNK_S / ctx)) if latest else None
        rules = TimestampRules(tokenizer, begin, index)
    suppressed = list(options.suppress_tokens or suppress)
    return Filters(tokenizer, suppressed, begin, options.suppress_blank, rules)


def decode(
    model: SpeechRecognizer,
    tokenizer: WhisperTokenizer,
    mel: Tensor,
    suppress: list[int],
    options: WhisperOptions,
) -> list[Decoded]:
    """Decode a batch of (B, n_mels, 3000) log-mel windows as openai-whisper's `decode`:
    the encoder once, the prompt, then greedy decoding, best-of-N sampling or beam search."""
    options.check(tokenizer)
    with torch.no_grad():
        encoded = model.encode(mel)[0]
        tokens, languages, sot_index = prompt(model, tokenizer, encoded, options)
        sample_len = options.sample_len or model.decoder.max_len // 2
        filters = filters_for(tokenizer, suppress, options, tokens.shape[1], encoded.shape[1])
        k = options.group
        audio = encoded.repeat_interleave(k, 0) if k > 1 else encoded
        tokens = tokens.repeat_interleave(k, 0) if k > 1 else tokens
        search = Search(model, audio, filters, tokenizer.eot, sample_len, sot_index,
                        tokenizer.no_speech)  # fmt: skip
        if options.temperature == 0 and k > 1:
            from lbdl_apps.asr.whisper_beam import beam_search

            found, sums = beam_search(search, tokens, k, options)
        else:
            found, sums = sample(search, tokens, options.temperature)
            if k > 1:
                found, sums = best_of(found, sums, k, options.length_penalty)
        no_speech = search.no_speech_probs[::k]
    return [Decoded(t, tokenizer.decode(t).strip(), s / (len(t) + 1), p, lang, s,
                    options.temperature, a)
            for t, s, p, lang, a in zip(found, sums, no_speech, languages, encoded,
                                        strict=True)]  # fmt: skip


def best_of(
    found: list[list[int]], sums: list[float], k: int, length_penalty: float | None
) -> tuple[list[list[int]], list[float]]:
    """Each window's best of its k samples (Whisper's MaximumLikelihoodRanker)."""
    from lbdl_apps.asr.whisper_beam import ranked_best

    chosen = [ranked_best(found[i : i + k], sums[i : i + k], length_penalty)
              for i in range(0, len(found), k)]  # fmt: skip
    return [found[i * k + c] for i, c in enumerate(chosen)], [
        sums[i * k + c] for i, c in enumerate(chosen)
    ]
