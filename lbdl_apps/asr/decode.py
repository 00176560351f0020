"""Autoregressive decoding (book 6.5, 7.1): greedy and beam search over a batch of
utterances, both with a key/value cache so each step feeds the decoder one new token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lbdl_apps.asr.model import SpeechRecognizer
from lbdl_apps.core.layers import KVCache


@dataclass(frozen=True)
class Specials:
    """The decoder's special tokens (book 6.5): start of transcript, end of text, and the
    token a window without speech gets."""

    sot: int
    eot: int
    no_speech: int


@dataclass
class Hypothesis:
    """A decoded token sequence (without start/end tokens) and its scores."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float


def _start(
    model: SpeechRecognizer,
    mel: Tensor,
    frames: Tensor | None,
    specials: Specials,
    max_tokens: int | None,
    cache: KVCache | None,
) -> tuple[Tensor, Tensor | None, int, Tensor, Tensor]:
    """The encoded audio and its padding mask, the most steps to decode, the
    log-probabilities after the start token and the probability of no-speech."""
    audio, mask = model.encode(mel, frames)
    limit = min(max_tokens or model.decoder.max_len, model.decoder.max_len) - 1
    batch = audio.shape[0]
    start = torch.full((batch, 1), specials.sot, dtype=torch.long, device=audio.device)
    logprobs = model.decoder(start, audio, mask, cache=cache)[:, -1].float().log_softmax(-1)
    return audio, mask, limit, logprobs, logprobs[:, specials.no_speech].exp()


@torch.no_grad()
def greedy_decode(
    model: SpeechRecognizer,
    mel: Tensor,
    frames: Tensor | None,
    specials: Specials,
    max_tokens: int | None = None,
    use_cache: bool = True,
) -> list[Hypothesis]:
    """The most likely next token at each step, for every utterance of the batch at once.

    `use_cache=False` recomputes the whole prefix at each step (the reference the cache is
    tested against)."""
    cache = KVCache() if use_cache else None
    start = _start(model, mel, frames, specials, max_tokens, cache)
    audio, mask, limit, logprobs, no_speech_prob = start
    batch, device = audio.shape[0], audio.device
    eot = specials.eot
    tokens = torch.full((batch, 1), specials.sot, dtype=torch.long, device=device)
    total = torch.zeros(batch, device=device)
    length = torch.zeros(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(limit):
        if step > 0:
            if cache is not None:  # the new token alone; the cache holds the prefix
                logits = model.decoder(tokens[:, -1:], audio, mask, cache=cache)
            else:
                logits = model.decoder(tokens, audio, mask)
            logprobs = logits[:, -1].float().log_softmax(-1)
        best, chosen = logprobs.max(-1)
        chosen = chosen.masked_fill(done, eot)
        total += best.masked_fill(done, 0.0)
        length += (~done).float()
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)  # (B, t) + (B, 1) -> (B, t + 1)
        done |= chosen == eot
        if done.all():
            break
    results = []
    for row, score, n, p in zip(
        tokens.tolist(), total.tolist(), length.tolist(), no_speech_prob.tolist(), strict=True
    ):
        body = row[1:]
        body = body[: body.index(eot)] if eot in body else body
        results.append(Hypothesis(body, score / max(n, 1.0), p))
    return results


Prefix = list[int]


def _extend(
    prefixes: list[Prefix],
    finished: list[tuple[Prefix, float]],
    candidates: list[tuple[float, int]],
    vocab: int,
    k: int,
    eot: int,
) -> list[tuple[int, int, float, Prefix]]:
    """One step of one utterance's beam: of its best candidates, (score, index into its
    k * vocab continuations), those ending with the end token join `finished` (k at most),
    and the first k others are returned as (source beam, token, score, prefix)."""
    kept: list[tuple[int, int, float, Prefix]] = []
    for score, index in candidates:
        if score == float("-inf"):
            break
        source, token = divmod(index, vocab)
        prefix = prefixes[source] + [token]
        if token == eot:
            if len(finished) < k:
                finished.append((prefix[:-1], score))
            continue
        kept.append((source, token, score, prefix))
        if len(kept) == k:
            break
    return kept


@torch.no_grad()
def beam_search(
    model: SpeechRecognizer,
    mel: Tensor,
    frames: Tensor | None,
    specials: Specials,
    beam_size: int = 5,
    max_tokens: int | None = None,
    length_penalty: float = 1.0,
) -> list[Hypothesis]:
    """Keep the `beam_size` best prefixes of each utterance (sum of log-probabilities); a
    prefix that picks the end token is finished. The finished sequence with the best
    score / length**length_penalty wins. Width 1 gives exactly the greedy tokens."""
    eot = specials.eot
    cache = KVCache()
    start = _start(model, mel, frames, specials, max_tokens, cache)
    audio, mask, limit, logprobs, no_speech_prob = start
    batch, device, k = audio.shape[0], audio.device, beam_size
    # every utterance's beams share its audio: repeat rows (and the cache) beam_size times
    rows = torch.arange(batch, device=device).repeat_interleave(k)  # (B * k,)
    audio = audio[rows]
    mask = None if mask is None else mask[rows]
    cache.reorder(rows)
    logprobs = logprobs[rows]
    beams: list[list[Prefix]] = [[[]] for _ in range(batch)]  # live prefixes per utterance
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # at the start, one live prefix per utterance
    finished: list[list[tuple[Prefix, float]]] = [[] for _ in range(batch)]
    last = torch.full((batch * k,), eot, dtype=torch.long, device=device)
    for step in range(limit):
        if step > 0:
            logits = model.decoder(last[:, None], audio, mask, cache=cache)  # (B * k, 1) tokens
            logprobs = logits[:, -1].float().log_softmax(-1)
        # logprobs (B * k, V) -> (B, k, V), + each beam's score, -> (B, k * V) candidates
        candidates = (scores[:, :, None] + logprobs.view(batch, k, -1)).view(batch, -1)
        top_scores, top_index = candidates.topk(2 * k, dim=-1)
        order = torch.arange(batch * k, device=device)
        last = torch.full((batch * k,), eot, dtype=torch.long, device=device)
        scores = torch.full((batch, k), float("-inf"), device=device)
        for i in range(batch):
            if len(finished[i]) >= k:
                continue
            best = list(zip(top_scores[i].tolist(), top_index[i].tolist(), strict=True))
            kept = _extend(beams[i], finished[i], best, logprobs.shape[-1], k, eot)
            for j, (source, token, score, _) in enumerate(kept):
                order[i * k + j] = i * k + source
                last[i * k + j] = token
                scores[i, j] = score
            beams[i] = [prefix for *_, prefix in kept] or beams[i]
        cache.reorder(order, same_context=True)  # each beam's source is a beam of its input
        if all(len(f) >= k for f in finished):
            break
    return [_best(finished[i], beams[i], scores[i], float(no_speech_prob[i]), length_penalty)
            for i in range(batch)]  # fmt: skip


def _best(
    finished: list[tuple[Prefix, float]],
    beams: list[Prefix],
    scores: Tensor,
    no_speech_prob: float,
    length_penalty: float,
) -> Hypothesis:
    """The finished sequence (else the live one) with the best score / length**penalty."""
    pool = finished or [(b, float(s)) for b, s in zip(beams, scores.tolist(), strict=False)]
    tokens, score = max(pool, key=lambda h: h[1] / max(len(h[0]) + 1, 1) ** length_penalty)
    return Hypothesis(tokens, score / max(len(tokens) + 1, 1), no_speech_prob)
