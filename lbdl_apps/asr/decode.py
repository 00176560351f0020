"""Autoregressive decoding (book 6.5, 7.1): greedy and beam search over a batch of
utterances, both with a key/value cache so each step feeds the decoder one new token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lbdl_apps.asr.model import SpeechRecognizer


@dataclass
class Hypothesis:
    """A decoded token sequence (without start/end tokens) and its scores."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float


def _reorder_cache(cache: dict, order: Tensor) -> None:
    """Keep the cache rows `order` (beams that survive a step), in place."""
    for block in cache.values():
        for attention in block.values():
            for key in ("k", "v"):
                if key in attention:
                    attention[key] = attention[key].index_select(0, order)


def _first_step(
    model: SpeechRecognizer,
    audio: Tensor,
    mask: Tensor | None,
    sot: int,
    no_speech: int,
    cache: dict | None,
) -> tuple[Tensor, Tensor]:
    """Log-probabilities after the start token, and the probability of no-speech."""
    start = torch.full((audio.shape[0], 1), sot, dtype=torch.long, device=audio.device)
    logprobs = model.decoder(start, audio, mask, cache=cache, offset=0)[:, -1].float()
    logprobs = logprobs.log_softmax(-1)
    return logprobs, logprobs[:, no_speech].exp()


@torch.no_grad()
def greedy_decode(
    model: SpeechRecognizer,
    mel: Tensor,
    frames: Tensor | None,
    sot: int,
    eot: int,
    no_speech: int,
    max_tokens: int | None = None,
    use_cache: bool = True,
) -> list[Hypothesis]:
    """The most likely next token at each step, for every utterance of the batch at once.

    `use_cache=False` recomputes the whole prefix at each step (the reference the cache is
    tested against)."""
    audio, mask = model.encode(mel, frames)
    batch, device = audio.shape[0], audio.device
    limit = min(max_tokens or model.decoder.max_len, model.decoder.max_len) - 1
    cache: dict | None = {} if use_cache else None
    logprobs, no_speech_prob = _first_step(model, audio, mask, sot, no_speech, cache)
    tokens = torch.full((batch, 1), sot, dtype=torch.long, device=device)
    total = torch.zeros(batch, device=device)
    length = torch.zeros(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(limit):
        if step > 0:
            if use_cache:
                logits = model.decoder(tokens[:, -1:], audio, mask, cache=cache, offset=step)
            else:
                logits = model.decoder(tokens, audio, mask)
            logprobs = logits[:, -1].float().log_softmax(-1)
        best, chosen = logprobs.max(-1)
        chosen = chosen.masked_fill(done, eot)
        total += best.masked_fill(done, 0.0)
        length += (~done).float()
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
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


@torch.no_grad()
def beam_search(
    model: SpeechRecognizer,
    mel: Tensor,
    frames: Tensor | None,
    sot: int,
    eot: int,
    no_speech: int,
    beam_size: int = 5,
    max_tokens: int | None = None,
    length_penalty: float = 1.0,
) -> list[Hypothesis]:
    """Keep the `beam_size` best prefixes of each utterance (sum of log-probabilities); a
    prefix that picks the end token is finished. The finished sequence with the best
    score / length**length_penalty wins. Width 1 gives exactly the greedy tokens."""
    audio, mask = model.encode(mel, frames)
    batch, device, k = audio.shape[0], audio.device, beam_size
    limit = min(max_tokens or model.decoder.max_len, model.decoder.max_len) - 1
    cache: dict = {}
    logprobs, no_speech_prob = _first_step(model, audio, mask, sot, no_speech, cache)
    # every utterance's beams share its audio: repeat rows (and the cache) beam_size times
    rows = torch.arange(batch, device=device).repeat_interleave(k)
    audio = audio[rows]
    mask = None if mask is None else mask[rows]
    _reorder_cache(cache, rows)
    logprobs = logprobs[rows]
    beams: list[list[list[int]]] = [[[]] for _ in range(batch)]  # live prefixes per utterance
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # at the start, one live prefix per utterance
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(batch)]
    last = torch.full((batch * k,), eot, dtype=torch.long, device=device)
    for step in range(limit):
        if step > 0:
            logits = model.decoder(last[:, None], audio, mask, cache=cache, offset=step)
            logprobs = logits[:, -1].float().log_softmax(-1)
        candidates = (scores[:, :, None] + logprobs.view(batch, k, -1)).view(batch, -1)
        top_scores, top_index = candidates.topk(2 * k, dim=-1)
        vocab = logprobs.shape[-1]
        order = torch.arange(batch * k, device=device)
        last = torch.full((batch * k,), eot, dtype=torch.long, device=device)
        new_beams: list[list[list[int]]] = []
        new_scores = torch.full((batch, k), float("-inf"), device=device)
        for i in range(batch):
            kept: list[list[int]] = []
            if len(finished[i]) >= k:
                new_beams.append(beams[i])
                continue
            for score, index in zip(top_scores[i].tolist(), top_index[i].tolist(), strict=True):
                if score == float("-inf"):
                    break
                source, token = divmod(index, vocab)
                prefix = beams[i][source] + [token]
                if token == eot:
                    if len(finished[i]) < k:
                        finished[i].append((prefix[:-1], score))
                    continue
                order[i * k + len(kept)] = i * k + source
                last[i * k + len(kept)] = token
                new_scores[i, len(kept)] = score
                kept.append(prefix)
                if len(kept) == k:
                    break
            new_beams.append(kept or beams[i])
        beams, scores = new_beams, new_scores
        _reorder_cache(cache, order)
        if all(len(f) >= k for f in finished):
            break
    results = []
    for i in range(batch):
        pool = finished[i] or [
            (b, float(s)) for b, s in zip(beams[i], scores[i].tolist(), strict=False)
        ]
        tokens, score = max(pool, key=lambda h: h[1] / max(len(h[0]) + 1, 1) ** length_penalty)
        results.append(
            Hypothesis(tokens, score / max(len(tokens) + 1, 1), float(no_speech_prob[i]))
        )
    return results
